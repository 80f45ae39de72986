//! `ShardReader` (a picklable configuration) and `SampleIterator` (one pass, owning the threads).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use fastwds_core::image::{self, DEFAULT_MAX_PIXELS};
use fastwds_core::{ImageStage, Item, Next, Pool, ReaderConfig, Sample, ShardSpec, Value};
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyIterator, PyList, PyString, PyTuple};

use crate::buffer::{buffer_to_bytes, bytes_allocator};
use crate::errors::{to_pyerr, ImageDecodeError};
use crate::fork;
use crate::image::{build_spec, pixels_to_array};
use crate::pyfile::PyFileReader;
use crate::wait::next_item;

/// Members this large are read by the reader threads straight into the `bytes` Python gets.
const LARGE_FIELD: u64 = 1 << 20;

/// Distinct field names remembered per iterator.
const MAX_CACHED_NAMES: usize = 32;

/// How long `close()` waits for the reader threads to exit.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads tar shards into samples on Rust threads; iterating it yields sample dicts.
#[pyclass(frozen, module = "fastwds._core")]
pub struct ShardReader {
    shards: Py<PyAny>,
    options: Options,
}

struct Options {
    threads: usize,
    prefetch: usize,
    ordered: bool,
    buffer_bytes: usize,
    buffer_samples: usize,
    fields: Option<Vec<String>>,
    select_files: Option<Py<PyAny>>,
    rename_files: Option<Py<PyAny>>,
    lcase: bool,
    members: bool,
    /// With `members`: add each member's mode, owner and time to its dict (`tar_members(info=True)` only).
    member_info: bool,
    handler: Option<Py<PyAny>>,
    images: Option<Py<PyAny>>,
}

impl Options {
    /// Reading one stream: one thread, no read-ahead, a modest buffer.
    fn one_stream(fields: Option<Vec<String>>, lcase: bool, members: bool, handler: Option<Py<PyAny>>) -> Self {
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
        }
    }

    fn config(&self, py: Python<'_>) -> PyResult<ReaderConfig> {
        let images = match &self.images {
            Some(images) => Some(Arc::new(image_stage(images.bind(py))?)),
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
                    Python::attach(|py| f.call1(py, (name,)).and_then(|r| r.is_truthy(py)).map_err(|e| e.to_string()))
                }) as Arc<fastwds_core::reader::SelectFn>
            }),
            rename_files: self.rename_files.as_ref().map(|f| {
                let f = f.clone_ref(py);
                Arc::new(move |name: &str| {
                    Python::attach(|py| {
                        f.call1(py, (name,)).and_then(|r| r.extract::<String>(py)).map_err(|e| e.to_string())
                    })
                }) as Arc<fastwds_core::reader::RenameFn>
            }),
            lcase: self.lcase,
            members: self.members,
            member_info: self.member_info,
            images,
            allocator: Some(bytes_allocator()),
            allocate_from: LARGE_FIELD,
        })
    }

    fn to_kwargs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
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
        Ok(d)
    }
}

#[pymethods]
impl ShardReader {
    #[new]
    #[pyo3(signature = (shards, *, threads=0, prefetch=0, ordered=true, buffer_bytes=256*1024*1024,
        buffer_samples=4096, fields=None, select_files=None, rename_files=None, lcase=true, members=false,
        handler=None, images=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        shards: Py<PyAny>,
        threads: usize,
        prefetch: usize,
        ordered: bool,
        buffer_bytes: usize,
        buffer_samples: usize,
        fields: Option<Bound<'_, PyAny>>,
        select_files: Option<Py<PyAny>>,
        rename_files: Option<Py<PyAny>>,
        lcase: bool,
        members: bool,
        handler: Option<Py<PyAny>>,
        images: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let fields = field_names(fields)?;
        // Checked now, so a typo fails at construction rather than on the first sample.
        if let Some(images) = &images {
            image_stage(images)?;
        }
        let images = images.map(Bound::unbind);
        let options = Options {
            threads,
            prefetch,
            ordered,
            buffer_bytes,
            buffer_samples,
            fields,
            select_files,
            rename_files,
            lcase,
            members,
            member_info: false,
            handler,
            images,
        };
        Ok(ShardReader { shards, options })
    }

    /// Starts one pass over the shards (threads start on the first `next()`).
    fn __iter__(&self, py: Python<'_>) -> PyResult<SampleIterator> {
        let shards = self.shards.bind(py).try_iter()?.unbind();
        SampleIterator::new(py, shards, &self.options)
    }

    /// Pickles as configuration (for DataLoader workers started by spawn).
    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let rebuild = py.import("fastwds._core")?.getattr("_rebuild_reader")?;
        let args =
            PyTuple::new(py, [self.shards.clone_ref(py).into_bound(py), self.options.to_kwargs(py)?.into_any()])?;
        PyTuple::new(py, [rebuild, args.into_any()])
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "ShardReader({}, threads={}, ordered={})",
            self.shards.bind(py).repr()?,
            self.options.threads,
            if self.options.ordered { "True" } else { "False" }
        ))
    }
}

