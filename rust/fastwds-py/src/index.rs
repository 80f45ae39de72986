//! `encode_index`: the bytes of a shard index file, for `fastwds.shardindex.encode_index`.

use fastwds_core::index::{encode_index as encode, IndexContent};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

/// The bytes of an index file (format version 1) for its keys (str, or bytes for names that are not UTF-8),
/// their offsets, the end offset, the shard's stored size and its validator. Raises ValueError for content
/// that cannot be stored, UnicodeEncodeError for a str key that is not UTF-8 (surrogates).
#[pyfunction]
pub fn encode_index<'py>(
    py: Python<'py>,
    keys: Vec<Bound<'py, PyAny>>,
    offsets: Vec<u64>,
    end: u64,
    size: u64,
    validator: &str,
) -> PyResult<Bound<'py, PyBytes>> {
    let raw = keys
        .iter()
        .map(|key| {
            if let Ok(text) = key.cast::<PyString>() {
                text.to_str().map(str::as_bytes)
            } else if let Ok(bytes) = key.cast::<PyBytes>() {
                Ok(bytes.as_bytes())
            } else {
                Err(PyTypeError::new_err(format!("an index key must be str or bytes, not {}", key.get_type().name()?)))
            }
        })
        .collect::<PyResult<Vec<&[u8]>>>()?;
    let content = IndexContent { keys: &raw, offsets: &offsets, end, size, validator };
    let bytes = encode(&content).map_err(PyValueError::new_err)?;
    Ok(PyBytes::new(py, &bytes))
}
