//! PNG through the `png` crate, decoded raw (no crate-side expansion) so every sample goes through Pillow's own
//! rules: 16-bit color keeps the high byte, 16-bit gray is clipped to 255 (Pillow's `I;16` to `L`), low bit
//! depths are scaled by bit replication, palette indices past the palette read black, and `tRNS` becomes alpha
//! only for `rgba8` the way Pillow's `convert("RGBA")` applies it (quirks included, see [`gray_key`]).

use std::io::Cursor;

use png::{BitDepth, ColorType, DecodingError};

use super::convert::to_mode;
use super::{check_pixels, ImageError, Mode, Pixels};

fn map_err(e: DecodingError) -> ImageError {
    match e {
        DecodingError::IoError(ref io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            ImageError::truncated("truncated PNG: the data ends before the image")
        }
        DecodingError::LimitsExceeded => ImageError::new(super::ImageErrorKind::TooLarge, format!("PNG: {e}")),
        other => ImageError::corrupt(format!("invalid PNG: {other}")),
    }
}

/// Reads the IHDR dimensions only.
pub fn dimensions(data: &[u8]) -> Result<(u32, u32), ImageError> {
    let mut decoder = png::Decoder::new(Cursor::new(data));
    let info = decoder.read_header_info().map_err(map_err)?;
    Ok((info.width, info.height))
}

/// Expands packed 1/2/4-bit samples to one byte each (raw values, not scaled), row by row.
fn unpack(buf: &[u8], stride: usize, width: usize, height: usize, bits: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(width * height);
    let per_byte = 8 / bits;
    let mask = (1u8 << bits) - 1;
    for row in buf.chunks(stride).take(height) {
        for x in 0..width {
            let byte = row.get(x / per_byte).copied().unwrap_or(0);
            let shift = 8 - bits * (x % per_byte + 1);
            out.push((byte >> shift) & mask);
        }
    }
    out
}

/// Pillow's transparent gray value as compared with 8-bit pixels: 1-bit images ("1" mode) scale it to 255,
/// 2/4-bit ones compare the raw key with the scaled pixels (so only 0 can match), 16-bit ones truncate it to
/// its low byte and compare with the clipped pixels. Reproduced because `rgba8` must equal Pillow's output.
/// (The `png` crate stores the key as one byte below 16 bits, two big-endian bytes at 16.)
fn gray_key(trns: &[u8], bits: u8) -> Option<u8> {
    match (bits, trns) {
        (16, [_, lo, ..]) => Some(*lo),
        (1, [t, ..]) => Some(if t & 1 == 1 { 255 } else { 0 }),
        (_, [t, ..]) => Some(*t),
        _ => None,
    }
}

/// Pillow's transparent RGB color: compared with the 8-bit pixel as stored, so 16-bit keys above 255 never
/// match. `None` when no pixel can match.
fn rgb_key(trns: &[u8], bits: u8) -> Option<[u8; 3]> {
    if bits == 16 {
        let v = |i: usize| u8::try_from(u16::from_be_bytes([*trns.get(i)?, *trns.get(i + 1)?])).ok();
        Some([v(0)?, v(2)?, v(4)?])
    } else {
        Some([*trns.first()?, *trns.get(1)?, *trns.get(2)?])
    }
}

