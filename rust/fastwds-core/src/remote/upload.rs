//! Writing an object by multipart upload, from a blocking writer: parts go up while later bytes are written,
//! and the object appears under its name only when `finish` completes it. An upload dropped unfinished is
//! aborted; one whose process dies is never completed, so no object appears either way.

use std::io;

use object_store::{MultipartUpload, WriteMultipart};

use super::objects::Bucket;

/// Parts uploading at once; each holds one part's bytes (5 MiB) in memory.
const PARTS_IN_FLIGHT: usize = 4;

/// An upload in progress.
pub struct Upload {
    // Dropped before the bucket, whose runtime drives it.
    writer: Option<WriteMultipart>,
    bucket: Bucket,
    written: u64,
}

impl Upload {
    pub(super) fn new(bucket: Bucket, upload: Box<dyn MultipartUpload>) -> Upload {
        Upload { writer: Some(WriteMultipart::new(upload)), bucket, written: 0 }
    }

    /// Buffers `data`, uploading full parts; waits while too many parts are in flight.
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        let writer = self.writer.as_mut().ok_or_else(closed)?;
        let runtime = self.bucket.runtime();
        runtime.block_on(writer.wait_for_capacity(PARTS_IN_FLIGHT)).map_err(io::Error::other)?;
        // A full part is spawned as an upload task, which needs the runtime's context; it runs while a later
        // `write` or `finish` blocks on the runtime.
        let _context = runtime.enter();
        writer.write(data);
        self.written += data.len() as u64;
        Ok(())
    }

    /// Uploads what is buffered and completes the object.
    pub fn finish(&mut self) -> io::Result<u64> {
        let writer = self.writer.take().ok_or_else(closed)?;
        self.bucket.runtime().block_on(writer.finish()).map_err(io::Error::other)?;
        Ok(self.written)
    }

    /// Abandons the upload: its parts are deleted and no object appears.
    pub fn abort(&mut self) -> io::Result<()> {
        match self.writer.take() {
            Some(writer) => self.bucket.runtime().block_on(writer.abort()).map_err(io::Error::other),
            None => Ok(()),
        }
    }

    pub fn is_open(&self) -> bool {
        self.writer.is_some()
    }
}

fn closed() -> io::Error {
    io::Error::other("the upload is finished or aborted")
}

impl Drop for Upload {
    fn drop(&mut self) {
        // Best effort: a failed abort leaves parts that the bucket's lifecycle rules remove; no object appears.
        let _ = self.abort();
    }
}
