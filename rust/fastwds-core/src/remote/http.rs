//! HTTP(S) resources (and the Hub's, for `hf://`) as resumable bodies: ranged GETs through the reader's
//! `ureq` agent, whose per-read timeout is the idle timeout.

use std::io::{self, Read};

use super::resume::{Body, Failure, Origin};

/// One HTTP resource, fetched from any offset.
pub struct HttpOrigin {
    pub url: String,
    pub token: Option<String>,
    pub agent: ureq::Agent,
}

impl Origin for HttpOrigin {
    fn get(&mut self, offset: u64, etag: Option<&str>) -> Result<Body, Failure> {
        let mut request = self.agent.get(&self.url);
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        if offset > 0 {
            request = request.header("Range", format!("bytes={offset}-"));
            // A weak ETag cannot promise the same bytes; only a strong one is a precondition.
            if let Some(etag) = etag.filter(|e| !e.starts_with("W/")) {
                request = request.header("If-Match", etag);
            }
        }
        let response = request.call().map_err(classify)?;
        let status = response.status().as_u16();
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let new_etag = header("etag");
        let length = header("content-length").and_then(|v| v.parse::<u64>().ok());
        let range = header("content-range").unwrap_or_default();
        let mut reader: Box<dyn Read + Send> =
            Box::new(TimeoutsAsTimedOut(Box::new(response.into_body().into_reader())));
        let size = match status {
            206 => {
                let (start, total) = parse_content_range(&range)
                    .ok_or_else(|| Failure::Permanent(format!("bad Content-Range {range:?} in a partial response")))?;
                if start != offset {
                    return Err(Failure::Permanent(format!("asked for byte {offset}, the server sent from {start}")));
                }
                total.or(length.map(|l| l + offset))
            }
            _ if offset > 0 => {
                // The server ignored the range: skip to the offset in the whole body, if it is the same one.
                if etag.is_some() && new_etag.is_some() && etag != new_etag.as_deref() {
                    return Err(Failure::Changed(format!("ETag {etag:?} became {new_etag:?}")));
                }
                io::copy(&mut (&mut reader).take(offset), &mut io::sink()).map_err(Failure::Transient)?;
                length
            }
            _ => length,
        };
        Ok(Body { reader, etag: new_etag, size })
    }
}

/// A resource's (size, ETag) as its server tells them: from a HEAD request, or from a one-byte ranged GET
/// when the server refuses HEAD (405, 501). Either may be unknown.
pub fn stat(url: &str, token: Option<&str>, agent: &ureq::Agent) -> Result<(Option<u64>, Option<String>), Failure> {
    let authorized = |request: ureq::RequestBuilder<ureq::typestate::WithoutBody>| match token {
        Some(token) => request.header("Authorization", format!("Bearer {token}")),
        None => request,
    };
    let (response, ranged) = match authorized(agent.head(url)).call() {
        Ok(response) => (response, false),
        Err(ureq::Error::StatusCode(405 | 501)) => {
            (authorized(agent.get(url)).header("Range", "bytes=0-0").call().map_err(classify)?, true)
        }
        Err(e) => return Err(classify(e)),
    };
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let etag = header("etag");
    let length = header("content-length").and_then(|v| v.parse::<u64>().ok());
    let size = match (ranged, response.status().as_u16()) {
        (true, 206) => header("content-range").as_deref().and_then(parse_content_range).and_then(|(_, total)| total),
        (true, _) => None, // the whole body came back: its length is the size, but it is not read here
        (false, _) => length,
    };
    Ok((size, etag))
}

/// `bytes START-END/TOTAL` (TOTAL may be `*`) as (START, TOTAL).
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()))
}

/// Sorts a failed request into what retrying can and cannot fix.
fn classify(error: ureq::Error) -> Failure {
    match error {
        ureq::Error::StatusCode(412) => Failure::Changed("the server refused If-Match (412)".to_string()),
        ureq::Error::StatusCode(code @ (408 | 425 | 429 | 500..=599)) => {
            Failure::Transient(io::Error::other(format!("HTTP status {code}")))
        }
        ureq::Error::StatusCode(code) => Failure::Permanent(format!("HTTP status {code}")),
        ureq::Error::Timeout(t) => {
            Failure::Transient(io::Error::new(io::ErrorKind::TimedOut, format!("timed out ({t})")))
        }
        ureq::Error::Io(e) => Failure::Transient(e),
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
            Failure::Transient(io::Error::new(io::ErrorKind::ConnectionRefused, error.to_string()))
        }
        ureq::Error::Protocol(_) => Failure::Transient(io::Error::other(error.to_string())),
        other => Failure::Permanent(other.to_string()),
    }
}

/// An HTTP body whose read timeouts are `io::ErrorKind::TimedOut`, so they are retried and reported as
/// timeouts.
struct TimeoutsAsTimedOut(Box<dyn Read + Send>);

impl Read for TimeoutsAsTimedOut {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(|e| match e.get_ref().and_then(|inner| inner.downcast_ref::<ureq::Error>()) {
            Some(ureq::Error::Timeout(t)) => {
                io::Error::new(io::ErrorKind::TimedOut, format!("no data within the read timeout ({t})"))
            }
            _ => e,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("bytes 100-199/1000"), Some((100, Some(1000))));
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }
}
