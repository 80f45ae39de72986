//! Where to crop: the source rectangle a transform reads and whether it flips, decided from the image size and
//! a seed before any pixel is decoded (so the JPEG decoder can pick its DCT scale from the crop).

use super::rng::Rng;
use super::{Crop, ImageError, Resize};

/// A source rectangle in pixel coordinates of the full-size image; fractional for center crops.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropBox {
    pub left: f64,
    pub top: f64,
    pub width: f64,
    pub height: f64,
}

/// What a transform does to one image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    /// The source rectangle to resize to the target; `None` when there is no resize.
    pub crop: Option<CropBox>,
    /// True when the resampling filter sees only the crop (torchvision crops, then resizes); false when it may
    /// read pixels around it (torchvision resizes the whole image, then crops).
    pub clip_to_crop: bool,
    /// Mirror the output left to right.
    pub flip: bool,
}

/// Python's `round()`: halves go to the even neighbour, as torchvision's `int(round(x))` does.
fn round_even(x: f64) -> f64 {
    x.round_ties_even()
}

/// torchvision `Resize(short side) + CenterCrop((th, tw))`, generalized to any target: the image is scaled so it
/// covers the target (the side that binds goes to its target exactly, the other to `int(target * long / short)`),
/// then the centered target-size window is taken with `int(round((size - target) / 2))` offsets. For a square
/// target `s` this is exactly `Resize(s)` then `CenterCrop(s)`. Returned as the source box that window reads.
pub fn center_box(width: u32, height: u32, target_h: u32, target_w: u32) -> CropBox {
    let (w, h, tw, th) = (width as u64, height as u64, target_w as u64, target_h as u64);
    // Integer arithmetic reproduces `int(s * long / short)` exactly (the float quotient never crosses an integer).
    let (new_w, new_h) = if w * th >= h * tw { ((th * w / h).max(tw), th) } else { (tw, (tw * h / w).max(th)) };
    let crop_left = round_even((new_w - tw) as f64 / 2.0);
    let crop_top = round_even((new_h - th) as f64 / 2.0);
    let sx = width as f64 / new_w as f64;
    let sy = height as f64 / new_h as f64;
    CropBox { left: crop_left * sx, top: crop_top * sy, width: tw as f64 * sx, height: th as f64 * sy }
}

/// torchvision `RandomResizedCrop.get_params`: up to 10 draws of an area fraction in `scale` and a log-uniform
/// aspect ratio in `ratio`, the first window that fits is placed uniformly; otherwise the center crop clamped to
/// the ratio range. Returns (top, left, height, width) in integer pixels.
pub fn random_resized_box(
    width: u32,
    height: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut Rng,
) -> (u32, u32, u32, u32) {
    let area = width as f64 * height as f64;
    let (log_lo, log_hi) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target_area = area * rng.uniform(scale.0, scale.1);
        let aspect = rng.uniform(log_lo, log_hi).exp();
        let w = round_even((target_area * aspect).sqrt());
        let h = round_even((target_area / aspect).sqrt());
        if w > 0.0 && h > 0.0 && w <= width as f64 && h <= height as f64 {
            let (w, h) = (w as u32, h as u32);
            let top = rng.below((height - h) as u64 + 1) as u32;
            let left = rng.below((width - w) as u64 + 1) as u32;
            return (top, left, h, w);
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (min_r, max_r) = (ratio.0.min(ratio.1), ratio.0.max(ratio.1));
    let (w, h) = if in_ratio < min_r {
        (width, (round_even(width as f64 / min_r) as u32).clamp(1, height))
    } else if in_ratio > max_r {
        ((round_even(height as f64 * max_r) as u32).clamp(1, width), height)
    } else {
        (width, height)
    };
    ((height - h) / 2, (width - w) / 2, h, w)
}

/// Checks a resize request before any decoding.
pub fn validate(resize: &Resize, flip: f64) -> Result<(), ImageError> {
    let (th, tw) = resize.size;
    if th == 0 || tw == 0 {
        return Err(ImageError::invalid_spec(format!("target size must be positive, got {th}x{tw}")));
    }
    if let Crop::RandomResized { scale, ratio } = resize.crop {
        if !(scale.0 > 0.0 && scale.0 <= scale.1 && scale.1.is_finite()) {
            return Err(ImageError::invalid_spec(format!(
                "scale must satisfy 0 < min <= max, got ({}, {})",
                scale.0, scale.1
            )));
        }
        if !(ratio.0 > 0.0 && ratio.0 <= ratio.1 && ratio.1.is_finite()) {
            return Err(ImageError::invalid_spec(format!(
                "ratio must satisfy 0 < min <= max, got ({}, {})",
                ratio.0, ratio.1
            )));
        }
    }
    validate_flip(flip)
}

pub fn validate_flip(flip: f64) -> Result<(), ImageError> {
    if !(0.0..=1.0).contains(&flip) {
        return Err(ImageError::invalid_spec(format!("flip probability must be in [0, 1], got {flip}")));
    }
    Ok(())
}

/// Decides the crop and the flip for an image of `width` x `height` from `seed`: the crop parameters are drawn
/// first, then the flip (the order of torchvision's `RandomResizedCrop` then `RandomHorizontalFlip`).
pub fn plan(width: u32, height: u32, resize: Option<&Resize>, flip: f64, seed: u64) -> Plan {
    let mut rng = Rng::new(seed);
    let (crop, clip_to_crop) = match resize {
        None => (None, false),
        Some(r) => match r.crop {
            Crop::Center => (Some(center_box(width, height, r.size.0, r.size.1)), false),
            Crop::RandomResized { scale, ratio } => {
                let (top, left, h, w) = random_resized_box(width, height, scale, ratio, &mut rng);
                let b = CropBox { left: left as f64, top: top as f64, width: w as f64, height: h as f64 };
                (Some(b), true)
            }
        },
    };
    // Drawn only when it can matter, so flip=0 and flip=1 use no randomness (and the crop stream is unchanged).
    let flip = flip >= 1.0 || (flip > 0.0 && rng.next_f64() < flip);
    Plan { crop, clip_to_crop, flip }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn center_box_matches_resize_then_center_crop() {
        // 500x375 to 224: Resize(224) gives 298x224 (int(224*500/375) = 298), crop_left = round(37.0) = 37.
        let b = center_box(500, 375, 224, 224);
        let s = 375.0 / 224.0;
        assert!((b.left - 37.0 * 500.0 / 298.0).abs() < 1e-9);
        assert_eq!(b.top, 0.0);
        assert!((b.width - 224.0 * 500.0 / 298.0).abs() < 1e-9);
        assert!((b.height - 224.0 * s).abs() < 1e-9);
    }

    #[test]
    fn random_resized_fallback_is_center() {
        // An impossible area range forces the fallback: the ratio-clamped center crop.
        let mut rng = Rng::new(3);
        assert_eq!(random_resized_box(400, 100, (2.0, 3.0), (0.75, 4.0 / 3.0), &mut rng), (0, 133, 100, 133));
        assert_eq!(random_resized_box(100, 100, (2.0, 3.0), (0.75, 4.0 / 3.0), &mut rng), (0, 0, 100, 100));
    }

    #[test]
    fn random_resized_stays_inside() {
        for seed in 0..500 {
            let mut rng = Rng::new(seed);
            let (t, l, h, w) = random_resized_box(37, 91, (0.08, 1.0), (0.75, 4.0 / 3.0), &mut rng);
            assert!(h >= 1 && w >= 1 && t + h <= 91 && l + w <= 37, "{seed}: {t} {l} {h} {w}");
        }
    }
}
