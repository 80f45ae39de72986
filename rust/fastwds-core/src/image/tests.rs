//! Tests of the decode pipeline: formats, modes, crops through reduced DCT scales and JPEG windows.

mod decode_tests {
    use super::super::*;

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let spec = DecodeSpec::new(Mode::Rgb);
        for data in [&b""[..], b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"P6\n3 2\n255\n", b"hello"] {
            assert!(decode(data, &spec).is_err());
        }
    }

    #[test]
    fn pnm_decodes_and_resizes() {
        let mut data = b"P6\n# c\n2 2\n255\n".to_vec();
        data.extend_from_slice(&[10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120]);
        let mut spec = DecodeSpec::new(Mode::Rgb);
        let p = decode(&data, &spec).unwrap();
        assert_eq!((p.height, p.width, p.channels), (2, 2, 3));
        assert_eq!(&p.data[..3], &[10, 20, 30]);
        spec.mode = Mode::L;
        assert_eq!(decode(&data, &spec).unwrap().data.len(), 4);
        spec.resize = Some(Resize { size: (1, 1), crop: Crop::Center });
        assert_eq!(decode(&data, &spec).unwrap().data.len(), 1);
    }

    #[test]
    fn dct_denominator_is_pillow_draft_choice() {
        let b = |w: f64, h: f64| CropBox { left: 0.0, top: 0.0, width: w, height: h };
        assert_eq!(dct_denominator(&b(500.0, 375.0), (224, 224)), 1);
        assert_eq!(dct_denominator(&b(1000.0, 900.0), (224, 224)), 4);
        assert_eq!(dct_denominator(&b(4000.0, 3000.0), (224, 224)), 8);
        assert_eq!(dct_denominator(&b(448.0, 448.0), (224, 224)), 2);
    }
}

mod jpeg_tests {
    use super::super::*;

    fn sample_jpeg() -> Vec<u8> {
        let pixels: Vec<u8> = (0..48 * 40 * 3).map(|i| ((i * 7919) % 251) as u8).collect();
        let image =
            turbojpeg::Image { pixels, width: 48, pitch: 48 * 3, height: 40, format: turbojpeg::PixelFormat::RGB };
        turbojpeg::compress(image.as_deref(), 90, turbojpeg::Subsamp::Sub2x2).unwrap().to_vec()
    }

    #[test]
    fn a_failed_jpeg_does_not_poison_the_next() {
        let good = sample_jpeg();
        let mut bad = good.clone();
        let dht = bad.windows(2).position(|w| w == [0xFF, 0xC4]).unwrap();
        bad[dht + 5] = 0xFF;
        let mut decoder = Decoder::new();
        let spec = DecodeSpec::new(Mode::Rgb);
        let first = decoder.decode(&good, &spec).unwrap();
        assert!(decoder.decode(&bad, &spec).is_err());
        assert_eq!(decoder.decode(&good, &spec).unwrap(), first);
        assert_eq!((first.height, first.width, first.channels), (40, 48, 3));
    }

    #[test]
    fn truncated_jpeg_is_truncated() {
        let good = sample_jpeg();
        let err = decode(&good[..good.len() / 2], &DecodeSpec::new(Mode::Rgb)).unwrap_err();
        assert_eq!(err.kind, ImageErrorKind::Truncated);
    }

    #[test]
    fn reduced_scale_and_crop_give_the_target_size() {
        let good = sample_jpeg();
        let mut spec = DecodeSpec::new(Mode::L);
        spec.resize =
            Some(Resize { size: (10, 12), crop: Crop::RandomResized { scale: (0.5, 1.0), ratio: (0.75, 1.33) } });
        spec.flip = 0.5;
        let p = decode(&good, &spec).unwrap();
        assert_eq!((p.height, p.width, p.channels, p.data.len()), (10, 12, 1, 120));
    }
}

mod window_tests {
    //! A cropped JPEG is decoded only in the window the resize reads; these check that the result is the one
    //! a full decode gives, over sampling modes, progressive and restart-marker files, sizes that are not
    //! multiples of the iMCU, reduced DCT scales, both crop kinds and many random crops.

