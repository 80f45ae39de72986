//! Shards as Python names them (URLs, paths, file objects, shard-list dicts) and the one-stream readers
//! `tar_samples` and `tar_members`.

use fastwds_core::ShardSpec;
use pyo3::exceptions::PyTypeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::iterator::SampleIterator;
use crate::options::{field_names, Options};
use crate::pyfile::PyFileReader;

/// A shard from Python: a URL string or path, a binary file object, or a dict with "url" (and "stream").
pub fn shard_spec(shard: &Bound<'_, PyAny>) -> PyResult<ShardSpec> {
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
        // A span of samples: from the one whose first header is at `start` in the uncompressed tar stream, to
        // the one before the header at `end` (or the shard's end).
        let start = d.get_item("start")?.filter(|s| !s.is_none());
        let end = d.get_item("end")?.filter(|e| !e.is_none());
        if start.is_some() || end.is_some() {
            let start = start.map(|s| s.extract()).transpose()?.unwrap_or(0);
            return Ok(ShardSpec::From { url, start, end: end.map(|e| e.extract()).transpose()? });
        }
        // Read through the cache: from its entry, or downloaded into it while read.
        if let Some(path) = d.get_item("cache_path")?.filter(|p| !p.is_none()) {
            return Ok(ShardSpec::Cached { url, path: path.extract()? });
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
