//! Remote objects outside a reader: listing a bucket prefix or glob, an object's size and ETag, reading one
//! object as a Python file (`gopen`), and writing one by multipart upload (`TarWriter("s3://...")`). Every
//! network wait runs with the GIL released.

use std::io::Read;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use fastwds_core::reader::DEFAULT_READ_TIMEOUT;
use fastwds_core::remote::{self, Upload, DEFAULT_MAX_RETRIES, DEFAULT_RETRY_TIMEOUT};
use fastwds_core::source::http_agent;
use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use crate::errors::to_pyerr;
use crate::options::Remote;

/// The object URLs under a prefix (`s3://bkt/train/`) or matching a glob (`s3://bkt/train/shard-*.tar`),
/// sorted; every page of the listing.
#[pyfunction]
#[pyo3(signature = (url, storage_options=None))]
pub fn list_objects(py: Python<'_>, url: &str, storage_options: Option<Bound<'_, PyAny>>) -> PyResult<Vec<String>> {
    let remote = remote_options(storage_options)?;
    py.detach(|| remote::list(url, &remote.0)).map_err(|e| to_pyerr(py, e))
}

/// A remote shard's (size, ETag) from a HEAD request (`s3://`, `gs://`, `http(s)://`, `hf://`); either is
/// None when the server does not send it (an object store always sends the size).
#[pyfunction]
#[pyo3(signature = (url, storage_options=None))]
pub fn stat_object(
    py: Python<'_>,
    url: &str,
    storage_options: Option<Bound<'_, PyAny>>,
) -> PyResult<(Option<u64>, Option<String>)> {
    let remote = remote_options(storage_options)?;
    py.detach(|| remote::stat(url, &remote.0)).map_err(|e| to_pyerr(py, e))
}

fn remote_options(storage_options: Option<Bound<'_, PyAny>>) -> PyResult<Remote> {
    Remote::new(
        storage_options.as_ref(),
        DEFAULT_READ_TIMEOUT.as_secs_f64(),
        DEFAULT_MAX_RETRIES,
        DEFAULT_RETRY_TIMEOUT.as_secs_f64(),
    )
}

/// A remote object (`s3://`, `gs://`, `hf://`, `http(s)://`) read as a binary file, resumed after drops.
#[pyclass(module = "fastwds._core", frozen)]
pub struct RemoteReader {
    url: String,
    body: Mutex<Option<Box<dyn Read + Send>>>,
    /// Set when closed, so a read blocked in another thread gives up.
    cancel: Arc<AtomicBool>,
}

#[pymethods]
impl RemoteReader {
    #[new]
    #[pyo3(signature = (url, storage_options=None, read_timeout=DEFAULT_READ_TIMEOUT.as_secs_f64(),
        max_retries=DEFAULT_MAX_RETRIES, retry_timeout=DEFAULT_RETRY_TIMEOUT.as_secs_f64()))]
    fn new(
        py: Python<'_>,
        url: String,
        storage_options: Option<Bound<'_, PyAny>>,
        read_timeout: f64,
        max_retries: u32,
        retry_timeout: f64,
    ) -> PyResult<Self> {
        let remote = Remote::new(storage_options.as_ref(), read_timeout, max_retries, retry_timeout)?;
        let cancel = Arc::new(AtomicBool::new(false));
        let agent = http_agent(remote.0.read_timeout);
        let body = py.detach(|| remote::open(&url, 0, &remote.0, &agent, &cancel)).map_err(|e| to_pyerr(py, e))?;
        Ok(RemoteReader { url, body: Mutex::new(Some(body)), cancel })
    }

    /// Up to `size` bytes (all that is left when `size` is negative); b"" at the end.
    #[pyo3(signature = (size=-1))]
    fn read<'py>(&self, py: Python<'py>, size: i64) -> PyResult<Bound<'py, PyBytes>> {
        let url = &self.url;
        let data = py
            .detach(|| {
                let mut guard = self.body.lock().unwrap_or_else(|e| e.into_inner());
                let Some(body) = guard.as_mut() else {
                    return Err(std::io::Error::other("read of a closed file"));
                };
                let mut data = Vec::new();
                match u64::try_from(size) {
                    Ok(n) => {
                        data.reserve(n.min(1 << 24) as usize);
                        body.take(n).read_to_end(&mut data)?;
                    }
                    Err(_) => {
                        body.read_to_end(&mut data)?;
                    }
                }
                Ok::<_, std::io::Error>(data)
            })
            .map_err(|e| PyOSError::new_err(format!("{url}: {e}")))?;
        Ok(PyBytes::new(py, &data))
    }

    fn readable(&self) -> bool {
        true
    }

    #[getter]
    fn closed(&self) -> bool {
        self.body.lock().unwrap_or_else(|e| e.into_inner()).is_none()
    }

    #[getter]
    fn name(&self) -> &str {
        &self.url
    }

    fn close(&self) {
        self.cancel.store(true, std::sync::atomic::Ordering::SeqCst);
        // A read in progress holds the lock until it gives up (the cancel flag makes it prompt).
        self.body.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, PyTuple>) {
        self.close();
    }
}

