//! `fastwds._core`: the Python face of fastwds-core. A few coarse objects; Python composes them.

use pyo3::prelude::*;

mod buffer;
mod errors;
mod fork;
mod image;
mod pyfile;
mod reader;
mod wait;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    fork::install();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("ShardError", py.get_type::<errors::ShardError>())?;
    m.add("ImageDecodeError", py.get_type::<errors::ImageDecodeError>())?;
    m.add_class::<reader::ShardReader>()?;
    m.add_class::<reader::SampleIterator>()?;
    m.add_function(wrap_pyfunction!(reader::tar_samples, m)?)?;
    m.add_function(wrap_pyfunction!(reader::tar_members, m)?)?;
    m.add_function(wrap_pyfunction!(reader::split_key, m)?)?;
    m.add_function(wrap_pyfunction!(reader::_rebuild_reader, m)?)?;
    m.add_function(wrap_pyfunction!(image::decode_image, m)?)?;
    m.add_function(wrap_pyfunction!(image::image_crop_params, m)?)?;
    Ok(())
}
