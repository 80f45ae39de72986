//! Image decoding for the reader threads: JPEG (libjpeg-turbo), PNG and binary PPM/PGM bytes to HWC `u8`
//! arrays equal to what Pillow gives, with an optional fused crop + resize + flip (torchvision's center crop or
//! RandomResizedCrop, reproducible from a seed).
//!
//! Pure functions of (bytes, spec): no global state, nothing Python. A [`Decoder`] only keeps reusable resize
//! scratch buffers, one per thread. When a JPEG's crop is at least twice the target size, it is decoded at
//! a reduced DCT scale (1/2, 1/4 or 1/8, the smallest that still covers the target), exactly as Pillow's
//! `draft()` would, which skips most of the IDCT and color conversion work.

mod convert;
mod error;
mod geometry;
mod jpeg;
mod png;
mod pnm;
mod resize;
mod rng;

pub use error::{ImageError, ImageErrorKind};
pub use geometry::{center_box, plan, random_resized_box, validate, CropBox, Plan};
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

/// Decodes images one after another, keeping the resize scratch between calls. One per thread (it is `Send`,
/// not `Sync`).
pub struct Decoder {
    resampler: resize::Resampler,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    pub fn new() -> Self {
        Decoder { resampler: resize::Resampler::new() }
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
                let image = jpeg.decode(data, &header, denom, spec.mode, spec.max_pixels)?;
                (image, scale_plan(plan, denom))
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
        let mut out = match (plan.crop, &spec.resize) {
            (Some(crop), Some(r)) => self.resampler.resize(&image, crop, plan.clip_to_crop, r.size)?,
            _ => image,
        };
        if plan.flip {
            resize::flip_horizontal(&mut out);
        }
        Ok(out)
    }
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
