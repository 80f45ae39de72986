//! What a decode produces: the output mode, the crop and resize, the flip, the limits; and the pixels.

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
