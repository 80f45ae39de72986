//! Grouping tar members into samples by key, exactly as webdataset does.

use std::sync::Arc;

use crate::image::Pixels;

/// A field's value: the member's bytes, or what the reader threads decoded them into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Bytes(Vec<u8>),
    Image(Pixels),
    /// Decoding failed; the message says why. It travels with the sample, so the consumer can report it for
    /// this sample alone (as a decoder in Python would) instead of failing the shard.
    DecodeError(String),
}

impl Value {
    /// The bytes, or the pixel data of a decoded image.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Value::Bytes(b) => b,
            Value::Image(p) => &p.data,
            Value::DecodeError(m) => m.as_bytes(),
        }
    }
}

impl From<Vec<u8>> for Value {
    fn from(bytes: Vec<u8>) -> Self {
        Value::Bytes(bytes)
    }
}

/// One sample: the members of a shard that share a key, in member order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub key: String,
    pub url: Arc<str>,
    pub fields: Vec<(String, Value)>,
}

impl Sample {
    pub fn new(key: String, url: Arc<str>) -> Self {
        Sample { key, url, fields: Vec::new() }
    }

    /// Bytes this sample holds (decoded pixels included), for the ring buffer's budget.
    pub fn size(&self) -> usize {
        self.key.len() + self.fields.iter().map(|(name, value)| name.len() + value.as_slice().len()).sum::<usize>()
    }

    pub fn has_field(&self, field: &str) -> bool {
        self.fields.iter().any(|(name, _)| name == field)
    }
}

/// Splits a member name into (key, field) by the reference's rule `^((?:.*/|)[^.]+)[.]([^/]*)$`: the key runs
/// to the first `.` of the last path component; the field is the rest. Returns None where the regex would
/// not match (no dot in the last component, or a component that starts with a dot and cannot borrow the
/// one before it).
pub fn split_key(name: &str) -> Option<(&str, &str)> {
    // The regex's `.` does not match a newline; such names are not worth a second engine.
    let base_start = name.rfind('/').map_or(0, |i| i + 1);
    let dot = base_start + name[base_start..].find('.')?;
    if dot == base_start {
        // The last component starts with a dot, so `[^.]+` must span the slash before it: the component
        // before (or the whole prefix, at the top) must then hold no dot and the name must have a slash.
        if base_start == 0 {
            return None;
        }
        let prev_start = name[..base_start - 1].rfind('/').map_or(0, |i| i + 1);
        if name[prev_start..base_start].contains('.') {
            return None;
        }
    }
    Some((&name[..dot], &name[dot + 1..]))
}

/// Top-level `__name__` members (and anything under a top-level `__name__/` directory) are metadata, which
/// the reference skips.
pub fn is_metadata(name: &str) -> bool {
    if !name.contains('/') && name.starts_with("__") && name.ends_with("__") {
        return true;
    }
    // The reference's `__[^/]*__($|/)`: a first path component that starts and ends with "__".
    let first = name.split('/').next().unwrap_or("");
    first.len() >= 4 && first.starts_with("__") && first.ends_with("__")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_key_follows_the_reference_regex() {
        let cases: &[(&str, Option<(&str, &str)>)] = &[
            ("a.jpg", Some(("a", "jpg"))),
            ("dir/base.input.png", Some(("dir/base", "input.png"))),
            ("x/y.z/w.jpg", Some(("x/y.z/w", "jpg"))),
            ("a.b/c", None),
            ("noext", None),
            (".gitignore", None),
            ("dir/.gitignore", Some(("dir/", "gitignore"))),
            ("a/b/.x", Some(("a/b/", "x"))),
            ("a.b/.x", None),
            ("dir/sub/.hidden.txt", Some(("dir/sub/", "hidden.txt"))),
            ("./sub/a.jpg", Some(("./sub/a", "jpg"))),
            ("a.", Some(("a", ""))),
            ("a..b", Some(("a", ".b"))),
            ("dir/", None),
        ];
        for (name, want) in cases {
            assert_eq!(split_key(name), *want, "{name}");
        }
    }

    #[test]
    fn metadata_names() {
        assert!(is_metadata("__meta__"));
        assert!(is_metadata("__a.b__"));
        assert!(is_metadata("__"));
        assert!(is_metadata("__index__/x.json"));
        assert!(!is_metadata("__key.jpg"));
        assert!(!is_metadata("dir/__meta__"));
        assert!(!is_metadata("a.jpg"));
    }
}
