//! Objects in `s3://` and `gs://` buckets through `object_store`, driven from blocking threads.
//!
//! Each use (one shard read, one listing, one upload) builds its own single-threaded tokio runtime and
//! store: the runtime runs only inside `block_on` on the calling thread, so no thread outlives the read, and a
//! forked process inherits no runtime state. `object_store` resumes a cut body with a ranged GET checked
//! against the ETag, retries transient failures with backoff, and returns permanent ones (no such key,
//! access denied) at once.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::path::Path;
use object_store::{BackoffConfig, ClientConfigKey, GetOptions, GetRange, ObjectStore, ObjectStoreExt, RetryConfig};
use tokio::runtime::Runtime;

use super::aws_profile;
use super::location::StoreKind;
use super::RemoteOptions;

/// How often a blocked read looks at its cancel flag.
const CANCEL_POLL: Duration = Duration::from_millis(50);

/// A store for one bucket, with the runtime that drives it.
pub struct Bucket {
    // Dropped before the runtime that its connections live on.
    store: Arc<dyn ObjectStore>,
    runtime: Runtime,
    pub kind: StoreKind,
    pub name: String,
}

impl Bucket {
    /// A client for `bucket`, configured from the environment, then `options.storage_options`.
    pub fn connect(kind: StoreKind, bucket: &str, options: &RemoteOptions) -> Result<Bucket, String> {
        install_crypto();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_keep_alive(Duration::from_secs(1))
            .build()
            .map_err(|e| format!("cannot start the I/O runtime: {e}"))?;
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(5),
                base: 2.0,
            },
            max_retries: options.max_retries as usize,
            retry_timeout: options.retry_timeout,
        };
        // The whole-request timeout would cut a long download: a stalled body is caught by the read timeout.
        let client = [
            (ClientConfigKey::Timeout, "1day".to_string()),
            (ClientConfigKey::ReadTimeout, format!("{}ms", options.read_timeout.as_millis().max(1))),
            (ClientConfigKey::ConnectTimeout, "30s".to_string()),
        ];
        let store: Arc<dyn ObjectStore> = match kind {
            StoreKind::S3 => {
                let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket).with_retry(retry);
                for (key, value) in client {
                    builder = builder.with_config(AmazonS3ConfigKey::Client(key), value);
                }
                builder = aws_profile::apply(builder, &options.storage_options);
                for (key, value) in &options.storage_options {
                    let key = key.parse::<AmazonS3ConfigKey>().map_err(|_| unknown_option(kind, key))?;
                    builder = builder.with_config(key, value);
                }
                let region = [AmazonS3ConfigKey::Region, AmazonS3ConfigKey::DefaultRegion];
                if region.iter().all(|key| builder.get_config_value(key).is_none()) {
                    builder = builder.with_region("us-east-1");
                }
                let store = runtime.block_on(async { builder.build() }).map_err(|e| e.to_string())?;
                Arc::new(store)
            }
            StoreKind::Gcs => {
                let mut builder = GoogleCloudStorageBuilder::from_env().with_bucket_name(bucket).with_retry(retry);
                for (key, value) in client {
                    builder = builder.with_config(GoogleConfigKey::Client(key), value);
                }
                // The Google libraries' emulator variable: talk to it over plain HTTP, without credentials.
                if let Ok(host) = std::env::var("STORAGE_EMULATOR_HOST") {
                    let base = if host.contains("://") { host } else { format!("http://{host}") };
                    builder = builder
                        .with_config(GoogleConfigKey::BaseUrl, base.trim_end_matches('/'))
                        .with_config(GoogleConfigKey::SkipSignature, "true")
                        .with_config(GoogleConfigKey::Client(ClientConfigKey::AllowHttp), "true");
                }
                for (key, value) in &options.storage_options {
                    let key = key.parse::<GoogleConfigKey>().map_err(|_| unknown_option(kind, key))?;
                    builder = builder.with_config(key, value);
                }
                let store = runtime.block_on(async { builder.build() }).map_err(|e| e.to_string())?;
                Arc::new(store)
            }
        };
        Ok(Bucket { store, runtime, kind, name: bucket.to_string() })
    }

    /// The object `key` from byte `offset` on, as a blocking reader that gives up waiting when `cancel` is set.
    pub fn read(self, key: &str, offset: u64, cancel: Arc<AtomicBool>) -> Result<ObjectBody, object_store::Error> {
        let path = Path::from(key);
        let options = GetOptions { range: (offset > 0).then_some(GetRange::Offset(offset)), ..Default::default() };
        let get = self.store.get_opts(&path, options);
        let result = block_on_cancellable(&self.runtime, get, &cancel)
            .ok_or_else(|| object_store::Error::Generic { store: "fastwds", source: "cancelled".into() })??;
        let etag = result.meta.e_tag.clone();
        Ok(ObjectBody { stream: Some(result.into_stream()), chunk: Bytes::new(), path, etag, bucket: self, cancel })
    }

    /// The keys under `prefix` (every page), in the store's order.
    pub fn list(&self, prefix: &str) -> Result<Vec<String>, object_store::Error> {
        let prefix = (!prefix.is_empty()).then(|| Path::from(prefix));
        self.runtime.block_on(async {
            let mut keys = Vec::new();
            let mut listing = self.store.list(prefix.as_ref());
            while let Some(meta) = listing.next().await {
                keys.push(meta?.location.to_string());
            }
            Ok(keys)
        })
    }

    /// The object's size and ETag.
    pub fn head(&self, key: &str) -> Result<(u64, Option<String>), object_store::Error> {
        let meta = self.runtime.block_on(self.store.head(&Path::from(key)))?;
        Ok((meta.size, meta.e_tag))
    }

    /// Starts a multipart upload to `key`: the object appears only when it is finished.
    pub fn upload(self, key: &str) -> Result<super::upload::Upload, object_store::Error> {
        let upload = self.runtime.block_on(self.store.put_multipart(&Path::from(key)))?;
        Ok(super::upload::Upload::new(self, upload))
    }

    pub(super) fn runtime(&self) -> &Runtime {
        &self.runtime
    }
}

