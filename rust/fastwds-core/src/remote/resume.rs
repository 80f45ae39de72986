//! A remote body that survives its connection: a read that fails (reset, stall past the idle timeout, early
//! end) reopens the resource at the byte it reached, checked against the first response's ETag so a replaced
//! object is an error and never spliced in; transient failures are retried with backoff within a budget.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// How failures are retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Consecutive failed attempts (without a byte read in between) before giving up.
    pub max_retries: u32,
    /// The longest a run of consecutive failures may last before giving up.
    pub retry_timeout: Duration,
}

impl RetryPolicy {
    /// The pause before retry number `attempt` (1-based): 100 ms doubling to at most 5 s.
    fn backoff(attempt: u32) -> Duration {
        Duration::from_millis(100u64.saturating_mul(1 << attempt.saturating_sub(1).min(6))).min(Duration::from_secs(5))
    }
}

/// A response body starting at the offset asked for.
pub struct Body {
    pub reader: Box<dyn Read + Send>,
    /// The resource's validator, if the server gave one.
    pub etag: Option<String>,
    /// The resource's whole size, if known: a body ending before it was cut.
    pub size: Option<u64>,
}

/// Why an attempt to open a body failed.
#[derive(Debug)]
pub enum Failure {
    /// Retrying cannot help: no such object, access denied, bad credentials, bad request.
    Permanent(String),
    /// The resource is not the one the read began with (its ETag changed).
    Changed(String),
    /// A server error, a refused or reset connection, a timeout: worth another try.
    Transient(io::Error),
}

/// Where a resumable body comes from.
pub trait Origin: Send {
    /// Opens the resource from `offset`; with `etag`, fails with [`Failure::Changed`] unless it still has it.
    fn get(&mut self, offset: u64, etag: Option<&str>) -> Result<Body, Failure>;
}

/// A body read through any number of connections.
pub struct Resuming<O: Origin> {
    origin: O,
    policy: RetryPolicy,
    cancel: Arc<AtomicBool>,
    body: Option<Box<dyn Read + Send>>,
    offset: u64,
    etag: Option<String>,
    size: Option<u64>,
}

impl<O: Origin> Resuming<O> {
    /// Opens the first body at byte `start`, retrying transient failures; a permanent failure is returned
    /// at once.
    pub fn open(mut origin: O, start: u64, policy: RetryPolicy, cancel: Arc<AtomicBool>) -> Result<Self, Failure> {
        let mut attempts = Attempts::new(&policy);
        let body = loop {
            match origin.get(start, None) {
                Ok(body) => break body,
                Err(Failure::Transient(e)) => attempts.failed(e, &cancel).map_err(Failure::Transient)?,
                Err(e) => return Err(e),
            }
        };
        Ok(Resuming {
            origin,
            policy,
            cancel,
            etag: body.etag,
            size: body.size,
            body: Some(body.reader),
            offset: start,
        })
    }

    /// Reopens at the current offset after `error`; Err when retries are exhausted or retrying cannot help.
    fn reopen(&mut self, error: io::Error, attempts: &mut Attempts) -> io::Result<()> {
        let mut error = error;
        loop {
            attempts.failed(error, &self.cancel)?;
            match self.origin.get(self.offset, self.etag.as_deref()) {
                Ok(body) => {
                    if self.etag.is_some() && body.etag.is_some() && body.etag != self.etag {
                        return Err(changed(format!(
                            "ETag {} became {}",
                            self.etag.as_deref().unwrap_or_default(),
                            body.etag.as_deref().unwrap_or_default()
                        )));
                    }
                    self.body = Some(body.reader);
                    return Ok(());
                }
                Err(Failure::Transient(e)) => error = e,
                Err(Failure::Changed(why)) => return Err(changed(why)),
                Err(Failure::Permanent(why)) => {
                    return Err(io::Error::other(format!("resuming at byte {} failed: {why}", self.offset)))
                }
            }
        }
    }
}

fn changed(why: String) -> io::Error {
    io::Error::other(format!("the object changed while it was read ({why}); its bytes are not spliced"))
}

impl<O: Origin> Read for Resuming<O> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut attempts = Attempts::new(&self.policy);
        loop {
            let Some(body) = self.body.as_mut() else { return Ok(0) };
            let error = match body.read(buf) {
                Ok(0) => match self.size {
                    Some(size) if self.offset < size => io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the connection closed at byte {} of {size}", self.offset),
                    ),
                    _ => {
                        self.body = None;
                        return Ok(0);
                    }
                },
                Ok(n) => {
                    self.offset += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => e,
            };
            self.body = None;
            self.reopen(error, &mut attempts)?;
        }
    }
}

