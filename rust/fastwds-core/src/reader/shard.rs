//! Reading one shard: open it, unwrap its compression, parse its tar stream and group its members into
//! samples, which go to the ring through an [`Emitter`].

use std::io::{self, Read};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::decode::Emitter;
use super::pool::{Shared, Stop};
use super::{ReaderConfig, ShardSpec};
use crate::cache::{self, Lookup};
use crate::decompress::decompress;
use crate::error::{CallbackError, ErrorKind, ShardError, TarError};
use crate::ring::Closed;
use crate::sample::{is_metadata, split_key, Grouper, Sample, Value};
use crate::source::{open_url, open_url_at, Opened, Openers};
use crate::tar::{MemberHeader, MemberInfo, TarReader};

/// Reads one shard to its end, pushing samples (or members) into its lane.
pub(super) fn read_shard(shared: &Shared, lane: usize, spec: ShardSpec) -> Result<(), Stop> {
    let url: Arc<str> = Arc::from(spec.url());
    let openers = Openers {
        children: &shared.children,
        http: &shared.http,
        remote: &shared.config.remote,
        cancel: &shared.cancel,
        fallback: shared.config.opener.as_deref(),
    };
    let open = |u: &str| open_url(u, &openers);
    if let (true, ShardSpec::Url(u) | ShardSpec::Cached { url: u, .. } | ShardSpec::From { url: u, .. }) =
        (shared.config.secure, &spec)
    {
        refuse_insecure(u).map_err(Stop::Failed)?;
    }
    let mut filling = None;
    let mut span = Span { start: 0, seeked: true, end: None };
    let mut opened = match spec {
        ShardSpec::From { url: u, start, end } => {
            let (opened, seeked) = open_url_at(&u, start, &openers).map_err(Stop::Failed)?;
            span = Span { start, seeked, end };
            opened
        }
        ShardSpec::Url(u) => open(&u).map_err(Stop::Failed)?,
        ShardSpec::Alias { location, .. } => open(&location).map_err(|e| {
            Stop::Failed(ShardError { url: url.to_string(), message: format!("{} ({location})", e.message), ..e })
        })?,
        ShardSpec::Stream { stream, .. } => Opened { stream, command: None },
        ShardSpec::Cached { url: u, path } => match cache::lookup(&path, &shared.cancel) {
            Ok(Some(Lookup::Hit(file))) => Opened { stream: Box::new(file), command: None },
            Ok(Some(Lookup::Miss(fill))) => {
                let mut opened = open(&u).map_err(Stop::Failed)?;
                let (stream, filled) = fill.tee(opened.stream);
                opened.stream = stream;
                filling = Some(filled);
                opened
            }
            Ok(None) => return Err(Stop::Cancelled),
            Err(e) => {
                let message = format!("cannot use the cache entry {}: {e}", path.display());
                return Err(Stop::Failed(ShardError::new(ErrorKind::Open, &url, message)));
            }
        },
    };
    let command = opened.command.take();
    let mut out = Emitter::new(shared, lane);
    let read = read_members(shared, opened.stream, &span, &url, &mut out);
    // Samples completed before a failure are delivered before it.
    let read = match (read, out.flush()) {
        (Err(Stop::Cancelled), _) | (_, Err(Closed)) => Err(Stop::Cancelled),
        (read, Ok(())) => read,
    };
    let outcome = match read {
        Err(Stop::Failed(e)) => Err(Stop::Failed(match command {
            Some(command) => command.explain(&url, e),
            None => e,
        })),
        Err(Stop::Cancelled) => Err(Stop::Cancelled),
        // Read to its end: the command's exit status counts.
        Ok(Ending::Drained) => match command {
            Some(command) => command.finish(&url, &shared.cancel).map_err(Stop::Failed),
            None => Ok(()),
        },
        // Endless zeros after the archive: the shard is complete; dropping the command kills it (and a
        // download into the cache, which did not reach the end, is discarded).
        Ok(Ending::Abandoned) => Ok(()),
    };
    // Only a shard read to its end without any error becomes a cache entry.
    if let (Ok(()), Some(filled), Some(settings)) = (&outcome, filling, &shared.config.cache) {
        filled.commit(settings);
    }
    outcome
}

