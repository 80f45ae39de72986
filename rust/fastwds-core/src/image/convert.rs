//! Pillow's mode conversions, bit for bit (checked against `Image.convert` in tests/test_image_decode.py):
//! color to gray is ITU-R 601-2 luma in Pillow's 16-bit fixed point, alpha is dropped without compositing,
//! gray is replicated, CMYK follows Pillow's `cmyk2rgb`.

use super::{Mode, Pixels};

/// Pillow's `L24`: (R*19595 + G*38470 + B*7471 + 0x8000) >> 16, i.e. R*299/1000 + G*587/1000 + B*114/1000
/// rounded the way Pillow rounds it.
#[inline]
pub fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
}

/// RGB or RGBA (alpha ignored, as Pillow does) to L.
pub fn rgb_to_l(image: Pixels) -> Pixels {
    let c = image.channels;
    let data = image.data.chunks_exact(c).map(|p| luma(p[0], p[1], p[2])).collect();
    Pixels { channels: 1, data, ..image }
}

/// Any of L, LA, RGB, RGBA to `mode` with Pillow's rules; `image.channels` says which it is.
pub fn to_mode(image: Pixels, mode: Mode) -> Pixels {
    let c = image.channels;
    let out_c = mode.channels();
    if c == out_c {
        return image;
    }
    let data: Vec<u8> = match (c, mode) {
        (3 | 4, Mode::L) => return rgb_to_l(image),
        (2, Mode::L) => image.data.chunks_exact(2).map(|p| p[0]).collect(),
        (1, Mode::Rgb) => image.data.iter().flat_map(|&v| [v, v, v]).collect(),
        (1, Mode::Rgba) => image.data.iter().flat_map(|&v| [v, v, v, 255]).collect(),
        (2, Mode::Rgb) => image.data.chunks_exact(2).flat_map(|p| [p[0], p[0], p[0]]).collect(),
        (2, Mode::Rgba) => image.data.chunks_exact(2).flat_map(|p| [p[0], p[0], p[0], p[1]]).collect(),
        (4, Mode::Rgb) => image.data.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        (3, Mode::Rgba) => image.data.chunks_exact(3).flat_map(|p| [p[0], p[1], p[2], 255]).collect(),
        // Unreachable by construction (decoders produce 1 to 4 channels); keep the data unchanged.
        _ => return image,
    };
    Pixels { channels: out_c, data, ..image }
}

/// Pillow's `MULDIV255`: a*b/255 rounded, in integers.
#[inline]
fn muldiv255(a: i32, b: i32) -> i32 {
    let t = a * b + 128;
    ((t >> 8) + t) >> 8
}

/// CMYK as libjpeg stores it (Adobe's inverted polarity, which Pillow always assumes: rawmode "CMYK;I") to
/// `mode` through Pillow's `cmyk2rgb`.
pub fn cmyk_inverted_to(image: Pixels, mode: Mode) -> Pixels {
    let rgb: Vec<u8> = image
        .data
        .chunks_exact(4)
        .flat_map(|p| {
            let (c, m, y, k) = (255 - p[0] as i32, 255 - p[1] as i32, 255 - p[2] as i32, 255 - p[3] as i32);
            let nk = 255 - k;
            let f = |v: i32| (nk - muldiv255(v, nk)).clamp(0, 255) as u8;
            [f(c), f(m), f(y)]
        })
        .collect();
    to_mode(Pixels { channels: 3, data: rgb, ..image }, mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luma_matches_pillow_examples() {
        // Values checked with Pillow: (10, 200, 30) -> 124, white stays white, black stays black.
        assert_eq!(luma(10, 200, 30), 124);
        assert_eq!(luma(255, 255, 255), 255);
        assert_eq!(luma(0, 0, 0), 0);
    }

    #[test]
    fn gray_alpha_to_rgba() {
        let p = Pixels { height: 1, width: 1, channels: 2, data: vec![7, 9] };
        assert_eq!(to_mode(p, Mode::Rgba).data, vec![7, 7, 7, 9]);
    }
}
