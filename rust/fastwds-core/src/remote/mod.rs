//! Remote shards read natively, on the reader threads, without a subprocess: objects in `s3://` and `gs://`
//! buckets through `object_store`, and `http(s)://` and `hf://` resources through `ureq`. Every body resumes
//! after a dropped connection or a stall from the byte it reached, and refuses to splice a replaced object;
//! transient failures are retried with backoff; permanent ones (no such key, access denied) fail at once.

use std::io::Read;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{ErrorKind, ShardError};

mod aws_profile;
mod http;
pub mod location;
mod objects;
mod resume;
mod upload;

pub use location::{is_remote, Location, StoreKind};
pub use objects::Bucket;
pub use resume::RetryPolicy;
pub use upload::Upload;

/// How remote shards are reached.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// Settings for the object store client (`object_store`'s keys: `aws_access_key_id`, `aws_endpoint`,
    /// `google_service_account`, ...), applied over the environment's.
    pub storage_options: Vec<(String, String)>,
    /// A read that waits longer than this for the next byte is retried from the byte it reached.
    pub read_timeout: Duration,
    /// Consecutive failed attempts (without progress) before a read gives up.
    pub max_retries: u32,
    /// The longest a run of failed attempts may last.
    pub retry_timeout: Duration,
}

/// The default [`RemoteOptions::max_retries`].
pub const DEFAULT_MAX_RETRIES: u32 = 10;
/// The default [`RemoteOptions::retry_timeout`].
pub const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(180);

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            storage_options: Vec::new(),
            read_timeout: Duration::from_secs(60),
            max_retries: DEFAULT_MAX_RETRIES,
            retry_timeout: DEFAULT_RETRY_TIMEOUT,
        }
    }
}

impl RemoteOptions {
    fn policy(&self) -> RetryPolicy {
        RetryPolicy { max_retries: self.max_retries, retry_timeout: self.retry_timeout }
    }
}

/// Opens a remote URL (see [`is_remote`]) for reading from byte `start`; `http` is the reader's agent (its
/// per-read timeout is the read timeout, and shutting it down interrupts reads); reads stop waiting when
/// `cancel` is set.
pub fn open(
    url: &str,
    start: u64,
    options: &RemoteOptions,
    http: &ureq::Agent,
    cancel: &Arc<AtomicBool>,
) -> Result<Box<dyn Read + Send>, ShardError> {
    let location = resolve(url)?;
    match location {
        Location::Http { url: target, token } => {
            let origin = http::HttpOrigin { url: target, token, agent: http.clone() };
            match resume::Resuming::open(origin, start, options.policy(), Arc::clone(cancel)) {
                Ok(body) => Ok(Box::new(body)),
                Err(failure) => Err(failure_error(url, failure)),
            }
        }
        Location::Object { store, bucket, key } => {
            let bucket =
                Bucket::connect(store, &bucket, options).map_err(|m| ShardError::new(ErrorKind::Open, url, m))?;
            match bucket.read(&key, start, Arc::clone(cancel)) {
                Ok(body) => Ok(Box::new(body)),
                Err(e) => {
                    let kind = if objects::is_permanent(&e) { ErrorKind::Open } else { ErrorKind::Read };
                    Err(ShardError::new(kind, url, e.to_string()))
                }
            }
        }
    }
}

fn failure_error(url: &str, failure: resume::Failure) -> ShardError {
    match failure {
        resume::Failure::Permanent(message) | resume::Failure::Changed(message) => {
            ShardError::new(ErrorKind::Open, url, message)
        }
        resume::Failure::Transient(e) => {
            let kind = if e.kind() == std::io::ErrorKind::TimedOut { ErrorKind::Timeout } else { ErrorKind::Open };
            ShardError::new(kind, url, format!("request failed: {e}"))
        }
    }
}

/// A remote URL resolved, or an error naming it.
pub fn resolve(url: &str) -> Result<Location, ShardError> {
    match location::parse(url) {
        Some(Ok(location)) => Ok(location),
        Some(Err(message)) => Err(ShardError::new(ErrorKind::Open, url, message)),
        None => Err(ShardError::new(ErrorKind::Open, url, "not a remote URL")),
    }
}

/// The object URLs a bucket URL names: every key under a prefix (`s3://bkt/train/`), or the keys matching a
/// glob (`s3://bkt/train/shard-*.tar`: `*` and `?` stay within one path segment), sorted.
pub fn list(url: &str, options: &RemoteOptions) -> Result<Vec<String>, ShardError> {
    let Location::Object { store, bucket, key } = resolve(url)? else {
        return Err(ShardError::new(ErrorKind::Open, url, "only s3:// and gs:// URLs can be listed"));
    };
    let glob_start = key.find(['*', '?', '[']);
    let prefix = match glob_start {
        Some(i) => key[..i].rfind('/').map_or("", |slash| &key[..slash + 1]),
        None => key.as_str(),
    };
    let client = Bucket::connect(store, &bucket, options).map_err(|m| ShardError::new(ErrorKind::Open, url, m))?;
    let keys =
        client.list(prefix.trim_end_matches('/')).map_err(|e| ShardError::new(ErrorKind::Open, url, e.to_string()))?;
    let mut urls: Vec<String> = keys
        .into_iter()
        .filter(|k| match glob_start {
            Some(_) => location::glob_matches(&key, k),
            None => k.starts_with(prefix),
        })
        .map(|k| format!("{}://{bucket}/{k}", store.scheme()))
        .collect();
    urls.sort();
    Ok(urls)
}

/// A remote shard's size and ETag, either unknown when its server does not say (an HTTP server may send neither;
/// an object store always sends the size): a HEAD request.
pub fn stat(url: &str, options: &RemoteOptions) -> Result<(Option<u64>, Option<String>), ShardError> {
    match resolve(url)? {
        Location::Object { store, bucket, key } => {
            let client =
                Bucket::connect(store, &bucket, options).map_err(|m| ShardError::new(ErrorKind::Open, url, m))?;
            let (size, etag) = client.head(&key).map_err(|e| ShardError::new(ErrorKind::Open, url, e.to_string()))?;
            Ok((Some(size), etag))
        }
        Location::Http { url: target, token } => {
            let agent = crate::source::http_agent(options.read_timeout);
            http::stat(&target, token.as_deref(), &agent).map_err(|failure| failure_error(url, failure))
        }
    }
}

/// Starts an upload to an `s3://` or `gs://` URL.
pub fn upload(url: &str, options: &RemoteOptions) -> Result<Upload, ShardError> {
    let Location::Object { store, bucket, key } = resolve(url)? else {
        return Err(ShardError::new(ErrorKind::Open, url, "only s3:// and gs:// URLs can be written natively"));
    };
    if key.is_empty() || key.ends_with('/') {
        return Err(ShardError::new(ErrorKind::Open, url, "an object URL needs a key"));
    }
    let client = Bucket::connect(store, &bucket, options).map_err(|m| ShardError::new(ErrorKind::Open, url, m))?;
    client.upload(&key).map_err(|e| ShardError::new(ErrorKind::Open, url, e.to_string()))
}
