//! The options of a `ShardReader` as they cross into the core: a `ReaderConfig` built from Python values, with
//! Python callbacks wrapped so the core calls them (GIL taken) and keeps what they raise.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use fastwds_core::error::CallbackError;
use fastwds_core::reader::{DEFAULT_MAX_MEMBER_BYTES, DEFAULT_READ_TIMEOUT};
use fastwds_core::ReaderConfig;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use crate::buffer::bytes_allocator;
use crate::image_options::ImageOptions;
use crate::pyfile::{OwnedPyFile, PyFileReader};

/// Members this large are read by the reader threads straight into the `bytes` Python gets.
const LARGE_FIELD: u64 = 1 << 20;

pub struct Options {
    pub(crate) threads: usize,
    pub(crate) prefetch: usize,
    pub(crate) ordered: bool,
    pub(crate) buffer_bytes: usize,
    pub(crate) buffer_samples: usize,
    pub(crate) fields: Option<Vec<String>>,
    pub(crate) select_files: Option<Py<PyAny>>,
    pub(crate) rename_files: Option<Py<PyAny>>,
    pub(crate) lcase: bool,
    pub(crate) members: bool,
    /// With `members`: add each member's mode, owner and time to its dict (`tar_members(info=True)` only).
    pub(crate) member_info: bool,
    pub(crate) handler: Option<Py<PyAny>>,
    pub(crate) images: Option<Py<PyAny>>,
    pub(crate) max_member_bytes: u64,
    /// Seconds a network read may wait for data.
    pub(crate) read_timeout: Duration,
    /// `opener(url) -> binary file object` for schemes the core does not read itself.
    pub(crate) opener: Option<Py<PyAny>>,
}

impl Options {
    /// Reading one stream: one thread, no read-ahead, a modest buffer.
    pub(crate) fn one_stream(
        fields: Option<Vec<String>>,
        lcase: bool,
        members: bool,
        handler: Option<Py<PyAny>>,
    ) -> Self {
        Options {
            threads: 1,
            prefetch: 1,
            ordered: true,
            buffer_bytes: 64 << 20,
            buffer_samples: 1024,
            fields,
            select_files: None,
            rename_files: None,
            lcase,
            members,
            member_info: false,
            handler,
            images: None,
            max_member_bytes: DEFAULT_MAX_MEMBER_BYTES,
            read_timeout: DEFAULT_READ_TIMEOUT,
            opener: None,
        }
    }

    pub(crate) fn config(&self, py: Python<'_>) -> PyResult<ReaderConfig> {
        let images = match &self.images {
            Some(images) => Some(Arc::new(ImageOptions::extract_with(images.bind(py), None)?.stage()?)),
            None => None,
        };
        Ok(ReaderConfig {
            threads: self.threads,
            prefetch: self.prefetch,
            ordered: self.ordered,
            buffer_bytes: self.buffer_bytes,
            buffer_samples: self.buffer_samples,
            fields: self.fields.as_ref().map(|f| f.iter().cloned().collect::<HashSet<_>>()),
            select_files: self.select_files.as_ref().map(|f| {
                let f = f.clone_ref(py);
                Arc::new(move |name: &str| {
                    Python::attach(|py| f.call1(py, (name,)).and_then(|r| r.is_truthy(py)).map_err(keep_pyerr))
                }) as Arc<fastwds_core::reader::SelectFn>
            }),
            rename_files: self.rename_files.as_ref().map(|f| {
                let f = f.clone_ref(py);
                Arc::new(move |name: &str| {
                    Python::attach(|py| f.call1(py, (name,)).and_then(|r| r.extract::<String>(py)).map_err(keep_pyerr))
                }) as Arc<fastwds_core::reader::RenameFn>
            }),
            lcase: self.lcase,
            members: self.members,
            member_info: self.member_info,
            images,
            allocator: Some(bytes_allocator()),
            allocate_from: LARGE_FIELD,
            secure: secure_mode(py)?,
            max_member_bytes: self.max_member_bytes,
            read_timeout: self.read_timeout,
            opener: Some(self.fallback_opener(py)?),
        })
    }

    /// Opens URLs whose scheme the core does not read: with `opener`, or else with `fastwds.gopen.gopen`, whose
    /// scheme table users extend (`gs://` through gsutil, `hf://`, their own).
    fn fallback_opener(&self, py: Python<'_>) -> PyResult<Arc<fastwds_core::source::OpenFn>> {
        // The default opener holds no Python object: the config is often dropped on a reader thread without
        // the GIL, where dropping one takes PyO3's deferred-decref lock, and a fork() at that moment (a
        // DataLoader starting its workers) would leave the child deadlocked on it.
        let user = self.opener.as_ref().map(|f| f.clone_ref(py));
        Ok(Arc::new(move |url: &str| {
            Python::attach(|py| {
                let file = match &user {
                    Some(f) => f.bind(py).call1((url,))?,
                    None => py.import("fastwds.gopen")?.getattr("gopen")?.call1((url,))?,
                };
                Ok(Box::new(OwnedPyFile::new(PyFileReader::new(file.unbind()))) as Box<dyn std::io::Read + Send>)
            })
            .map_err(keep_pyerr)
        }))
    }

    pub(crate) fn to_kwargs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("threads", self.threads)?;
        d.set_item("prefetch", self.prefetch)?;
        d.set_item("ordered", self.ordered)?;
        d.set_item("buffer_bytes", self.buffer_bytes)?;
        d.set_item("buffer_samples", self.buffer_samples)?;
        d.set_item("fields", self.fields.clone())?;
        d.set_item("select_files", self.select_files.as_ref().map(|f| f.clone_ref(py)))?;
        d.set_item("rename_files", self.rename_files.as_ref().map(|f| f.clone_ref(py)))?;
        d.set_item("lcase", self.lcase)?;
        d.set_item("members", self.members)?;
        d.set_item("handler", self.handler.as_ref().map(|f| f.clone_ref(py)))?;
        d.set_item("images", self.images.as_ref().map(|f| f.clone_ref(py)))?;
        d.set_item("max_member_bytes", self.max_member_bytes)?;
        d.set_item("read_timeout", self.read_timeout.as_secs_f64())?;
        d.set_item("opener", self.opener.as_ref().map(|f| f.clone_ref(py)))?;
        Ok(d)
    }
}

/// A Python callback's exception, kept whole inside the core's error.
fn keep_pyerr(e: PyErr) -> CallbackError {
    Arc::new(e)
}

/// Whether secure mode is on: `fastwds.utils.enforce_security` (from `WDS_SECURE=1` at import, or set by the
/// program), read when an iteration starts.
fn secure_mode(py: Python<'_>) -> PyResult<bool> {
    py.import("fastwds.utils")?.getattr("enforce_security")?.is_truthy()
}

/// Field names from any iterable of strings (a list, a set, a generator); a lone string is a mistake.
pub(crate) fn field_names(fields: Option<Bound<'_, PyAny>>) -> PyResult<Option<Vec<String>>> {
    let Some(fields) = fields else { return Ok(None) };
    if fields.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err("fields must be an iterable of field names, not a single string"));
    }
    fields.try_iter()?.map(|name| name?.extract::<String>()).collect::<PyResult<Vec<_>>>().map(Some)
}
