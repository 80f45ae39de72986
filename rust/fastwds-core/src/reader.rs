//! Reading several shards at once on a small thread pool into the ring buffer.
//!
//! The consumer drives everything: it submits a shard only when a slot is free, so the number of shards in
//! flight, and with it memory, stays bounded; the workers just read the shard they are handed. In ordered
//! mode shard `i` goes to slot `i % prefetch` and the consumer drains slots in turn, so the output order is
//! the submission order while later shards are read ahead. In unordered mode all shards share one queue.

use std::collections::{HashSet, VecDeque};
use std::io::{self, Read};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::decompress::decompress;
use crate::error::{ErrorKind, ShardError, TarError};
use crate::image::{DecodeSpec, Decoder};
use crate::ring::{Closed, Ring, Weighed};
use crate::sample::{is_metadata, split_key, BufferAllocator, Sample, Value};
use crate::slots::{DecodeSlots, Slot};
use crate::source::{http_agent, open_url, ChildRegistry, Opened};
use crate::tar::{MemberHeader, MemberInfo, TarReader};

/// The longest a consumer sleeps before looking at its queue again: the delay a partial batch can see.
const POLL_SLICE: Duration = Duration::from_millis(2);

/// Maps a member name to a new name (the reference's `rename_files`).
pub type RenameFn = dyn Fn(&str) -> Result<String, String> + Send + Sync;
/// Decides whether a member is read at all (the reference's `select_files`).
pub type SelectFn = dyn Fn(&str) -> Result<bool, String> + Send + Sync;

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
}

/// Image fields to decode on the reader threads, and how.
#[derive(Debug, Clone)]
pub struct ImageStage {
    /// Extensions (the last `.`-part of a field name, lower case) that are decoded: `jpg`, `png`, ...
    pub extensions: Vec<String>,
    /// How to decode; its seed is the base from which each image's own seed is derived.
    pub spec: DecodeSpec,
    /// Mixed into each image's seed, so random crops differ between epochs yet repeat for a given seed.
    pub epoch: u64,
    /// On a decode failure keep the member's bytes (a decoder downstream gets its own try, and reports the
    /// failure as it always would); otherwise the failure becomes the field's value.
    pub keep_bytes_on_error: bool,
}

impl ImageStage {
    fn wants(&self, field: &str) -> bool {
        let extension = field.rsplit('.').next().unwrap_or(field);
        self.extensions.iter().any(|e| e == extension)
    }

