//! Spare pixel buffers. A decoded image leaves its reader thread inside a sample and is freed later by the
//! consumer, on another thread. Freeing and allocating a few hundred KB per image that way made the allocator
//! hand pages back to the kernel and fault them in again: about a sixth of the decode time on 2 cores. The
//! consumer's finished buffers come back here instead (see [`recycle`]), up to a fixed total, and the next
//! decode writes into one that is already mapped.

use std::sync::Mutex;

/// Spare capacity kept at most, in bytes and in buffers.
const KEEP_BYTES: usize = 64 << 20;
const KEEP_BUFFERS: usize = 128;
/// Smaller buffers are cheap to allocate (the allocator keeps them in its heap) and are not kept.
const MIN_BYTES: usize = 32 << 10;

struct Spares {
    buffers: Vec<Vec<u8>>,
    bytes: usize,
}

impl Spares {
    const fn new() -> Self {
        Spares { buffers: Vec::new(), bytes: 0 }
    }

    /// A kept buffer with room for `len` bytes that wastes at most half of itself, emptied.
    fn take(&mut self, len: usize) -> Option<Vec<u8>> {
        let i = self.buffers.iter().position(|b| b.capacity() >= len && b.capacity() / 2 <= len)?;
        let mut spare = self.buffers.swap_remove(i);
        self.bytes -= spare.capacity();
        spare.clear();
        Some(spare)
    }

    /// Keeps `buffer` if there is room; otherwise it is freed.
    fn keep(&mut self, buffer: Vec<u8>) {
        let capacity = buffer.capacity();
        if capacity >= MIN_BYTES && self.buffers.len() < KEEP_BUFFERS && self.bytes + capacity <= KEEP_BYTES {
            self.bytes += capacity;
            self.buffers.push(buffer);
        }
    }
}

static SPARES: Mutex<Spares> = Mutex::new(Spares::new());

// Both calls below only try the lock: a busy pool just allocates or frees as before, and a process forked
// while another thread held the lock (a DataLoader worker) never waits for an owner that does not exist there.

/// An empty buffer with room for at least `len` bytes: a spare one when one fits, else a new one.
pub(crate) fn buffer(len: usize) -> Vec<u8> {
    let spare = if len >= MIN_BYTES { SPARES.try_lock().ok().and_then(|mut s| s.take(len)) } else { None };
    spare.unwrap_or_else(|| Vec::with_capacity(len))
}

/// Takes back the storage of pixels the consumer is done with, for a later decode.
pub fn recycle(buffer: Vec<u8>) {
    if buffer.capacity() >= MIN_BYTES {
        if let Ok(mut spares) = SPARES.try_lock() {
            spares.keep(buffer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spares_are_reused_when_they_fit_and_kept_within_bounds() {
        let mut spares = Spares::new();
        let mut first = Vec::with_capacity(300_000);
        first.resize(300_000, 7u8);
        let address = first.as_ptr();
        spares.keep(first);
        assert!(spares.take(400_000).is_none(), "too small");
        assert!(spares.take(100_000).is_none(), "would waste more than half");
        let again = spares.take(280_000).unwrap();
        assert_eq!((again.as_ptr(), again.len(), spares.bytes), (address, 0, 0));
        // Small buffers are not kept; nor anything past the byte budget.
        spares.keep(Vec::with_capacity(1000));
        assert!(spares.buffers.is_empty());
        for _ in 0..3 {
            spares.keep(Vec::with_capacity(30 << 20));
        }
        assert_eq!((spares.buffers.len(), spares.bytes), (2, 60 << 20));
    }
}
