//! `decode_image` and `image_crop_params`: the core's image decoder for Python-side use (the in-process
//! `decode_images` stage, crops of labels); the reader threads call the core directly.

use std::cell::RefCell;

use fastwds_core::image::{self, Decoder, Pixels};
use numpy::ndarray::{ArrayView, IxDyn};
use numpy::PyArrayDyn;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::image_options::ImageOptions;

thread_local! {
    /// One decoder per calling thread, so its resize buffers and scratch image are reused (each image still gets a
    /// fresh libjpeg-turbo handle, see `Decoder::decode`).
    static DECODER: RefCell<Decoder> = RefCell::new(Decoder::new());
}

/// Decodes JPEG/PNG/PPM bytes to a uint8 array (HxWxC, HxW for "l8") equal to Pillow's, optionally cropped,
/// resized and flipped as `options` (an `ImageOptions` or its keyword arguments) say; `mode` is a mode name or
/// an `ImageOptions`. The GIL is released during the decode.
#[pyfunction]
#[pyo3(signature = (data, mode = None, **options))]
pub fn decode_image<'py>(
    py: Python<'py>,
    data: &[u8],
    mode: Option<&Bound<'py, PyAny>>,
    options: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let spec = options_of(py, mode, options)?.stage()?.spec;
    let pixels = py
        .detach(|| DECODER.with(|d| d.borrow_mut().decode(data, &spec)))
        .map_err(|e| PyValueError::new_err(e.message))?;
    pixels_to_array(py, pixels)
}

/// The options a call names: `mode` as a name or an `ImageOptions`, changed by the keyword `options`.
fn options_of<'py>(
    py: Python<'py>,
    mode: Option<&Bound<'py, PyAny>>,
    options: Option<&Bound<'py, PyDict>>,
) -> PyResult<ImageOptions> {
    match mode {
        Some(m) if m.cast::<ImageOptions>().is_ok() => ImageOptions::extract_with(m, options),
        _ => {
            let kwargs = options.map_or_else(|| Ok(PyDict::new(py)), |o| o.copy())?;
            if let Some(m) = mode {
                kwargs.set_item("mode", m)?;
            }
            ImageOptions::extract_with(&kwargs, None)
        }
    }
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

/// The crop window and flip `decode_image` would use for an image of `height` x `width` resized to `size` with
/// these options (an `ImageOptions`'s keyword arguments): `(top, left, crop_height, crop_width, flipped)` in
/// full-size pixel coordinates (fractional for "center"). Boxes or keypoints labelled on the full image map to
/// the decoded crop through it.
#[pyfunction]
#[pyo3(signature = (height, width, size, **options))]
pub fn image_crop_params<'py>(
    py: Python<'py>,
    height: u32,
    width: u32,
    size: (u32, u32),
    options: Option<&Bound<'py, PyDict>>,
) -> PyResult<(f64, f64, f64, f64, bool)> {
    let kwargs = options.map_or_else(|| Ok(PyDict::new(py)), |o| o.copy())?;
    kwargs.set_item("size", size)?;
    let spec = ImageOptions::extract_with(&kwargs, None)?.stage()?.spec;
    let resize = spec.resize.ok_or_else(|| PyValueError::new_err("size is required"))?;
    if height == 0 || width == 0 {
        return Err(PyValueError::new_err("height and width must be positive"));
    }
    let plan = image::plan(width, height, Some(&resize), spec.flip, spec.seed);
    let c = plan.crop.ok_or_else(|| PyValueError::new_err("no crop"))?;
    Ok((c.top, c.left, c.height, c.width, plan.flip))
}