    /// Decodes one field. The seed depends on (seed, epoch, key, field) only, never on which thread got the
    /// shard or when, so the output is reproducible.
    fn decode(&self, decoder: &mut Decoder, key: &str, field: &str, data: Vec<u8>) -> Value {
        let mut spec = self.spec;
        spec.seed = mix(mix(spec.seed, self.epoch), fnv1a(key.as_bytes()) ^ fnv1a(field.as_bytes()).rotate_left(1));
        match decoder.decode(&data, &spec) {
            Ok(pixels) => Value::Image(pixels),
            Err(_) if self.keep_bytes_on_error => Value::Bytes(data),
            Err(e) => Value::DecodeError(e.to_string()),
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// SplitMix64's finaliser over a combination of two words.
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a.wrapping_add(b.wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
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
/// rewritten URL) but named by the original, or a stream opened by the caller.
pub enum ShardSpec {
    Url(String),
    Alias { url: String, location: String },
    Stream { url: String, stream: Box<dyn Read + Send> },
}

impl ShardSpec {
    /// The name samples carry as `__url__`.
    pub fn url(&self) -> &str {
        match self {
            ShardSpec::Url(url) | ShardSpec::Alias { url, .. } | ShardSpec::Stream { url, .. } => url,
        }
    }
}

/// What the consumer receives, in stream order.
pub enum Item {
    Sample(Sample),
    /// The shard failed here; everything before it was delivered, and an `End` follows.
    Error(ShardError),
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

struct Task {
    slot: usize,
    spec: ShardSpec,
}

struct Shared {
    config: ReaderConfig,
    ring: Ring<Item>,
    cancel: AtomicBool,
    children: ChildRegistry,
    http: ureq::Agent,
    running: AtomicUsize,
    exited: (Mutex<()>, Condvar),
    /// Image decoders between batches, at most one per decoding slot. Each keeps its scratch image and resize
    /// buffers; a fresh one per batch had the kernel map and zero those pages again for every batch (a tenth
    /// of the crop pipeline's time).
    decoders: Mutex<Vec<Decoder>>,
    /// `threads` slots: the images decoded at once, over every shard in flight.
    decode_slots: DecodeSlots,
}

/// The result of waiting for the next item.
pub enum Next {
    Item(Item),
    /// Nothing arrived within the timeout; call again (after checking for interrupts).
    Pending,
    /// Every submitted shard has ended.
    Idle,
}

/// One pass of reading: its threads start at construction and stop on `shutdown` or drop.
pub struct Pool {
    shared: Arc<Shared>,
    tasks: Option<Sender<Task>>,
    handles: Vec<thread::JoinHandle<()>>,
    prefetch: usize,
    submitted: u64,
    ended: u64,
    local: VecDeque<Item>,
}

impl Pool {
    pub fn start(config: ReaderConfig) -> Pool {
        let threads = config.thread_count();
        let prefetch = config.prefetch_count().max(1);
        let slots = if config.ordered { prefetch } else { 1 };
        let shared = Arc::new(Shared {
            ring: Ring::new(slots, config.buffer_bytes, config.buffer_samples),
            config,
            cancel: AtomicBool::new(false),
            children: ChildRegistry::default(),
            http: http_agent(),
            running: AtomicUsize::new(0),
            exited: (Mutex::new(()), Condvar::new()),
            decoders: Mutex::new(Vec::new()),
            decode_slots: DecodeSlots::new(threads),
        });
        let (tx, rx) = crossbeam_channel::unbounded::<Task>();
        let handles = (0..threads.min(prefetch))
            .map(|i| {
                let shared = Arc::clone(&shared);
                let rx = rx.clone();
                shared.running.fetch_add(1, Ordering::SeqCst);
                thread::Builder::new()
                    .name(format!("fastwds-reader-{i}"))
                    .spawn(move || worker(&shared, &rx))
                    .expect("spawning a reader thread")
            })
            .collect();
        Pool { shared, tasks: Some(tx), handles, prefetch, submitted: 0, ended: 0, local: VecDeque::new() }
    }

    /// Whether another shard may be submitted now without exceeding the prefetch bound.
    pub fn wants_shard(&self) -> bool {
        self.tasks.is_some() && self.submitted - self.ended < self.prefetch as u64
    }

    /// Hands a shard to the workers. Call only when `wants_shard()`.
    pub fn submit(&mut self, spec: ShardSpec) {
        let slot = if self.shared.config.ordered { (self.submitted % self.prefetch as u64) as usize } else { 0 };
        self.submitted += 1;
        if let Some(tx) = &self.tasks {
            // The workers hold the receiver until the pool shuts down, so this cannot fail while in use.
            let _ = tx.send(Task { slot, spec });
        }
    }

    fn current_slot(&self) -> usize {
        if self.shared.config.ordered {
            (self.ended % self.prefetch as u64) as usize
        } else {
            0
        }
    }

    /// The next item if one was already taken from the ring, without waiting.
    pub fn next_buffered(&mut self) -> Option<Item> {
        let item = self.local.pop_front()?;
        if matches!(item, Item::End) {
            self.ended += 1;
            self.shared.ring.set_current(self.current_slot());
        }
        Some(item)
    }

    /// The next item in output order, waiting up to `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Next {
        let start = Instant::now();
        loop {
            if let Some(item) = self.next_buffered() {
                return Next::Item(item);
            }
            if self.submitted == self.ended {
                return Next::Idle;
            }
            let slot = self.current_slot();
            // Batching amortises the lock; in ordered mode a batch never crosses into the next shard because
            // each shard has its own slot. Short slices pick up a partial batch that no producer woke us for.
            let slice = timeout.min(POLL_SLICE);
            match self.shared.ring.pop_into(slot, &mut self.local, 256, slice) {
                Ok(0) if start.elapsed() >= timeout => return Next::Pending,
                Ok(_) => continue,
                Err(Closed) => return Next::Idle,
            }
        }
    }

    /// Number of reader threads still running.
    pub fn threads_running(&self) -> usize {
        self.shared.running.load(Ordering::SeqCst)
    }

    /// Stops the workers: no more items, `pipe:` commands killed. Returns at once; threads exit promptly
    /// (a worker blocked in a network read exits when that read returns).
    pub fn cancel(&mut self) {
        self.shared.cancel.store(true, Ordering::SeqCst);
        self.tasks = None;
        self.shared.ring.close();
        self.shared.decode_slots.wake_all();
        self.shared.children.kill_all();
        self.local.clear();
    }

    /// Cancels, then waits up to `timeout` for the threads to exit; true if they all did.
    pub fn shutdown(&mut self, timeout: Duration) -> bool {
        self.cancel();
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &self.shared.exited;
        let mut guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        while self.shared.running.load(Ordering::SeqCst) > 0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            guard = cvar.wait_timeout(guard, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
        drop(guard);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
        true
    }

    /// Forgets the pool without touching its locks or threads: for a child process after `fork()`, where
    /// the threads do not exist and a lock may have been held by one of them at the fork.
    pub fn abandon(self) {
        std::mem::forget(self);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.cancel();
    }
}

fn worker(shared: &Shared, tasks: &Receiver<Task>) {
    while let Ok(task) = tasks.recv() {
        if shared.cancel.load(Ordering::SeqCst) {
            break;
        }
        let slot = task.slot;
        let url = task.spec.url().to_string();
        // A bug must cost one shard, not hang the consumer waiting for an End that never comes.
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| read_shard(shared, slot, task.spec)))
            .unwrap_or_else(|_| Err(Stop::Failed(ShardError::new(ErrorKind::Read, &url, "internal error (panic)"))));
        let pushed = match outcome {
            Ok(()) => Ok(()),
            Err(Stop::Failed(e)) => shared.ring.push_urgent(slot, Item::Error(e)),
            Err(Stop::Cancelled) => Err(Closed),
        };
        if pushed.is_err() || shared.ring.push_urgent(slot, Item::End).is_err() {
            break;
        }
    }
    let (lock, cvar) = &shared.exited;
    let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
    shared.running.fetch_sub(1, Ordering::SeqCst);
    cvar.notify_all();
}

enum Stop {
    Failed(ShardError),
    Cancelled,
}

impl From<Closed> for Stop {
    fn from(_: Closed) -> Self {
        Stop::Cancelled
    }
}

/// Reads one shard to its end, pushing samples (or members) into its slot.
fn read_shard(shared: &Shared, slot: usize, spec: ShardSpec) -> Result<(), Stop> {
    let url: Arc<str> = Arc::from(spec.url());
    let mut opened = match spec {
        ShardSpec::Url(u) => open_url(&u, &shared.children, &shared.http).map_err(Stop::Failed)?,
        ShardSpec::Alias { location, .. } => open_url(&location, &shared.children, &shared.http).map_err(|e| {
            Stop::Failed(ShardError { url: url.to_string(), message: format!("{} ({location})", e.message), ..e })
        })?,
        ShardSpec::Stream { stream, .. } => Opened { stream, command: None },
    };
    let command = opened.command.take();
    let mut out = Emitter { shared, slot, held: Vec::new(), images: 0 };
    let read = read_members(shared, opened, &url, &mut out);
    // Samples completed before a failure are delivered before it.
    let read = match (read, out.flush()) {
        (Err(Stop::Cancelled), _) | (_, Err(Closed)) => Err(Stop::Cancelled),
        (read, Ok(())) => read,
    };
    match read {
        Err(Stop::Failed(e)) => Err(Stop::Failed(match command {
            Some(command) => command.explain(&url, e),
            None => e,
        })),
        Err(Stop::Cancelled) => Err(Stop::Cancelled),
        Ok(()) => match command {
            Some(command) => command.finish(&url, &shared.cancel).map_err(Stop::Failed),
            None => Ok(()),
        },
    }
}

/// Parses the tar stream of an opened shard and groups its members.
fn read_members(shared: &Shared, opened: Opened, url: &Arc<str>, out: &mut Emitter<'_>) -> Result<(), Stop> {
    let url = Arc::clone(url);
    let (stream, _) =
        decompress(opened.stream).map_err(|e| Stop::Failed(TarError::io(0, None, &e).into_shard_error(&url)))?;
    let mut tar = TarReader::new(stream);
    let config = &shared.config;
    let fail = |e: TarError| Stop::Failed(e.into_shard_error(&url));
    let mut current: Option<Sample> = None;
    loop {
        if shared.cancel.load(Ordering::Relaxed) {
            return Err(Stop::Cancelled);
        }
        let Some(header) = tar.next_member().map_err(fail)? else {
            break;
        };
        if is_metadata(&header.name) {
            continue;
        }
        let callback_error = |m: String| {
            Stop::Failed(
                ShardError::new(ErrorKind::Callback, &url, m).with_member(Some(&header.name)).at(header.offset),
            )
        };
        let name = match &config.rename_files {
            Some(rename) => rename(&header.name).map_err(callback_error)?,
            None => header.name.clone(),
        };
        if let Some(select) = &config.select_files {
            if !select(&name).map_err(callback_error)? {
                continue;
            }
        }
        if config.members {
            let info = config.member_info.then(|| tar.member_info());
            let data = read_value(&mut tar, &header, config, true).map_err(fail)?;
            let mut fields = vec![(String::new(), data)];
            if let Some(info) = info {
                fields.extend(info_fields(&info));
            }
            let member = Sample { key: name, url: Arc::clone(&url), fields };
            out.emit(member)?;
            continue;
        }
        let Some((key, field)) = split_key(&name) else {
            continue;
        };
        let field = if config.lcase { field.to_lowercase() } else { field.to_string() };
        // The reference keeps `__key__` and `__url__` in the same dict as the fields, so a member named like
        // them is a repeated field there; it must not overwrite the sample's key or URL here either.
        let reserved = field == "__key__" || field == "__url__";
        if current.as_ref().is_none_or(|s| s.key != key) {
            if let Some(done) = current.take() {
                out.emit(done)?;
            }
            current = Some(Sample::new(key.to_string(), Arc::clone(&url)));
        }
        let sample = current.as_mut().expect("a sample was just started");
        if reserved || sample.has_field(&field) {
            return Err(Stop::Failed(
                ShardError::new(
                    ErrorKind::DuplicateField,
                    &url,
                    format!("sample {:?} has field {field:?} twice", sample.key),
                )
                .with_member(Some(&name))
                .at(header.offset),
            ));
        }
        if config.fields.as_ref().is_some_and(|keep| !keep.contains(&field)) {
            continue;
        }
        // Image fields stay in a Vec: the decoder reads them and replaces them with pixels.
        let direct = !config.images.as_ref().is_some_and(|stage| stage.wants(&field));
        let value = read_value(&mut tar, &header, config, direct).map_err(fail)?;
        sample.fields.push((field, value));
    }
    // Read what follows the end-of-archive marker: a gzip trailer's checksum is verified there, and a
    // `pipe:` command must not be left blocked writing into a pipe nobody reads.
    let end = tar.offset();
    let mut rest = tar.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| fail(TarError::io(end, None, &e)))?;
    if let Some(done) = current.take() {
        out.emit(done)?;
    }
    Ok(())
}

/// Reads a member's data: into a consumer's buffer when it is large (and `direct`), else into a Vec.
fn read_value<R: Read>(
    tar: &mut TarReader<R>,
    header: &MemberHeader,
    config: &ReaderConfig,
    direct: bool,
) -> Result<Value, TarError> {
    if direct && header.size >= config.allocate_from {
        let buffer = usize::try_from(header.size).ok().and_then(|len| config.allocator.as_ref().and_then(|a| a(len)));
        if let Some(mut buffer) = buffer {
            tar.read_data_into(header, buffer.as_mut_slice())?;
            return Ok(Value::Buffer(buffer));
        }
    }
    let mut data = Vec::new();
    tar.read_data(header, &mut data)?;
    Ok(Value::Bytes(data))
}

/// Images decoded together: enough work per batch to keep every core busy and amortise starting threads.
const DECODE_BATCH: usize = 32;

/// Hands finished samples to the ring. With an image stage it holds them back in small batches whose images
/// are decoded in parallel, so one shard's decoding uses every core while the output keeps the shard's order
/// (in ordered mode the other shards are only read ahead as far as the buffer allows).
struct Emitter<'a> {
    shared: &'a Shared,
    slot: usize,
    held: Vec<Sample>,
    images: usize,
}

impl Emitter<'_> {
    fn emit(&mut self, sample: Sample) -> Result<(), Closed> {
        let Some(stage) = &self.shared.config.images else {
            return self.shared.ring.push(self.slot, Item::Sample(sample));
        };
        self.images += sample.fields.iter().filter(|(field, _)| stage.wants(field)).count();
        self.held.push(sample);
        if self.images >= DECODE_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Closed> {
        if let Some(stage) = &self.shared.config.images {
            decode_batch(stage, &mut self.held, self.shared)?;
        }
        self.images = 0;
        for sample in self.held.drain(..) {
            self.shared.ring.push(self.slot, Item::Sample(sample))?;
        }
        Ok(())
    }
}

/// A member's info as the text fields [`ReaderConfig::member_info`] describes.
fn info_fields(info: &MemberInfo) -> [(String, Value); 6] {
    let field = |name: &str, text: String| (name.to_string(), Value::from(text.into_bytes()));
    [
        field("mode", info.mode.to_string()),
        field("uid", info.uid.to_string()),
        field("gid", info.gid.to_string()),
        field("uname", info.uname.clone()),
        field("gname", info.gname.clone()),
        field("mtime", info.mtime.to_string()),
    ]
}

/// Decodes the image fields of `samples` in place, on as many threads as decoding slots are free (at least
/// one, waiting for it), with decoders kept in `shared`. Fails only when the pool is cancelled.
fn decode_batch(stage: &ImageStage, samples: &mut [Sample], shared: &Shared) -> Result<(), Closed> {
    let jobs: Vec<Mutex<(&str, &str, &mut Value)>> = samples
        .iter_mut()
        .flat_map(|Sample { key, fields, .. }| {
            let key = key.as_str();
            fields
                .iter_mut()
                .filter(|(field, _)| stage.wants(field))
                .map(move |(field, value)| Mutex::new((key, field.as_str(), value)))
        })
        .collect();
    if jobs.is_empty() {
        return Ok(());
    }
    let mut slots = shared.decode_slots.acquire(jobs.len(), &shared.cancel).ok_or(Closed)?;
    let decoders = &shared.decoders;
    let next = AtomicUsize::new(0);
    // Each thread gives its slot back as soon as the batch has no job left for it, so another shard's
    // reader can start decoding while the last images of this batch finish.
    let run = |slot: Slot<'_>| {
        let mut taken = decoders.lock().map(|mut kept| kept.pop()).unwrap_or_else(|e| e.into_inner().pop());
        let decoder = taken.get_or_insert_with(Decoder::new);
        while let Some(job) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
            let mut job = job.lock().unwrap_or_else(|e| e.into_inner());
            let (key, field, value) = &mut *job;
            if let Value::Bytes(data) = std::mem::replace(&mut **value, Value::Bytes(Vec::new())) {
                **value = stage.decode(decoder, key, field, data);
            }
        }
        // Given back while the slot is still held, so no more decoders exist than slots and all are kept.
        if let (Some(decoder), Ok(mut kept)) = (taken.take(), decoders.lock()) {
            kept.push(decoder);
        }
        drop(slot);
    };
    let own = slots.pop().expect("acquire grants at least one slot");
    thread::scope(|scope| {
        for slot in slots {
            scope.spawn(|| run(slot));
        }
        run(own);
    });
    Ok(())
}
