//! JPEG through libjpeg-turbo's TurboJPEG 3 API, called directly so warnings can be told from errors: Pillow
//! keeps an image that libjpeg only warned about (extraneous bytes, a bad restart marker) but refuses a
//! truncated one, and the `turbojpeg` crate's safe wrapper reports both the same way.
//!
//! Flags are libjpeg-turbo's defaults, which are also Pillow's: the accurate integer IDCT (ISLOW) and fancy
//! (smooth) chroma upsampling, so the output is pixel-identical to `Image.open(...).convert("RGB")`, and with a
//! reduced scale to Pillow's `draft()`.

use std::ffi::CStr;

use turbojpeg::libc::c_int;
use turbojpeg::raw;

use super::convert;
use super::{ImageError, ImageErrorKind, Mode, Pixels};

/// Finds the frame header (SOFn) by walking the marker segments, and returns its (width, height). libjpeg
/// accepts a stream that ends before any frame as "tables only" and then leaves the previous image's size in a
/// reused handle, so the frame must be seen here first.
fn frame_size(data: &[u8]) -> Result<(u32, u32), ImageError> {
    let mut pos = 2; // after SOI
    loop {
        // Markers may be preceded by any number of 0xFF fill bytes.
        if data.get(pos) != Some(&0xFF) {
            return Err(match data.get(pos) {
                None => ImageError::truncated("truncated JPEG: the data ends before the frame header"),
                Some(_) => ImageError::corrupt("invalid JPEG: expected a marker before the frame header"),
            });
        }
        while data.get(pos) == Some(&0xFF) {
            pos += 1;
        }
        let marker = *data.get(pos).ok_or_else(|| ImageError::truncated("truncated JPEG header"))?;
        pos += 1;
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
        // SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC).
        if matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
            let sof = data.get(pos + 2..pos + 7).ok_or_else(|| ImageError::truncated("truncated JPEG frame header"))?;
            let height = u16::from_be_bytes([sof[1], sof[2]]) as u32;
            let width = u16::from_be_bytes([sof[3], sof[4]]) as u32;
            return Ok((width, height));
        }
        if len < 2 {
            return Err(ImageError::corrupt("invalid JPEG: bad marker segment length"));
        }
        pos += len;
    }
}

/// What the JPEG header says.
#[derive(Debug, Clone, Copy)]
pub struct JpegHeader {
    pub width: u32,
    pub height: u32,
    colorspace: raw::TJCS,
    lossless: bool,
}

/// One TurboJPEG decompressor handle, reused across images (its internal state is reset per image).
pub struct JpegDecoder {
    handle: raw::tjhandle,
}

// SAFETY: a TurboJPEG handle is not tied to the thread that created it; it is only used through `&mut self`.
unsafe impl Send for JpegDecoder {}

impl Drop for JpegDecoder {
    fn drop(&mut self) {
        // SAFETY: the handle came from tj3Init and is destroyed once.
        unsafe { raw::tj3Destroy(self.handle) }
    }
}

impl JpegDecoder {
    pub fn new() -> Result<Self, ImageError> {
        // SAFETY: plain constructor; a null return is handled.
        let handle = unsafe { raw::tj3Init(raw::TJINIT_TJINIT_DECOMPRESS as c_int) };
        if handle.is_null() {
            return Err(ImageError::new(ImageErrorKind::Corrupt, "cannot initialize libjpeg-turbo"));
        }
        Ok(JpegDecoder { handle })
    }

    fn error_message(&self) -> String {
        // SAFETY: tj3GetErrorStr returns a NUL-terminated string owned by the handle (or a static one).
        let msg = unsafe { CStr::from_ptr(raw::tj3GetErrorStr(self.handle)) };
        msg.to_string_lossy().into_owned()
    }

    /// Maps a non-zero TurboJPEG return: Ok for a warning Pillow would ignore, Err otherwise.
    fn check(&self, rc: c_int) -> Result<(), ImageError> {
        if rc == 0 {
            return Ok(());
        }
        let message = self.error_message();
        // SAFETY: valid handle.
        let code = unsafe { raw::tj3GetErrorCode(self.handle) };
        // libjpeg pads a truncated stream with a fake EOI and only warns ("Premature end of JPEG file"); Pillow
        // raises "image file is truncated" there, so this warning alone is an error.
        if message.contains("Premature end") {
            return Err(ImageError::truncated(format!("truncated JPEG: {message}")));
        }
        if code as raw::TJERR == raw::TJERR_TJERR_WARNING {
            return Ok(());
        }
        Err(ImageError::corrupt(format!("invalid JPEG: {message}")))
    }

    fn get(&self, param: raw::TJPARAM) -> c_int {
        // SAFETY: valid handle, a known parameter.
        unsafe { raw::tj3Get(self.handle, param as c_int) }
    }

    fn set(&mut self, param: raw::TJPARAM, value: c_int) -> Result<(), ImageError> {
        // SAFETY: valid handle, a known parameter.
        let rc = unsafe { raw::tj3Set(self.handle, param as c_int, value) };
        self.check(rc)
    }