/// Runs `future` on `runtime`, giving up (None) when `cancel` is set.
fn block_on_cancellable<F: std::future::Future>(
    runtime: &Runtime,
    future: F,
    cancel: &AtomicBool,
) -> Option<F::Output> {
    runtime.block_on(async {
        tokio::pin!(future);
        loop {
            match tokio::time::timeout(CANCEL_POLL, &mut future).await {
                Ok(output) => return Some(output),
                Err(_) if cancel.load(Ordering::Relaxed) => return None,
                Err(_) => {}
            }
        }
    })
}

fn unknown_option(kind: StoreKind, key: &str) -> String {
    format!("storage_options: {key:?} is not a {}:// setting (see object_store's configuration keys)", kind.scheme())
}

/// rustls (under reqwest) takes its crypto from the process default: ring, which `ureq` uses as well.
fn install_crypto() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err: a provider is installed already (by the embedding program), which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// An object's body as a blocking byte stream.
pub struct ObjectBody {
    // Dropped before the bucket, whose runtime drives it.
    stream: Option<BoxStream<'static, object_store::Result<Bytes>>>,
    chunk: Bytes,
    path: Path,
    /// The ETag of the first response: `object_store` refuses to resume into another version of the object but
    /// reports only the body error; comparing explains it.
    etag: Option<String>,
    bucket: Bucket,
    cancel: Arc<AtomicBool>,
}

impl ObjectBody {
    /// Why the body failed: the object was replaced (its ETag changed), or `e` itself.
    fn explain(&self, e: object_store::Error) -> io::Error {
        let head = block_on_cancellable(&self.bucket.runtime, self.bucket.store.head(&self.path), &self.cancel);
        if let (Some(before), Some(Ok(meta))) = (&self.etag, head) {
            if meta.e_tag.as_ref().is_some_and(|now| now != before) {
                let now = meta.e_tag.unwrap_or_default();
                return io::Error::other(format!(
                    "the object changed while it was read (ETag {before} became {now}); its bytes are not spliced"
                ));
            }
        }
        store_io_error(e)
    }
}

impl Read for ObjectBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            let Some(stream) = self.stream.as_mut() else { return Ok(0) };
            match block_on_cancellable(&self.bucket.runtime, stream.next(), &self.cancel) {
                // Not `Interrupted`, which `read_exact` and `io::copy` would retry.
                None => return Err(io::Error::other("cancelled")),
                Some(None) => {
                    self.stream = None;
                    return Ok(0);
                }
                Some(Some(Ok(bytes))) => self.chunk = bytes,
                Some(Some(Err(e))) => {
                    self.stream = None;
                    return Err(self.explain(e));
                }
            }
        }
        let n = self.chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        let _ = self.chunk.split_to(n);
        Ok(n)
    }
}

/// A failure mid-body (after `object_store`'s own retries) as an I/O error; a read timeout as `TimedOut`.
fn store_io_error(e: object_store::Error) -> io::Error {
    let text = e.to_string();
    let timed_out = text.contains("timed out") || text.contains("timeout");
    io::Error::new(if timed_out { io::ErrorKind::TimedOut } else { io::ErrorKind::Other }, text)
}

/// Whether retrying cannot help: the object, the bucket or the permission is not there.
pub fn is_permanent(e: &object_store::Error) -> bool {
    matches!(
        e,
        object_store::Error::NotFound { .. }
            | object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
            | object_store::Error::InvalidPath { .. }
            | object_store::Error::NotSupported { .. }
            | object_store::Error::Precondition { .. }
    )
}
