//! Walking a JPEG's marker segments as libjpeg reads them, without decoding: the frame header (size and
//! sampling), and whether the stream reaches its end in a way that makes decoding only a window exact.

use super::ImageError;

/// What the frame header (SOFn) says: the size, and the largest horizontal sampling factor of the components.
#[derive(Debug)]
pub(super) struct Frame {
    pub(super) width: u32,
    pub(super) height: u32,
    pub(super) components: u32,
    pub(super) max_h_samp: u32,
}

/// The next marker at or after `pos` and the offset just past it, read as libjpeg reads it: bytes other than
/// 0xFF are skipped (libjpeg warns about them, Pillow ignores them), and a marker may follow any number of 0xFF
/// fill bytes. None when the data ends first.
fn next_marker(data: &[u8], pos: usize) -> Option<(u8, usize)> {
    let mut pos = pos + memchr::memchr(0xFF, data.get(pos..)?)?;
    while data.get(pos) == Some(&0xFF) {
        pos += 1;
    }
    Some((*data.get(pos)?, pos + 1))
}

/// SOF0..SOF15: every marker from C0 to CF but DHT (C4), JPG (C8) and DAC (CC).
fn is_frame_marker(marker: u8) -> bool {
    matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC)
}

/// Finds the frame header (SOFn) by walking the marker segments. libjpeg accepts a stream that ends before any
/// frame as "tables only" and then leaves the previous image's size in a reused handle, so the frame must be
/// seen here first.
pub(super) fn frame(data: &[u8]) -> Result<Frame, ImageError> {
    let mut pos = 2; // after SOI
    loop {
        let Some((marker, after)) = next_marker(data, pos) else {
            return Err(ImageError::truncated("truncated JPEG: the data ends before the frame header"));
        };
        pos = after;
        match marker {
            // Standalone markers without a length.
            0x01 | 0xD0..=0xD7 => continue,
            0xD9 | 0xDA => return Err(ImageError::corrupt("invalid JPEG: no frame header before the image data")),
            _ => {}
        }
        let len = match data.get(pos..pos + 2) {
            Some(b) => u16::from_be_bytes([b[0], b[1]]) as usize,
            None => return Err(ImageError::truncated("truncated JPEG header")),
        };
        if is_frame_marker(marker) {
            let sof = data.get(pos + 2..pos + 8).ok_or_else(|| ImageError::truncated("truncated JPEG frame header"))?;
            let height = u16::from_be_bytes([sof[1], sof[2]]) as u32;
            let width = u16::from_be_bytes([sof[3], sof[4]]) as u32;
            // Component specs follow: id, sampling factors (h << 4 | v), quantization table.
            let count = sof[5] as usize;
            let specs = data.get(pos + 8..pos + 8 + 3 * count).unwrap_or(&[]);
            let max_h_samp = specs.chunks_exact(3).map(|c| (c[1] >> 4) as u32).max().unwrap_or(1).max(1);
            return Ok(Frame { width, height, components: count as u32, max_h_samp });
        }
        if len < 2 {
            return Err(ImageError::corrupt("invalid JPEG: bad marker segment length"));
        }
        pos += len;
    }
}

/// What a walk over a stream's markers tells about decoding only part of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamEnd {
    /// The walk reaches the end-of-image marker: a decode that reads to the end finds no truncation.
    pub reaches_eoi: bool,
    /// A decode of a window (libjpeg skipping the rows above it and stopping after its last row) fails, warns and
    /// yields exactly what a full decode does inside the window. It does when the stream reaches EOI and either
    /// is one scan of entropy-coded data and restart markers, where nothing after the window can be fatal, or
    /// comes in several scans, which libjpeg reads whole before the first row, with every coefficient that
    /// progressive block smoothing looks at complete (libjpeg smooths a partial decode differently).
    pub window_is_exact: bool,
}

/// libjpeg's block smoothing looks at the DC and the first 9 AC coefficients, in zigzag order.
const SMOOTHED_COEFS: usize = 10;
/// libjpeg's MAX_COMPONENTS.
const MAX_COMPONENTS: usize = 10;

/// Walks a stream's markers to its end the way libjpeg reads them: segments skipped by their lengths, other
/// bytes (entropy-coded data, garbage) searched for the next marker. A guide to the decode strategy and the
/// error kind only; libjpeg itself decides whether the data decodes.
pub fn stream_end(data: &[u8]) -> StreamEnd {
    let unended = StreamEnd { reaches_eoi: false, window_is_exact: false };
    let mut pos = 2; // after SOI
    let mut ids: &[u8] = &[]; // the frame's component specs (id, sampling, table), 3 bytes each
    let mut progressive = false;
    let (mut scans, mut multi_scan, mut other_after_scan) = (0u32, false, false);
    // The successive-approximation bit (Al) each component's coefficient was last sent at; -1: never sent.
    let mut coef_bits = [[-1i8; SMOOTHED_COEFS]; MAX_COMPONENTS];
    loop {
        let Some((marker, after)) = next_marker(data, pos) else { return unended };
        pos = after;
        match marker {
            0xD9 => {
                let complete = (0..ids.len() / 3)
                    .all(|c| coef_bits.get(c).is_some_and(|bits| bits[1..].iter().all(|&al| al == 0)));
                let one_clean_scan = scans == 1 && !other_after_scan && !multi_scan;
                let window_is_exact = one_clean_scan || (multi_scan && (!progressive || complete));
                return StreamEnd { reaches_eoi: true, window_is_exact };
            }
            // A stuffed 0xFF inside entropy-coded data, TEM, and restart markers: no length follows.
            0x00 | 0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let Some(segment) = data.get(pos..).filter(|rest| rest.len() >= 2) else { return unended };
        let len = u16::from_be_bytes([segment[0], segment[1]]) as usize;
        if len < 2 {
            return unended;
        }
        let body = segment.get(2..len).unwrap_or(&[]);
        if scans > 0 {
            other_after_scan = true;
        }
        match marker {
            _ if is_frame_marker(marker) => {
                let count = body.get(5).copied().unwrap_or(0) as usize;
                ids = body.get(6..6 + 3 * count).unwrap_or(&[]);
                progressive = matches!(marker, 0xC2 | 0xC6 | 0xCA | 0xCE);
            }
            0xDA => {
                // Ns, then Ns (component id, tables) pairs, then Ss, Se, Ah << 4 | Al.
                let count = body.first().copied().unwrap_or(0) as usize;
                let in_scan = body.get(1..1 + 2 * count).unwrap_or(&[]);
                if scans == 0 {
                    // libjpeg reads the whole stream before the first row when the image comes in several scans.
                    multi_scan = progressive || count < ids.len() / 3;
                }
                if let Some(&[ss, se, ahal]) = body.get(1 + 2 * count..4 + 2 * count) {
                    for id in in_scan.chunks_exact(2).map(|pair| pair[0]) {
                        let Some(c) = ids.chunks_exact(3).position(|spec| spec[0] == id) else { continue };
                        let Some(bits) = coef_bits.get_mut(c) else { continue };
                        let band = ss as usize..=(se as usize).min(SMOOTHED_COEFS - 1);
                        if let Some(sent) = bits.get_mut(band) {
                            sent.fill((ahal & 0x0F) as i8);
                        }
                    }
                }
                scans += 1;
            }
            _ => {}
        }
        pos += len;
    }
}
