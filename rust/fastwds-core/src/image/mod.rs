//! Image decoding for the reader threads: JPEG (libjpeg-turbo), PNG and binary PPM/PGM bytes to HWC `u8`
//! arrays equal to what Pillow gives, with an optional fused crop + resize + flip (torchvision's center crop or
//! RandomResizedCrop, reproducible from a seed).
//!
//! Pure functions of (bytes, spec), nothing Python. A [`Decoder`] only keeps reusable scratch buffers, one per
//! thread, and the storage of finished images can come back through [`recycle`] to be written again. When a
//! JPEG's crop is at least twice the target size, it is decoded at a reduced DCT scale (1/2, 1/4 or 1/8, the
//! smallest that still covers the target), exactly as Pillow's `draft()` would, which skips most of the IDCT
//! and color conversion work. A JPEG that is cropped is decoded only in the window the resize reads
//! (libjpeg-turbo's partial decoding): rows below it are not decoded at all, and rows above it and columns
//! beside it are entropy-decoded only. The pixels the resize sees are the same as after a full decode, so the
//! result is too.

mod convert;
mod error;
mod geometry;
mod jpeg;
mod png;
mod pnm;
mod pool;
mod resize;
mod rng;

pub use error::{ImageError, ImageErrorKind};
pub use geometry::{center_box, plan, random_resized_box, validate, CropBox, Plan};
pub use pool::recycle;
pub use rng::Rng;

/// Pillow's `Image.MAX_IMAGE_PIXELS * 2`: the size at which Pillow raises `DecompressionBombError`.
pub const DEFAULT_MAX_PIXELS: u64 = 178_956_970;

/// Output pixel layout; the names follow webdataset's `l8` / `rgb8` / `rgba8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One channel, Pillow's `convert("L")`.
    L,
    /// Three channels, Pillow's `convert("RGB")` (alpha dropped without compositing).
    Rgb,
    /// Four channels, Pillow's `convert("RGBA")`.
    Rgba,
}

impl Mode {
    pub fn channels(self) -> usize {
        match self {
            Mode::L => 1,
            Mode::Rgb => 3,
            Mode::Rgba => 4,
        }
    }

    /// Parses "l8", "rgb8", "rgba8" (also "l", "rgb", "rgba", any case).
    pub fn parse(name: &str) -> Option<Mode> {
        match name.to_ascii_lowercase().as_str() {
            "l8" | "l" => Some(Mode::L),
            "rgb8" | "rgb" => Some(Mode::Rgb),
            "rgba8" | "rgba" => Some(Mode::Rgba),
            _ => None,
        }
    }
}

/// How the source window of a resize is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Crop {
    /// torchvision `Resize(short side) + CenterCrop(size)`: scale the image to cover the target, keep the
    /// centered window (see [`center_box`]).
    Center,
    /// torchvision `RandomResizedCrop(size, scale, ratio)`: a random window of area fraction in `scale` and
    /// aspect ratio in `ratio` (log-uniform), 10 attempts then the ratio-clamped center crop (see
    /// [`random_resized_box`]).
    RandomResized { scale: (f64, f64), ratio: (f64, f64) },
}

/// A crop + resize to an exact output size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resize {
    /// (height, width) of the output.
    pub size: (u32, u32),
    pub crop: Crop,
}

/// What to produce from the bytes of one image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeSpec {
    pub mode: Mode,
    /// `None` keeps the decoded size.
    pub resize: Option<Resize>,
    /// Probability of a horizontal flip (applied after the resize).
    pub flip: f64,
    /// Seeds the crop and flip draws; the same (bytes, spec) always gives the same pixels.
    pub seed: u64,
    /// Images declaring more pixels than this are refused from the header, before any allocation.
    pub max_pixels: u64,
    /// Allow reduced-DCT-scale JPEG decoding when the crop is at least twice the target size (faster; the
    /// result then equals Pillow's `draft()` + resize rather than full decode + resize).
    pub reduced_dct: bool,
}

impl DecodeSpec {
    /// Full-size decode into `mode`, no transform, default limit.
    pub fn new(mode: Mode) -> Self {
        DecodeSpec { mode, resize: None, flip: 0.0, seed: 0, max_pixels: DEFAULT_MAX_PIXELS, reduced_dct: true }
    }
}

