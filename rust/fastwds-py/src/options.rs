//! The options of a `ShardReader` as they cross into the core: a `ReaderConfig` built from Python values, with
//! Python callbacks wrapped so the core calls them (GIL taken) and keeps what they raise.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use fastwds_core::cache::CacheSettings;
use fastwds_core::error::CallbackError;
use fastwds_core::reader::{DEFAULT_MAX_MEMBER_BYTES, DEFAULT_READ_TIMEOUT};
use fastwds_core::remote::RemoteOptions;
use fastwds_core::ReaderConfig;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};

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
    /// Remote shards: client settings, read timeout, retries.
    pub(crate) remote: Remote,
    /// The cache of remote shards (shard dicts with a "cache_path" go through it).
    pub(crate) cache: Option<CacheSettings>,
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
            remote: Remote::default(),
            cache: None,
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
                let f = GilDropped::new(f.clone_ref(py));
                Arc::new(move |name: &str| {
                    Python::attach(|py| f.get().call1(py, (name,)).and_then(|r| r.is_truthy(py)).map_err(keep_pyerr))
                }) as Arc<fastwds_core::reader::SelectFn>
            }),
            rename_files: self.rename_files.as_ref().map(|f| {
                let f = GilDropped::new(f.clone_ref(py));
                Arc::new(move |name: &str| {
                    Python::attach(|py| {
                        f.get().call1(py, (name,)).and_then(|r| r.extract::<String>(py)).map_err(keep_pyerr)
                    })
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
            remote: self.remote.0.clone(),
            cache: self.cache.clone(),
            opener: Some(self.fallback_opener(py)?),
        })
    }

    /// Opens URLs whose scheme the core does not read: with `opener`, or else with `fastwds.gopen.gopen`, whose
    /// scheme table users extend (`gs://` through gsutil, `hf://`, their own).
    fn fallback_opener(&self, py: Python<'_>) -> PyResult<Arc<fastwds_core::source::OpenFn>> {
        // The default opener holds no Python object, and a user's is released with the GIL (see `GilDropped`).
        let user = self.opener.as_ref().map(|f| GilDropped::new(f.clone_ref(py)));
        Ok(Arc::new(move |url: &str| {
            Python::attach(|py| {
                let file = match &user {
                    Some(f) => f.get().bind(py).call1((url,))?,
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
        let remote = &self.remote.0;
        d.set_item("read_timeout", remote.read_timeout.as_secs_f64())?;
        d.set_item("max_retries", remote.max_retries)?;
        d.set_item("retry_timeout", remote.retry_timeout.as_secs_f64())?;
        d.set_item("storage_options", PyDict::from_sequence(&PyList::new(py, &remote.storage_options)?.into_any())?)?;
        if let Some(cache) = &self.cache {
            d.set_item("cache_dir", &cache.dir)?;
            d.set_item("cache_size", cache.size)?;
        }
        d.set_item("opener", self.opener.as_ref().map(|f| f.clone_ref(py)))?;
        Ok(d)
    }
}

/// How remote shards are reached, as Python gives it: `storage_options` (a dict of `object_store` settings,
/// values as strings, booleans as "true"/"false"), `read_timeout` and `retry_timeout` in seconds,
/// `max_retries`.
#[derive(Clone)]
pub struct Remote(pub RemoteOptions);

impl Default for Remote {
    fn default() -> Self {
        Remote(RemoteOptions { read_timeout: DEFAULT_READ_TIMEOUT, ..RemoteOptions::default() })
    }
}

impl Remote {
    pub(crate) fn new(
        storage_options: Option<&Bound<'_, PyAny>>,
        read_timeout: f64,
        max_retries: u32,
        retry_timeout: f64,
    ) -> PyResult<Self> {
        Ok(Remote(RemoteOptions {
            storage_options: storage_options.map(settings).transpose()?.unwrap_or_default(),
            read_timeout: seconds("read_timeout", read_timeout)?,
            max_retries,
            retry_timeout: seconds("retry_timeout", retry_timeout)?,
        }))
    }
}

/// A positive number of seconds.
pub(crate) fn seconds(name: &str, value: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|t| !t.is_zero())
        .ok_or_else(|| PyValueError::new_err(format!("{name} must be a positive number of seconds")))
}

/// A settings dict as (key, value) strings; booleans as "true"/"false", as `object_store` parses them.
fn settings(options: &Bound<'_, PyAny>) -> PyResult<Vec<(String, String)>> {
    if options.is_none() {
        return Ok(Vec::new());
    }
    let options = options.cast::<PyDict>().map_err(|_| PyTypeError::new_err("storage_options must be a dict"))?;
    options
        .iter()
        .map(|(key, value)| {
            let value = match value.extract::<bool>() {
                Ok(flag) if value.is_instance_of::<pyo3::types::PyBool>() => flag.to_string(),
                _ => value.str()?.extract()?,
            };
            Ok((key.extract::<String>()?.to_ascii_lowercase(), value))
        })
        .collect()
}

/// The cache settings: `cache_dir` (None: no cache) and `cache_size` in bytes.
pub(crate) fn cache_settings(cache_dir: Option<std::path::PathBuf>, cache_size: u64) -> Option<CacheSettings> {
    cache_dir.map(|dir| CacheSettings { dir, size: cache_size })
}

/// A Python object inside the core's config, released with the GIL held wherever the config is dropped. The
/// config is often dropped on a reader thread; a `Py` dropped there without the GIL goes through PyO3's
/// deferred-decref lock, and a fork() while a reader thread holds it (a DataLoader starting its workers) leaves
/// the child deadlocked on that lock.
struct GilDropped(Option<Py<PyAny>>);

impl GilDropped {
    fn new(object: Py<PyAny>) -> Self {
        GilDropped(Some(object))
    }

    fn get(&self) -> &Py<PyAny> {
        // Only `drop` takes the object out.
        self.0.as_ref().expect("GilDropped is emptied only by drop")
    }
}

impl Drop for GilDropped {
    fn drop(&mut self) {
        if let Some(object) = self.0.take() {
            Python::attach(|_| drop(object));
        }
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
