//! Reading several shards at once on a small thread pool into the ring buffer.
//!
//! The consumer drives everything: it submits a shard only when a lane is free, so the number of shards in
//! flight, and with it memory, stays bounded; the workers just read the shard they are handed. In ordered
//! mode shard `i` goes to lane `i % prefetch` and the consumer drains lanes in turn, so the output order is
//! the submission order while later shards are read ahead. In unordered mode all shards share one queue.

//!
//! The pieces: [`pool`] runs the threads and keeps the output order, [`shard`] reads one shard's members into
//! samples, [`decode`] decodes image fields in small parallel batches on the way to the ring.

use std::collections::HashSet;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::cache::CacheSettings;
use crate::error::{CallbackError, ShardError};
use crate::remote::RemoteOptions;
use crate::ring::Weighed;
use crate::sample::{BufferAllocator, Sample};
use crate::source::OpenFn;

mod decode;
mod pool;
mod shard;

pub use decode::ImageStage;
pub use pool::Pool;

/// Maps a member name to a new name (the reference's `rename_files`).
pub type RenameFn = dyn Fn(&str) -> Result<String, CallbackError> + Send + Sync;
/// Decides whether a member is read at all (the reference's `select_files`).
pub type SelectFn = dyn Fn(&str) -> Result<bool, CallbackError> + Send + Sync;

/// The default [`ReaderConfig::max_member_bytes`]: far above any real sample, far below what a hostile
/// size field could make a reader hold.
pub const DEFAULT_MAX_MEMBER_BYTES: u64 = 2 << 30;
/// The default read timeout ([`RemoteOptions::read_timeout`]).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// How to read shards.
#[derive(Clone)]
pub struct ReaderConfig {
    pub threads: usize,
    pub prefetch: usize,
    pub ordered: bool,
    pub buffer_bytes: usize,
    pub buffer_samples: usize,
    /// Field names to keep; others are skipped without being read into memory.
    pub fields: Option<HashSet<String>>,
    pub select_files: Option<Arc<SelectFn>>,
    pub rename_files: Option<Arc<RenameFn>>,
    pub lcase: bool,
    /// Yield each regular member as its own item (key = member name, one field named "") instead of
    /// grouping members into samples.
    pub members: bool,
    /// With `members`, each member's [`MemberInfo`] follows its data as text fields named `mode`, `uid`,
    /// `gid`, `uname`, `gname` and `mtime` (decimal).
    pub member_info: bool,
    /// Decode image fields on the reader threads.
    pub images: Option<Arc<ImageStage>>,
    /// Where members of at least `allocate_from` bytes are read into (see [`FieldBuffer`]).
    pub allocator: Option<Arc<BufferAllocator>>,
    pub allocate_from: u64,
    /// Secure mode: refuse URLs that run a command (`pipe:`); shards handed over as streams or as cached
    /// copies (`ShardSpec::Alias`) are read as usual.
    pub secure: bool,
    /// A member larger than this is an error naming it, raised before any of it is buffered.
    pub max_member_bytes: u64,
    /// How remote shards are reached: client settings, the read timeout, retries.
    pub remote: RemoteOptions,
    /// Where `ShardSpec::Cached` shards are cached, and how large the cache may grow.
    pub cache: Option<CacheSettings>,
    /// Opens URLs of schemes the core does not read itself (`gs://` through `gsutil`, a user's scheme).
    pub opener: Option<Arc<OpenFn>>,
}

impl Default for ReaderConfig {
    fn default() -> Self {
        ReaderConfig {
            threads: 0,
            prefetch: 0,
            ordered: true,
            buffer_bytes: 256 << 20,
            buffer_samples: 4096,
            fields: None,
            select_files: None,
            rename_files: None,
            lcase: true,
            members: false,
            member_info: false,
            images: None,
            allocator: None,
            allocate_from: 1 << 20,
            secure: false,
            max_member_bytes: DEFAULT_MAX_MEMBER_BYTES,
            remote: RemoteOptions { read_timeout: DEFAULT_READ_TIMEOUT, ..RemoteOptions::default() },
            cache: None,
            opener: None,
        }
    }
}

impl ReaderConfig {
    /// The thread count, defaulting to the cores available (at most 4: more rarely helps one consumer).
    pub fn thread_count(&self) -> usize {
        if self.threads > 0 {
            return self.threads;
        }
        thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 4)
    }

    /// Shards in flight at once.
    pub fn prefetch_count(&self) -> usize {
        if self.prefetch > 0 {
            self.prefetch
        } else {
            self.thread_count() + 1
        }
    }
}

/// A shard to read: a URL the core opens itself, a URL read from another location (a cached local copy, a
/// rewritten URL) but named by the original, a stream opened by the caller, or a URL read through the cache
/// (from the entry at `path`, or downloaded into it while it is read), or a URL read from a sample on.
pub enum ShardSpec {
    Url(String),
    Alias {
        url: String,
        location: String,
    },
    Stream {
        url: String,
        stream: Box<dyn Read + Send>,
    },
    Cached {
        url: String,
        path: PathBuf,
    },
    /// A URL read from byte `start` of its uncompressed tar stream (a sample's first header, from its index):
    /// seeked or fetched from there where the shard is a plain `.tar`, else read and discarded up to it; with
    /// `end`, reading stops before the first member whose header starts at or after it (the next sample's).
    From {
        url: String,
        start: u64,
        end: Option<u64>,
    },
}

impl ShardSpec {
    /// The name samples carry as `__url__`.
    pub fn url(&self) -> &str {
        match self {
            ShardSpec::Url(url)
            | ShardSpec::Alias { url, .. }
            | ShardSpec::Stream { url, .. }
            | ShardSpec::Cached { url, .. }
            | ShardSpec::From { url, .. } => url,
        }
    }
}

/// What the consumer receives, in stream order.
pub enum Item {
    Sample(Sample),
    /// The shard failed here; everything before it was delivered, and an `End` follows.
    Error(ShardError),
    /// A member was dropped for this error (a repeated field, a failed callback, an oversized member) while
    /// the stream stays intact: the shard goes on after it, for a consumer whose error handler continues.
    Skipped(ShardError),
    /// The shard is done (after its last sample or its error).
    End,
}

impl Weighed for Item {
    fn weight(&self) -> usize {
        match self {
            Item::Sample(s) => s.size(),
            _ => 0,
        }
    }
}

/// The result of waiting for the next item.
pub enum Next {
    Item(Item),
    /// Nothing arrived within the timeout; call again (after checking for interrupts).
    Pending,
    /// Every submitted shard has ended.
    Idle,
}
