//! Unwrapping gzip or zstd by the stream's magic bytes, never by its name: a `pipe:` URL or an HTTP body
//! has no trustworthy extension.

use std::io::{self, BufRead, BufReader, Read};

use flate2::bufread::GzDecoder;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// Large reads keep syscalls and decompressor calls per byte low.
const BUFFER: usize = 1 << 20;
/// Zero bytes accepted after a gzip member as padding (tape-style blocking pads to a record size).
const MAX_GZIP_PADDING: u64 = 4 << 20;

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
        let decoder = GzipMembers::new(BufReader::with_capacity(BUFFER / 4, rejoined));
        Ok((Box::new(BufReader::with_capacity(BUFFER, decoder)), Compression::Gzip))
    } else if filled == 4 && head == ZSTD_MAGIC {
        let decoder = zstd::stream::read::Decoder::new(rejoined)?;
        Ok((Box::new(BufReader::with_capacity(BUFFER, decoder)), Compression::Zstd))
    } else {
        Ok((Box::new(BufReader::with_capacity(BUFFER, rejoined)), Compression::None))
    }
}

/// Reads every member of a gzip stream in turn (pigz, `cat a.gz b.gz`) and accepts zero bytes after a member
/// as padding, as `gzip -t`, `tar tzf` and Python's gzip module do; other bytes there must start a member.
struct GzipMembers<R: BufRead> {
    member: Option<GzDecoder<R>>,
}

impl<R: BufRead> GzipMembers<R> {
    fn new(inner: R) -> Self {
        GzipMembers { member: Some(GzDecoder::new(inner)) }
    }

    /// After a member's end: skips zero padding, then starts the next member, or ends at EOF.
    fn next_member(mut inner: R) -> io::Result<Option<GzDecoder<R>>> {
        let mut zeros = 0u64;
        loop {
            let buf = inner.fill_buf()?;
            if buf.is_empty() {
                return Ok(None);
            }
            let run = buf.iter().position(|&b| b != 0).unwrap_or(buf.len());
            if run < buf.len() {
                inner.consume(run);
                return Ok(Some(GzDecoder::new(inner)));
            }
            zeros += run as u64;
            if zeros > MAX_GZIP_PADDING {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("more than {MAX_GZIP_PADDING} zero bytes after the gzip stream"),
                ));
            }
            inner.consume(run);
        }
    }
}

impl<R: BufRead> Read for GzipMembers<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let Some(member) = self.member.as_mut() else { return Ok(0) };
            let n = member.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            let Some(finished) = self.member.take() else { return Ok(0) };
            self.member = Self::next_member(finished.into_inner())?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).expect("compress");
        e.finish().expect("compress")
    }

    fn inflate(bytes: Vec<u8>) -> io::Result<Vec<u8>> {
        let (mut stream, kind) = decompress(Box::new(io::Cursor::new(bytes)))?;
        assert_eq!(kind, Compression::Gzip);
        let mut out = Vec::new();
        stream.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn members_and_zero_padding_between_and_after_them_are_read() {
        let mut bytes = gzip(b"first ");
        bytes.extend([0u8; 700]);
        bytes.extend(gzip(b"second"));
        bytes.extend([0u8; 10240]);
        assert_eq!(inflate(bytes).expect("inflate"), b"first second");
    }

    #[test]
    fn garbage_after_a_member_is_an_error() {
        let mut bytes = gzip(b"data");
        bytes.extend(b"junk that is not gzip");
        assert!(inflate(bytes).is_err());
    }

    #[test]
    fn a_cut_member_is_an_unexpected_eof() {
        let bytes = gzip(&[7u8; 100_000]);
        let cut = bytes[..bytes.len() / 2].to_vec();
        assert_eq!(inflate(cut).expect_err("cut").kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn endless_zeros_after_a_member_are_an_error_not_a_hang() {
        let stream = io::Cursor::new(gzip(b"x")).chain(io::repeat(0));
        let (mut stream, _) = decompress(Box::new(stream)).expect("gzip");
        let mut out = Vec::new();
        assert_eq!(stream.read_to_end(&mut out).expect_err("bound").kind(), io::ErrorKind::InvalidData);
    }
}
