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
use super::jpeg_markers::frame;
pub use super::jpeg_markers::stream_end;
use super::{ImageError, ImageErrorKind, Mode, Pixels};

extern "C" {
    /// Scans set up by fastwds's Huffman decoder, `csrc/jdhuff.c` (see build.rs).
    fn fastwds_fast_ac_scans() -> std::ffi::c_ulong;
}

/// How many sequential scans this process has decoded with fastwds's Huffman decoder (`csrc/jdhuff.c`,
/// libjpeg-turbo's own with a faster AC path): non-zero after any baseline JPEG, which shows that file is the
/// decoder libjpeg-turbo runs.
#[cfg(test)]
#[allow(clippy::useless_conversion)] // c_ulong is u32 on some targets
fn fast_huffman_scans() -> u64 {
    // SAFETY: reads an atomic counter; no arguments.
    u64::from(unsafe { fastwds_fast_ac_scans() })
}

/// The beginnings of libjpeg's warning messages (jerror.h, JWRN_*).
const LIBJPEG_WARNINGS: [&str; 6] = [
    "Corrupt JPEG data:",
    "Unknown Adobe color transform code",
    "Inconsistent progression sequence for component",
    "Warning: unknown JFIF revision number",
    "Invalid SOS parameters for sequential JPEG",
    "Application transferred too many scanlines",
];

/// What the JPEG header says.
#[derive(Debug, Clone, Copy)]
pub struct JpegHeader {
    pub width: u32,
    pub height: u32,
    colorspace: raw::TJCS,
    subsamp: raw::TJSAMP,
    max_h_samp: u32,
    components: u32,
    lossless: bool,
}

/// libjpeg-turbo's `tjMCUWidth` (a static in its header, so not linkable): the iMCU width for each TJSAMP.
const MCU_WIDTH: [u32; 7] = [8, 16, 16, 8, 8, 32, 8];

impl JpegHeader {
    /// The size at 1/`denom` scale: libjpeg's jdiv_round_up, the same size Pillow's draft() reports.
    pub fn scaled_size(&self, denom: u32) -> (u32, u32) {
        (self.width.div_ceil(denom), self.height.div_ceil(denom))
    }

    /// The libjpeg pixel format decoding into `mode` asks for, and its channel count.
    fn output_format(&self, mode: Mode) -> (raw::TJPF, usize) {
        match self.colorspace {
            raw::TJCS_TJCS_CMYK | raw::TJCS_TJCS_YCCK => (raw::TJPF_TJPF_CMYK, 4),
            raw::TJCS_TJCS_GRAY if mode == Mode::L => (raw::TJPF_TJPF_GRAY, 1),
            // Pillow decodes color to RGB and then converts to L with its own luma formula, so must we
            // (libjpeg's own gray output would be the Y channel, which differs).
            _ => match mode {
                Mode::Rgba => (raw::TJPF_TJPF_RGBA, 4),
                Mode::Rgb | Mode::L => (raw::TJPF_TJPF_RGB, 3),
            },
        }
    }

    /// The alignment of a window's left edge at 1/`denom` scale (the scaled iMCU width), or `None` when libjpeg
    /// cannot decode part of this image (lossless, unusual sampling factors) or its output still needs a
    /// conversion into `mode` (CMYK, color to L), which works on whole images.
    pub fn window_alignment(&self, denom: u32, mode: Mode) -> Option<u32> {
        let (format, _) = self.output_format(mode);
        let straight = matches!(
            (format, mode),
            (raw::TJPF_TJPF_RGB, Mode::Rgb) | (raw::TJPF_TJPF_RGBA, Mode::Rgba) | (raw::TJPF_TJPF_GRAY, Mode::L)
        );
        if !straight || self.lossless {
            return None;
        }
        // TurboJPEG checks the left edge against the iMCU width of the subsampling it names; libjpeg itself
        // aligns it to 8 x the largest horizontal sampling factor (8 alone for one component). They agree on
        // usual files; both are powers of two, so the larger satisfies both.
        let named = *MCU_WIDTH.get(usize::try_from(self.subsamp).ok()?)?;
        let own = if self.components == 1 { 8 } else { 8 * self.max_h_samp };
        Some(named.max(own).div_ceil(denom))
    }
}

