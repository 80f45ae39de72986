//! Core errors as the Python exceptions of `fastwds.errors`, which live in a real module so they pickle
//! across processes, with the URL, member, offset and kind as attributes.

use fastwds_core::{ErrorKind, ShardError as CoreError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// The exception class `name` of `fastwds.errors`.
pub fn error_class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    py.import("fastwds.errors")?.getattr(name)
}

/// The Python exception for a core error. A user callback's own exception is raised as itself, with a note
/// saying where; a repeated field is a `DuplicateFieldError` and a secure-mode refusal an `InsecureURLError`
/// (both `ValueError`s, as the reference raises); everything else is a `ShardError` (an `OSError` and a
/// `tarfile.ReadError`).
pub fn to_pyerr(py: Python<'_>, e: CoreError) -> PyErr {
    if let Some(err) = e.cause.as_ref().and_then(|c| c.downcast_ref::<PyErr>()) {
        let err = err.clone_ref(py);
        // Best effort: an exception that refuses notes is still raised as itself.
        let _ = add_note(err.value(py), &format!("raised by a callback of the fastwds reader for {e}"));
        return err;
    }
    build(py, &e).unwrap_or_else(|err| err)
}

/// PEP 678's `add_note`, by hand where Python (3.10) lacks it.
fn add_note(err: &Bound<'_, pyo3::exceptions::PyBaseException>, note: &str) -> PyResult<()> {
    if err.hasattr("add_note")? {
        err.call_method1("add_note", (note,))?;
        return Ok(());
    }
    let notes = match err.getattr("__notes__") {
        Ok(notes) => notes,
        Err(_) => {
            let notes = pyo3::types::PyList::empty(err.py()).into_any();
            err.setattr("__notes__", &notes)?;
            notes
        }
    };
    notes.call_method1("append", (note,))?;
    Ok(())
}

fn build(py: Python<'_>, e: &CoreError) -> PyResult<PyErr> {
    let class = match e.kind {
        ErrorKind::DuplicateField => "DuplicateFieldError",
        ErrorKind::Insecure => "InsecureURLError",
        _ => "ShardError",
    };
    let kwargs = PyDict::new(py);
    kwargs.set_item("url", &e.url)?;
    kwargs.set_item("member", &e.member)?;
    kwargs.set_item("offset", e.offset)?;
    kwargs.set_item("kind", e.kind.name())?;
    let value = error_class(py, class)?.call((e.to_string(),), Some(&kwargs))?;
    Ok(PyErr::from_value(value))
}

/// An `ImageDecodeError` value for an image field that failed on the reader threads.
pub fn image_decode_error<'py>(py: Python<'py>, message: String) -> PyResult<Bound<'py, PyAny>> {
    error_class(py, "ImageDecodeError")?.call1((message,))
}