    /// Reads the header only (no pixel buffer is allocated).
    pub fn header(&mut self, data: &[u8]) -> Result<JpegHeader, ImageError> {
        let (frame_w, frame_h) = frame_size(data)?;
        // SAFETY: the pointer and length describe `data`, which outlives the call.
        let rc = unsafe { raw::tj3DecompressHeader(self.handle, data.as_ptr(), data.len() as raw::size_t) };
        self.check(rc)?;
        let width = self.get(raw::TJPARAM_TJPARAM_JPEGWIDTH);
        let height = self.get(raw::TJPARAM_TJPARAM_JPEGHEIGHT);
        if width <= 0 || height <= 0 {
            // libjpeg only warned (e.g. the data ended inside the headers) and found no frame header.
            let detail = if rc != 0 { format!(" ({})", self.error_message()) } else { String::new() };
            return Err(ImageError::corrupt(format!("invalid JPEG: no frame header found{detail}")));
        }
        if (width as u32, height as u32) != (frame_w, frame_h) {
            // A height of 0 in the frame (defined later by a DNL marker) lands here too; libjpeg-turbo refuses it.
            return Err(ImageError::corrupt(format!(
                "invalid JPEG: frame header says {frame_w}x{frame_h}, decoder read {width}x{height}"
            )));
        }
        let precision = self.get(raw::TJPARAM_TJPARAM_PRECISION);
        if precision != 8 {
            // Pillow refuses these too ("cannot handle 12-bit layers").
            return Err(ImageError::unsupported(format!("unsupported JPEG: {precision}-bit samples")));
        }
        Ok(JpegHeader {
            width: width as u32,
            height: height as u32,
            colorspace: self.get(raw::TJPARAM_TJPARAM_COLORSPACE) as raw::TJCS,
            lossless: self.get(raw::TJPARAM_TJPARAM_LOSSLESS) != 0,
        })
    }

    /// True when the image can be decoded at a reduced DCT scale (lossless JPEG cannot).
    pub fn can_scale(header: &JpegHeader) -> bool {
        !header.lossless
    }

    /// Decodes at 1/`denom` scale (1, 2, 4 or 8) into `mode`, converting like Pillow's `convert(mode)`.
    /// `header` must come from [`JpegDecoder::header`] on the same data; `max_pixels` was checked by the caller.
    pub fn decode(
        &mut self,
        data: &[u8],
        header: &JpegHeader,
        denom: u32,
        mode: Mode,
        max_pixels: u64,
    ) -> Result<Pixels, ImageError> {
        // A second guard inside libjpeg itself, in case the frame header it decodes differs from the first look.
        self.set(raw::TJPARAM_TJPARAM_MAXPIXELS, max_pixels.min(c_int::MAX as u64) as c_int)?;
        let factor = raw::tjscalingfactor { num: 1, denom: denom as c_int };
        // SAFETY: valid handle; 1/1, 1/2, 1/4 and 1/8 are always supported.
        let rc = unsafe { raw::tj3SetScalingFactor(self.handle, factor) };
        self.check(rc)?;
        // libjpeg's jdiv_round_up, the same size Pillow's draft() reports.
        let width = header.width.div_ceil(denom) as usize;
        let height = header.height.div_ceil(denom) as usize;

        let (format, channels) = match header.colorspace {
            raw::TJCS_TJCS_CMYK | raw::TJCS_TJCS_YCCK => (raw::TJPF_TJPF_CMYK, 4),
            raw::TJCS_TJCS_GRAY if mode == Mode::L => (raw::TJPF_TJPF_GRAY, 1),
            // Pillow decodes color to RGB and then converts to L with its own luma formula, so must we
            // (libjpeg's own gray output would be the Y channel, which differs).
            _ => match mode {
                Mode::Rgba => (raw::TJPF_TJPF_RGBA, 4),
                Mode::Rgb | Mode::L => (raw::TJPF_TJPF_RGB, 3),
            },
        };
        let mut pixels = vec![0u8; width * height * channels];
        let pitch = (width * channels) as c_int;
        // SAFETY: `pixels` holds exactly height rows of `pitch` bytes, the scaled size libjpeg will write.
        let rc = unsafe {
            raw::tj3Decompress8(
                self.handle,
                data.as_ptr(),
                data.len() as raw::size_t,
                pixels.as_mut_ptr(),
                pitch,
                format,
            )
        };
        self.check(rc)?;
        let image = Pixels { width, height, channels, data: pixels };
        Ok(match format {
            raw::TJPF_TJPF_CMYK => convert::cmyk_inverted_to(image, mode),
            raw::TJPF_TJPF_RGB if mode == Mode::L => convert::rgb_to_l(image),
            _ => image,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_size_walks_segments() {
        // SOI, APP0 (len 4), fill byte, SOF0 with 3x2.
        let data = [0xFF, 0xD8, 0xFF, 0xE0, 0, 4, 1, 2, 0xFF, 0xFF, 0xC0, 0, 11, 8, 0, 2, 0, 3, 1, 1, 0x11, 0];
        assert_eq!(frame_size(&data).unwrap(), (3, 2));
        assert_eq!(frame_size(&data[..7]).unwrap_err().kind, ImageErrorKind::Truncated);
        let no_frame = [0xFF, 0xD8, 0xFF, 0xD9];
        assert_eq!(frame_size(&no_frame).unwrap_err().kind, ImageErrorKind::Corrupt);
    }
}