    use super::super::jpeg_crop::*;
    use super::super::*;
    use turbojpeg::libc::c_int;
    use turbojpeg::raw;

    /// A JPEG of smooth gradients plus noise (so every pixel depends on its neighbours' chroma), compressed
    /// with TurboJPEG's raw API to reach the progressive and restart-interval options.
    fn jpeg(width: usize, height: usize, subsamp: raw::TJSAMP, progressive: bool, restart_blocks: c_int) -> Vec<u8> {
        let params = [
            (raw::TJPARAM_TJPARAM_QUALITY, 90),
            (raw::TJPARAM_TJPARAM_SUBSAMP, subsamp as c_int),
            (raw::TJPARAM_TJPARAM_PROGRESSIVE, progressive as c_int),
            (raw::TJPARAM_TJPARAM_RESTARTBLOCKS, restart_blocks),
        ];
        jpeg::test_jpeg((width, height), 0x9E37_79B9, &params, |x, y, c, state| {
            ((x * 255 / width + y * 3 * (c + 1) + (state % 48) as usize) % 256) as u8
        })
    }

    /// The same transform with the whole image decoded first (the path without windows).
    fn full_decode_then_resize(data: &[u8], spec: &DecodeSpec) -> Pixels {
        let mut jpeg = jpeg::JpegDecoder::new().unwrap();
        let header = jpeg.header(data).unwrap();
        let r = spec.resize.unwrap();
        let plan = geometry::plan(header.width, header.height, Some(&r), spec.flip, spec.seed);
        let denom = if spec.reduced_dct { dct_denominator(plan.crop.as_ref().unwrap(), r.size) } else { 1 };
        let plan = scale_plan(plan, denom);
        let image = jpeg.decode(data, &header, denom, spec.mode, spec.max_pixels).unwrap();
        let out = resize::Resampler::new().resize(image.view(), plan.crop.unwrap(), plan.clip_to_crop, r.size).unwrap();
        finish(out, plan.flip)
    }

    /// Decodes through the window path itself (not `Decoder::decode`, which would fall back to a full decode if
    /// the window failed) and compares with a full decode.
    fn check(data: &[u8], mode: Mode, size: (u32, u32), seeds: std::ops::Range<u64>, what: &str) {
        let mut decoder = Decoder::new();
        let crops = [Crop::Center, Crop::RandomResized { scale: (0.02, 1.0), ratio: (0.5, 2.0) }];
        for crop in crops {
            for seed in seeds.clone() {
                let mut spec = DecodeSpec::new(mode);
                let r = Resize { size, crop };
                spec.resize = Some(r);
                spec.flip = 0.5;
                spec.seed = seed;
                let mut jpeg = jpeg::JpegDecoder::new().unwrap();
                let header = jpeg.header(data).unwrap();
                let plan = geometry::plan(header.width, header.height, Some(&r), spec.flip, spec.seed);
                let denom = dct_denominator(plan.crop.as_ref().unwrap(), size);
                let plan = scale_plan(plan, denom);
                let align = header.window_alignment(denom, mode).unwrap();
                let got = decoder
                    .decode_jpeg_crop(&mut jpeg, data, &header, (denom, align), &spec, plan.crop.unwrap(), plan, size)
                    .unwrap();
                assert_eq!(got, full_decode_then_resize(data, &spec), "{what}, {crop:?}, seed {seed}");
                assert_eq!(got, decoder.decode(data, &spec).unwrap());
            }
        }
    }

