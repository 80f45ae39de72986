//! fastwds-core: reads WebDataset shards (tar files of samples) as fast as the bytes arrive.
//!
//! The data flows one way: a shard URL opens as a byte [`source`], [`decompress`] unwraps gzip or zstd by
//! magic bytes, [`tar`] parses members from the stream, [`sample`] groups members into samples by key, and
//! [`reader`] runs several shards at once on a small thread pool into a bounded [`ring`] buffer that the
//! consumer drains. [`index`] encodes the shard index files the writers make. Nothing here knows about Python.

pub mod cache;
pub mod decompress;
pub mod error;
pub mod image;
pub mod index;
mod permits;
pub mod reader;
pub mod remote;
pub mod ring;
pub mod sample;
pub mod source;
pub mod tar;

pub use error::{ErrorKind, ShardError};
pub use reader::{ImageStage, Item, Next, Pool, ReaderConfig, ShardSpec};
pub use sample::{split_key, BufferAllocator, FieldBuffer, Sample, Value};