/// An object written by multipart upload: it appears under its name only when `close()` completes it; `abort()`
/// (or leaving a `with` block by an exception, or garbage collection before `close()`) leaves no object.
#[pyclass(module = "fastwds._core", frozen)]
pub struct ObjectWriter {
    url: String,
    upload: Mutex<Option<Upload>>,
}

#[pymethods]
impl ObjectWriter {
    #[new]
    #[pyo3(signature = (url, storage_options=None))]
    fn new(py: Python<'_>, url: String, storage_options: Option<Bound<'_, PyAny>>) -> PyResult<Self> {
        let remote = remote_options(storage_options)?;
        let upload = py.detach(|| remote::upload(&url, &remote.0)).map_err(|e| to_pyerr(py, e))?;
        Ok(ObjectWriter { url, upload: Mutex::new(Some(upload)) })
    }

    /// Buffers `data` (any bytes-like object), uploading full parts; returns its length.
    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<usize> {
        let bytes: Vec<u8> = match data.cast::<PyBytes>() {
            Ok(b) => b.as_bytes().to_vec(),
            Err(_) => py.import("builtins")?.getattr("bytes")?.call1((data,))?.extract()?,
        };
        self.with_upload(py, |upload| upload.write(&bytes))?;
        Ok(bytes.len())
    }

    fn flush(&self) {}

    fn writable(&self) -> bool {
        true
    }

    #[getter]
    fn closed(&self) -> bool {
        self.lock().as_ref().is_none_or(|u| !u.is_open())
    }

    #[getter]
    fn name(&self) -> &str {
        &self.url
    }

    /// Completes the object (a no-op when closed already).
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        if self.closed() {
            return Ok(());
        }
        self.with_upload(py, |upload| upload.finish().map(|_| ()))
    }

    /// Abandons the upload: no object appears.
    fn abort(&self, py: Python<'_>) -> PyResult<()> {
        let upload = self.lock().take();
        match upload {
            Some(mut upload) => {
                py.detach(|| upload.abort()).map_err(|e| PyOSError::new_err(format!("{}: abort failed: {e}", self.url)))
            }
            None => Ok(()),
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (exc_type, _exc=None, _tb=None))]
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<Bound<'_, PyAny>>,
        _exc: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        if exc_type.is_some_and(|t| !t.is_none()) {
            self.abort(py)
        } else {
            self.close(py)
        }
    }
}

impl ObjectWriter {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Upload>> {
        self.upload.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_upload(&self, py: Python<'_>, f: impl FnOnce(&mut Upload) -> std::io::Result<()> + Send) -> PyResult<()> {
        let url = &self.url;
        py.detach(|| {
            let mut guard = self.lock();
            let upload = guard.as_mut().ok_or_else(|| std::io::Error::other("the object is closed"))?;
            f(upload)
        })
        .map_err(|e| PyOSError::new_err(format!("{url}: {e}")))
    }
}