/// Decoded pixels, row-major HWC `u8` (`channels` = 1, 3 or 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pixels {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub data: Vec<u8>,
}

impl Pixels {
    pub fn view(&self) -> View<'_> {
        View { height: self.height, width: self.width, channels: self.channels, data: &self.data }
    }
}

/// Borrowed pixels, laid out as [`Pixels`].
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub data: &'a [u8],
}

/// The container formats recognized from the first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Jpeg,
    Png,
    Pnm,
}

/// Recognizes the format from magic bytes (the field name is not trusted: `.jpg` members holding PNG exist).
pub fn sniff(data: &[u8]) -> Option<ImageFormat> {
    if data.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(ImageFormat::Jpeg)
    } else if data.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(ImageFormat::Png)
    } else if data.starts_with(b"P5") || data.starts_with(b"P6") {
        Some(ImageFormat::Pnm)
    } else {
        None
    }
}

/// Width and height from the header alone.
pub fn dimensions(data: &[u8]) -> Result<(u32, u32), ImageError> {
    match sniff(data) {
        Some(ImageFormat::Jpeg) => {
            let h = jpeg::JpegDecoder::new()?.header(data)?;
            Ok((h.width, h.height))
        }
        Some(ImageFormat::Png) => png::dimensions(data),
        Some(ImageFormat::Pnm) => pnm::dimensions(data),
        None => Err(unknown_format(data)),
    }
}

fn unknown_format(data: &[u8]) -> ImageError {
    let head: Vec<String> = data.iter().take(8).map(|b| format!("{b:02x}")).collect();
    ImageError::new(
        ImageErrorKind::UnknownFormat,
        format!("not a JPEG, PNG or PPM/PGM image ({} bytes, starting {})", data.len(), head.join(" ")),
    )
}

/// Refuses a declared size over the limit (a decompression bomb) before anything is allocated.
pub(crate) fn check_pixels(width: u32, height: u32, max_pixels: u64, what: &str) -> Result<(), ImageError> {
    let pixels = width as u64 * height as u64;
    if pixels > max_pixels {
        return Err(ImageError::new(
            ImageErrorKind::TooLarge,
            format!(
                "{what} image of {width}x{height} = {pixels} pixels exceeds the limit of {max_pixels} pixels \
                 (possible decompression bomb)"
            ),
        ));
    }
    if pixels == 0 {
        return Err(ImageError::corrupt(format!("invalid {what}: dimensions {width}x{height}")));
    }
    Ok(())
}

/// The largest 1/`denom` (8, 4, 2, else 1) at which `crop` still covers the target size, i.e. Pillow's
/// `draft()` choice for that crop.
pub fn dct_denominator(crop: &CropBox, size: (u32, u32)) -> u32 {
    let (th, tw) = (size.0 as f64, size.1 as f64);
    [8u32, 4, 2].into_iter().find(|&d| crop.width / d as f64 >= tw && crop.height / d as f64 >= th).unwrap_or(1)
}

/// Pixels a JPEG window adds on each side beyond what the resize reads. libjpeg's fancy chroma upsampling treats
/// a window's edges as image edges, which changes its outermost pixel or two (up to 4 with 4:1:1 sampling).
const WINDOW_MARGIN: f64 = 8.0;

/// A scratch image larger than this is freed after use rather than kept for the next image.
const SCRATCH_KEEP_BYTES: usize = 16 << 20;

/// The window of a `image.0` x `image.1` image that must be decoded so that resizing `crop` to `target` =
/// (height, width) reads only decoded pixels: the crop, plus the resize filter's reach when it may read around
/// the crop (its radius, the reduction factor for bilinear, plus one for the rounding of its bounds), plus
/// [`WINDOW_MARGIN`]; the left edge aligned down to `align` (libjpeg starts a window at an iMCU column).
fn read_window(crop: &CropBox, clip_to_crop: bool, target: (u32, u32), image: (u32, u32), align: u32) -> jpeg::Window {
    let reach = |len: f64, out: u32| {
        let filter = if clip_to_crop { 0.0 } else { (len / out as f64).max(1.0) + 1.0 };
        filter + WINDOW_MARGIN
    };
    // Float-to-int `as` saturates, so out-of-range edges clamp to the image.
    let span = |start: f64, len: f64, reach: f64, size: u32| {
        let first = ((start - reach).floor().max(0.0) as u32).min(size - 1);
        let end = ((start + len + reach).ceil() as u32).clamp(first + 1, size);
        (first, end)
    };
    let (x0, x1) = span(crop.left, crop.width, reach(crop.width, target.1), image.0);
    let (y0, y1) = span(crop.top, crop.height, reach(crop.height, target.0), image.1);
    let x0 = x0 / align.max(1) * align.max(1);
    jpeg::Window { x: x0, y: y0, width: x1 - x0, height: y1 - y0 }
}

