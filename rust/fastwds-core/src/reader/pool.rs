//! The reader threads: a pool that reads submitted shards into the ring, one lane per shard in flight in
//! ordered mode, and hands items to the consumer in output order.

use std::collections::VecDeque;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::shard::read_shard;
use super::{Item, Next, ReaderConfig, ShardSpec};
use crate::error::{ErrorKind, ShardError};
use crate::image::Decoder;
use crate::permits::DecodePermits;
use crate::ring::{Closed, Ring};
use crate::source::{http_agent, ChildRegistry};

/// The most bytes of samples the consumer takes from the ring at once: taken, they are outside its budget.
const BATCH_BYTES: usize = 1 << 20;
/// The longest a consumer sleeps before looking at its queue again: the delay a partial batch can see.
const POLL_SLICE: Duration = Duration::from_millis(2);

struct Task {
    lane: usize,
    spec: ShardSpec,
}

/// What the reader threads share.
pub(super) struct Shared {
    pub(super) config: ReaderConfig,
    pub(super) ring: Ring<Item>,
    pub(super) cancel: Arc<AtomicBool>,
    pub(super) children: ChildRegistry,
    pub(super) http: ureq::Agent,
    running: AtomicUsize,
    exited: (Mutex<()>, Condvar),
    /// Image decoders between batches, at most one per decoding lane. Each keeps its scratch image and resize
    /// buffers; a fresh one per batch had the kernel map and zero those pages again for every batch (a tenth
    /// of the crop pipeline's time).
    pub(super) decoders: Mutex<Vec<Decoder>>,
    /// `threads` lanes: the images decoded at once, over every shard in flight.
    pub(super) decode_permits: DecodePermits,
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
        let lanes = if config.ordered { prefetch } else { 1 };
        let http = http_agent(config.remote.read_timeout);
        let shared = Arc::new(Shared {
            ring: Ring::new(lanes, config.buffer_bytes, config.buffer_samples),
            config,
            cancel: Arc::new(AtomicBool::new(false)),
            children: ChildRegistry::default(),
            http,
            running: AtomicUsize::new(0),
            exited: (Mutex::new(()), Condvar::new()),
            decoders: Mutex::new(Vec::new()),
            decode_permits: DecodePermits::new(threads),
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
        let lane = if self.shared.config.ordered { (self.submitted % self.prefetch as u64) as usize } else { 0 };
        self.submitted += 1;
        if let Some(tx) = &self.tasks {
            // The workers hold the receiver until the pool shuts down, so this cannot fail while in use.
            let _ = tx.send(Task { lane, spec });
        }
    }

    fn current_lane(&self) -> usize {
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
            self.shared.ring.set_current(self.current_lane());
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
            let lane = self.current_lane();
            // Batching amortises the lock; in ordered mode a batch never crosses into the next shard because
            // each shard has its own lane. Short slices pick up a partial batch that no producer woke us for.
            let slice = timeout.min(POLL_SLICE);
            match self.shared.ring.pop_into(lane, &mut self.local, 256, BATCH_BYTES, slice) {
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
        self.shared.decode_permits.wake_all();
        self.shared.children.kill_all();
        // Interrupts reads blocked on a stalled server now, instead of when its timeout expires.
        self.shared.http.clone().shutdown();
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
        let lane = task.lane;
        let url = task.spec.url().to_string();
        // A bug must cost one shard, not hang the consumer waiting for an End that never comes.
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| read_shard(shared, lane, task.spec)))
            .unwrap_or_else(|_| Err(Stop::Failed(ShardError::new(ErrorKind::Read, &url, "internal error (panic)"))));
        let pushed = match outcome {
            Ok(()) => Ok(()),
            Err(Stop::Failed(e)) => shared.ring.push_urgent(lane, Item::Error(e)),
            Err(Stop::Cancelled) => Err(Closed),
        };
        if pushed.is_err() || shared.ring.push_urgent(lane, Item::End).is_err() {
            break;
        }
    }
    let (lock, cvar) = &shared.exited;
    let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
    shared.running.fetch_sub(1, Ordering::SeqCst);
    cvar.notify_all();
}

/// Why reading a shard stopped early.
pub(super) enum Stop {
    Failed(ShardError),
    Cancelled,
}

impl From<Closed> for Stop {
    fn from(_: Closed) -> Self {
        Stop::Cancelled
    }
}