/// A rectangle of the (scaled) image, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
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

/// The most scans a progressive JPEG may have; more is an error.
pub const MAX_SCANS: c_int = 500;

impl JpegDecoder {
    pub fn new() -> Result<Self, ImageError> {
        // The reference makes the linker take csrc/jdhuff.c from this crate before libjpeg-turbo's copy.
        std::hint::black_box(fastwds_fast_ac_scans as unsafe extern "C" fn() -> std::ffi::c_ulong);
        // SAFETY: plain constructor; a null return is handled.
        let handle = unsafe { raw::tj3Init(raw::TJINIT_TJINIT_DECOMPRESS as c_int) };
        if handle.is_null() {
            return Err(ImageError::new(ImageErrorKind::Corrupt, "cannot initialize libjpeg-turbo"));
        }
        let mut decoder = JpegDecoder { handle };
        // A progressive JPEG of thousands of tiny scans costs seconds of a reader thread per image; real ones
        // have about ten. 500 is the limit libjpeg-turbo's own tools use.
        decoder.set(raw::TJPARAM_TJPARAM_SCANLIMIT, MAX_SCANS)?;
        Ok(decoder)
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
        if message.contains("scans") && message.contains("more than") {
            return Err(ImageError::new(ImageErrorKind::Refused, format!("refused JPEG: {message}")));
        }
        // TurboJPEG reports a fatal error that follows a warning with the warning's code; the message tells them
        // apart, as it holds the first warning's text until a fatal error overwrites it.
        if code as raw::TJERR == raw::TJERR_TJERR_WARNING && LIBJPEG_WARNINGS.iter().any(|w| message.starts_with(w)) {
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
        let frame = frame(data)?;
        let (frame_w, frame_h) = (frame.width, frame.height);
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
            subsamp: self.get(raw::TJPARAM_TJPARAM_SUBSAMP) as raw::TJSAMP,
            max_h_samp: frame.max_h_samp,
            components: frame.components,
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
        let (width, height) = header.scaled_size(denom);
        let (width, height) = (width as usize, height as usize);
        let (format, channels) = header.output_format(mode);
        let len = width * height * channels;
        // Not zeroed first: libjpeg writes every byte of every row (on warnings too; on errors it is dropped).
        let mut pixels = super::pool::buffer(len);
        let pitch = width * channels;
        self.decompress(data, header, denom, max_pixels, format, None, pixels.as_mut_ptr(), pitch)?;
        // SAFETY: the decode succeeded, so all `height` rows of `pitch` = width * channels bytes were written.
        unsafe { pixels.set_len(len) };
        let image = Pixels { width, height, channels, data: pixels };
        Ok(match format {
            raw::TJPF_TJPF_CMYK => convert::cmyk_inverted_to(image, mode),
            raw::TJPF_TJPF_RGB if mode == Mode::L => convert::rgb_to_l(image),
            _ => image,
        })
    }

    /// Decodes only `window` of the image at 1/`denom` scale into `image`, a buffer laid out as the whole scaled
    /// image in `mode` (which [`JpegHeader::window_alignment`] accepted, so no conversion follows); the pixels
    /// outside the window are left as they were. Rows below the window are not even entropy-decoded.
    #[allow(clippy::too_many_arguments)]
    pub fn decode_window(
        &mut self,
        data: &[u8],
        header: &JpegHeader,
        denom: u32,
        mode: Mode,
        max_pixels: u64,
        window: Window,
        image: &mut [u8],
    ) -> Result<(), ImageError> {
        let (width, height) = header.scaled_size(denom);
        let (format, channels) = header.output_format(mode);
        let pitch = width as usize * channels;
        let inside = window.width > 0
            && window.height > 0
            && window.x.checked_add(window.width).is_some_and(|r| r <= width)
            && window.y.checked_add(window.height).is_some_and(|b| b <= height);
        if !inside || image.len() < pitch * height as usize || channels != mode.channels() {
            return Err(ImageError::invalid_spec(format!("window {window:?} does not fit a {width}x{height} image")));
        }
        let offset = window.y as usize * pitch + window.x as usize * channels;
        // SAFETY: the window lies inside the image, so every row libjpeg writes (window.height rows of
        // window.width pixels, `pitch` apart, starting at `offset`) lies inside `image`.
        let start = unsafe { image.as_mut_ptr().add(offset) };
        self.decompress(data, header, denom, max_pixels, format, Some(window), start, pitch)
    }

    /// One tj3Decompress8 call writing rows `pitch` bytes apart from `dst`, of the whole image or of `window`.
    #[allow(clippy::too_many_arguments)]
    fn decompress(
        &mut self,
        data: &[u8],
        header: &JpegHeader,
        denom: u32,
        max_pixels: u64,
        format: raw::TJPF,
        window: Option<Window>,
        dst: *mut u8,
        pitch: usize,
    ) -> Result<(), ImageError> {
        // A second guard inside libjpeg itself, in case the frame header it decodes differs from the first look.
        self.set(raw::TJPARAM_TJPARAM_MAXPIXELS, max_pixels.min(c_int::MAX as u64) as c_int)?;
        let factor = raw::tjscalingfactor { num: 1, denom: denom as c_int };
        // SAFETY: valid handle; 1/1, 1/2, 1/4 and 1/8 are always supported.
        let rc = unsafe { raw::tj3SetScalingFactor(self.handle, factor) };
        self.check(rc)?;
        let (width, height) = header.scaled_size(denom);
        let region = match window {
            Some(w) if (w.x, w.y, w.width, w.height) != (0, 0, width, height) => {
                raw::tjregion { x: w.x as c_int, y: w.y as c_int, w: w.width as c_int, h: w.height as c_int }
            }
            _ => raw::tjregion { x: 0, y: 0, w: 0, h: 0 },
        };
        // SAFETY: valid handle; the region was checked against the scaled size (libjpeg checks it again).
        let rc = unsafe { raw::tj3SetCroppingRegion(self.handle, region) };
        self.check(rc)?;
        // SAFETY: the callers guarantee `dst` has room for the rows described above.
        let rc = unsafe {
            raw::tj3Decompress8(self.handle, data.as_ptr(), data.len() as raw::size_t, dst, pitch as c_int, format)
        };
        self.check(rc)?;
        // libjpeg keeps the message of the first warning only, so a stream cut short after some earlier damage
        // reads as that damage alone; Pillow refuses it as truncated, and so must we.
        if rc != 0 && !stream_end(data).reaches_eoi {
            let first = self.error_message();
            return Err(ImageError::truncated(format!(
                "truncated JPEG: the data ends before the end marker ({first})"
            )));
        }
        Ok(())
    }
}

/// A test image: pixel `value(x, y, channel, noise)` for xorshift `noise` from `seed`, compressed by TurboJPEG
/// with `params` (one channel when TJPARAM_SUBSAMP is grayscale, else RGB).
#[cfg(test)]
pub(crate) fn test_jpeg(
    (width, height): (usize, usize),
    seed: u32,
    params: &[(raw::TJPARAM, c_int)],
    value: impl Fn(usize, usize, usize, u32) -> u8,
) -> Vec<u8> {
    let gray_value = raw::TJSAMP_TJSAMP_GRAY as c_int;
    let gray = params.iter().any(|&(param, v)| param == raw::TJPARAM_TJPARAM_SUBSAMP && v == gray_value);
    let channels = if gray { 1 } else { 3 };
    let mut state = seed;
    let pixels: Vec<u8> = (0..width * height * channels)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            value((i / channels) % width, (i / channels) / width, i % channels, state)
        })
        .collect();
    let format = if gray { raw::TJPF_TJPF_GRAY } else { raw::TJPF_TJPF_RGB };
    // SAFETY: a compressor handle used and destroyed here; TurboJPEG allocates the output, freed below.
    unsafe {
        let handle = raw::tj3Init(raw::TJINIT_TJINIT_COMPRESS as c_int);
        assert!(!handle.is_null());
        for &(param, v) in params {
            assert_eq!(raw::tj3Set(handle, param as c_int, v), 0);
        }
        let mut buf: *mut u8 = std::ptr::null_mut();
        let mut len: raw::size_t = 0;
        let (w, h, pitch) = (width as c_int, height as c_int, (width * channels) as c_int);
        let rc = raw::tj3Compress8(handle, pixels.as_ptr(), w, pitch, h, format as c_int, &mut buf, &mut len);
        assert_eq!(rc, 0);
        let out = std::slice::from_raw_parts(buf, len as usize).to_vec();
        raw::tj3Free(buf.cast());
        raw::tj3Destroy(handle);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_walks_segments() {
        // SOI, APP0 (len 4), fill byte, SOF0 with 3x2.
        let data = [0xFF, 0xD8, 0xFF, 0xE0, 0, 4, 1, 2, 0xFF, 0xFF, 0xC0, 0, 11, 8, 0, 2, 0, 3, 1, 1, 0x11, 0];
        let f = frame(&data).unwrap();
        assert_eq!((f.width, f.height, f.components, f.max_h_samp), (3, 2, 1, 1));
        assert_eq!(frame(&data[..7]).unwrap_err().kind, ImageErrorKind::Truncated);
        let no_frame = [0xFF, 0xD8, 0xFF, 0xD9];
        assert_eq!(frame(&no_frame).unwrap_err().kind, ImageErrorKind::Corrupt);
    }
}

