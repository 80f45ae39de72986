//! A streaming tar parser for ustar, GNU (long names, base-256 sizes) and POSIX pax archives.
//!
//! It yields regular-file members one at a time and never seeks, so it reads pipes, HTTP bodies and
//! decompressors alike. Unlike Python's `tarfile` in stream mode, a stream that stops anywhere before the
//! end-of-archive marker is an error: a cut download must not look like a short shard.

use std::io::{self, Read};

use crate::error::TarError;

const BLOCK: usize = 512;
/// Pax and GNU long-name payloads are metadata: anything larger is a corrupt header, not a name.
const MAX_META_PAYLOAD: u64 = 1 << 20;
/// Zero blocks read after an end-of-archive marker while looking for a concatenated archive; past it the
/// stream is taken to be endless zeros (`pipe:cat /dev/zero`) and the archive ends, as `tar` ends it.
const MAX_ZERO_RUN: u64 = 8192;
/// Up-front allocation cap for member data; larger members grow as they are read, so a corrupt size field
/// in a short stream fails as a truncation instead of exhausting memory.
const MAX_RESERVE: u64 = 64 << 20;

/// The header of a regular-file member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberHeader {
    pub name: String,
    pub size: u64,
    /// Byte offset of the member's first header (pax or GNU records included) in the tar stream.
    pub offset: u64,
}

/// Reads members from a tar byte stream.
pub struct TarReader<R> {
    inner: R,
    offset: u64,
    /// Data bytes (plus padding) of the current member not yet consumed.
    pending: u64,
    current: Option<String>,
    finished: bool,
    header: [u8; BLOCK],
    /// The pax records of the current member, kept for [`TarReader::member_info`].
    pax: Option<Vec<u8>>,
    /// The archive ended on a long run of zero blocks whose end was never read.
    ended_early: bool,
}

/// A member's permissions, owner and modification time, as `tar tv` lists them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberInfo {
    /// Permission bits (`0o644`), without the file type.
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Owner and group names; empty when the header has none (pre-POSIX tar).
    pub uname: String,
    pub gname: String,
    /// Seconds since the Unix epoch (whole seconds; negative before 1970 in pax records).
    pub mtime: i64,
}

impl<R: Read> TarReader<R> {
    pub fn new(inner: R) -> Self {
        Self::starting_at(inner, 0)
    }

    /// A reader of a tar stream whose first byte is at `offset` of the whole archive (a shard opened at a
    /// sample's header), so that errors name offsets in the whole archive.
    pub fn starting_at(inner: R, offset: u64) -> Self {
        TarReader {
            inner,
            offset,
            pending: 0,
            current: None,
            finished: false,
            header: [0; BLOCK],
            pax: None,
            ended_early: false,
        }
    }

    /// Whether the archive ended on [`MAX_ZERO_RUN`] zero blocks with more of the stream unread.
    pub fn ended_early(&self) -> bool {
        self.ended_early
    }