    #[test]
    fn window_decode_equals_full_decode() {
        let sampling = [
            raw::TJSAMP_TJSAMP_444,
            raw::TJSAMP_TJSAMP_422,
            raw::TJSAMP_TJSAMP_420,
            raw::TJSAMP_TJSAMP_440,
            raw::TJSAMP_TJSAMP_411,
            raw::TJSAMP_TJSAMP_441,
        ];
        for (i, subsamp) in sampling.into_iter().enumerate() {
            for (progressive, restart) in [(false, 0), (true, 0), (false, 3)] {
                let (w, h) = (97 + 40 * i, 61 + 23 * i);
                let data = jpeg(w, h, subsamp, progressive, restart);
                let what = format!("{w}x{h} TJSAMP {subsamp}, progressive {progressive}, restart {restart}");
                check(&data, Mode::Rgb, (24, 32), 0..40, &what);
                check(&data, Mode::Rgba, (31, 17), 0..10, &what);
            }
        }
        let gray = jpeg(203, 150, raw::TJSAMP_TJSAMP_GRAY, false, 0);
        check(&gray, Mode::L, (40, 40), 0..40, "gray");
    }

    #[test]
    fn window_decode_equals_full_decode_at_reduced_scale() {
        // Targets far below the crop pick 1/2, 1/4 and 1/8 DCT scales; windows are then aligned to the scaled
        // iMCU.
        let data = jpeg(900, 700, raw::TJSAMP_TJSAMP_420, false, 0);
        for size in [(300, 300), (120, 100), (40, 60), (8, 8)] {
            check(&data, Mode::Rgb, size, 0..12, &format!("900x700 to {size:?}"));
        }
    }

    /// The offset of the `nth` (from 0) `FF marker` pair in `data`.
    fn find_marker(data: &[u8], marker: u8, nth: usize) -> usize {
        let mut hits = data.windows(2).enumerate().filter(|(_, w)| w == &[0xFF, marker]);
        hits.nth(nth).map(|(at, _)| at).expect("marker present")
    }

    #[test]
    fn stream_end_tells_when_a_window_is_exact() {
        let exact = |data: &[u8]| jpeg::stream_end(data).window_is_exact;
        let baseline = jpeg(100, 60, raw::TJSAMP_TJSAMP_420, false, 0);
        let progressive = jpeg(100, 60, raw::TJSAMP_TJSAMP_420, true, 0);
        assert!(exact(&baseline) && exact(&progressive) && exact(&jpeg(64, 64, raw::TJSAMP_TJSAMP_444, false, 2)));
        // Bytes after EOI are never read.
        assert!(exact(&[&baseline[..], &[0u8, 0xFF, 0x12][..]].concat()));
        // Cut short: no EOI.
        let cut = &baseline[..baseline.len() - 40];
        assert_eq!(
            jpeg::stream_end(cut),
            super::super::jpeg_markers::StreamEnd { reaches_eoi: false, window_is_exact: false }
        );
        // A marker segment inside a one-scan stream: libjpeg would read it only after the window.
        let mut stray = baseline.clone();
        let at = stray.len() - 60;
        stray.splice(at..at, [0xFF, 0xFE, 0x00, 0x04, b'h', b'i']);
        assert_eq!(
            jpeg::stream_end(&stray),
            super::super::jpeg_markers::StreamEnd { reaches_eoi: true, window_is_exact: false }
        );
        // A progressive stream of its DC scan alone is one scan, but libjpeg smooths it, so it is read whole.
        let sos = find_marker(&progressive, 0xDA, 0);
        let after_scan = (sos + 2..progressive.len() - 1)
            .find(|&i| progressive[i] == 0xFF && !matches!(progressive[i + 1], 0x00 | 0xD0..=0xD7))
            .unwrap();
        let dc_only = [&progressive[..after_scan], &[0xFF, 0xD9][..]].concat();
        assert_eq!(
            jpeg::stream_end(&dc_only),
            super::super::jpeg_markers::StreamEnd { reaches_eoi: true, window_is_exact: false }
        );
        // A progressive stream without its last scan leaves coefficients unrefined, which libjpeg smooths.
        let last_scan = find_marker(&progressive, 0xDA, 9);
        let unrefined = [&progressive[..last_scan], &[0xFF, 0xD9][..]].concat();
        assert_eq!(
            jpeg::stream_end(&unrefined),
            super::super::jpeg_markers::StreamEnd { reaches_eoi: true, window_is_exact: false }
        );
        // The same stream through the decoder: the crop equals a full decode then resize, smoothing included.
        let mut spec = DecodeSpec::new(Mode::Rgb);
        let r = Resize { size: (20, 20), crop: Crop::Center };
        spec.resize = Some(r);
        spec.reduced_dct = false;
        let full = decode(&unrefined, &DecodeSpec::new(Mode::Rgb)).unwrap();
        let plan = geometry::plan(100, 60, Some(&r), 0.0, 0);
        let want = resize::Resampler::new().resize(full.view(), plan.crop.unwrap(), plan.clip_to_crop, r.size);
        assert_eq!(decode(&unrefined, &spec).unwrap(), want.unwrap());
    }

