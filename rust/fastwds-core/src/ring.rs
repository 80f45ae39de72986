//! The bounded buffer between reader threads and the consumer: one queue per lane (per shard in flight),
//! sharing one budget of bytes and items, so memory stays bounded whatever the shard and sample sizes.
//!
//! The lane the consumer is reading (`current`) has a reserved share of the budget, so it is never starved
//! by the others and nothing deadlocks; the other lanes share the rest, so a reader working ahead on the next
//! shard is not idled after a fixed fraction of it. An empty queue always admits one item, so a sample larger
//! than the whole budget still passes. Memory: at most the budget plus one item per lane.
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
    total_bytes: usize,
    total_items: usize,
    /// The lane the consumer is reading.
    current: usize,
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
    reserve_bytes: usize,
    reserve_items: usize,
}

impl<T: Weighed> Ring<T> {
    /// `lanes` queues sharing `max_bytes` and `max_items`; the current lane's reserve is a `1/lanes` share.
    pub fn new(lanes: usize, max_bytes: usize, max_items: usize) -> Self {
        let lanes = lanes.max(1);
        let queues = (0..lanes).map(|_| Queue { items: VecDeque::new(), bytes: 0 }).collect();
        let state = State {
            queues,
            total_bytes: 0,
            total_items: 0,
            current: 0,
            closed: false,
            consumer_waiting: false,
            producers_waiting: 0,
        };
        Ring {
            state: Mutex::new(state),
            readable: Condvar::new(),
            writable: Condvar::new(),
            max_bytes,
            max_items: max_items.max(1),
            reserve_bytes: max_bytes / lanes,
            reserve_items: (max_items.max(1) / lanes).max(1),
        }
    }

