//! `SampleIterator`: one pass over a reader's shards. It owns the reader threads and `pipe:` children, feeds
//! shards from the Python iterable as the pool has room, and turns core samples into dicts.

use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use fastwds_core::{Item, Next, Pool, ReaderConfig, Sample, Value};
use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyIterator, PyString};

use crate::buffer::buffer_to_bytes;
use crate::errors::{image_decode_error, to_pyerr};
use crate::fork;
use crate::image::pixels_to_array;
use crate::options::Options;
use crate::streams::shard_spec;
use crate::wait::next_item;

/// Distinct field names remembered per iterator.
const MAX_CACHED_NAMES: usize = 32;

/// How long `close()` waits for the reader threads to exit.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

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
    pub(crate) fn new(py: Python<'_>, shards: Py<PyIterator>, options: &Options) -> PyResult<Self> {
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
                // webdataset's handler protocol: true goes on (after a shard error with the next shard, after
                // a skipped member within the same shard), false stops quietly, raising propagates.
                Next::Item(Item::Error(e) | Item::Skipped(e)) => {
                    let err = to_pyerr(py, e);
                    let Some(handler) = &self.handler else {
                        return Err(err);
                    };
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
                Value::DecodeError(message) => d.set_item(name, image_decode_error(py, message)?)?,
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