    #[test]
    fn fatal_error_after_a_warning_is_an_error() {
        // TurboJPEG gives a fatal error that follows a warning the warning's code. Garbage before the frame
        // header is a warning ("extraneous bytes"); a Huffman table with impossible counts before a later scan is
        // fatal, and Pillow refuses the file.
        let good = jpeg(64, 48, raw::TJSAMP_TJSAMP_420, true, 0);
        let mut bad = good.clone();
        let table = find_marker(&bad, 0xC4, 3);
        bad[table + 5] = 0xFF; // the first code-length count of the table
        let sof = find_marker(&bad, 0xC2, 0);
        bad.splice(sof..sof, [1, 2, 3]);
        let err = decode(&bad, &DecodeSpec::new(Mode::Rgb)).unwrap_err();
        assert_eq!(err.kind, ImageErrorKind::Corrupt, "{err:?}");
        assert!(err.message.contains("Huffman"), "{err:?}");
        // The warning alone decodes.
        let mut warned = good.clone();
        warned.splice(sof..sof, [1, 2, 3]);
        assert!(decode(&warned, &DecodeSpec::new(Mode::Rgb)).is_ok());
    }

    #[test]
    fn cut_after_earlier_damage_is_still_truncated() {
        // libjpeg keeps only the first warning's message: a cut after an earlier warning must still read as a cut.
        let good = jpeg(64, 48, raw::TJSAMP_TJSAMP_420, true, 0);
        let sof = find_marker(&good, 0xC2, 0);
        let warned = [&good[..sof], &[1, 2, 3], &good[sof..good.len() - 30]].concat();
        let err = decode(&warned, &DecodeSpec::new(Mode::Rgb)).unwrap_err();
        assert_eq!(err.kind, ImageErrorKind::Truncated, "{err:?}");
    }

    #[test]
    fn window_keeps_truncation_an_error() {
        // Cut inside the last rows: the crop may lie well above the cut, but the stream no longer reaches EOI, so
        // it is decoded whole and the truncation is reported, as by a full decode.
        let data = jpeg(160, 400, raw::TJSAMP_TJSAMP_420, false, 0);
        let cut = &data[..data.len() - 200];
        let mut spec = DecodeSpec::new(Mode::Rgb);
        spec.resize =
            Some(Resize { size: (10, 10), crop: Crop::RandomResized { scale: (0.02, 0.05), ratio: (1.0, 1.0) } });
        for seed in 0..20 {
            spec.seed = seed;
            assert_eq!(decode(cut, &spec).unwrap_err().kind, ImageErrorKind::Truncated, "seed {seed}");
        }
    }