#[cfg(test)]
mod huffman_tests {
    //! `csrc/jdhuff.c` decodes sequential (baseline) scans; libjpeg-turbo's untouched `jdphuff.c` decodes
    //! progressive ones. The same pixels compressed both ways have the same quantized coefficients, so the DCT
    //! coefficients each decoder reads (through `tj3Transform`'s filter callback), and the pixels, must be
    //! equal, over table shapes (optimized tables have long codes), coefficient sizes (quality 100 and noise
    //! give values too large for the fast table), zero runs and sampling modes. The images are large enough
    //! for libjpeg-turbo to take its fast path (it needs 512 bytes per block of the MCU left in the buffer);
    //! with restart markers it never does, so those cases check that the rest of the file is unchanged.

    use super::*;
    use turbojpeg::libc::{c_short, c_void};

    /// Gradients plus noise of `noise` amplitude, as TurboJPEG compresses them with these settings.
    fn compress(size: (usize, usize), subsamp: raw::TJSAMP, quality: c_int, noise: u32, flags: [c_int; 3]) -> Vec<u8> {
        let [progressive, optimize, restart_blocks] = flags;
        let params = [
            (raw::TJPARAM_TJPARAM_QUALITY, quality),
            (raw::TJPARAM_TJPARAM_SUBSAMP, subsamp as c_int),
            (raw::TJPARAM_TJPARAM_PROGRESSIVE, progressive),
            (raw::TJPARAM_TJPARAM_OPTIMIZE, optimize),
            (raw::TJPARAM_TJPARAM_RESTARTBLOCKS, restart_blocks),
        ];
        test_jpeg(size, 0x2545_F491, &params, |x, y, c, state| {
            let smooth = x * 200 / size.0 + (y * (c + 2)) % 56;
            ((smooth as u32 + state % (noise + 1)) % 256) as u8
        })
    }

