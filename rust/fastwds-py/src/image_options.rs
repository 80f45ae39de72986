//! The `images=` option of a reader: which fields the reader threads decode, and how.

use fastwds_core::image::{self, DEFAULT_MAX_PIXELS};
use fastwds_core::ImageStage;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::image::build_spec;

/// The image fields decoded on the reader threads when none are named: those webdataset's image handlers take.
const IMAGE_EXTENSIONS: [&str; 7] = ["jpg", "jpeg", "png", "ppm", "pgm", "pbm", "pnm"];

/// Parses the `images=` option: `{"mode": "rgb8", "extensions": [...], "size": (h, w), "crop": "center" |
/// "random_resized", "scale": (lo, hi), "ratio": (lo, hi), "flip": p, "seed": n, "epoch": n,
/// "max_pixels": n, "reduced_dct": bool, "keep_bytes_on_error": bool}`, every key optional.
pub fn image_stage(images: &Bound<'_, PyAny>) -> PyResult<ImageStage> {
    let d = images.cast::<PyDict>().map_err(|_| PyTypeError::new_err("images must be a dict of decode options"))?;
    const KEYS: [&str; 12] = [
        "mode",
        "extensions",
        "size",
        "crop",
        "scale",
        "ratio",
        "flip",
        "seed",
        "epoch",
        "max_pixels",
        "reduced_dct",
        "keep_bytes_on_error",
    ];
    for key in d.keys() {
        let key: String = key.extract()?;
        if !KEYS.contains(&key.as_str()) {
            return Err(PyTypeError::new_err(format!("unknown images option {key:?} (expected one of {KEYS:?})")));
        }
    }
    fn get<'py, T>(d: &Bound<'py, PyDict>, key: &str, default: T) -> PyResult<T>
    where
        T: for<'a> FromPyObject<'a, 'py>,
        for<'a> <T as FromPyObject<'a, 'py>>::Error: Into<PyErr>,
    {
        match d.get_item(key)? {
            Some(v) if !v.is_none() => v.extract().map_err(Into::into),
            _ => Ok(default),
        }
    }
    let mode: String = get(d, "mode", "rgb8".to_string())?;
    let size: Option<(u32, u32)> = get(d, "size", None)?;
    let crop: String = get(d, "crop", "center".to_string())?;
    let scale = get(d, "scale", (0.08, 1.0))?;
    let ratio = get(d, "ratio", (3.0 / 4.0, 4.0 / 3.0))?;
    let flip: f64 = get(d, "flip", 0.0)?;
    let seed: u64 = get(d, "seed", 0)?;
    let max_pixels: u64 = get(d, "max_pixels", DEFAULT_MAX_PIXELS)?;
    let reduced_dct: bool = get(d, "reduced_dct", true)?;
    let spec = build_spec(&mode, size, &crop, scale, ratio, flip, seed, max_pixels, reduced_dct)?;
    if let Some(resize) = &spec.resize {
        image::validate(resize, flip).map_err(|e| pyo3::exceptions::PyValueError::new_err(e.message))?;
    }
    let extensions: Vec<String> = get(d, "extensions", IMAGE_EXTENSIONS.iter().map(|e| e.to_string()).collect())?;
    let epoch: u64 = get(d, "epoch", 0)?;
    let keep_bytes_on_error: bool = get(d, "keep_bytes_on_error", false)?;
    let extensions = extensions.into_iter().map(|e| e.to_lowercase()).collect();
    Ok(ImageStage { extensions, spec, epoch, keep_bytes_on_error })
}
