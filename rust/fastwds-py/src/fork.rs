//! Knowing cheaply whether this process is a fork() child of the one that started a read.
//!
//! Reader threads exist only in the process that started them; after fork() (torch's DataLoader forks its
//! workers) an in-flight iterator must not be continued in the child. A `pthread_atfork` child handler bumps a
//! generation counter, so the check on every `next()` is one atomic load instead of a `getpid` syscall.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

static GENERATION: AtomicU64 = AtomicU64::new(0);
static REGISTER: Once = Once::new();

extern "C" fn in_child() {
    GENERATION.fetch_add(1, Ordering::SeqCst);
}

/// Registers the fork handler (once per process image; fork children inherit it).
pub fn install() {
    REGISTER.call_once(|| {
        // SAFETY: registering a handler that only touches an atomic is async-signal-safe, as a fork child
        // handler must be.
        unsafe {
            libc::pthread_atfork(None, None, Some(in_child));
        }
    });
}

/// The number of forks between the process image's start and this process.
pub fn generation() -> u64 {
    GENERATION.load(Ordering::SeqCst)
}
