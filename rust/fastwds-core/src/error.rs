//! The one error type of the core: every failure names the shard URL and, where known, the member and the
//! byte offset in the uncompressed tar stream, because a user with a thousand shards needs to find the bad one.

use std::fmt;
use std::io;
use std::sync::Arc;

/// What went wrong, coarsely: the binding maps kinds to Python exception classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The shard could not be opened (missing file, HTTP error, unsupported scheme, spawn failure).
    Open,
    /// Reading or decompressing the byte stream failed.
    Read,
    /// The stream ended before the tar end-of-archive marker (a cut download or a partial copy).
    Truncated,
    /// The bytes are not a valid tar stream (bad checksum, malformed header or pax record).
    Format,
    /// A `pipe:` command exited with a non-zero status.
    Command,
    /// A sample holds the same field twice.
    DuplicateField,
    /// A user callback (rename or select) failed; its own error is the [`ShardError::cause`].
    Callback,
    /// The source sent nothing for longer than the read timeout.
    Timeout,
    /// A member is larger than the reader's member size limit.
    TooLarge,
    /// A URL refused in secure mode: it would run a command.
    Insecure,
}

impl ErrorKind {
    /// The kind as a short word, the `kind` attribute of the Python exception.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Open => "open",
            ErrorKind::Read => "io",
            ErrorKind::Truncated => "truncated",
            ErrorKind::Format => "format",
            ErrorKind::Command => "command",
            ErrorKind::DuplicateField => "duplicate",
            ErrorKind::Callback => "callback",
            ErrorKind::Timeout => "timeout",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Insecure => "insecure",
        }
    }
}

/// The error a user callback raised, kept whole so the binding can hand it back to its caller as itself.
pub type CallbackError = Arc<dyn std::error::Error + Send + Sync>;

/// An error while reading one shard.
#[derive(Debug, Clone)]
pub struct ShardError {
    pub kind: ErrorKind,
    pub url: String,
    pub member: Option<String>,
    pub offset: Option<u64>,
    pub message: String,
    /// What a user callback raised, for [`ErrorKind::Callback`].
    pub cause: Option<CallbackError>,
}

impl ShardError {
    pub fn new(kind: ErrorKind, url: &str, message: impl Into<String>) -> Self {
        ShardError { kind, url: url.to_string(), member: None, offset: None, message: message.into(), cause: None }
    }

    /// A callback's failure, keeping what it raised.
    pub fn callback(url: &str, cause: CallbackError) -> Self {
        let mut e = ShardError::new(ErrorKind::Callback, url, format!("callback failed: {cause}"));
        e.cause = Some(cause);
        e
    }

    pub fn with_member(mut self, member: Option<&str>) -> Self {
        self.member = member.map(str::to_string);
        self
    }

    pub fn at(mut self, offset: u64) -> Self {
        self.offset = Some(offset);
        self
    }
}

impl fmt::Display for ShardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The parenthesis is also what fastwds.errors parses back where only the text crossed a process
        // boundary (torch's DataLoader re-raises a worker's error from its traceback text).
        write!(f, "{}: {} ({}", self.url, self.message, self.kind.name())?;
        match (&self.member, self.offset) {
            (Some(m), Some(o)) => write!(f, "; member {m:?}, byte offset {o})"),
            (Some(m), None) => write!(f, "; member {m:?})"),
            (None, Some(o)) => write!(f, "; byte offset {o})"),
            (None, None) => write!(f, ")"),
        }
    }
}

impl std::error::Error for ShardError {}

/// A failure inside the tar stream, before the URL is attached.
#[derive(Debug)]
pub struct TarError {
    pub kind: ErrorKind,
    pub offset: u64,
    pub member: Option<String>,
    pub message: String,
}

impl TarError {
    pub fn truncated(offset: u64, member: Option<&str>, what: &str) -> Self {
        TarError {
            kind: ErrorKind::Truncated,
            offset,
            member: member.map(str::to_string),
            message: format!("truncated tar stream: it ends {what}"),
        }
    }

    pub fn format(offset: u64, member: Option<&str>, message: impl Into<String>) -> Self {
        TarError { kind: ErrorKind::Format, offset, member: member.map(str::to_string), message: message.into() }
    }

    pub fn io(offset: u64, member: Option<&str>, err: &io::Error) -> Self {
        // A decompressor reports a cut stream as UnexpectedEof: that is a truncation, not a read fault.
        let (kind, message) = match err.kind() {
            io::ErrorKind::UnexpectedEof => (ErrorKind::Truncated, format!("truncated stream: {err}")),
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                (ErrorKind::Timeout, format!("the source sent nothing within the read timeout: {err}"))
            }
            _ => (ErrorKind::Read, format!("read error: {err}")),
        };
        TarError { kind, offset, member: member.map(str::to_string), message }
    }

    pub fn into_shard_error(self, url: &str) -> ShardError {
        ShardError {
            kind: self.kind,
            url: url.to_string(),
            member: self.member,
            offset: Some(self.offset),
            message: self.message,
            cause: None,
        }
    }
}