/// Decodes a PNG into `mode`, refusing images over `max_pixels` before allocating them.
pub fn decode(data: &[u8], mode: Mode, max_pixels: u64) -> Result<Pixels, ImageError> {
    let mut decoder = png::Decoder::new(Cursor::new(data));
    decoder.set_ignore_text_chunk(true);
    decoder.set_ignore_iccp_chunk(true);
    let info = decoder.read_header_info().map_err(map_err)?;
    check_pixels(info.width, info.height, max_pixels, "PNG")?;
    let mut reader = decoder.read_info().map_err(map_err)?;
    let info = reader.info();
    let (width, height) = (info.width as usize, info.height as usize);
    let color = info.color_type;
    let depth = info.bit_depth;
    let trns = if mode == Mode::Rgba { info.trns.as_ref().map(|t| t.to_vec()) } else { None };
    let palette = info.palette.as_ref().map(|p| p.to_vec());
    let buf_len = reader
        .output_buffer_size()
        .ok_or_else(|| ImageError::new(super::ImageErrorKind::TooLarge, "PNG: image too large"))?;
    let mut buf = vec![0u8; buf_len];
    let out_info = reader.next_frame(&mut buf).map_err(map_err)?;
    let stride = out_info.line_size;
    let n = width * height;
    let bits = depth as u8;
    let px = |channels: usize, data: Vec<u8>| Pixels { height, width, channels, data };

    let image = match color {
        ColorType::Grayscale => {
            let gray: Vec<u8> = match depth {
                BitDepth::Eight => {
                    buf.truncate(n);
                    buf
                }
                BitDepth::Sixteen => buf.chunks_exact(2).take(n).map(|s| if s[0] != 0 { 255 } else { s[1] }).collect(),
                _ => {
                    let scale = 255 / ((1u16 << bits) - 1) as u8;
                    unpack(&buf, stride, width, height, bits as usize).into_iter().map(|v| v * scale).collect()
                }
            };
            match trns.as_deref().and_then(|t| gray_key(t, bits)) {
                Some(key) => px(2, gray.iter().flat_map(|&v| [v, if v == key { 0 } else { 255 }]).collect()),
                None => px(1, gray),
            }
        }
        ColorType::GrayscaleAlpha => match depth {
            BitDepth::Sixteen => px(2, buf.chunks_exact(2).take(n * 2).map(|s| s[0]).collect()),
            _ => {
                buf.truncate(n * 2);
                px(2, buf)
            }
        },
        ColorType::Rgb => {
            let rgb: Vec<u8> = match depth {
                BitDepth::Sixteen => buf.chunks_exact(2).take(n * 3).map(|s| s[0]).collect(),
                _ => {
                    buf.truncate(n * 3);
                    buf
                }
            };
            let key = trns.as_deref().and_then(|t| rgb_key(t, bits));
            match (trns.is_some(), key) {
                (true, key) => px(
                    4,
                    rgb.chunks_exact(3)
                        .flat_map(|p| [p[0], p[1], p[2], if Some([p[0], p[1], p[2]]) == key { 0 } else { 255 }])
                        .collect(),
                ),
                (false, _) => px(3, rgb),
            }
        }
        ColorType::Rgba => match depth {
            BitDepth::Sixteen => px(4, buf.chunks_exact(2).take(n * 4).map(|s| s[0]).collect()),
            _ => {
                buf.truncate(n * 4);
                px(4, buf)
            }
        },
        ColorType::Indexed => {
            let palette = palette.ok_or_else(|| ImageError::corrupt("invalid PNG: palette image without PLTE"))?;
            let indices = if bits == 8 {
                buf[..n.min(buf.len())].to_vec()
            } else {
                unpack(&buf, stride, width, height, bits as usize)
            };
            let rgb_of = |i: u8| {
                let o = i as usize * 3;
                palette.get(o..o + 3).map_or([0, 0, 0], |c| [c[0], c[1], c[2]])
            };
            match trns.as_deref() {
                Some(alpha) => px(
                    4,
                    indices
                        .iter()
                        .flat_map(|&i| {
                            let [r, g, b] = rgb_of(i);
                            [r, g, b, alpha.get(i as usize).copied().unwrap_or(255)]
                        })
                        .collect(),
                ),
                None => px(3, indices.iter().flat_map(|&i| rgb_of(i)).collect()),
            }
        }
    };
    if image.data.len() != image.width * image.height * image.channels {
        return Err(ImageError::corrupt("invalid PNG: decoded size does not match the header"));
    }
    Ok(to_mode(image, mode))
}