/// Decodes images one after another, keeping scratch buffers between calls. One per thread (it is `Send`, not
/// `Sync`).
pub struct Decoder {
    resampler: resize::Resampler,
    /// The decoded full-size image a JPEG crop is resized from, kept so it is neither allocated nor zeroed per
    /// image; only the window the resize reads is written.
    scratch: Vec<u8>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    pub fn new() -> Self {
        Decoder { resampler: resize::Resampler::new(), scratch: Vec::new() }
    }

    /// Decodes `data` as `spec` says. Never panics on bad data: every failure is an [`ImageError`].
    pub fn decode(&mut self, data: &[u8], spec: &DecodeSpec) -> Result<Pixels, ImageError> {
        if let Some(r) = &spec.resize {
            geometry::validate(r, spec.flip)?;
        } else {
            geometry::validate_flip(spec.flip)?;
        }
        let (image, plan) = match sniff(data) {
            Some(ImageFormat::Jpeg) => {
                // A fresh libjpeg handle per image, as Pillow has: a handle keeps Huffman and quantization tables
                // from the previous stream and is left unusable after an error, so reuse would leak one image's
                // state (or failure) into the next. Creating one costs a few microseconds.
                let mut jpeg = jpeg::JpegDecoder::new()?;
                let header = jpeg.header(data)?;
                check_pixels(header.width, header.height, spec.max_pixels, "JPEG")?;
                let plan = geometry::plan(header.width, header.height, spec.resize.as_ref(), spec.flip, spec.seed);
                let denom = match (&plan.crop, &spec.resize) {
                    (Some(c), Some(r)) if spec.reduced_dct && jpeg::JpegDecoder::can_scale(&header) => {
                        dct_denominator(c, r.size)
                    }
                    _ => 1,
                };
                let plan = scale_plan(plan, denom);
                if let (Some(crop), Some(r)) = (plan.crop, &spec.resize) {
                    // Only where decoding the window alone cannot differ from a full decode, in pixels or errors.
                    let align = header.window_alignment(denom, spec.mode);
                    if let Some(align) = align.filter(|_| jpeg::stream_end(data).window_is_exact) {
                        let window = (denom, align);
                        match self.decode_jpeg_crop(&mut jpeg, data, &header, window, spec, crop, plan, r.size) {
                            Ok(image) => return Ok(image),
                            // libjpeg may refuse a window of an unusual but valid file, and a damaged file must
                            // fail exactly as a full decode does: the full decode below has the last word, with
                            // a fresh handle (a failed one is not reusable).
                            Err(_) => {
                                jpeg = jpeg::JpegDecoder::new()?;
                                jpeg.header(data)?;
                            }
                        }
                    }
                }
                (jpeg.decode(data, &header, denom, spec.mode, spec.max_pixels)?, plan)
            }
            Some(ImageFormat::Png) => {
                let image = png::decode(data, spec.mode, spec.max_pixels)?;
                let plan =
                    geometry::plan(image.width as u32, image.height as u32, spec.resize.as_ref(), spec.flip, spec.seed);
                (image, plan)
            }
            Some(ImageFormat::Pnm) => {
                let image = pnm::decode(data, spec.mode, spec.max_pixels)?;
                let plan =
                    geometry::plan(image.width as u32, image.height as u32, spec.resize.as_ref(), spec.flip, spec.seed);
                (image, plan)
            }
            None => return Err(unknown_format(data)),
        };
        let out = match (plan.crop, &spec.resize) {
            (Some(crop), Some(r)) => self.resampler.resize(image.view(), crop, plan.clip_to_crop, r.size)?,
            _ => image,
        };
        Ok(finish(out, plan.flip))
    }

