//! Opening a shard URL as a byte stream: local paths, `file:`, `-` (stdin) and `pipe:CMD` are read here, and
//! `s3://`, `gs://`, `hf://` and `http(s)://` by [`crate::remote`]; any other scheme goes to the caller's
//! fallback opener (the binding passes Python's `gopen` table, which users extend), or is an error naming the
//! scheme.
//!
//! A `pipe:` command runs in its own process group so that cancelling a read kills the whole pipeline
//! (`curl ... | zcat`), not just the shell; its stderr tail is kept for the error message.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{CallbackError, ErrorKind, ShardError};
use crate::remote::{self, RemoteOptions};

/// Opens a URL whose scheme the core does not read itself.
pub type OpenFn = dyn Fn(&str) -> Result<Box<dyn Read + Send>, CallbackError> + Send + Sync;

const STDERR_TAIL: usize = 4096;
/// How long a command that broke its stream gets to exit and flush its stderr before we stop waiting.
const EXIT_GRACE: Duration = Duration::from_secs(1);

/// The process groups of running `pipe:` commands, so that a cancelled read can kill them from any thread.
#[derive(Default, Clone)]
pub struct ChildRegistry {
    state: Arc<Mutex<Registered>>,
}

#[derive(Default)]
struct Registered {
    pgids: Vec<i32>,
    /// Set by `kill_all`: a command that a worker spawns after it (a race with cancellation) dies at once.
    cancelled: bool,
}

impl ChildRegistry {
    fn add(&self, pgid: i32) {
        let mut state = lock(&self.state);
        state.pgids.push(pgid);
        if state.cancelled {
            kill_group(pgid);
        }
    }

    /// Removes a group before its leader is reaped, so a recycled pid is never signalled.
    fn remove(&self, pgid: i32) {
        lock(&self.state).pgids.retain(|&p| p != pgid);
    }

