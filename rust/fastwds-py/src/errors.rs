//! Mapping core errors to Python exceptions that carry the URL, member and offset as attributes.

use fastwds_core::{ErrorKind, ShardError as CoreError};
use pyo3::create_exception;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;

create_exception!(
    _core,
    ShardError,
    PyOSError,
    "A shard could not be read: open failed, a command exited non-zero, or the tar stream is corrupt or cut."
);

create_exception!(
    _core,
    ImageDecodeError,
    PyValueError,
    "An image field could not be decoded on the reader threads; found as the field's value."
);

/// The Python exception for a core error: `ValueError` for a repeated field (as the reference raises),
/// `ShardError` (an `OSError`) for everything else; both with `url`, `member` and `offset` attributes.
pub fn to_pyerr(py: Python<'_>, e: CoreError) -> PyErr {
    let message = e.to_string();
    let err = match e.kind {
        ErrorKind::DuplicateField => PyValueError::new_err(message),
        _ => ShardError::new_err(message),
    };
    let value = err.value(py);
    // Attribute assignment on a fresh exception instance cannot fail short of memory exhaustion.
    let _ = value.setattr("url", e.url);
    let _ = value.setattr("member", e.member);
    let _ = value.setattr("offset", e.offset);
    err
}
