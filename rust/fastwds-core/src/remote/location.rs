//! What a remote URL names: an object in a bucket (`s3://`, `gs://`) or an HTTP resource (`http(s)://`, and
//! `hf://`, which is the Hugging Face Hub's HTTP `resolve` endpoint with an optional bearer token).

use std::env;
use std::fs;
use std::path::PathBuf;

/// A remote URL, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An object in a bucket of an object store.
    Object { store: StoreKind, bucket: String, key: String },
    /// An HTTP(S) resource, with the bearer token to send, if any.
    Http { url: String, token: Option<String> },
}

/// The object stores the core reads and writes itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreKind {
    S3,
    Gcs,
}

impl StoreKind {
    pub fn scheme(self) -> &'static str {
        match self {
            StoreKind::S3 => "s3",
            StoreKind::Gcs => "gs",
        }
    }
}

/// Whether the core reads this URL as a remote one (`s3://`, `gs://`, `hf://`, `http(s)://`).
pub fn is_remote(url: &str) -> bool {
    ["s3://", "gs://", "hf://", "http://", "https://"].iter().any(|p| url.starts_with(p))
}

/// Resolves a remote URL; None for a URL that is not one; Err with a message for a malformed one.
pub fn parse(url: &str) -> Option<Result<Location, String>> {
    if url.starts_with("http://") || url.starts_with("https://") {
        return Some(Ok(Location::Http { url: url.to_string(), token: None }));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        return Some(object(StoreKind::S3, rest));
    }
    if let Some(rest) = url.strip_prefix("gs://") {
        return Some(object(StoreKind::Gcs, rest));
    }
    url.strip_prefix("hf://").map(hugging_face)
}

fn object(store: StoreKind, rest: &str) -> Result<Location, String> {
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(format!("no bucket in {}://{rest}", store.scheme()));
    }
    Ok(Location::Object { store, bucket: bucket.to_string(), key: key.to_string() })
}

/// `hf://datasets/ORG/NAME[@REV]/PATH` (also `spaces/...`, and models as `ORG/NAME[@REV]/PATH`) as the Hub's
/// `{HF_ENDPOINT}/[datasets/]ORG/NAME/resolve/REV/PATH`, the URL `huggingface_hub.hf_hub_url` gives.
fn hugging_face(rest: &str) -> Result<Location, String> {
    let bad = || format!("hf://{rest} is not hf://datasets/ORG/NAME[@REVISION]/PATH");
    let (kind, rest) = match rest.split_once('/') {
        Some(("datasets", r)) => ("datasets/", r),
        Some(("spaces", r)) => ("spaces/", r),
        _ => ("", rest),
    };
    let mut parts = rest.splitn(3, '/');
    let (org, name, path) = match (parts.next(), parts.next(), parts.next()) {
        (Some(o), Some(n), Some(p)) if !o.is_empty() && !n.is_empty() && !p.is_empty() => (o, n, p),
        _ => return Err(bad()),
    };
    let (name, revision, path) = match name.split_once('@') {
        // `refs/pr/N` and `refs/convert/X` revisions hold slashes: two more path segments belong to them.
        Some((name, "refs")) => match path.splitn(3, '/').collect::<Vec<_>>()[..] {
            [a, b, rest] if !a.is_empty() && !b.is_empty() && !rest.is_empty() => (name, format!("refs/{a}/{b}"), rest),
            _ => return Err(bad()),
        },
        Some((name, revision)) if !revision.is_empty() => (name, revision.to_string(), path),
        Some(_) => return Err(bad()),
        None => (name, "main".to_string(), path),
    };
    let endpoint = env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".to_string());
    let url = format!(
        "{}/{kind}{org}/{name}/resolve/{}/{path}",
        endpoint.trim_end_matches('/'),
        revision.replace('/', "%2F")
    );
    Ok(Location::Http { url, token: hugging_face_token() })
}

/// The Hub token from `HF_TOKEN` (or the older `HUGGING_FACE_HUB_TOKEN`), else from the token file that
/// `huggingface-cli login` writes (`HF_TOKEN_PATH`, else `$HF_HOME/token`, else `~/.cache/huggingface/token`).
fn hugging_face_token() -> Option<String> {
    let from_env = ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"].iter().find_map(|v| env::var(v).ok());
    let token = from_env.or_else(|| {
        let path = match (env::var_os("HF_TOKEN_PATH"), env::var_os("HF_HOME"), env::var_os("HOME")) {
            (Some(p), _, _) => PathBuf::from(p),
            (None, Some(home), _) => PathBuf::from(home).join("token"),
            (None, None, Some(home)) => PathBuf::from(home).join(".cache/huggingface/token"),
            _ => return None,
        };
        fs::read_to_string(path).ok()
    })?;
    let token = token.trim().to_string();
    (!token.is_empty()).then_some(token)
}