    /// Kills every registered command's process group, and any registered later.
    pub fn kill_all(&self) {
        let mut state = lock(&self.state);
        state.cancelled = true;
        for &pgid in &state.pgids {
            kill_group(pgid);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep using it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn kill_group(pgid: i32) {
    // SAFETY: kill(2) with a negative pid signals a process group; it has no memory effects.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// An opened shard: the byte stream, and the `pipe:` command behind it, if any.
pub struct Opened {
    pub stream: Box<dyn Read + Send>,
    pub command: Option<PipeCommand>,
}

/// A running `pipe:` command. Dropping it kills and reaps the command.
pub struct PipeCommand {
    command: String,
    child: Option<Child>,
    pgid: i32,
    registry: ChildRegistry,
    stderr_tail: Arc<Mutex<VecDeque<u8>>>,
    stderr_reader: Option<thread::JoinHandle<()>>,
}

impl PipeCommand {
    /// Waits for the command to exit after its output was read to the end; a non-zero status is an error
    /// naming the command, the status and the end of its stderr.
    pub fn finish(mut self, url: &str, cancel: &AtomicBool) -> Result<(), ShardError> {
        let status = self.wait(cancel);
        self.join_stderr();
        match status {
            Some(s) if s.success() => Ok(()),
            Some(s) => Err(self.failure(url, s)),
            None => Err(ShardError::new(ErrorKind::Command, url, format!("command {:?} was cancelled", self.command))),
        }
    }

    /// After the stream failed: if the command has exited (or exits within a moment) with a failure, that
    /// failure explains the broken stream better than the tar error does; the tar error is appended.
    pub fn explain(mut self, url: &str, stream_error: ShardError) -> ShardError {
        let deadline = Instant::now() + EXIT_GRACE;
        while !self.leader_exited() {
            if Instant::now() >= deadline {
                return stream_error; // still running: dropping `self` kills it
            }
            thread::sleep(Duration::from_millis(2));
        }
        match self.reap() {
            // SIGPIPE only says that we stopped reading first.
            Some(status) if !status.success() && !killed_by_sigpipe(status) => {
                self.join_stderr();
                let mut e = self.failure(url, status);
                e.message.push_str(&format!("; the stream was cut: {}", stream_error.message));
                e.member = stream_error.member;
                e.offset = stream_error.offset;
                e
            }
            _ => stream_error,
        }
    }

    fn failure(&self, url: &str, status: ExitStatus) -> ShardError {
        let tail = String::from_utf8_lossy(lock(&self.stderr_tail).make_contiguous()).trim().to_string();
        let mut message = format!("command {:?} exited with {}", self.command, describe(status));
        if !tail.is_empty() {
            message.push_str(&format!("; stderr: {tail}"));
        }
        ShardError::new(ErrorKind::Command, url, message)
    }

    /// Polls for the shell's exit; kills the group when cancelled.
    fn wait(&mut self, cancel: &AtomicBool) -> Option<ExitStatus> {
        self.child.as_ref()?;
        loop {
            if self.leader_exited() {
                return self.reap();
            }
            if cancel.load(Ordering::Relaxed) {
                self.reap();
                return None;
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Whether the shell has exited, without reaping it: while it is a zombie its pid (the group id) cannot
    /// be reused, so its group can still be signalled safely.
    fn leader_exited(&self) -> bool {
        let Some(child) = &self.child else { return true };
        // SAFETY: waitid writes only into `info`, which is zeroed and owned here.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let rc = libc::waitid(
                libc::P_PID,
                child.id() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            );
            rc != 0 || info.si_pid() != 0
        }
    }

    /// Kills the command's group and reaps the shell. After the shell exited this kills what it left running
    /// in its group (a background process holding stderr open would otherwise keep the shard from ending);
    /// before, it stops the whole command (cancelled or abandoned).
    fn reap(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        kill_group(self.pgid);
        self.registry.remove(self.pgid);
        child.wait().ok()
    }

    /// Waits (bounded) for the stderr reader: a process outside the group may still hold the pipe open.
    fn join_stderr(&mut self) {
        let Some(handle) = self.stderr_reader.take() else { return };
        let deadline = Instant::now() + EXIT_GRACE;
        while !handle.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
        if handle.is_finished() {
            let _ = handle.join();
        }
    }
}

impl Drop for PipeCommand {
    fn drop(&mut self) {
        self.reap();
    }
}

/// Whether the command died of SIGPIPE, directly or as the shell reports a pipeline's last command that did
/// (status 128 + SIGPIPE): it only says that we stopped reading first.
fn killed_by_sigpipe(status: ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal() == Some(libc::SIGPIPE) || status.code() == Some(128 + libc::SIGPIPE)
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("status {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => status.to_string(),
    }
}

/// What opening a URL may need: the reader's running commands, its HTTP agent and remote settings, its cancel
/// flag, and the opener of schemes not read here.
pub struct Openers<'a> {
    pub children: &'a ChildRegistry,
    pub http: &'a ureq::Agent,
    pub remote: &'a RemoteOptions,
    pub cancel: &'a Arc<AtomicBool>,
    pub fallback: Option<&'a OpenFn>,
}

/// Opens a shard URL for reading.
pub fn open_url(url: &str, openers: &Openers<'_>) -> Result<Opened, ShardError> {
    let plain = |stream: Box<dyn Read + Send>| Ok(Opened { stream, command: None });
    if url == "-" {
        return plain(Box::new(io::stdin()));
    }
    if let Some(cmd) = url.strip_prefix("pipe:") {
        return open_pipe(url, cmd, openers.children);
    }
    if remote::is_remote(url) {
        return plain(remote::open(url, 0, openers.remote, openers.http, openers.cancel)?);
    }
    let path = if let Some(rest) = url.strip_prefix("file://") {
        rest
    } else if let Some(rest) = url.strip_prefix("file:") {
        rest
    } else {
        if let Some(scheme) = url_scheme(url) {
            if let Some(open) = openers.fallback {
                return match open(url) {
                    Ok(stream) => plain(stream),
                    Err(cause) => Err(ShardError { kind: ErrorKind::Open, ..ShardError::callback(url, cause) }),
                };
            }
            return Err(ShardError::new(
                ErrorKind::Open,
                url,
                format!(
                    "unsupported URL scheme {scheme:?}: read it through a command, e.g. \"pipe:aws s3 cp {url} -\""
                ),
            ));
        }
        url
    };
    let file = File::open(path).map_err(|e| ShardError::new(ErrorKind::Open, url, format!("cannot open: {e}")))?;
    plain(Box::new(file))
}

/// Opens a shard URL so that its tar stream can start at byte `start` (a sample's first header): a plain
/// local `.tar` is opened and seeked there, a remote `.tar` is fetched from there by a ranged request
/// (`true`: the stream begins at `start`); anything else (compressed, `pipe:`, another scheme) opens at its
/// beginning (`false`: the reader discards `start` bytes of the uncompressed tar stream).
pub fn open_url_at(url: &str, start: u64, openers: &Openers<'_>) -> Result<(Opened, bool), ShardError> {
    use std::io::{Seek, SeekFrom};
    if start == 0 {
        return Ok((open_url(url, openers)?, false));
    }
    if remote::is_remote(url) && url.split(['?', '#']).next().is_some_and(|path| path.ends_with(".tar")) {
        let stream = remote::open(url, start, openers.remote, openers.http, openers.cancel)?;
        return Ok((Opened { stream, command: None }, true));
    }
    let local = url.strip_prefix("file://").or_else(|| url.strip_prefix("file:"));
    let path = local.or_else(|| url_scheme(url).is_none().then_some(url)).filter(|_| url != "-");
    let Some(path) = path else { return Ok((open_url(url, openers)?, false)) };
    let open_error = |e: io::Error| ShardError::new(ErrorKind::Open, url, format!("cannot open: {e}"));
    let mut file = File::open(path).map_err(open_error)?;
    let mut magic = [0u8; 4];
    let filled = file.read(&mut magic).map_err(open_error)?;
    let compressed = (filled >= 2 && magic[..2] == [0x1f, 0x8b]) || (filled == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd]);
    let at = if compressed { 0 } else { start };
    file.seek(SeekFrom::Start(at)).map_err(open_error)?;
    Ok((Opened { stream: Box::new(file), command: None }, !compressed))
}

/// The scheme of `scheme://...` or `scheme:...` URLs; None for paths (a Windows drive letter is not a scheme).
fn url_scheme(url: &str) -> Option<&str> {
    let colon = url.find(':')?;
    let scheme = &url[..colon];
    let valid = scheme.len() > 1
        && scheme.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    (valid && !scheme.contains('/')).then_some(scheme)
}

fn open_pipe(url: &str, cmd: &str, registry: &ChildRegistry) -> Result<Opened, ShardError> {
    let mut command = Command::new("sh");
    command.arg("-c").arg(cmd).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    // SAFETY: the closure runs in the child between fork and exec and calls only prctl(2), which is
    // async-signal-safe. The shell (and a lone command it execs) is killed when the reader thread that started
    // it dies, so a reader process killed by SIGKILL leaves no shell behind; a pipeline's other commands die of
    // SIGPIPE on their next write into the closed pipe.
    unsafe {
        command.pre_exec(|| {
            #[cfg(target_os = "linux")]
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| ShardError::new(ErrorKind::Open, url, format!("cannot start command {cmd:?}: {e}")))?;
    let pgid = child.id() as i32;
    registry.add(pgid);
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let stderr_tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL)));
    let tail = Arc::clone(&stderr_tail);
    let stderr_reader = stderr.map(|mut err| {
        thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut t = lock(&tail);
                t.extend(&buf[..n]);
                let excess = t.len().saturating_sub(STDERR_TAIL);
                t.drain(..excess);
            }
        })
    });
    let command = PipeCommand {
        command: cmd.to_string(),
        child: Some(child),
        pgid,
        registry: registry.clone(),
        stderr_tail,
        stderr_reader,
    };
    let stdout = stdout.ok_or_else(|| ShardError::new(ErrorKind::Open, url, "command has no stdout"))?;
    Ok(Opened { stream: Box::new(stdout), command: Some(command) })
}

/// An HTTP client with timeouts for connecting, for the response headers and for each read of the body
/// (`read_timeout`: a stalled read is retried from the byte it reached); the body as a whole has none, since a
/// multi-GB shard may legitimately take long. `Agent::shutdown` on a clone interrupts every read in progress.
pub fn http_agent(read_timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(read_timeout))
        .timeout_per_read(Some(read_timeout))
        .max_redirects(10)
        .user_agent("fastwds")
        .build()
        .into()
}
