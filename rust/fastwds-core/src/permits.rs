//! Decoding permits shared by every shard in flight, so that a reader's `threads` bounds the images decoded at
//! once. Each shard's reader thread decodes its batches with helpers; without a shared count, two shards
//! read side by side each added their own and ran twice the threads asked for (on a machine with more cores
//! than `threads`, twice the cores).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How often a waiting reader looks at the cancel flag, should a wake-up be missed.
const CANCEL_CHECK: Duration = Duration::from_millis(50);

pub struct DecodePermits {
    free: Mutex<usize>,
    freed: Condvar,
}

impl DecodePermits {
    pub fn new(count: usize) -> Self {
        DecodePermits { free: Mutex::new(count.max(1)), freed: Condvar::new() }
    }

    fn lock(&self) -> MutexGuard<'_, usize> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes between one and `want` permits (as many as are free), waiting while none is. Returns `None` once
    /// `cancelled` is set. Each permit taken is given back by dropping one of the returned [`Permit`]s.
    pub fn acquire(&self, want: usize, cancelled: &AtomicBool) -> Option<Vec<Permit<'_>>> {
        let mut free = self.lock();
        loop {
            if cancelled.load(Ordering::SeqCst) {
                return None;
            }
            if *free > 0 {
                let granted = want.clamp(1, *free);
                *free -= granted;
                return Some((0..granted).map(|_| Permit { permits: self }).collect());
            }
            free = self.freed.wait_timeout(free, CANCEL_CHECK).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Wakes every waiting reader (to see that the pool was cancelled).
    pub fn wake_all(&self) {
        let _free = self.lock();
        self.freed.notify_all();
    }
}

/// One decoding permit, given back when dropped (also when its thread panics).
pub struct Permit<'a> {
    permits: &'a DecodePermits,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.permits.lock() += 1;
        self.permits.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::thread;
    use std::time::Instant;

    #[test]
    fn grants_what_is_free_and_takes_it_back_on_drop() {
        let permits = DecodePermits::new(3);
        let never = AtomicBool::new(false);
        let first = permits.acquire(2, &never).unwrap();
        assert_eq!(first.len(), 2);
        let second = permits.acquire(5, &never).unwrap();
        assert_eq!(second.len(), 1, "only one was left");
        drop(first);
        assert_eq!(permits.acquire(5, &never).unwrap().len(), 2);
        drop(second);
        assert_eq!(permits.acquire(8, &never).unwrap().len(), 3);
    }

    #[test]
    fn never_more_holders_than_permits() {
        let permits = Arc::new(DecodePermits::new(2));
        let never = Arc::new(AtomicBool::new(false));
        let (inside, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let handles: Vec<_> = (0..6)
            .map(|_| {
                let (permits, never, inside, most) = (permits.clone(), never.clone(), inside.clone(), most.clone());
                thread::spawn(move || {
                    for _ in 0..50 {
                        let held = permits.acquire(2, &never).unwrap();
                        let now = inside.fetch_add(held.len(), Ordering::SeqCst) + held.len();
                        most.fetch_max(now, Ordering::SeqCst);
                        thread::yield_now();
                        inside.fetch_sub(held.len(), Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_waiting_reader_returns_promptly_when_cancelled() {
        let permits = Arc::new(DecodePermits::new(1));
        let cancelled = Arc::new(AtomicBool::new(false));
        let held = permits.acquire(1, &cancelled).unwrap();
        let waiter = {
            let (permits, cancelled) = (permits.clone(), cancelled.clone());
            thread::spawn(move || permits.acquire(1, &cancelled).map(|s| s.len()))
        };
        thread::sleep(Duration::from_millis(20));
        let start = Instant::now();
        cancelled.store(true, Ordering::SeqCst);
        permits.wake_all();
        assert_eq!(waiter.join().unwrap(), None, "no permit is granted after cancelling");
        assert!(start.elapsed() < Duration::from_secs(2));
        drop(held);
    }
}