    /// Block rows of DCT coefficients, by component, as `tj3Transform` hands them to a filter.
    type Coefficients = Vec<(c_int, Vec<i16>)>;

    unsafe extern "C" fn collect(
        coeffs: *mut c_short,
        array: raw::tjregion,
        _plane: raw::tjregion,
        component: c_int,
        _transform_id: c_int,
        transform: *mut raw::tjtransform,
    ) -> c_int {
        // SAFETY: `data` is the `Coefficients` of `coefficients` below, alive for the whole transform, and
        // `coeffs` holds the array region's w x h coefficients.
        unsafe {
            let out = &mut *(*transform).data.cast::<Coefficients>();
            let count = (array.w * array.h) as usize;
            out.push((component, std::slice::from_raw_parts(coeffs, count).to_vec()));
        }
        0
    }

    /// The quantized DCT coefficients libjpeg-turbo reads from `data` (no output image is made).
    fn coefficients(data: &[u8]) -> Coefficients {
        let mut out: Coefficients = Vec::new();
        // SAFETY: a transform handle used and destroyed here; the filter writes only into `out`.
        unsafe {
            let handle = raw::tj3Init(raw::TJINIT_TJINIT_TRANSFORM as c_int);
            assert!(!handle.is_null());
            let mut transform: raw::tjtransform = std::mem::zeroed();
            transform.op = raw::TJXOP_TJXOP_NONE as c_int;
            transform.options = raw::TJXOPT_NOOUTPUT as c_int;
            transform.data = (&mut out as *mut Coefficients).cast::<c_void>();
            transform.customFilter = Some(collect);
            let mut buf: *mut u8 = std::ptr::null_mut();
            let mut len: raw::size_t = 0;
            let rc =
                raw::tj3Transform(handle, data.as_ptr(), data.len() as raw::size_t, 1, &mut buf, &mut len, &transform);
            assert_eq!(rc, 0);
            if !buf.is_null() {
                raw::tj3Free(buf.cast());
            }
            raw::tj3Destroy(handle);
        }
        out
    }