/// Rebuilds a pickled `ShardReader`.
#[pyfunction]
pub fn _rebuild_reader<'py>(
    py: Python<'py>,
    shards: Py<PyAny>,
    kwargs: Bound<'py, PyDict>,
) -> PyResult<Bound<'py, PyAny>> {
    py.get_type::<ShardReader>().call((shards,), Some(&kwargs))
}

/// One pass over a ShardReader's shards; owns the reader threads and `pipe:` children.
#[pyclass(frozen, module = "fastwds._core")]
pub struct SampleIterator {
    state: Mutex<IterState>,
}

struct IterState {
    config: ReaderConfig,
    shards: Option<Py<PyIterator>>,
    pool: Option<Pool>,
    /// The fork generation that started the pool: after fork() the threads exist only in the parent.
    generation: u64,
    handler: Option<Py<PyAny>>,
    done: bool,
    /// An error raised by the shard iterable, held back until the shards before it are delivered.
    deferred: Option<PyErr>,
    /// Interned field names: a sample has a handful, so a linear scan beats hashing.
    field_names: Vec<(String, Py<PyString>)>,
    url: Option<(Arc<str>, Py<PyString>)>,
}

impl SampleIterator {
    fn new(py: Python<'_>, shards: Py<PyIterator>, options: &Options) -> PyResult<Self> {
        let state = IterState {
            config: options.config(py)?,
            shards: Some(shards),
            pool: None,
            generation: fork::generation(),
            handler: options.handler.as_ref().map(|h| h.clone_ref(py)),
            done: false,
            deferred: None,
            field_names: Vec::new(),
            url: None,
        };
        Ok(SampleIterator { state: Mutex::new(state) })
    }

    fn lock(&self) -> PyResult<MutexGuard<'_, IterState>> {
        match self.state.try_lock() {
            Ok(guard) => Ok(guard),
            Err(TryLockError::Poisoned(e)) => Ok(e.into_inner()),
            Err(TryLockError::WouldBlock) => {
                Err(PyRuntimeError::new_err("this SampleIterator is already being iterated by another thread"))
            }
        }
    }
}

#[pymethods]
impl SampleIterator {
    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let mut state = self.lock()?;
        let result = state.next_sample(py);
        if result.is_err() {
            state.stop();
        }
        result
    }

    /// Stops the threads, kills and reaps `pipe:` children, and waits (bounded) for them to exit.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let mut state = self.lock()?;
        state.done = true;
        if let Some(mut pool) = state.pool.take() {
            if state.generation == fork::generation() {
                py.detach(|| pool.shutdown(CLOSE_TIMEOUT));
            } else {
                pool.abandon();
            }
        }
        Ok(())
    }

    /// Reader threads still running (0 before the first `next()` and after the end).
    #[getter]
    fn threads_running(&self) -> PyResult<usize> {
        let state = self.lock()?;
        Ok(state.pool.as_ref().map_or(0, Pool::threads_running))
    }
}

