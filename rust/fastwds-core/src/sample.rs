//! Grouping tar members into samples by key, exactly as webdataset does.

use std::sync::Arc;

use std::any::Any;
use std::fmt;

use crate::image::Pixels;

/// Memory for a member's bytes that the consumer allocated (the Python binding hands out `bytes` objects), so
/// a large member is read straight into its final home instead of being copied there afterwards.
pub trait FieldBuffer: Send {
    fn as_slice(&self) -> &[u8];
    fn as_mut_slice(&mut self) -> &mut [u8];
    /// For the consumer to recognise its own type.
    fn as_any(&self) -> &dyn Any;
}

/// Allocates a buffer of exactly `len` bytes, or declines (the reader then uses a `Vec`).
pub type BufferAllocator = dyn Fn(usize) -> Option<Box<dyn FieldBuffer>> + Send + Sync;

/// A field's value: the member's bytes, or what the reader threads decoded them into.
pub enum Value {
    Bytes(Vec<u8>),
    /// The member's bytes, in a buffer the consumer allocated.
    Buffer(Box<dyn FieldBuffer>),
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
            Value::Buffer(b) => b.as_slice(),
            Value::Image(p) => &p.data,
            Value::DecodeError(m) => m.as_bytes(),
        }
    }
}

impl Clone for Value {
    /// A consumer's buffer is copied into a `Vec`: a clone owns its bytes.
    fn clone(&self) -> Self {
        match self {
            Value::Bytes(b) => Value::Bytes(b.clone()),
            Value::Buffer(b) => Value::Bytes(b.as_slice().to_vec()),
            Value::Image(p) => Value::Image(p.clone()),
            Value::DecodeError(m) => Value::DecodeError(m.clone()),
        }
    }
}

impl PartialEq for Value {
    /// Bytes are equal by content, wherever they are held.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Bytes(_) | Value::Buffer(_), Value::Bytes(_) | Value::Buffer(_)) => {
                self.as_slice() == other.as_slice()
            }
            (Value::Image(a), Value::Image(b)) => a == b,
            (Value::DecodeError(a), Value::DecodeError(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Value {}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bytes(b) => f.debug_tuple("Bytes").field(b).finish(),
            Value::Buffer(b) => write!(f, "Buffer({} bytes)", b.as_slice().len()),
            Value::Image(p) => f.debug_tuple("Image").field(p).finish(),
            Value::DecodeError(m) => f.debug_tuple("DecodeError").field(m).finish(),
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

/// Groups a shard's members into samples: consecutive members with the same key form one sample, and a new
/// key (or the end of the shard) finishes it. Same-key members that are not adjacent become two samples, as
/// in the reference.
pub struct Grouper {
    url: Arc<str>,
    current: Option<Sample>,
}

impl Grouper {
    pub fn new(url: Arc<str>) -> Self {
        Grouper { url, current: None }
    }

    /// Makes `key`'s sample the current one; returns the previous sample when the key changed.
    pub fn begin(&mut self, key: &str) -> Option<Sample> {
        if self.current.as_ref().is_some_and(|s| s.key == key) {
            return None;
        }
        self.current.replace(Sample::new(key.to_string(), Arc::clone(&self.url)))
    }

    /// Whether `field` would repeat one of the current sample's: a field it has, or `__key__`/`__url__`,
    /// which the reference keeps in the same dict as the fields (and which must not overwrite them here).
    pub fn repeats(&self, field: &str) -> bool {
        field == "__key__" || field == "__url__" || self.current.as_ref().is_some_and(|s| s.has_field(field))
    }

    /// The current sample's key.
    pub fn key(&self) -> &str {
        self.current.as_ref().map_or("", |s| s.key.as_str())
    }

    /// Adds a field to the current sample (call [`Grouper::begin`] first).
    pub fn add(&mut self, field: String, value: Value) {
        if let Some(sample) = self.current.as_mut() {
            sample.fields.push((field, value));
        }
    }

    /// The last sample, at the end of the shard.
    pub fn finish(&mut self) -> Option<Sample> {
        self.current.take()
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
    fn grouper_starts_a_sample_at_each_new_key_and_refuses_repeats() {
        let mut g = Grouper::new(Arc::from("u"));
        assert!(g.begin("a").is_none());
        g.add("txt".into(), Value::from(b"1".to_vec()));
        assert!(g.repeats("txt") && g.repeats("__key__") && !g.repeats("json"));
        assert!(g.begin("a").is_none(), "same key, same sample");
        g.add("json".into(), Value::from(b"{}".to_vec()));
        let done = g.begin("b").expect("a is finished");
        assert_eq!((done.key.as_str(), done.fields.len()), ("a", 2));
        assert_eq!(g.key(), "b");
        assert!(g.begin("a").is_some(), "a again is a new sample");
        assert_eq!(g.finish().map(|s| s.key), Some("a".to_string()));
        assert!(g.finish().is_none());
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