    /// Bytes of the tar stream consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The underlying reader, for draining what follows the end-of-archive marker.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// The next regular-file member, or None at the end-of-archive marker. Skips the unread data of the
    /// previous member, and skips directories, links and other non-file entries.
    pub fn next_member(&mut self) -> Result<Option<MemberHeader>, TarError> {
        if self.finished {
            return Ok(None);
        }
        self.skip_pending()?;
        self.current = None;
        self.pax = None;
        let mut start = self.offset;
        let mut long_name: Option<String> = None;
        let mut pax_path: Option<String> = None;
        let mut pax_size: Option<u64> = None;
        loop {
            let mut header_offset = self.offset;
            let mut after_end = false;
            if !self.read_header(start)? {
                if start != header_offset {
                    self.finished = true;
                    return Err(TarError::format(start, None, "end-of-archive marker right after an extended header"));
                }
                match self.next_archive()? {
                    Some(offset) => (start, header_offset, after_end) = (offset, offset, true),
                    None => {
                        self.finished = true;
                        return Ok(None);
                    }
                }
            }
            let h = &self.header;
            verify_checksum(h).map_err(|m| {
                let m = if after_end {
                    format!("data after the end-of-archive marker is not a tar header ({m})")
                } else {
                    m
                };
                TarError::format(header_offset, None, m)
            })?;
            let typeflag = h[156];
            let size = parse_number(&h[124..136])
                .map_err(|m| TarError::format(header_offset, None, format!("size field: {m}")))?;
            match typeflag {
                b'x' | b'g' | b'L' | b'K' => {
                    if size > MAX_META_PAYLOAD {
                        return Err(TarError::format(header_offset, None, format!("extended header of {size} bytes")));
                    }
                    let payload = self.read_meta_payload(size, header_offset)?;
                    match typeflag {
                        b'x' => {
                            let (path, psize) =
                                parse_pax(&payload).map_err(|m| TarError::format(header_offset, None, m))?;
                            if path.is_some() {
                                pax_path = path;
                            }
                            if psize.is_some() {
                                pax_size = psize;
                            }
                            self.pax = Some(payload);
                        }
                        b'L' => long_name = Some(c_string(&payload)),
                        _ => {} // global pax records and GNU long link names never name a member
                    }
                }
                _ => {
                    let size = pax_size.unwrap_or(size);
                    let name = match (pax_path, long_name) {
                        (Some(p), _) => p,
                        (None, Some(l)) => l,
                        (None, None) => header_name(h),
                    };
                    let regular = matches!(typeflag, b'0' | b'7') || (typeflag == 0 && !name.ends_with('/'));
                    if typeflag == b'S' {
                        return Err(TarError::format(
                            header_offset,
                            Some(&name),
                            "GNU sparse members are not supported",
                        ));
                    }
                    // Links, devices, directories and FIFOs have no data: their size field is ignored, as
                    // tarfile and GNU tar ignore it (a directory with a size is followed by the next header).
                    // Members of other types carry data we do not use; it is skipped to stay aligned.
                    let dataless = matches!(typeflag, b'1'..=b'6') || (typeflag == 0 && name.ends_with('/'));
                    self.pending = if dataless { 0 } else { padded(size) };
                    if regular {
                        self.current = Some(name.clone());
                        return Ok(Some(MemberHeader { name, size, offset: start }));
                    }
                    self.skip_pending()?;
                    start = self.offset;
                    (long_name, pax_path, pax_size) = (None, None, None);
                    self.pax = None;
                }
            }
        }
    }

    /// The permissions, owner and time of the member [`TarReader::next_member`] last returned: its header's
    /// fields, overridden by its pax records. Fields that do not parse read as 0 (they never affect the data).
    pub fn member_info(&self) -> MemberInfo {
        let h = &self.header;
        let number = |field: &[u8]| parse_number(field).unwrap_or(0);
        let mut info = MemberInfo {
            mode: (number(&h[100..108]) & 0o7777) as u32,
            uid: number(&h[108..116]),
            gid: number(&h[116..124]),
            uname: c_string(&h[265..297]),
            gname: c_string(&h[297..329]),
            mtime: i64::try_from(number(&h[136..148])).unwrap_or(0),
        };
        let pax = self.pax.as_deref().unwrap_or(&[]);
        let _ = for_each_pax_record(pax, |key, value| {
            let text = String::from_utf8_lossy(value);
            match key {
                b"uid" => info.uid = text.trim().parse().unwrap_or(info.uid),
                b"gid" => info.gid = text.trim().parse().unwrap_or(info.gid),
                b"uname" => info.uname = text.into_owned(),
                b"gname" => info.gname = text.into_owned(),
                // "1700000000.25": whole seconds, rounded down as `tar tv` shows them.
                b"mtime" => {
                    if let Ok(t) = text.trim().parse::<f64>() {
                        info.mtime = t.floor() as i64;
                    }
                }
                _ => {}
            }
            Ok(())
        });
        info
    }

    /// Reads the current member's data into `buf` (cleared first), then its padding.
    pub fn read_data(&mut self, header: &MemberHeader, buf: &mut Vec<u8>) -> Result<(), TarError> {
        buf.clear();
        buf.reserve_exact(header.size.min(MAX_RESERVE) as usize);
        let got = (&mut self.inner)
            .take(header.size)
            .read_to_end(buf)
            .map_err(|e| TarError::io(self.offset + buf.len() as u64, Some(&header.name), &e))?;
        self.finish_data(header, got as u64)
    }