impl IterState {
    fn next_sample<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        loop {
            if self.done {
                return Ok(None);
            }
            self.ensure_pool()?;
            self.feed(py)?;
            let pool = self.pool.as_mut().expect("ensure_pool started the pool");
            match next_item(py, pool)? {
                Next::Item(Item::Sample(sample)) => return self.sample_dict(py, sample).map(Some),
                Next::Item(Item::Error(e)) => {
                    let err = to_pyerr(py, e);
                    let Some(handler) = &self.handler else {
                        return Err(err);
                    };
                    // webdataset's handler protocol: true skips the rest of this shard, false stops quietly,
                    // raising propagates.
                    if !handler.call1(py, (err.value(py),))?.is_truthy(py)? {
                        self.stop();
                        return Ok(None);
                    }
                }
                Next::Item(Item::End) | Next::Pending => {}
                Next::Idle => {
                    if let Some(err) = self.deferred.take() {
                        return Err(err);
                    }
                    if self.shards.is_none() {
                        self.stop();
                        return Ok(None);
                    }
                }
            }
        }
    }

    fn ensure_pool(&mut self) -> PyResult<()> {
        if self.pool.is_some() {
            if self.generation != fork::generation() {
                self.stop();
                return Err(PyRuntimeError::new_err(
                    "this SampleIterator was started in another process (before fork()); \
                     iterate the ShardReader again in this process",
                ));
            }
            return Ok(());
        }
        self.generation = fork::generation();
        self.pool = Some(Pool::start(self.config.clone()));
        Ok(())
    }

    /// Submits shards from the Python iterable while the pool has room for them.
    fn feed(&mut self, py: Python<'_>) -> PyResult<()> {
        let Some(pool) = self.pool.as_mut() else {
            return Ok(());
        };
        while pool.wants_shard() {
            let Some(shards) = &self.shards else { break };
            match shards.bind(py).clone().next().map(|shard| shard.and_then(|s| shard_spec(&s))) {
                Some(Ok(spec)) => pool.submit(spec),
                Some(Err(err)) => {
                    // Raised where the stream is: after the samples of the shards already submitted.
                    self.deferred = Some(err);
                    self.shards = None;
                }
                None => self.shards = None,
            }
        }
        Ok(())
    }

    fn sample_dict<'py>(&mut self, py: Python<'py>, sample: Sample) -> PyResult<Bound<'py, PyDict>> {
        let url = match &self.url {
            Some((u, s)) if Arc::ptr_eq(u, &sample.url) => s.clone_ref(py),
            _ => {
                let s = PyString::new(py, &sample.url).unbind();
                self.url = Some((Arc::clone(&sample.url), s.clone_ref(py)));
                s
            }
        };
        let d = PyDict::new(py);
        if self.config.members {
            d.set_item(intern!(py, "fname"), sample.key)?;
            let data = match sample.fields.first() {
                Some((_, Value::Buffer(buffer))) => buffer_to_bytes(py, buffer.as_ref()),
                Some((_, value)) => PyBytes::new(py, value.as_slice()).unbind(),
                None => PyBytes::new(py, b"").unbind(),
            };
            d.set_item(intern!(py, "data"), data)?;
            d.set_item(intern!(py, "__url__"), url)?;
            // With member info, the text fields after the data (see ReaderConfig::member_info).
            for (name, value) in sample.fields.iter().skip(1) {
                let text = String::from_utf8_lossy(value.as_slice());
                let bad = |_| pyo3::exceptions::PyValueError::new_err(format!("member {name}: {text}"));
                match name.as_str() {
                    "uname" | "gname" => d.set_item(name.as_str(), text.as_ref())?,
                    "mtime" => d.set_item(name.as_str(), text.parse::<i64>().map_err(bad)?)?,
                    _ => d.set_item(name.as_str(), text.parse::<u64>().map_err(bad)?)?,
                }
            }
            return Ok(d);
        }
        d.set_item(intern!(py, "__key__"), PyString::new(py, &sample.key))?;
        d.set_item(intern!(py, "__url__"), url)?;
        for (field, value) in sample.fields {
            let name = match self.field_names.iter().find(|(f, _)| *f == field) {
                Some((_, name)) => name.bind(py).clone(),
                None => {
                    let name = PyString::intern(py, &field);
                    // Shards with ever-new field names would make the scan slow; such names go uncached.
                    if self.field_names.len() < MAX_CACHED_NAMES {
                        self.field_names.push((field, name.clone().unbind()));
                    }
                    name
                }
            };
            match value {
                Value::Bytes(data) => d.set_item(name, PyBytes::new(py, &data))?,
                Value::Buffer(buffer) => d.set_item(name, buffer_to_bytes(py, buffer.as_ref()))?,
                Value::Image(pixels) => d.set_item(name, pixels_to_array(py, pixels)?)?,
                // The decode stage in Python raises it for this sample, through the pipeline's handler.
                Value::DecodeError(message) => d.set_item(name, ImageDecodeError::new_err(message).into_value(py))?,
            }
        }
        Ok(d)
    }

    fn stop(&mut self) {
        self.done = true;
        self.shards = None;
        if let Some(pool) = self.pool.take() {
            if self.generation == fork::generation() {
                drop(pool); // cancels; threads exit on their own
            } else {
                pool.abandon();
            }
        }
    }
}

