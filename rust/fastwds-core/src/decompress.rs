//! Unwrapping gzip or zstd by the stream's magic bytes, never by its name: a `pipe:` URL or an HTTP body
//! has no trustworthy extension.

use std::io::{self, BufReader, Read};

use flate2::bufread::MultiGzDecoder;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// Large reads keep syscalls and decompressor calls per byte low.
const BUFFER: usize = 1 << 20;

/// How a stream was compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Peeks at the first bytes and returns the decompressed stream with what was detected. Concatenated gzip
/// members (pigz, `cat a.gz b.gz`) and multi-frame zstd are read whole.
pub fn decompress(mut inner: Box<dyn Read + Send>) -> io::Result<(Box<dyn Read + Send>, Compression)> {
    let mut head = [0u8; 4];
    let mut filled = 0;
    while filled < head.len() {
        match inner.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    let rejoined = io::Cursor::new(head[..filled].to_vec()).chain(inner);
    if filled >= 2 && head[..2] == GZIP_MAGIC {
        let decoder = MultiGzDecoder::new(BufReader::with_capacity(BUFFER / 4, rejoined));
        Ok((Box::new(BufReader::with_capacity(BUFFER, decoder)), Compression::Gzip))
    } else if filled == 4 && head == ZSTD_MAGIC {
        let decoder = zstd::stream::read::Decoder::new(rejoined)?;
        Ok((Box::new(BufReader::with_capacity(BUFFER, decoder)), Compression::Zstd))
    } else {
        Ok((Box::new(BufReader::with_capacity(BUFFER, rejoined)), Compression::None))
    }
}
