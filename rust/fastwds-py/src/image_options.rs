//! `ImageOptions`: how image fields are decoded, as one frozen object with one set of defaults. The reader's
//! `images=`, `decode_image` and `image_crop_params` all take their options through it, and Python's image
//! stages build one instead of a dict.

use fastwds_core::image::{self, Crop, DecodeSpec, Mode, Resize, DEFAULT_MAX_PIXELS};
use fastwds_core::ImageStage;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

/// The image fields decoded on the reader threads when none are named: those webdataset's image handlers
/// take that the core decodes.
pub const NATIVE_IMAGE_EXTENSIONS: [&str; 7] = ["jpg", "jpeg", "png", "ppm", "pgm", "pbm", "pnm"];

/// How image fields are decoded: the output `mode` ("rgb8", "l8", "rgba8"), an optional crop and resize to
/// `size` (h, w) (`crop` "center" or "random_resized" with torchvision's `scale` and `ratio`), a horizontal
/// flip with probability `flip`, random draws from `seed` (mixed with `epoch`, and on the reader threads with
/// each image's key and field), the pixel limit `max_pixels`, whether JPEGs may decode at a reduced DCT scale
/// (`reduced_dct`), which field `extensions` are images, and whether a failed field keeps its bytes for a
/// later decoder (`keep_bytes_on_error`). Checked when made.
#[pyclass(frozen, eq, module = "fastwds._core")]
#[derive(Clone, PartialEq)]
pub struct ImageOptions {
    #[pyo3(get)]
    mode: String,
    #[pyo3(get)]
    extensions: Vec<String>,
    #[pyo3(get)]
    size: Option<(u32, u32)>,
    #[pyo3(get)]
    crop: String,
    #[pyo3(get)]
    scale: (f64, f64),
    #[pyo3(get)]
    ratio: (f64, f64),
    #[pyo3(get)]
    flip: f64,
    #[pyo3(get)]
    seed: u64,
    #[pyo3(get)]
    epoch: u64,
    #[pyo3(get)]
    max_pixels: u64,
    #[pyo3(get)]
    reduced_dct: bool,
    #[pyo3(get)]
    keep_bytes_on_error: bool,
}

#[pymethods]
impl ImageOptions {
    #[new]
    #[pyo3(signature = (mode = "rgb8", *, extensions = None, size = None, crop = "center", scale = (0.08, 1.0),
        ratio = (3.0 / 4.0, 4.0 / 3.0), flip = 0.0, seed = 0, epoch = 0, max_pixels = DEFAULT_MAX_PIXELS,
        reduced_dct = true, keep_bytes_on_error = false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        mode: &str,
        extensions: Option<Vec<String>>,
        size: Option<(u32, u32)>,
        crop: &str,
        scale: (f64, f64),
        ratio: (f64, f64),
        flip: f64,
        seed: u64,
        epoch: u64,
        max_pixels: u64,
        reduced_dct: bool,
        keep_bytes_on_error: bool,
    ) -> PyResult<Self> {
        let extensions = match extensions {
            Some(e) => e.into_iter().map(|e| e.to_lowercase()).collect(),
            None => NATIVE_IMAGE_EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        };
        let options = ImageOptions {
            mode: mode.to_string(),
            extensions,
            size,
            crop: crop.to_string(),
            scale,
            ratio,
            flip,
            seed,
            epoch,
            max_pixels,
            reduced_dct,
            keep_bytes_on_error,
        };
        options.stage()?;
        Ok(options)
    }

    /// A copy with the given options changed.
    #[pyo3(signature = (**changes))]
    fn replace<'py>(slf: &Bound<'py, Self>, changes: Option<&Bound<'py, PyDict>>) -> PyResult<Bound<'py, PyAny>> {
        let kwargs = slf.get().kwargs(slf.py())?;
        if let Some(changes) = changes {
            kwargs.update(changes.as_mapping())?;
        }
        slf.get_type().call((), Some(&kwargs))
    }

    /// The options as keyword arguments of the constructor.
    fn asdict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.kwargs(py)
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyTuple>> {
        let py = slf.py();
        let rebuild = py.import("fastwds._core")?.getattr("_rebuild_image_options")?;
        PyTuple::new(py, [rebuild, PyTuple::new(py, [slf.get().kwargs(py)?])?.into_any()])
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let fields: Vec<String> =
            self.kwargs(py)?.iter().map(|(k, v)| Ok(format!("{}={}", k.str()?, v.repr()?))).collect::<PyResult<_>>()?;
        Ok(format!("ImageOptions({})", fields.join(", ")))
    }
}