impl Drop for IterState {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A shard from Python: a URL string or path, a binary file object, or a dict with "url" (and "stream").
fn shard_spec(shard: &Bound<'_, PyAny>) -> PyResult<ShardSpec> {
    let py = shard.py();
    if let Ok(url) = shard.extract::<String>() {
        return Ok(ShardSpec::Url(url));
    }
    if let Ok(d) = shard.cast::<PyDict>() {
        let url: String = match d.get_item("url")? {
            Some(u) => u.str()?.extract()?,
            None => return Err(PyTypeError::new_err("a shard dict needs a \"url\" key")),
        };
        if let Some(stream) = d.get_item("stream")?.filter(|s| !s.is_none()) {
            return Ok(ShardSpec::Stream { url, stream: Box::new(PyFileReader::new(stream.unbind())) });
        }
        // A cached copy or a rewritten URL is read from there; samples keep the original name.
        return match d.get_item("local_path")?.filter(|p| !p.is_none()) {
            Some(location) => Ok(ShardSpec::Alias { url, location: location.str()?.extract()? }),
            None => Ok(ShardSpec::Url(url)),
        };
    }
    if shard.hasattr(intern!(py, "read"))? {
        let url = match shard.getattr(intern!(py, "name")) {
            Ok(name) => name.str()?.extract()?,
            Err(_) => "<stream>".to_string(),
        };
        return Ok(ShardSpec::Stream { url, stream: Box::new(PyFileReader::new(shard.clone().unbind())) });
    }
    if shard.hasattr(intern!(py, "__fspath__"))? {
        let path = py.import("os")?.getattr("fspath")?.call1((shard,))?;
        return Ok(ShardSpec::Url(path.extract()?));
    }
    Err(PyTypeError::new_err(format!(
        "a shard must be a URL string, a path, a binary file object or a dict with \"url\", not {}",
        shard.get_type().name()?
    )))
}

/// Field names from any iterable of strings (a list, a set, a generator); a lone string is a mistake.
fn field_names(fields: Option<Bound<'_, PyAny>>) -> PyResult<Option<Vec<String>>> {
    let Some(fields) = fields else { return Ok(None) };
    if fields.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err("fields must be an iterable of field names, not a single string"));
    }
    fields.try_iter()?.map(|name| name?.extract::<String>()).collect::<PyResult<Vec<_>>>().map(Some)
}

fn one_shard<'py>(py: Python<'py>, source: &Bound<'py, PyAny>, url: Option<String>) -> PyResult<Bound<'py, PyList>> {
    if source.extract::<String>().is_ok() || url.is_none() {
        return PyList::new(py, [source]);
    }
    let d = PyDict::new(py);
    d.set_item("url", url)?;
    d.set_item("stream", source)?;
    PyList::new(py, [d])
}

/// Iterates the samples of one tar stream (a URL or a binary file object); `url` names it in samples.
#[pyfunction]
#[pyo3(signature = (source, *, url=None, fields=None, lcase=true, handler=None))]
pub fn tar_samples(
    py: Python<'_>,
    source: &Bound<'_, PyAny>,
    url: Option<String>,
    fields: Option<Bound<'_, PyAny>>,
    lcase: bool,
    handler: Option<Py<PyAny>>,
) -> PyResult<SampleIterator> {
    let fields = field_names(fields)?;
    let shards = one_shard(py, source, url)?;
    let options = Options::one_stream(fields, lcase, false, handler);
    SampleIterator::new(py, shards.try_iter()?.unbind(), &options)
}

/// Iterates the regular-file members of one tar stream as `{"fname", "data", "__url__"}` dicts; with `info`,
/// also `mode` (permission bits), `uid`, `gid`, `uname`, `gname` and `mtime` (seconds since the epoch).
#[pyfunction]
#[pyo3(signature = (source, *, url=None, info=false))]
pub fn tar_members(
    py: Python<'_>,
    source: &Bound<'_, PyAny>,
    url: Option<String>,
    info: bool,
) -> PyResult<SampleIterator> {
    let shards = one_shard(py, source, url)?;
    let mut options = Options::one_stream(None, true, true, None);
    options.member_info = info;
    SampleIterator::new(py, shards.try_iter()?.unbind(), &options)
}

/// Splits a member name into (key, field) by the webdataset rule; None when it does not match.
#[pyfunction]
pub fn split_key(name: &str) -> Option<(String, String)> {
    fastwds_core::split_key(name).map(|(k, f)| (k.to_string(), f.to_string()))
}

/// The image fields decoded on the reader threads when none are named: those webdataset's image handlers take.
const IMAGE_EXTENSIONS: [&str; 7] = ["jpg", "jpeg", "png", "ppm", "pgm", "pbm", "pnm"];

/// Parses the `images=` option: `{"mode": "rgb8", "extensions": [...], "size": (h, w), "crop": "center" |
/// "random_resized", "scale": (lo, hi), "ratio": (lo, hi), "flip": p, "seed": n, "epoch": n,
/// "max_pixels": n, "reduced_dct": bool, "keep_bytes_on_error": bool}`, every key optional.
fn image_stage(images: &Bound<'_, PyAny>) -> PyResult<ImageStage> {
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
