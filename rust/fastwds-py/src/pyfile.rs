//! A Python binary file object as a Rust byte stream, so a Python-side opener can hand a stream to the core.

use std::io::{self, Read};

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// Reads by calling the object's `read(n)` with the GIL held (briefly, once per chunk).
pub struct PyFileReader {
    file: Py<PyAny>,
    /// Bytes a `read(n)` returned beyond `n` (a misbehaving file object must not lose data).
    spill: Vec<u8>,
}

impl PyFileReader {
    pub fn new(file: Py<PyAny>) -> Self {
        PyFileReader { file, spill: Vec::new() }
    }
}

impl Read for PyFileReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.spill.is_empty() {
            let chunk = Python::attach(|py| -> PyResult<Vec<u8>> {
                let data = self.file.bind(py).call_method1(intern!(py, "read"), (buf.len(),))?;
                if let Ok(bytes) = data.cast::<PyBytes>() {
                    return Ok(bytes.as_bytes().to_vec());
                }
                data.extract::<Vec<u8>>()
            })
            .map_err(|e| io::Error::other(format!("Python stream read failed: {e}")))?;
            self.spill = chunk;
        }
        let n = self.spill.len().min(buf.len());
        buf[..n].copy_from_slice(&self.spill[..n]);
        self.spill.drain(..n);
        Ok(n)
    }
}

/// A file object the core opened through a Python opener: read like [`PyFileReader`], closed when dropped.
pub struct OwnedPyFile(Option<PyFileReader>);

impl OwnedPyFile {
    pub fn new(reader: PyFileReader) -> Self {
        OwnedPyFile(Some(reader))
    }
}

impl Read for OwnedPyFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.0 {
            Some(reader) => reader.read(buf),
            None => Ok(0),
        }
    }
}

impl Drop for OwnedPyFile {
    fn drop(&mut self) {
        // Closed and released with the GIL held, on the reader thread that drops it: a Python object dropped
        // without the GIL would go through PyO3's deferred-decref lock (see `Options::fallback_opener`).
        if let Some(reader) = self.0.take() {
            Python::attach(|py| {
                // A failing close (a `pipe:` command cut short) adds nothing to what the read reported.
                let _ = reader.file.bind(py).call_method0(intern!(py, "close"));
                drop(reader);
            });
        }
    }
}
