//! Crop + resize with `fast_image_resize` (SIMD convolution) using the bilinear filter with Pillow's
//! antialiasing (support scaled by the reduction factor, like `Image.resize(..., BILINEAR)`, which is what
//! torchvision uses for PIL images), and the horizontal flip.

use fast_image_resize::images::{CroppedImage, Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use super::geometry::CropBox;
use super::{ImageError, Pixels, View};

fn pixel_type(channels: usize) -> Result<PixelType, ImageError> {
    match channels {
        1 => Ok(PixelType::U8),
        2 => Ok(PixelType::U8x2),
        3 => Ok(PixelType::U8x3),
        4 => Ok(PixelType::U8x4),
        c => Err(ImageError::unsupported(format!("cannot resize {c}-channel pixels"))),
    }
}

fn resize_error(e: impl std::fmt::Display) -> ImageError {
    ImageError::new(super::ImageErrorKind::InvalidSpec, format!("resize failed: {e}"))
}

/// A resizer whose scratch buffers are reused from image to image.
#[derive(Default)]
pub struct Resampler {
    resizer: Resizer,
}

impl Resampler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Resizes the `crop` of `src` to `size` = (height, width). With `clip_to_crop` the filter reads only pixels
    /// inside the (integer) crop, as resizing a cropped PIL image does; otherwise it may read the pixels around
    /// the (fractional) crop, as resizing a whole PIL image and then cropping does.
    pub fn resize(
        &mut self,
        src: View<'_>,
        crop: CropBox,
        clip_to_crop: bool,
        size: (u32, u32),
    ) -> Result<Pixels, ImageError> {
        let (th, tw) = size;
        let pt = pixel_type(src.channels)?;
        let is_integer = crop.left.fract() == 0.0
            && crop.top.fract() == 0.0
            && crop.width.fract() == 0.0
            && crop.height.fract() == 0.0;
        if is_integer && crop.width as u32 == tw && crop.height as u32 == th {
            return copy_window(&src, crop.left as usize, crop.top as usize, tw as usize, th as usize);
        }
        let src_ref = ImageRef::new(src.width as u32, src.height as u32, src.data, pt).map_err(resize_error)?;
        let len = tw as usize * th as usize * src.channels;
        let mut buffer = super::pool::buffer(len);
        buffer.resize(len, 0);
        let mut dst = Image::from_vec_u8(tw, th, buffer, pt).map_err(resize_error)?;
        // Pillow premultiplies alpha for RGBA/LA resizes too, so mul_div_alpha stays on (the default).
        let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
        if clip_to_crop && is_integer {
            let view =
                CroppedImage::new(&src_ref, crop.left as u32, crop.top as u32, crop.width as u32, crop.height as u32)
                    .map_err(resize_error)?;
            self.resizer.resize(&view, &mut dst, &options).map_err(resize_error)?;
        } else {
            // Float error may put the far edge a hair outside the image: clamp it in.
            let (w, h) = (src.width as f64, src.height as f64);
            let left = crop.left.clamp(0.0, w);
            let top = crop.top.clamp(0.0, h);
            let width = crop.width.min(w - left);
            let height = crop.height.min(h - top);
            let options = options.crop(left, top, width, height);
            self.resizer.resize(&src_ref, &mut dst, &options).map_err(resize_error)?;
        }
        Ok(Pixels { height: th as usize, width: tw as usize, channels: src.channels, data: dst.into_vec() })
    }
}

/// Copies a window of exactly the target size (no resampling needed).
fn copy_window(src: &View<'_>, left: usize, top: usize, width: usize, height: usize) -> Result<Pixels, ImageError> {
    let c = src.channels;
    let row = src.width * c;
    if left + width > src.width || top + height > src.height {
        return Err(resize_error("crop window outside the image"));
    }
    let mut data = super::pool::buffer(width * height * c);
    for y in top..top + height {
        let start = y * row + left * c;
        data.extend_from_slice(&src.data[start..start + width * c]);
    }
    Ok(Pixels { height, width, channels: c, data })
}

/// Mirrors the image left to right in place.
pub fn flip_horizontal(image: &mut Pixels) {
    let width = image.width;
    match image.channels {
        1 => flip_rows::<1>(&mut image.data, width),
        2 => flip_rows::<2>(&mut image.data, width),
        3 => flip_rows::<3>(&mut image.data, width),
        4 => flip_rows::<4>(&mut image.data, width),
        _ => {}
    }
}

/// Reverses the order of the `C`-byte pixels of every row (whole pixels, so the compiler moves them as units
/// instead of byte by byte).
fn flip_rows<const C: usize>(data: &mut [u8], width: usize) {
    if width < 2 {
        return;
    }
    for row in data.chunks_exact_mut(width * C) {
        row.as_chunks_mut::<C>().0.reverse();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flip_reverses_pixels() {
        let mut p = Pixels { height: 1, width: 3, channels: 2, data: vec![1, 2, 3, 4, 5, 6] };
        flip_horizontal(&mut p);
        assert_eq!(p.data, vec![5, 6, 3, 4, 1, 2]);
        let mut p = Pixels { height: 2, width: 2, channels: 3, data: (0..12).collect() };
        flip_horizontal(&mut p);
        assert_eq!(p.data, vec![3, 4, 5, 0, 1, 2, 9, 10, 11, 6, 7, 8]);
        let mut p = Pixels { height: 1, width: 5, channels: 1, data: vec![1, 2, 3, 4, 5] };
        flip_horizontal(&mut p);
        assert_eq!(p.data, vec![5, 4, 3, 2, 1]);
    }

    #[test]
    fn exact_window_is_copied() {
        let p = Pixels { height: 2, width: 3, channels: 1, data: vec![1, 2, 3, 4, 5, 6] };
        let box_ = CropBox { left: 1.0, top: 1.0, width: 2.0, height: 1.0 };
        let out = Resampler::new().resize(p.view(), box_, true, (1, 2)).unwrap();
        assert_eq!(out.data, vec![5, 6]);
    }
}