impl ImageOptions {
    fn kwargs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("mode", &self.mode)?;
        d.set_item("extensions", self.extensions.clone())?;
        d.set_item("size", self.size)?;
        d.set_item("crop", &self.crop)?;
        d.set_item("scale", self.scale)?;
        d.set_item("ratio", self.ratio)?;
        d.set_item("flip", self.flip)?;
        d.set_item("seed", self.seed)?;
        d.set_item("epoch", self.epoch)?;
        d.set_item("max_pixels", self.max_pixels)?;
        d.set_item("reduced_dct", self.reduced_dct)?;
        d.set_item("keep_bytes_on_error", self.keep_bytes_on_error)?;
        Ok(d)
    }

    /// The core's decode spec for these options.
    fn spec(&self) -> PyResult<DecodeSpec> {
        let mode = Mode::parse(&self.mode).ok_or_else(|| {
            PyValueError::new_err(format!("mode must be 'l8', 'rgb8' or 'rgba8', got {:?}", self.mode))
        })?;
        let crop = match self.crop.as_str() {
            "center" => Crop::Center,
            "random_resized" => Crop::RandomResized { scale: self.scale, ratio: self.ratio },
            other => {
                return Err(PyValueError::new_err(format!("crop must be 'center' or 'random_resized', got {other:?}")))
            }
        };
        Ok(DecodeSpec {
            mode,
            resize: self.size.map(|size| Resize { size, crop }),
            flip: self.flip,
            seed: self.seed,
            max_pixels: self.max_pixels,
            reduced_dct: self.reduced_dct,
        })
    }

    /// The core's image stage for these options.
    pub fn stage(&self) -> PyResult<ImageStage> {
        let spec = self.spec()?;
        if let Some(resize) = &spec.resize {
            image::validate(resize, self.flip).map_err(|e| PyValueError::new_err(e.message))?;
        }
        Ok(ImageStage {
            extensions: self.extensions.clone(),
            spec,
            epoch: self.epoch,
            keep_bytes_on_error: self.keep_bytes_on_error,
        })
    }

    /// Options from what Python passed: an `ImageOptions`, or a dict of its keyword arguments (`{}` for the
    /// defaults), with `changes` applied.
    pub fn extract_with<'py>(
        value: &Bound<'py, PyAny>,
        changes: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<ImageOptions> {
        let py = value.py();
        let kwargs = match value.cast::<ImageOptions>() {
            Ok(options) => options.get().kwargs(py)?,
            Err(_) => match value.cast::<PyDict>() {
                Ok(d) => d.copy()?,
                Err(_) => {
                    return Err(pyo3::exceptions::PyTypeError::new_err(
                        "images must be an ImageOptions or a dict of its keyword arguments",
                    ))
                }
            },
        };
        if let Some(changes) = changes {
            kwargs.update(changes.as_mapping())?;
        }
        Ok(py.get_type::<ImageOptions>().call((), Some(&kwargs))?.cast::<ImageOptions>()?.get().clone())
    }
}

/// Rebuilds a pickled `ImageOptions`.
#[pyfunction]
pub fn _rebuild_image_options<'py>(py: Python<'py>, kwargs: Bound<'py, PyDict>) -> PyResult<Bound<'py, PyAny>> {
    py.get_type::<ImageOptions>().call((), Some(&kwargs))
}
