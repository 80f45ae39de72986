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
mod jpeg_crop;
mod jpeg_markers;
mod png;
mod pnm;
mod pool;
mod resize;
mod rng;
mod spec;

pub use error::{ImageError, ImageErrorKind};
pub use geometry::{center_box, plan, random_resized_box, validate, CropBox, Plan};
pub use jpeg_crop::dct_denominator;
use jpeg_crop::scale_plan;
pub use pool::recycle;
pub use rng::Rng;
pub use spec::{Crop, DecodeSpec, Mode, Pixels, Resize, View, DEFAULT_MAX_PIXELS};

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
    } else if data.starts_with(b"P4") || data.starts_with(b"P5") || data.starts_with(b"P6") {
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
}

/// The last step of every decode: the horizontal flip, when drawn.
fn finish(mut image: Pixels, flip: bool) -> Pixels {
    if flip {
        resize::flip_horizontal(&mut image);
    }
    image
}

/// One-shot decode (allocates a fresh [`Decoder`]; reader threads should keep one instead).
pub fn decode(data: &[u8], spec: &DecodeSpec) -> Result<Pixels, ImageError> {
    Decoder::new().decode(data, spec)
}

#[cfg(test)]
mod tests;