/// Refuses, in secure mode, a URL that would run a command (the reference's `enforce_security` refuses
/// `pipe:` URLs in `gopen`). Local files are read, as the reference's `WebDataset` reads them.
fn refuse_insecure(url: &str) -> Result<(), ShardError> {
    if !url.starts_with("pipe:") {
        return Ok(());
    }
    Err(ShardError::new(
        ErrorKind::Insecure,
        url,
        "refused in secure mode (WDS_SECURE=1 / fastwds.utils.enforce_security): a pipe: URL runs a shell command",
    ))
}

/// How a shard's byte stream ended after its last member.
enum Ending {
    /// Read to EOF (a gzip trailer checked, a command's output consumed).
    Drained,
    /// More than [`MAX_TAIL`] bytes followed the archive: the rest was left unread.
    Abandoned,
}

/// Bytes read after the end-of-archive marker (zero padding, a gzip trailer) before the rest of an endless
/// stream is left unread.
const MAX_TAIL: u64 = 4 << 20;

/// The part of a shard's tar stream to read.
struct Span {
    /// Where reading begins (a member's first header).
    start: u64,
    /// Whether the opened stream begins at `start` already (else that many bytes of the uncompressed stream
    /// are read and discarded first).
    seeked: bool,
    /// Reading stops before the first member whose header starts here or later.
    end: Option<u64>,
}

