//! The error of an image decode. It carries no URL: the reader attaches the shard, key and field, because the
//! same bytes can come from anywhere.

use std::fmt;

/// Why an image could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageErrorKind {
    /// The bytes are not a format this module decodes (JPEG, PNG, PPM/PGM).
    UnknownFormat,
    /// The format is recognized, but this variant of it is not supported (CMYK PNG does not exist, 12-bit JPEG).
    Unsupported,
    /// The header declares more pixels than the limit allows: refused before allocating (decompression bomb).
    TooLarge,
    /// The data is corrupt.
    Corrupt,
    /// The data ends before the image does.
    Truncated,
    /// The decode options are invalid (zero target size, empty scale range).
    InvalidSpec,
    /// The image is over a limit that bounds decoding time (a progressive JPEG with too many scans): final,
    /// never handed to another decoder, which would spend that time.
    Refused,
}

/// An image decode failure with a message fit for a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageError {
    pub kind: ImageErrorKind,
    pub message: String,
}

impl ImageError {
    pub fn new(kind: ImageErrorKind, message: impl Into<String>) -> Self {
        ImageError { kind, message: message.into() }
    }

    pub fn corrupt(message: impl Into<String>) -> Self {
        Self::new(ImageErrorKind::Corrupt, message)
    }

    pub fn truncated(message: impl Into<String>) -> Self {
        Self::new(ImageErrorKind::Truncated, message)
    }

    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ImageErrorKind::Unsupported, message)
    }

    pub fn invalid_spec(message: impl Into<String>) -> Self {
        Self::new(ImageErrorKind::InvalidSpec, message)
    }
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ImageError {}