    /// The consumer moved on to `lane`: a producer held back by the shared budget may now use the reserve.
    pub fn set_current(&self, lane: usize) {
        let mut state = self.lock();
        state.current = lane;
        if state.producers_waiting > 0 {
            self.writable.notify_all();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn full(&self, state: &State<T>, lane: usize) -> bool {
        let q = &state.queues[lane];
        if q.items.is_empty() {
            return false;
        }
        if lane == state.current {
            return q.bytes >= self.reserve_bytes || q.items.len() >= self.reserve_items;
        }
        let shared_bytes = self.max_bytes - self.reserve_bytes;
        let shared_items = self.max_items - self.reserve_items;
        state.total_bytes >= shared_bytes || state.total_items >= shared_items
    }

    /// Appends to a lane's queue, blocking while it is full.
    pub fn push(&self, lane: usize, item: T) -> Result<(), Closed> {
        self.push_inner(lane, item, false)
    }

    /// Appends and wakes the consumer at once: for the last item of a shard, which no batch will follow.
    pub fn push_urgent(&self, lane: usize, item: T) -> Result<(), Closed> {
        self.push_inner(lane, item, true)
    }

    fn push_inner(&self, lane: usize, item: T, urgent: bool) -> Result<(), Closed> {
        let mut state = self.lock();
        loop {
            if state.closed {
                return Err(Closed);
            }
            if !self.full(&state, lane) {
                break;
            }
            state.producers_waiting += 1;
            state = self.writable.wait(state).unwrap_or_else(|e| e.into_inner());
            state.producers_waiting -= 1;
        }
        let weight = item.weight();
        state.total_bytes += weight;
        state.total_items += 1;
        let q = &mut state.queues[lane];
        q.bytes += weight;
        q.items.push_back(item);
        let batch_ready = urgent || q.items.len() >= WAKE_ITEMS || q.bytes >= WAKE_BYTES || self.full(&state, lane);
        if state.consumer_waiting && batch_ready {
            self.readable.notify_one();
        }
        Ok(())
    }

    /// Moves up to `max_items` items, and no more than `max_bytes` of them after the first, from a lane's queue
    /// into `out`, waiting up to `timeout` for the first one. Returns the number moved (0 on timeout).
    pub fn pop_into(
        &self,
        lane: usize,
        out: &mut VecDeque<T>,
        max_items: usize,
        max_bytes: usize,
        timeout: Duration,
    ) -> Result<usize, Closed> {
        let mut state = self.lock();
        if state.queues[lane].items.is_empty() && !state.closed {
            state.consumer_waiting = true;
            let (s, _) = self
                .readable
                .wait_timeout_while(state, timeout, |s| s.queues[lane].items.is_empty() && !s.closed)
                .unwrap_or_else(|e| e.into_inner());
            state = s;
            state.consumer_waiting = false;
        }
        if state.closed {
            return Err(Closed);
        }
        let q = &mut state.queues[lane];
        // Items taken out are outside the budget until the consumer is done with them: the batch is bounded in
        // bytes too, so large samples are not held in bulk beyond the buffer. It always takes one item.
        let (mut n, mut freed) = (0, 0);
        while n < max_items {
            let Some(weight) = q.items.front().map(Weighed::weight) else { break };
            if n > 0 && freed + weight > max_bytes {
                break;
            }
            if let Some(item) = q.items.pop_front() {
                out.push_back(item);
            }
            freed += weight;
            n += 1;
        }
        q.bytes -= freed;
        state.total_bytes -= freed;
        state.total_items -= n;
        if n > 0 && state.producers_waiting > 0 {
            // Producers wait on different lanes; wake them all and let each recheck its own.
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
        state.total_bytes = 0;
        state.total_items = 0;
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
            seen += ring.pop_into(0, &mut out, 2, usize::MAX, Duration::from_millis(100)).unwrap();
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
        assert_eq!(ring.pop_into(0, &mut out, 1, usize::MAX, Duration::from_millis(1)), Err(Closed));
    }

    #[test]
    fn lanes_share_the_budget_and_the_current_lane_keeps_a_reserve() {
        // Budget 6 items over 3 lanes: a reserve of 2 for the lane being read, 4 shared by the others.
        let ring: Arc<Ring<Vec<u8>>> = Arc::new(Ring::new(3, 1 << 20, 6));
        for i in 0..3 {
            ring.push(1, vec![i]).unwrap(); // the next shard may take the whole shared part, not just its third
        }
        ring.push(2, vec![7]).unwrap();
        ring.push(0, vec![8]).unwrap();
        ring.push(0, vec![9]).unwrap(); // the shared part is spent, but the current lane has its reserve
        let r = Arc::clone(&ring);
        let blocked = thread::spawn(move || r.push(1, vec![3]));
        thread::sleep(Duration::from_millis(50));
        assert!(!blocked.is_finished(), "a lane ahead of the consumer waits once the shared part is spent");
        let mut out = VecDeque::new();
        ring.pop_into(0, &mut out, 10, usize::MAX, Duration::from_millis(5)).unwrap();
        ring.set_current(1);
        thread::sleep(Duration::from_millis(50));
        assert!(!blocked.is_finished(), "lane 1 now holds more than the reserve");
        ring.pop_into(1, &mut out, 2, usize::MAX, Duration::from_millis(5)).unwrap(); // back under the reserve
        assert_eq!(blocked.join().unwrap(), Ok(()));
        ring.pop_into(1, &mut out, 10, usize::MAX, Duration::from_millis(5)).unwrap();
        assert_eq!(out.iter().map(|v| v[0]).collect::<Vec<_>>(), [8, 9, 0, 1, 2, 3]);
    }

    #[test]
    fn a_batch_stops_at_its_byte_bound_but_always_takes_one_item() {
        let ring: Ring<Vec<u8>> = Ring::new(1, 1 << 20, 100);
        for n in [300, 300, 300, 5000] {
            ring.push(0, vec![0; n]).unwrap();
        }
        let mut out = VecDeque::new();
        assert_eq!(ring.pop_into(0, &mut out, 100, 700, Duration::from_millis(5)), Ok(2), "300 + 300 fit in 700");
        assert_eq!(ring.pop_into(0, &mut out, 100, 700, Duration::from_millis(5)), Ok(1), "300 + 5000 do not");
        assert_eq!(ring.pop_into(0, &mut out, 100, 700, Duration::from_millis(5)), Ok(1), "one item over the bound");
        assert_eq!(out.iter().map(Vec::len).collect::<Vec<_>>(), [300, 300, 300, 5000]);
    }

    #[test]
    fn pop_times_out_on_an_empty_lane() {
        let ring: Ring<Vec<u8>> = Ring::new(2, 10, 1);
        ring.push(0, vec![1]).unwrap();
        let mut out = VecDeque::new();
        assert_eq!(ring.pop_into(1, &mut out, 1, usize::MAX, Duration::from_millis(5)), Ok(0));
        assert_eq!(ring.pop_into(0, &mut out, 1, usize::MAX, Duration::from_millis(5)), Ok(1));
    }
}