    /// Reads the current member's data into `buf`, which holds exactly its size, then its padding.
    pub fn read_data_into(&mut self, header: &MemberHeader, buf: &mut [u8]) -> Result<(), TarError> {
        debug_assert_eq!(buf.len() as u64, header.size);
        let got = read_full(&mut self.inner, buf)
            .map_err(|(got, e)| TarError::io(self.offset + got as u64, Some(&header.name), &e))?;
        self.finish_data(header, got as u64)
    }

    /// Accounts for `got` bytes of the member's data just read; short of its size is a truncation, else the
    /// padding is skipped.
    fn finish_data(&mut self, header: &MemberHeader, got: u64) -> Result<(), TarError> {
        self.offset += got;
        self.pending -= got;
        if got < header.size {
            return Err(TarError::truncated(
                self.offset,
                Some(&header.name),
                &format!("inside member data ({got} of {} bytes)", header.size),
            ));
        }
        self.skip_pending()
    }

    /// Skips the current member's data and padding.
    pub fn skip_data(&mut self) -> Result<(), TarError> {
        self.skip_pending()
    }

    fn skip_pending(&mut self) -> Result<(), TarError> {
        if self.pending == 0 {
            return Ok(());
        }
        let want = self.pending;
        let got = io::copy(&mut (&mut self.inner).take(want), &mut io::sink())
            .map_err(|e| TarError::io(self.offset, self.current.as_deref(), &e))?;
        self.offset += got;
        self.pending -= got;
        if got < want {
            return Err(TarError::truncated(self.offset, self.current.as_deref(), "inside member data or padding"));
        }
        Ok(())
    }

    /// Reads up to one block into `header`, stopping early only at EOF; returns the bytes read.
    fn fill_block(&mut self) -> Result<usize, TarError> {
        let filled = read_full(&mut self.inner, &mut self.header)
            .map_err(|(got, e)| TarError::io(self.offset + got as u64, None, &e))?;
        self.offset += filled as u64;
        Ok(filled)
    }

    /// After the first zero block: skips the zero blocks that end an archive. A concatenated archive
    /// (`cat a.tar b.tar`) continues after them, read as `tar --ignore-zeros` reads it rather than dropped;
    /// returns the offset of its first header (now in `header`), or None at the end of the stream.
    fn next_archive(&mut self) -> Result<Option<u64>, TarError> {
        for _ in 0..MAX_ZERO_RUN {
            let offset = self.offset;
            let filled = self.fill_block()?;
            let nonzero = self.header[..filled].iter().any(|&b| b != 0);
            if filled < BLOCK {
                if nonzero {
                    return Err(TarError::format(offset, None, "trailing bytes after the end-of-archive marker"));
                }
                return Ok(None);
            }
            if nonzero {
                return Ok(Some(offset));
            }
        }
        self.ended_early = true;
        Ok(None)
    }

    /// Reads one header block; false at a zero block (end of archive). A clean EOF here is a truncation too:
    /// a well-formed archive always ends with zero blocks.
    fn read_header(&mut self, member_start: u64) -> Result<bool, TarError> {
        let filled = self.fill_block()?;
        if filled == 0 {
            let what = if self.offset == 0 {
                "before the first header (empty stream)".to_string()
            } else if member_start != self.offset {
                "after an extended header, before the member it describes".to_string()
            } else {
                "at a member boundary, without the end-of-archive marker".to_string()
            };
            return Err(TarError::truncated(self.offset, None, &what));
        }
        if filled < BLOCK {
            return Err(TarError::truncated(self.offset, None, &format!("inside a header ({filled} of 512 bytes)")));
        }
        Ok(self.header.iter().any(|&b| b != 0))
    }

    fn read_meta_payload(&mut self, size: u64, header_offset: u64) -> Result<Vec<u8>, TarError> {
        let mut payload = Vec::with_capacity(size as usize);
        let got =
            (&mut self.inner).take(size).read_to_end(&mut payload).map_err(|e| TarError::io(self.offset, None, &e))?;
        self.offset += got as u64;
        if (got as u64) < size {
            return Err(TarError::truncated(header_offset, None, "inside an extended header's payload"));
        }
        self.pending = padded(size) - size;
        self.skip_pending()?;
        Ok(payload)
    }
}

