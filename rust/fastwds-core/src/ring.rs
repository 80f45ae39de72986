//! The bounded buffer between reader threads and the consumer: one queue per slot, each bounded by bytes
//! and by item count, so memory stays bounded whatever the shard and sample sizes.
//!
//! An item is admitted whenever its queue is below both limits, so one sample larger than the whole budget
//! still passes (one at a time) instead of deadlocking.
//!
//! Waking a sleeping consumer costs a syscall and a context switch, more than producing a small sample, so
//! producers wake it only once a batch is ready (or on `push_urgent`); a consumer that finds its queue empty
//! sleeps in short slices and looks again, which bounds the delay a partial batch can see.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// A queue this long (or this many bytes) is worth waking the consumer for.
const WAKE_ITEMS: usize = 32;
const WAKE_BYTES: usize = 1 << 20;

/// The ring was closed: the consumer is gone or the read was cancelled.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed;

/// A value with the bytes it holds.
pub trait Weighed {
    fn weight(&self) -> usize;
}

struct Queue<T> {
    items: VecDeque<T>,
    bytes: usize,
}

struct State<T> {
    queues: Vec<Queue<T>>,
    closed: bool,
    consumer_waiting: bool,
    producers_waiting: usize,
}

/// Bounded multi-producer, single-consumer queues.
pub struct Ring<T> {
    state: Mutex<State<T>>,
    readable: Condvar,
    writable: Condvar,
    max_bytes: usize,
    max_items: usize,
}

impl<T: Weighed> Ring<T> {
    /// `slots` queues, each bounded by `max_bytes` and `max_items` (at least one item).
    pub fn new(slots: usize, max_bytes: usize, max_items: usize) -> Self {
        let queues = (0..slots.max(1)).map(|_| Queue { items: VecDeque::new(), bytes: 0 }).collect();
        Ring {
            state: Mutex::new(State { queues, closed: false, consumer_waiting: false, producers_waiting: 0 }),
            readable: Condvar::new(),
            writable: Condvar::new(),
            max_bytes,
            max_items: max_items.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn full(&self, q: &Queue<T>) -> bool {
        !q.items.is_empty() && (q.items.len() >= self.max_items || q.bytes >= self.max_bytes)
    }

    /// Appends to a slot's queue, blocking while it is full.
    pub fn push(&self, slot: usize, item: T) -> Result<(), Closed> {
        self.push_inner(slot, item, false)
    }

    /// Appends and wakes the consumer at once: for the last item of a shard, which no batch will follow.
    pub fn push_urgent(&self, slot: usize, item: T) -> Result<(), Closed> {
        self.push_inner(slot, item, true)
    }

    fn push_inner(&self, slot: usize, item: T, urgent: bool) -> Result<(), Closed> {
        let mut state = self.lock();
        loop {
            if state.closed {
                return Err(Closed);
            }
            if !self.full(&state.queues[slot]) {
                break;
            }
            state.producers_waiting += 1;
            state = self.writable.wait(state).unwrap_or_else(|e| e.into_inner());
            state.producers_waiting -= 1;
        }
        let q = &mut state.queues[slot];
        q.bytes += item.weight();
        q.items.push_back(item);
        let batch_ready = urgent || q.items.len() >= WAKE_ITEMS || q.bytes >= WAKE_BYTES || self.full(q);
        if state.consumer_waiting && batch_ready {
            self.readable.notify_one();
        }
        Ok(())
    }

    /// Moves up to `max` items from a slot's queue into `out`, waiting up to `timeout` for the first one.
    /// Returns the number moved (0 on timeout).
    pub fn pop_into(&self, slot: usize, out: &mut VecDeque<T>, max: usize, timeout: Duration) -> Result<usize, Closed> {
        let mut state = self.lock();
        if state.queues[slot].items.is_empty() && !state.closed {
            state.consumer_waiting = true;
            let (s, _) = self
                .readable
                .wait_timeout_while(state, timeout, |s| s.queues[slot].items.is_empty() && !s.closed)
                .unwrap_or_else(|e| e.into_inner());
            state = s;
            state.consumer_waiting = false;
        }
        if state.closed {
            return Err(Closed);
        }
        let q = &mut state.queues[slot];
        let n = q.items.len().min(max);
        for item in q.items.drain(..n) {
            q.bytes -= item.weight();
            out.push_back(item);
        }
        if n > 0 && state.producers_waiting > 0 {
            // Producers wait on different slots; wake them all and let each recheck its own.
            self.writable.notify_all();
        }
        Ok(n)
    }

    /// Wakes everyone; later pushes and pops fail with `Closed`, and queued items are dropped.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        for q in &mut state.queues {
            q.items.clear();
            q.bytes = 0;
        }
        drop(state);
        self.readable.notify_all();
        self.writable.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;

    impl Weighed for Vec<u8> {
        fn weight(&self) -> usize {
            self.len()
        }
    }

    #[test]
    fn bounds_items_and_bytes_but_admits_one_oversized_item() {
        let ring: Arc<Ring<Vec<u8>>> = Arc::new(Ring::new(1, 100, 3));
        ring.push(0, vec![0; 1000]).unwrap(); // larger than the budget, admitted into an empty queue
        let r = Arc::clone(&ring);
        let producer = thread::spawn(move || {
            for i in 0..10u8 {
                r.push(0, vec![i; 10]).unwrap();
            }
        });
        let mut out = VecDeque::new();
        let mut seen = 0;
        while seen < 11 {
            seen += ring.pop_into(0, &mut out, 2, Duration::from_millis(100)).unwrap();
            let state = ring.lock();
            assert!(state.queues[0].items.len() <= 3);
        }
        producer.join().unwrap();
        assert_eq!(out.len(), 11);
        assert_eq!(out[0].len(), 1000);
        assert_eq!(out.iter().skip(1).map(|v| v[0]).collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn close_wakes_a_blocked_producer() {
        let ring: Arc<Ring<Vec<u8>>> = Arc::new(Ring::new(2, 10, 1));
        ring.push(1, vec![1]).unwrap();
        let r = Arc::clone(&ring);
        let producer = thread::spawn(move || r.push(1, vec![2]));
        thread::sleep(Duration::from_millis(50));
        ring.close();
        assert_eq!(producer.join().unwrap(), Err(Closed));
        let mut out = VecDeque::new();
        assert_eq!(ring.pop_into(0, &mut out, 1, Duration::from_millis(1)), Err(Closed));
    }

    #[test]
    fn pop_times_out_on_an_empty_slot() {
        let ring: Ring<Vec<u8>> = Ring::new(2, 10, 1);
        ring.push(0, vec![1]).unwrap();
        let mut out = VecDeque::new();
        assert_eq!(ring.pop_into(1, &mut out, 1, Duration::from_millis(5)), Ok(0));
        assert_eq!(ring.pop_into(0, &mut out, 1, Duration::from_millis(5)), Ok(1));
    }
}
