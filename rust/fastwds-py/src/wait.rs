//! Waiting for the reader threads without holding the GIL, and without ignoring Ctrl-C.

use std::time::Duration;

use fastwds_core::reader::Next;
use fastwds_core::Pool;
use pyo3::prelude::*;

/// How long one GIL-free wait lasts before Python gets a chance to deliver signals.
const SLICE: Duration = Duration::from_millis(50);

/// The next item of `pool`: from its local batch if one is there (no GIL release needed), else waited for
/// with the GIL released, in slices, raising `KeyboardInterrupt` (or whatever a signal handler raises)
/// between them.
pub fn next_item(py: Python<'_>, pool: &mut Pool) -> PyResult<Next> {
    if let Some(item) = pool.next_buffered() {
        return Ok(Next::Item(item));
    }
    loop {
        match py.detach(|| pool.next(SLICE)) {
            Next::Pending => py.check_signals()?,
            other => return Ok(other),
        }
    }
}
