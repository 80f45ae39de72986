//! Binary PGM (P5) and PPM (P6) with 8-bit samples (maxval 255), the variants WebDataset's `ppm` field uses.

use super::convert::to_mode;
use super::{check_pixels, ImageError, Mode, Pixels};

/// Parsed header: (width, height, channels, offset of the first sample).
fn header(data: &[u8]) -> Result<(u32, u32, usize, usize), ImageError> {
    let channels = match data.get(..2) {
        Some(b"P5") => 1,
        Some(b"P6") => 3,
        _ => return Err(ImageError::corrupt("invalid PNM: expected P5 or P6")),
    };
    let mut pos = 2;
    let mut fields = [0u64; 3];
    for field in fields.iter_mut() {
        // Whitespace and `#` comments (to the end of the line) may separate the header fields.
        loop {
            match data.get(pos) {
                Some(b'#') => {
                    while data.get(pos).is_some_and(|&b| b != b'\n') {
                        pos += 1;
                    }
                }
                Some(b) if b.is_ascii_whitespace() => pos += 1,
                Some(_) => break,
                None => return Err(ImageError::truncated("truncated PNM header")),
            }
        }
        let start = pos;
        while let Some(b) = data.get(pos).filter(|b| b.is_ascii_digit()) {
            *field = field.saturating_mul(10).saturating_add((b - b'0') as u64);
            pos += 1;
        }
        if pos == start {
            return Err(ImageError::corrupt("invalid PNM header: expected a number"));
        }
    }
    // Exactly one whitespace byte ends the header.
    if !data.get(pos).is_some_and(|b| b.is_ascii_whitespace()) {
        return Err(ImageError::corrupt("invalid PNM header: no whitespace after maxval"));
    }
    let [w, h, maxval] = fields;
    if maxval != 255 {
        return Err(ImageError::unsupported(format!("unsupported PNM: maxval {maxval} (only 255 is decoded)")));
    }
    if w == 0 || h == 0 || w > u32::MAX as u64 || h > u32::MAX as u64 {
        return Err(ImageError::corrupt(format!("invalid PNM: dimensions {w}x{h}")));
    }
    Ok((w as u32, h as u32, channels, pos + 1))
}

pub fn dimensions(data: &[u8]) -> Result<(u32, u32), ImageError> {
    header(data).map(|(w, h, _, _)| (w, h))
}

pub fn decode(data: &[u8], mode: Mode, max_pixels: u64) -> Result<Pixels, ImageError> {
    let (w, h, channels, offset) = header(data)?;
    check_pixels(w, h, max_pixels, "PNM")?;
    let len = w as usize * h as usize * channels;
    let samples = data
        .get(offset..offset + len)
        .ok_or_else(|| ImageError::truncated("truncated PNM: the data ends before the image"))?;
    let image = Pixels { height: h as usize, width: w as usize, channels, data: samples.to_vec() };
    Ok(to_mode(image, mode))
}
