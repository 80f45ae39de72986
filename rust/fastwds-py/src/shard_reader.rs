//! `ShardReader`: a picklable configuration whose every `iter()` starts a fresh read of its shards.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::image_options::ImageOptions;
use crate::iterator::SampleIterator;
use crate::options::{cache_settings, field_names, Options, Remote};
use fastwds_core::reader::{DEFAULT_MAX_MEMBER_BYTES, DEFAULT_READ_TIMEOUT};
use fastwds_core::remote::{DEFAULT_MAX_RETRIES, DEFAULT_RETRY_TIMEOUT};
use std::path::PathBuf;

/// Reads tar shards into samples on Rust threads; iterating it yields sample dicts.
#[pyclass(frozen, module = "fastwds._core")]
pub struct ShardReader {
    shards: Py<PyAny>,
    options: Options,
}

#[pymethods]
impl ShardReader {
    #[new]
    #[pyo3(signature = (shards, *, threads=0, prefetch=0, ordered=true, buffer_bytes=256*1024*1024,
        buffer_samples=4096, fields=None, select_files=None, rename_files=None, lcase=true, members=false,
        handler=None, images=None, max_member_bytes=DEFAULT_MAX_MEMBER_BYTES,
        read_timeout=DEFAULT_READ_TIMEOUT.as_secs_f64(), opener=None, storage_options=None,
        max_retries=DEFAULT_MAX_RETRIES, retry_timeout=DEFAULT_RETRY_TIMEOUT.as_secs_f64(), cache_dir=None,
        cache_size=u64::MAX))]
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
        max_member_bytes: u64,
        read_timeout: f64,
        opener: Option<Py<PyAny>>,
        storage_options: Option<Bound<'_, PyAny>>,
        max_retries: u32,
        retry_timeout: f64,
        cache_dir: Option<PathBuf>,
        cache_size: u64,
    ) -> PyResult<Self> {
        let fields = field_names(fields)?;
        let remote = Remote::new(storage_options.as_ref(), read_timeout, max_retries, retry_timeout)?;
        // Made (and so checked) now, so a typo fails at construction rather than on the first sample.
        let images = match images {
            Some(images) => Some(Py::new(images.py(), ImageOptions::extract_with(&images, None)?)?.into_any()),
            None => None,
        };
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
            max_member_bytes,
            remote,
            cache: cache_settings(cache_dir, cache_size),
            opener,
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