    #[test]
    fn damaged_jpegs_fail_or_decode_alike_through_a_window() {
        // Bytes flipped, cut, or inserted anywhere: never a panic or a crash. Where `Decoder::decode` takes the
        // window path (a stream it cannot be sure of is decoded whole), it fails exactly when a full decode fails,
        // damage below the window included, and gives the same pixels when both decode.
        let originals = [
            jpeg(120, 90, raw::TJSAMP_TJSAMP_420, false, 0),
            jpeg(75, 130, raw::TJSAMP_TJSAMP_422, true, 0),
            jpeg(64, 64, raw::TJSAMP_TJSAMP_444, false, 2),
            jpeg(100, 70, raw::TJSAMP_TJSAMP_420, true, 1),
        ];
        let mut rng = Rng::new(7);
        let mut decoder = Decoder::new();
        let (mut both_ok, mut window_failed, mut whole_only) = (0, 0, 0);
        for round in 0..2000u64 {
            let mut data = originals[round as usize % originals.len()].clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(data.len() as u64) as usize;
                match rng.below(4) {
                    0 => data[at] ^= 1 << rng.below(8),
                    1 => data[at] = 0xFF,
                    2 => data.truncate(at.max(4)),
                    _ => data.insert(at, rng.below(256) as u8),
                }
            }
            let mut spec = DecodeSpec::new(Mode::Rgb);
            let r = Resize { size: (16, 24), crop: Crop::RandomResized { scale: (0.05, 0.5), ratio: (0.75, 1.33) } };
            spec.resize = Some(r);
            spec.seed = round;
            let Ok(mut jpeg) = jpeg::JpegDecoder::new() else { continue };
            let Ok(header) = jpeg.header(&data) else { continue };
            if check_pixels(header.width, header.height, spec.max_pixels, "JPEG").is_err() {
                continue;
            }
            let plan = geometry::plan(header.width, header.height, Some(&r), spec.flip, spec.seed);
            let denom = dct_denominator(plan.crop.as_ref().unwrap(), r.size);
            let plan = scale_plan(plan, denom);
            let Some(align) = header.window_alignment(denom, Mode::Rgb) else { continue };
            if !jpeg::stream_end(&data).window_is_exact {
                // Decoded whole by `Decoder::decode`; the window path is not taken.
                whole_only += 1;
                continue;
            }
            let windowed = decoder.decode_jpeg_crop(
                &mut jpeg,
                &data,
                &header,
                (denom, align),
                &spec,
                plan.crop.unwrap(),
                plan,
                r.size,
            );
            let full = decoder.decode(&data, &spec);
            let mut full_jpeg = jpeg::JpegDecoder::new().unwrap();
            full_jpeg.header(&data).unwrap();
            let whole = full_jpeg.decode(&data, &header, denom, Mode::Rgb, spec.max_pixels);
            match windowed {
                Ok(pixels) => {
                    both_ok += 1;
                    let whole = whole.unwrap_or_else(|e| panic!("round {round}: only the full decode fails: {e:?}"));
                    let out = resize::Resampler::new()
                        .resize(whole.view(), plan.crop.unwrap(), plan.clip_to_crop, r.size)
                        .unwrap();
                    assert_eq!(pixels, finish(out, plan.flip), "round {round}");
                    assert_eq!(full.ok(), Some(pixels), "round {round}");
                }
                Err(e) => {
                    window_failed += 1;
                    assert!(whole.is_err(), "round {round}: only the window fails: {e:?}");
                    assert_eq!(full.map_err(|e| e.kind), Err(e.kind), "round {round}");
                }
            }
        }
        // Each outcome must come up, or this test checks less than it says.
        let counts = format!("{both_ok} decoded, {window_failed} failed through a window; {whole_only} whole");
        assert!(both_ok > 200 && window_failed > 10 && whole_only > 200, "{counts}");
    }

    #[test]
    fn read_window_covers_the_crop_and_the_filter() {
        let crop = CropBox { left: 50.5, top: 20.0, width: 100.0, height: 30.0 };
        // Resizing 100 columns to 25 reaches 4 + 1 pixels past the crop, 30 rows to 30 reaches 1 + 1; plus the
        // margin of 8 each; the left edge is aligned down to 16.
        let w = read_window(&crop, false, (30, 25), (400, 300), 16);
        assert_eq!((w.x, w.y), (32, 10));
        assert_eq!((w.x + w.width, w.y + w.height), (164, 60));
        // A crop the resize sees alone needs only the margin; a window never leaves the image.
        let w = read_window(&crop, true, (30, 25), (155, 300), 16);
        assert_eq!((w.x, w.y, w.x + w.width, w.y + w.height), (32, 12, 155, 58));
    }
}
