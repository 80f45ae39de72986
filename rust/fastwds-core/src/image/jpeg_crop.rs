//! Decoding a cropped JPEG through the window the resize reads: which DCT scale covers the crop, which window
//! of the (scaled) image the resize can reach, and the decode of just that window into the kept scratch image.
//! The resize then sees the same pixels as after a full decode, so the result is the same.

use super::geometry::{CropBox, Plan};
use super::{finish, jpeg, DecodeSpec, Decoder, ImageError, Pixels, View};

/// The largest 1/`denom` (8, 4, 2, else 1) at which `crop` still covers the target size, i.e. Pillow's
/// `draft()` choice for that crop.
pub fn dct_denominator(crop: &CropBox, size: (u32, u32)) -> u32 {
    let (th, tw) = (size.0 as f64, size.1 as f64);
    [8u32, 4, 2].into_iter().find(|&d| crop.width / d as f64 >= tw && crop.height / d as f64 >= th).unwrap_or(1)
}

/// Pixels a JPEG window adds on each side beyond what the resize reads. libjpeg's fancy chroma upsampling treats
/// a window's edges as image edges, which changes its outermost pixel or two (up to 4 with 4:1:1 sampling).
pub(super) const WINDOW_MARGIN: f64 = 8.0;

/// A scratch image larger than this is freed after use rather than kept for the next image.
const SCRATCH_KEEP_BYTES: usize = 16 << 20;

/// The window of a `image.0` x `image.1` image that must be decoded so that resizing `crop` to `target` =
/// (height, width) reads only decoded pixels: the crop, plus the resize filter's reach when it may read around
/// the crop (its radius, the reduction factor for bilinear, plus one for the rounding of its bounds), plus
/// [`WINDOW_MARGIN`]; the left edge aligned down to `align` (libjpeg starts a window at an iMCU column).
pub(super) fn read_window(
    crop: &CropBox,
    clip_to_crop: bool,
    target: (u32, u32),
    image: (u32, u32),
    align: u32,
) -> jpeg::Window {
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

/// Maps a plan made on the full-size image onto the image decoded at 1/`denom` scale, in Pillow's draft()
/// convention (coordinates divided by the scale). A scaled integer crop is no longer integer, so it is resampled
/// as a fractional box of the scaled image.
pub(super) fn scale_plan(plan: Plan, denom: u32) -> Plan {
    if denom == 1 {
        return plan;
    }
    let d = denom as f64;
    let crop =
        plan.crop.map(|c| CropBox { left: c.left / d, top: c.top / d, width: c.width / d, height: c.height / d });
    Plan { crop, clip_to_crop: false, ..plan }
}

impl Decoder {
    /// A cropped JPEG: decodes the window the resize reads into the scratch image, then resizes from there.
    /// `denom` is the DCT scale, `align` the window alignment [`jpeg::JpegHeader::window_alignment`] gave.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn decode_jpeg_crop(
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
