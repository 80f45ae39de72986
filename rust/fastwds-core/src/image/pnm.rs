//! Binary PBM (P4), and PGM (P5) and PPM (P6) with 8-bit samples (maxval 255): the variants WebDataset's
//! `ppm`/`pgm`/`pbm` fields hold, and what fastwds's own writer emits.

use super::convert::to_mode;
use super::{check_pixels, ImageError, Mode, Pixels};

/// Channels of a P5/P6 sample; a P4 bitmap is read as one channel of one bit per pixel.
const BITMAP: usize = 0;

/// Parsed header: (width, height, channels or [`BITMAP`], offset of the first sample).
fn header(data: &[u8]) -> Result<(u32, u32, usize, usize), ImageError> {
    let channels = match data.get(..2) {
        Some(b"P4") => BITMAP,
        Some(b"P5") => 1,
        Some(b"P6") => 3,
        _ => return Err(ImageError::corrupt("invalid PNM: expected P4, P5 or P6")),
    };
    let mut pos = 2;
    // A bitmap's header has no maxval.
    let mut fields = [0u64, 0, 255];
    let count = if channels == BITMAP { 2 } else { 3 };
    for field in fields.iter_mut().take(count) {
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
        *field = 0;
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
    if channels == BITMAP {
        return decode_bitmap(data, offset, w as usize, h as usize).map(|image| to_mode(image, mode));
    }
    let len = w as usize * h as usize * channels;
    let samples = data
        .get(offset..offset + len)
        .ok_or_else(|| ImageError::truncated("truncated PNM: the data ends before the image"))?;
    let image = Pixels { height: h as usize, width: w as usize, channels, data: samples.to_vec() };
    Ok(to_mode(image, mode))
}

/// A P4 bitmap as one 8-bit channel: rows of packed bits padded to whole bytes, 1 black (0) and 0 white (255),
/// as Pillow's `convert("L")` gives it.
fn decode_bitmap(data: &[u8], offset: usize, width: usize, height: usize) -> Result<Pixels, ImageError> {
    let row_bytes = width.div_ceil(8);
    let rows = data
        .get(offset..offset + row_bytes * height)
        .ok_or_else(|| ImageError::truncated("truncated PBM: the data ends before the image"))?;
    let mut pixels = Vec::with_capacity(width * height);
    for row in rows.chunks_exact(row_bytes) {
        pixels.extend((0..width).map(|x| if row[x / 8] & (0x80 >> (x % 8)) != 0 { 0 } else { 255 }));
    }
    Ok(Pixels { height, width, channels: 1, data: pixels })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bitmap_decodes_to_black_and_white_rows_padded_to_bytes() {
        // 10x2: row 0 alternates starting black, row 1 is all black; each row takes two bytes.
        let data = [b"P4\n# comment\n10 2\n".as_slice(), &[0b1010_1010, 0b1000_0000, 0xff, 0xc0]].concat();
        let image = decode(&data, Mode::L, 1 << 20).expect("decode");
        assert_eq!((image.width, image.height, image.channels), (10, 2, 1));
        assert_eq!(&image.data[..10], &[0, 255, 0, 255, 0, 255, 0, 255, 0, 255]);
        assert_eq!(&image.data[10..], &[0; 10]);
        assert!(decode(&data[..data.len() - 1], Mode::L, 1 << 20).is_err(), "a cut bitmap is an error");
    }
}