    fn decode_all(data: &[u8], mode: Mode) -> Vec<u8> {
        let mut decoder = JpegDecoder::new().unwrap();
        let header = decoder.header(data).unwrap();
        decoder.decode(data, &header, 1, mode, u64::MAX).unwrap().data
    }

    #[test]
    fn baseline_decodes_as_its_progressive_twin() {
        let before = fast_huffman_scans();
        let sampling =
            [raw::TJSAMP_TJSAMP_420, raw::TJSAMP_TJSAMP_444, raw::TJSAMP_TJSAMP_422, raw::TJSAMP_TJSAMP_GRAY];
        let mut scans = 0;
        for (i, &subsamp) in sampling.iter().enumerate() {
            for (quality, noise) in [(50, 8), (90, 40), (95, 255), (100, 255), (100, 3)] {
                for (optimize, restart_blocks) in [(0, 0), (1, 0), (1, 5)] {
                    let size = (203 + 32 * i, 157 + 8 * (quality as usize % 7));
                    let mode = if subsamp == raw::TJSAMP_TJSAMP_GRAY { Mode::L } else { Mode::Rgb };
                    let baseline = compress(size, subsamp, quality, noise, [0, optimize, restart_blocks]);
                    let progressive = compress(size, subsamp, quality, noise, [1, optimize, restart_blocks]);
                    let what = format!(
                        "sampling {subsamp}, quality {quality}, noise {noise}, optimize {optimize}, restart {restart_blocks}"
                    );
                    assert_ne!(baseline, progressive, "{what}");
                    let read = coefficients(&baseline);
                    assert!(read.len() >= size.1 / 8, "{what}");
                    assert!(read == coefficients(&progressive), "coefficients differ: {what}");
                    assert!(decode_all(&baseline, mode) == decode_all(&progressive, mode), "pixels differ: {what}");
                    scans += 2; // the baseline file was read twice: transform and decode
                }
            }
        }
        assert!(fast_huffman_scans() >= before + scans, "csrc/jdhuff.c is not the Huffman decoder linked");
    }
}
