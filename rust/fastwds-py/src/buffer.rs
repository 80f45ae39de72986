//! Python `bytes` objects as read buffers: a large member is read by a reader thread straight into the
//! `bytes` that Python gets, instead of into a Vec that the consumer then copies (a 4 MB copy per sample).

use std::any::Any;

use fastwds_core::{BufferAllocator, FieldBuffer};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use pyo3::{ffi, Py};

/// A `bytes` object not yet handed to Python, and its storage.
pub struct BytesBuffer {
    bytes: Py<PyBytes>,
    data: *mut u8,
    len: usize,
}

// SAFETY: until `into_bytes` hands the object to Python, this is its only reference, so no other thread reads
// or writes its storage; `data` stays valid because `bytes` keeps the object alive.
unsafe impl Send for BytesBuffer {}

impl BytesBuffer {
    /// An uninitialised `bytes` of `len` bytes (taking the GIL briefly), or None if Python cannot allocate it.
    fn allocate(len: usize) -> Option<Box<dyn FieldBuffer>> {
        let size = ffi::Py_ssize_t::try_from(len).ok()?;
        Python::attach(|py| {
            // SAFETY: a NULL source asks CPython for an uninitialised bytes object of `size` bytes, which we own;
            // every byte is written by the reader before Python sees it.
            unsafe {
                let object = ffi::PyBytes_FromStringAndSize(std::ptr::null(), size);
                if object.is_null() {
                    ffi::PyErr_Clear();
                    return None;
                }
                let data = ffi::PyBytes_AsString(object).cast::<u8>();
                let bytes: Py<PyBytes> = Bound::from_owned_ptr(py, object).cast_into::<PyBytes>().ok()?.unbind();
                Some(Box::new(BytesBuffer { bytes, data, len }) as Box<dyn FieldBuffer>)
            }
        })
    }
}

impl FieldBuffer for BytesBuffer {
    fn as_slice(&self) -> &[u8] {
        // SAFETY: `data` points at `len` bytes owned by `bytes`, which lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.data, self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes this the only access (the object is not shared yet).
        unsafe { std::slice::from_raw_parts_mut(self.data, self.len) }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The allocator the reader threads use for large members.
pub fn bytes_allocator() -> std::sync::Arc<BufferAllocator> {
    std::sync::Arc::new(BytesBuffer::allocate)
}

/// A field value read into a consumer buffer, as a Python `bytes` (ours without a copy).
pub fn buffer_to_bytes(py: Python<'_>, buffer: &dyn FieldBuffer) -> Py<PyBytes> {
    match buffer.as_any().downcast_ref::<BytesBuffer>() {
        Some(ours) => ours.bytes.clone_ref(py),
        None => PyBytes::new(py, buffer.as_slice()).unbind(),
    }
}