/// Fills `buf`, stopping early only at EOF; returns the bytes read, or the error with the bytes read before it.
fn read_full<R: Read>(reader: &mut R, buf: &mut [u8]) -> Result<usize, (usize, io::Error)> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err((filled, e)),
        }
    }
    Ok(filled)
}

fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK as u64) * BLOCK as u64
}

/// The bytes up to the first NUL, as text (lossy: tar names are bytes, and Python's tarfile would map
/// undecodable bytes to surrogates, which a sample key cannot carry anyway).
fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The member name from a header: POSIX ustar joins the 155-byte prefix; GNU magic does not, because GNU tar
/// keeps access and change times in that space.
fn header_name(h: &[u8; BLOCK]) -> String {
    let name = c_string(&h[0..100]);
    if &h[257..263] == b"ustar\0" {
        let prefix = c_string(&h[345..500]);
        if !prefix.is_empty() {
            return format!("{prefix}/{name}");
        }
    }
    name
}

/// Parses an octal field (space/NUL padded) or a GNU base-256 field (high bit of the first byte set).
pub(crate) fn parse_number(field: &[u8]) -> Result<u64, String> {
    if field.first().is_some_and(|&b| b & 0x80 != 0) {
        if field[0] == 0xff {
            return Err("negative base-256 number".to_string());
        }
        let mut value: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            value =
                value.checked_mul(256).and_then(|v| v.checked_add(u64::from(b))).ok_or("base-256 number overflows")?;
        }
        return Ok(value);
    }
    let text: Vec<u8> = field.iter().copied().take_while(|&b| b != 0).collect();
    let trimmed = std::str::from_utf8(&text).map_err(|_| "not ASCII".to_string())?.trim();
    if trimmed.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(trimmed, 8).map_err(|_| format!("not an octal number: {trimmed:?}"))
}

fn verify_checksum(h: &[u8; BLOCK]) -> Result<(), String> {
    let stored = parse_number(&h[148..156]).map_err(|m| format!("bad header checksum field: {m}"))?;
    // The checksum counts its own 8 bytes as spaces. Summing whole blocks keeps this loop vectorised: it runs
    // for every header, two per member in pax archives.
    let field = &h[148..156];
    let unsigned = h.iter().map(|&b| u64::from(b)).sum::<u64>() - field.iter().map(|&b| u64::from(b)).sum::<u64>()
        + 8 * u64::from(b' ');
    if stored == unsigned {
        return Ok(());
    }
    // Some old writers summed signed bytes; Python's tarfile accepts both, and so do we.
    let signed = h.iter().map(|&b| i64::from(b as i8)).sum::<i64>()
        - field.iter().map(|&b| i64::from(b as i8)).sum::<i64>()
        + 8 * i64::from(b' ');
    if i64::try_from(stored).is_ok_and(|s| s == signed) {
        Ok(())
    } else {
        Err(format!("header checksum mismatch (stored {stored}, computed {unsigned}): not a tar header"))
    }
}

/// Parses pax records `"%d key=value\n"` (the length counts the whole record); returns `path` and `size`.
fn parse_pax(payload: &[u8]) -> Result<(Option<String>, Option<u64>), String> {
    let mut path = None;
    let mut size = None;
    for_each_pax_record(payload, |key, value| {
        match key {
            b"path" => path = Some(String::from_utf8_lossy(value).into_owned()),
            b"size" => {
                let text = std::str::from_utf8(value).map_err(|_| "pax size is not text")?;
                size = Some(text.trim().parse::<u64>().map_err(|_| format!("pax size {text:?} is not a number"))?);
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok((path, size))
}

/// Calls `f(key, value)` for each `LEN KEY=VALUE\n` record of a pax extended header.
fn for_each_pax_record(payload: &[u8], mut f: impl FnMut(&[u8], &[u8]) -> Result<(), String>) -> Result<(), String> {
    let mut rest = payload;
    while !rest.is_empty() {
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let space = rest.iter().position(|&b| b == b' ').ok_or("pax record without a length")?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("pax record with a bad length")?;
        if len <= space + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err("malformed pax record".to_string());
        }
        let record = &rest[space + 1..len - 1];
        let eq = record.iter().position(|&b| b == b'=').ok_or("pax record without '='")?;
        f(&record[..eq], &record[eq + 1..])?;
        rest = &rest[len..];
    }
    Ok(())
}

#[cfg(test)]
mod tests;
