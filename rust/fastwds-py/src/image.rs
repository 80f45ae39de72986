//! `decode_image` and `image_crop_params`: the core's image decoder exposed for tests and for Python-side use;
//! the reader threads call the core directly.

use std::cell::RefCell;

use fastwds_core::image::{self, Crop, DecodeSpec, Decoder, Mode, Pixels, Resize};
use numpy::ndarray::{ArrayView, IxDyn};
use numpy::PyArrayDyn;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

thread_local! {
    /// One decoder per calling thread, so the libjpeg-turbo handle and resize scratch are reused.
    static DECODER: RefCell<Decoder> = RefCell::new(Decoder::new());
}

fn parse_crop(crop: &str, scale: (f64, f64), ratio: (f64, f64)) -> PyResult<Crop> {
    match crop {
        "center" => Ok(Crop::Center),
        "random_resized" => Ok(Crop::RandomResized { scale, ratio }),
        other => Err(PyValueError::new_err(format!("crop must be 'center' or 'random_resized', got {other:?}"))),
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn build_spec(
    mode: &str,
    size: Option<(u32, u32)>,
    crop: &str,
    scale: (f64, f64),
    ratio: (f64, f64),
    flip: f64,
    seed: u64,
    max_pixels: u64,
    reduced_dct: bool,
) -> PyResult<DecodeSpec> {
    let mode = Mode::parse(mode)
        .ok_or_else(|| PyValueError::new_err(format!("mode must be 'l8', 'rgb8' or 'rgba8', got {mode:?}")))?;
    let crop = parse_crop(crop, scale, ratio)?;
    Ok(DecodeSpec { mode, resize: size.map(|size| Resize { size, crop }), flip, seed, max_pixels, reduced_dct })
}

/// Decodes JPEG/PNG/PPM bytes to a uint8 array (HxWxC, HxW for "l8") equal to Pillow's, optionally cropped,
/// resized and flipped; the GIL is released during the decode.
#[pyfunction]
#[pyo3(signature = (data, mode = "rgb8", *, size = None, crop = "center", scale = (0.08, 1.0),
    ratio = (3.0 / 4.0, 4.0 / 3.0), flip = 0.0, seed = 0, max_pixels = image::DEFAULT_MAX_PIXELS,
    reduced_dct = true))]
#[allow(clippy::too_many_arguments)]
pub fn decode_image<'py>(
    py: Python<'py>,
    data: &[u8],
    mode: &str,
    size: Option<(u32, u32)>,
    crop: &str,
    scale: (f64, f64),
    ratio: (f64, f64),
    flip: f64,
    seed: u64,
    max_pixels: u64,
    reduced_dct: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let spec = build_spec(mode, size, crop, scale, ratio, flip, seed, max_pixels, reduced_dct)?;
    let pixels = py
        .detach(|| DECODER.with(|d| d.borrow_mut().decode(data, &spec)))
        .map_err(|e| PyValueError::new_err(e.message))?;
    pixels_to_array(py, pixels)
}

/// The storage behind a decoded image's numpy array (its `base`). When the array is freed, the storage goes back
/// to the core for the next decode instead of to the allocator.
#[pyclass(frozen, module = "fastwds._core")]
pub struct PixelStorage {
    data: Vec<u8>,
}

impl Drop for PixelStorage {
    fn drop(&mut self) {
        image::recycle(std::mem::take(&mut self.data));
    }
}

/// A uint8 array of decoded pixels: HxW for one channel, HxWxC otherwise. The pixels are not copied.
pub(crate) fn pixels_to_array(py: Python<'_>, pixels: Pixels) -> PyResult<Bound<'_, PyAny>> {
    let shape = match pixels.channels {
        1 => vec![pixels.height, pixels.width],
        c => vec![pixels.height, pixels.width, c],
    };
    if pixels.data.len() != shape.iter().product::<usize>() {
        return Err(PyValueError::new_err(format!("decoded {} bytes for shape {shape:?}", pixels.data.len())));
    }
    let mut data = pixels.data;
    // Taken before the Vec moves into the storage object (moving a Vec does not move its heap buffer).
    let start = data.as_mut_ptr();
    let storage = Bound::new(py, PixelStorage { data })?;
    // SAFETY: `start` points at the storage's buffer, exactly `shape`'s product of bytes (checked above), which
    // the storage object owns and never touches again until it is dropped; it becomes the array's base, so the
    // array cannot outlive it.
    let array = unsafe {
        let view = ArrayView::from_shape_ptr(IxDyn(&shape), start.cast_const());
        PyArrayDyn::borrow_from_array(&view, storage.into_any())
    };
    Ok(array.into_any())
}

/// The crop window and flip `decode_image` would use for an image of `height` x `width` with these arguments:
/// `(top, left, crop_height, crop_width, flipped)` in full-size pixel coordinates (fractional for "center").
#[pyfunction]
#[pyo3(signature = (height, width, size, *, crop = "center", scale = (0.08, 1.0), ratio = (3.0 / 4.0, 4.0 / 3.0),
    flip = 0.0, seed = 0))]
#[allow(clippy::too_many_arguments)]
pub fn image_crop_params(
    height: u32,
    width: u32,
    size: (u32, u32),
    crop: &str,
    scale: (f64, f64),
    ratio: (f64, f64),
    flip: f64,
    seed: u64,
) -> PyResult<(f64, f64, f64, f64, bool)> {
    let spec = build_spec("rgb8", Some(size), crop, scale, ratio, flip, seed, image::DEFAULT_MAX_PIXELS, true)?;
    let resize = spec.resize.ok_or_else(|| PyValueError::new_err("size is required"))?;
    image::validate(&resize, flip).map_err(|e| PyValueError::new_err(e.message))?;
    if height == 0 || width == 0 {
        return Err(PyValueError::new_err("height and width must be positive"));
    }
    let plan = image::plan(width, height, Some(&resize), flip, seed);
    let c = plan.crop.ok_or_else(|| PyValueError::new_err("no crop"))?;
    Ok((c.top, c.left, c.height, c.width, plan.flip))
}