    /// A cropped JPEG: decodes the window the resize reads into the scratch image, then resizes from there.
    /// `denom` is the DCT scale, `align` the window alignment [`jpeg::JpegHeader::window_alignment`] gave.
    #[allow(clippy::too_many_arguments)]
    fn decode_jpeg_crop(
        &mut self,
        jpeg: &mut jpeg::JpegDecoder,
        data: &[u8],
        header: &jpeg::JpegHeader,
        (denom, align): (u32, u32),
        spec: &DecodeSpec,
        crop: CropBox,
        plan: Plan,
        size: (u32, u32),
    ) -> Result<Pixels, ImageError> {
        let (width, height) = header.scaled_size(denom);
        let window = read_window(&crop, plan.clip_to_crop, size, (width, height), align);
        let channels = spec.mode.channels();
        let len = width as usize * height as usize * channels;
        if self.scratch.len() < len {
            self.scratch.resize(len, 0);
        }
        let scratch = &mut self.scratch[..len];
        jpeg.decode_window(data, header, denom, spec.mode, spec.max_pixels, window, scratch)?;
        let view = View { height: height as usize, width: width as usize, channels, data: scratch };
        let out = self.resampler.resize(view, crop, plan.clip_to_crop, size);
        if self.scratch.len() > SCRATCH_KEEP_BYTES {
            self.scratch = Vec::new();
        }
        Ok(finish(out?, plan.flip))
    }
}

/// The last step of every decode: the horizontal flip, when drawn.
fn finish(mut image: Pixels, flip: bool) -> Pixels {
    if flip {
        resize::flip_horizontal(&mut image);
    }
    image
}

/// Maps a plan made on the full-size image onto the image decoded at 1/`denom` scale, in Pillow's draft()
/// convention (coordinates divided by the scale). A scaled integer crop is no longer integer, so it is resampled
/// as a fractional box of the scaled image.
fn scale_plan(plan: Plan, denom: u32) -> Plan {
    if denom == 1 {
        return plan;
    }
    let d = denom as f64;
    let crop =
        plan.crop.map(|c| CropBox { left: c.left / d, top: c.top / d, width: c.width / d, height: c.height / d });
    Plan { crop, clip_to_crop: false, ..plan }
}

/// One-shot decode (allocates a fresh [`Decoder`]; reader threads should keep one instead).
pub fn decode(data: &[u8], spec: &DecodeSpec) -> Result<Pixels, ImageError> {
    Decoder::new().decode(data, spec)
}

#[cfg(test)]
mod tests {
    use super::*;

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

#[cfg(test)]
mod jpeg_tests {
    use super::*;

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

#[cfg(test)]
mod window_tests {
    //! A cropped JPEG is decoded only in the window the resize reads; these check that the result is the one
    //! a full decode gives, over sampling modes, progressive and restart-marker files, sizes that are not
    //! multiples of the iMCU, reduced DCT scales, both crop kinds and many random crops.

    use super::*;
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
        assert_eq!(jpeg::stream_end(cut), jpeg::StreamEnd { reaches_eoi: false, window_is_exact: false });
        // A marker segment inside a one-scan stream: libjpeg would read it only after the window.
        let mut stray = baseline.clone();
        let at = stray.len() - 60;
        stray.splice(at..at, [0xFF, 0xFE, 0x00, 0x04, b'h', b'i']);
        assert_eq!(jpeg::stream_end(&stray), jpeg::StreamEnd { reaches_eoi: true, window_is_exact: false });
        // A progressive stream of its DC scan alone is one scan, but libjpeg smooths it, so it is read whole.
        let sos = find_marker(&progressive, 0xDA, 0);
        let after_scan = (sos + 2..progressive.len() - 1)
            .find(|&i| progressive[i] == 0xFF && !matches!(progressive[i + 1], 0x00 | 0xD0..=0xD7))
            .unwrap();
        let dc_only = [&progressive[..after_scan], &[0xFF, 0xD9][..]].concat();
        assert_eq!(jpeg::stream_end(&dc_only), jpeg::StreamEnd { reaches_eoi: true, window_is_exact: false });
        // A progressive stream without its last scan leaves coefficients unrefined, which libjpeg smooths.
        let last_scan = find_marker(&progressive, 0xDA, 9);
        let unrefined = [&progressive[..last_scan], &[0xFF, 0xD9][..]].concat();
        assert_eq!(jpeg::stream_end(&unrefined), jpeg::StreamEnd { reaches_eoi: true, window_is_exact: false });
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
