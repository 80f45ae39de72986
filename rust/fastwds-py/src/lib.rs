//! `fastwds._core`: the Python face of fastwds-core. A few coarse objects; Python composes them.

use pyo3::prelude::*;

mod buffer;
mod errors;
mod fork;
mod image;
mod image_options;
mod index;
mod iterator;
mod options;
mod pyfile;
mod remote;
mod shard_reader;
mod streams;
mod wait;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    fork::install();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // The exceptions live in fastwds.errors (a real module, so they pickle); re-exported here.
    for name in ["ShardError", "ImageDecodeError", "DuplicateFieldError", "InsecureURLError"] {
        m.add(name, errors::error_class(py, name)?)?;
    }
    m.add_class::<shard_reader::ShardReader>()?;
    m.add_class::<iterator::SampleIterator>()?;
    m.add_function(wrap_pyfunction!(streams::tar_samples, m)?)?;
    m.add_function(wrap_pyfunction!(streams::tar_members, m)?)?;
    m.add_function(wrap_pyfunction!(streams::split_key, m)?)?;
    m.add_function(wrap_pyfunction!(shard_reader::_rebuild_reader, m)?)?;
    m.add_function(wrap_pyfunction!(image::decode_image, m)?)?;
    m.add_function(wrap_pyfunction!(image::image_crop_params, m)?)?;
    m.add_function(wrap_pyfunction!(index::encode_index, m)?)?;
    m.add_function(wrap_pyfunction!(remote::list_objects, m)?)?;
    m.add_function(wrap_pyfunction!(remote::stat_object, m)?)?;
    m.add_class::<remote::RemoteReader>()?;
    m.add_class::<remote::ObjectWriter>()?;
    m.add_class::<image_options::ImageOptions>()?;
    m.add_function(wrap_pyfunction!(image_options::_rebuild_image_options, m)?)?;
    m.add("NATIVE_IMAGE_EXTENSIONS", pyo3::types::PyTuple::new(py, image_options::NATIVE_IMAGE_EXTENSIONS)?)?;
    Ok(())
}