/// A run of consecutive failures, bounded by the policy.
struct Attempts {
    count: u32,
    max: u32,
    deadline: Instant,
}

impl Attempts {
    fn new(policy: &RetryPolicy) -> Self {
        Attempts { count: 0, max: policy.max_retries, deadline: Instant::now() + policy.retry_timeout }
    }

    /// Records a failure; waits out the backoff and returns Ok when another attempt is allowed, else the
    /// error (with the attempts made). A cancelled read stops waiting at once.
    fn failed(&mut self, error: io::Error, cancel: &AtomicBool) -> io::Result<()> {
        self.count += 1;
        let pause = RetryPolicy::backoff(self.count);
        if self.count > self.max || Instant::now() + pause > self.deadline {
            let tries = self.count;
            return Err(io::Error::new(error.kind(), format!("{error} (gave up after {tries} attempts)")));
        }
        let until = Instant::now() + pause;
        while Instant::now() < until {
            if cancel.load(Ordering::Relaxed) {
                // Not `Interrupted`, which `read_exact` and `io::copy` would retry.
                return Err(io::Error::other("cancelled"));
            }
            thread::sleep(Duration::from_millis(10).min(until.saturating_duration_since(Instant::now())));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves `data` from `offset`, cutting each of the first bodies after `cut` bytes.
    struct Flaky {
        data: Vec<u8>,
        cut: usize,
        cuts_left: usize,
        opens: Vec<u64>,
        etag: String,
    }

    impl Origin for Flaky {
        fn get(&mut self, offset: u64, etag: Option<&str>) -> Result<Body, Failure> {
            self.opens.push(offset);
            if etag.is_some_and(|e| e != self.etag) {
                return Err(Failure::Changed("etag".into()));
            }
            let rest = self.data[offset as usize..].to_vec();
            let reader: Box<dyn Read + Send> = if self.cuts_left > 0 {
                self.cuts_left -= 1;
                let n = self.cut.min(rest.len());
                Box::new(io::Cursor::new(rest[..n].to_vec()).chain(Failing))
            } else {
                Box::new(io::Cursor::new(rest))
            };
            Ok(Body { reader, etag: Some(self.etag.clone()), size: Some(self.data.len() as u64) })
        }
    }

    struct Failing;
    impl Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset"))
        }
    }

    fn policy(max_retries: u32) -> RetryPolicy {
        RetryPolicy { max_retries, retry_timeout: Duration::from_secs(30) }
    }

    fn flaky(cuts: usize) -> Flaky {
        Flaky {
            data: (0..10_000u32).map(|i| i as u8).collect(),
            cut: 3000,
            cuts_left: cuts,
            opens: vec![],
            etag: "\"a\"".into(),
        }
    }

    #[test]
    fn resumes_where_the_body_was_cut() {
        let origin = flaky(3);
        let expected = origin.data.clone();
        let mut r = Resuming::open(origin, 0, policy(3), Arc::default()).map_err(|e| format!("{e:?}")).unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, expected);
        assert_eq!(r.origin.opens, vec![0, 3000, 6000, 9000]);
    }

    #[test]
    fn gives_up_after_max_retries_without_progress() {
        let mut origin = flaky(100);
        origin.cut = 0;
        let mut r = Resuming::open(origin, 0, policy(2), Arc::default()).map_err(|e| format!("{e:?}")).unwrap();
        let err = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("gave up after 3 attempts"), "{err}");
    }

    #[test]
    fn a_replaced_object_is_an_error() {
        let origin = flaky(1);
        let mut r = Resuming::open(origin, 0, policy(3), Arc::default()).map_err(|e| format!("{e:?}")).unwrap();
        r.origin.etag = "\"b\"".into();
        let mut out = Vec::new();
        let err = r.read_to_end(&mut out).unwrap_err();
        assert!(err.to_string().contains("changed"), "{err}");
        assert_eq!(out.len(), 3000);
    }

    #[test]
    fn a_body_opened_at_an_offset_ends_at_the_size_and_resumes_from_there() {
        // Without cuts, and with two cuts (each resumed from the byte it reached).
        for (cuts, opens) in [(0, vec![4000]), (2, vec![4000, 7000, 10000])] {
            let origin = flaky(cuts);
            let expected = origin.data[4000..].to_vec();
            let mut r = Resuming::open(origin, 4000, policy(3), Arc::default()).map_err(|e| format!("{e:?}")).unwrap();
            let mut out = Vec::new();
            r.read_to_end(&mut out).unwrap();
            assert_eq!(out, expected);
            assert_eq!(r.origin.opens, opens);
        }
    }
}