/// Parses the tar stream of an opened shard and groups its members.
fn read_members(
    shared: &Shared,
    stream: Box<dyn Read + Send>,
    &Span { start, seeked, end }: &Span,
    url: &Arc<str>,
    out: &mut Emitter<'_>,
) -> Result<Ending, Stop> {
    let url = Arc::clone(url);
    let (mut stream, _) =
        decompress(stream).map_err(|e| Stop::Failed(TarError::io(0, None, &e).into_shard_error(&url)))?;
    if !seeked {
        let skipped = io::copy(&mut (&mut stream).take(start), &mut io::sink())
            .map_err(|e| Stop::Failed(TarError::io(0, None, &e).into_shard_error(&url)))?;
        if skipped < start {
            let message = format!("the shard ends at byte {skipped}, before the start asked for ({start})");
            return Err(Stop::Failed(ShardError::new(ErrorKind::Truncated, &url, message)));
        }
    }
    let mut tar = TarReader::starting_at(stream, start);
    let config = &shared.config;
    let fail = |e: TarError| Stop::Failed(e.into_shard_error(&url));
    let mut grouper = Grouper::new(Arc::clone(&url));
    loop {
        if shared.cancel.load(Ordering::Relaxed) {
            return Err(Stop::Cancelled);
        }
        let Some(header) = tar.next_member().map_err(fail)? else {
            break;
        };
        if end.is_some_and(|end| header.offset >= end) {
            // The span ends here; the rest of the stream is not this reader's.
            if let Some(done) = grouper.finish() {
                out.emit(done)?;
            }
            return Ok(Ending::Abandoned);
        }
        if is_metadata(&header.name) {
            continue;
        }
        // A failed callback drops the member; the stream is intact, so the shard can go on.
        let callback_error =
            |cause: CallbackError| ShardError::callback(&url, cause).with_member(Some(&header.name)).at(header.offset);
        let name = match &config.rename_files {
            Some(rename) => match rename(&header.name) {
                Ok(name) => name,
                Err(cause) => {
                    out.skip(callback_error(cause))?;
                    continue;
                }
            },
            None => header.name.clone(),
        };
        if let Some(select) = &config.select_files {
            match select(&name) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(cause) => {
                    out.skip(callback_error(cause))?;
                    continue;
                }
            }
        }
        if header.size > config.max_member_bytes {
            let e = ShardError::new(
                ErrorKind::TooLarge,
                &url,
                format!(
                    "member of {} bytes is larger than max_member_bytes={} (raise it in reader_options)",
                    header.size, config.max_member_bytes
                ),
            );
            out.skip(e.with_member(Some(&name)).at(header.offset))?;
            continue;
        }
        if config.members {
            let info = config.member_info.then(|| tar.member_info());
            let data = read_value(&mut tar, &header, config, true).map_err(fail)?;
            let mut fields = vec![(String::new(), data)];
            if let Some(info) = info {
                fields.extend(info_fields(&info));
            }
            let member = Sample { key: name, url: Arc::clone(&url), fields };
            out.emit(member)?;
            continue;
        }
        let Some((key, field)) = split_key(&name) else {
            continue;
        };
        let field = if config.lcase { field.to_lowercase() } else { field.to_string() };
        if let Some(done) = grouper.begin(key) {
            out.emit(done)?;
        }
        if grouper.repeats(&field) {
            // As the reference: the repeated member is dropped and the sample keeps its first copy.
            let e = ShardError::new(
                ErrorKind::DuplicateField,
                &url,
                format!("sample {:?} has field {field:?} twice", grouper.key()),
            );
            out.skip(e.with_member(Some(&name)).at(header.offset))?;
            continue;
        }
        if config.fields.as_ref().is_some_and(|keep| !keep.contains(&field)) {
            continue;
        }
        // Image fields stay in a Vec: the decoder reads them and replaces them with pixels.
        let direct = !config.images.as_ref().is_some_and(|stage| stage.wants(&field));
        let value = read_value(&mut tar, &header, config, direct).map_err(fail)?;
        grouper.add(field, value);
    }
    // Read what follows the end-of-archive marker: a gzip trailer's checksum is verified there, and a
    // `pipe:` command must not be left blocked writing into a pipe nobody reads. An endless tail
    // (`cat /dev/zero`) is left unread after a bound.
    let end = tar.offset();
    let ending = if tar.ended_early() {
        Ending::Abandoned
    } else {
        let mut rest = tar.into_inner().take(MAX_TAIL + 1);
        let tail = io::copy(&mut rest, &mut io::sink()).map_err(|e| fail(TarError::io(end, None, &e)))?;
        if tail > MAX_TAIL {
            Ending::Abandoned
        } else {
            Ending::Drained
        }
    };
    if let Some(done) = grouper.finish() {
        out.emit(done)?;
    }
    Ok(ending)
}

/// Reads a member's data: into a consumer's buffer when it is large (and `direct`), else into a Vec.
fn read_value<R: Read>(
    tar: &mut TarReader<R>,
    header: &MemberHeader,
    config: &ReaderConfig,
    direct: bool,
) -> Result<Value, TarError> {
    if direct && header.size >= config.allocate_from {
        let buffer = usize::try_from(header.size).ok().and_then(|len| config.allocator.as_ref().and_then(|a| a(len)));
        if let Some(mut buffer) = buffer {
            tar.read_data_into(header, buffer.as_mut_slice())?;
            return Ok(Value::Buffer(buffer));
        }
    }
    let mut data = Vec::new();
    tar.read_data(header, &mut data)?;
    Ok(Value::Bytes(data))
}

/// A member's info as the text fields [`ReaderConfig::member_info`] describes.
fn info_fields(info: &MemberInfo) -> [(String, Value); 6] {
    let field = |name: &str, text: String| (name.to_string(), Value::from(text.into_bytes()));
    [
        field("mode", info.mode.to_string()),
        field("uid", info.uid.to_string()),
        field("gid", info.gid.to_string()),
        field("uname", info.uname.clone()),
        field("gname", info.gname.clone()),
        field("mtime", info.mtime.to_string()),
    ]
}