/// A shell-style glob on one key: `*` and `?` do not cross `/`; `[abc]`, `[a-z]` and `[!a]` match one
/// character.
pub fn glob_matches(pattern: &str, key: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let k: Vec<char> = key.chars().collect();
    glob_at(&p, &k)
}

fn glob_at(p: &[char], k: &[char]) -> bool {
    match p.first() {
        None => k.is_empty(),
        Some('*') => (0..=k.len()).take_while(|&i| i == 0 || k[i - 1] != '/').any(|i| glob_at(&p[1..], &k[i..])),
        Some('?') => k.first().is_some_and(|&c| c != '/') && glob_at(&p[1..], &k[1..]),
        Some('[') => match (k.first(), class_end(p)) {
            (Some(&c), Some(end)) => class_matches(&p[1..end], c) && glob_at(&p[end + 1..], &k[1..]),
            (Some(&c), None) => c == '[' && glob_at(&p[1..], &k[1..]),
            (None, _) => false,
        },
        Some(&c) => k.first() == Some(&c) && glob_at(&p[1..], &k[1..]),
    }
}

/// The index of the `]` closing the class that opens at `p[0]`.
fn class_end(p: &[char]) -> Option<usize> {
    let start = if p.get(1) == Some(&'!') { 2 } else { 1 };
    // A `]` right after the opening (or after `!`) is a member, not the end.
    (start + 1..p.len()).find(|&i| p[i] == ']')
}

fn class_matches(class: &[char], c: char) -> bool {
    let (negate, class) = match class.first() {
        Some('!') => (true, &class[1..]),
        _ => (false, class),
    };
    let mut i = 0;
    let mut found = false;
    while i < class.len() {
        if i + 2 < class.len() && class[i + 1] == '-' {
            found |= class[i] <= c && c <= class[i + 2];
            i += 3;
        } else {
            found |= class[i] == c;
            i += 1;
        }
    }
    found != negate
}

/// Whether a key pattern holds glob characters.
pub fn has_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_urls() {
        assert_eq!(
            parse("s3://bkt/a/b.tar"),
            Some(Ok(Location::Object { store: StoreKind::S3, bucket: "bkt".into(), key: "a/b.tar".into() }))
        );
        assert_eq!(
            parse("gs://bkt"),
            Some(Ok(Location::Object { store: StoreKind::Gcs, bucket: "bkt".into(), key: String::new() }))
        );
        assert!(matches!(parse("s3:///key"), Some(Err(_))));
        assert_eq!(parse("/local/path.tar"), None);
        assert_eq!(parse("pipe:cat x"), None);
    }

    #[test]
    fn hugging_face_urls() {
        // One test sets the variables, so that parallel tests never see them half-set.
        env::set_var("HF_ENDPOINT", "http://127.0.0.1:9/");
        env::set_var("HF_TOKEN", "tok");
        let url = |u: &str| match parse(u) {
            Some(Ok(Location::Http { url, token })) => (url, token),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            url("hf://datasets/org/name@v1/data/a.tar"),
            ("http://127.0.0.1:9/datasets/org/name/resolve/v1/data/a.tar".to_string(), Some("tok".to_string()))
        );
        assert_eq!(url("hf://datasets/org/name/a.tar").0, "http://127.0.0.1:9/datasets/org/name/resolve/main/a.tar");
        assert_eq!(url("hf://org/model@refs/pr/1/x.tar").0, "http://127.0.0.1:9/org/model/resolve/refs%2Fpr%2F1/x.tar");
        assert!(matches!(parse("hf://datasets/org"), Some(Err(_))));
        env::remove_var("HF_ENDPOINT");
        env::remove_var("HF_TOKEN");
    }

    #[test]
    fn globs() {
        assert!(glob_matches("train/shard-*.tar", "train/shard-000.tar"));
        assert!(!glob_matches("train/shard-*.tar", "train/sub/shard-000.tar"));
        assert!(!glob_matches("train/shard-*.tar", "train/shard-000.tar.gz"));
        assert!(glob_matches("a/?.tar", "a/1.tar"));
        assert!(glob_matches("a/[0-4].tar", "a/3.tar"));
        assert!(!glob_matches("a/[!0-4].tar", "a/3.tar"));
        assert!(glob_matches("a/[]x].tar", "a/].tar"));
        assert!(has_glob("a/*.tar") && !has_glob("a/b.tar"));
    }
}
