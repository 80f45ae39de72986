//! Decoding image fields on the reader threads: each image's seed, and the small batches a shard's samples
//! wait in while their images decode in parallel.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;

use super::pool::Shared;
use super::Item;
use crate::error::ShardError;
use crate::image::{DecodeSpec, Decoder, ImageErrorKind};
use crate::permits::Permit;
use crate::ring::Closed;
use crate::sample::{Sample, Value};

/// Image fields to decode on the reader threads, and how.
#[derive(Debug, Clone)]
pub struct ImageStage {
    /// Extensions (the last `.`-part of a field name, lower case) that are decoded: `jpg`, `png`, ...
    pub extensions: Vec<String>,
    /// How to decode; its seed is the base from which each image's own seed is derived.
    pub spec: DecodeSpec,
    /// Mixed into each image's seed, so random crops differ between epochs yet repeat for a given seed.
    pub epoch: u64,
    /// On a decode failure keep the member's bytes (a decoder downstream gets its own try, and reports the
    /// failure as it always would); otherwise the failure becomes the field's value.
    pub keep_bytes_on_error: bool,
}

impl ImageStage {
    pub(super) fn wants(&self, field: &str) -> bool {
        let extension = field.rsplit('.').next().unwrap_or(field);
        self.extensions.iter().any(|e| e == extension)
    }

    /// Decodes one field. The seed depends on (seed, epoch, key, field) only, never on which thread got the
    /// shard or when, so the output is reproducible.
    fn decode(&self, decoder: &mut Decoder, key: &str, field: &str, data: Vec<u8>) -> Value {
        let mut spec = self.spec;
        spec.seed = mix(mix(spec.seed, self.epoch), fnv1a(key.as_bytes()) ^ fnv1a(field.as_bytes()).rotate_left(1));
        match decoder.decode(&data, &spec) {
            Ok(pixels) => Value::Image(pixels),
            Err(e) if self.keep_bytes_on_error && e.kind != ImageErrorKind::Refused => Value::Bytes(data),
            Err(e) => Value::DecodeError(e.to_string()),
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// SplitMix64's finaliser over a combination of two words.
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a.wrapping_add(b.wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Images decoded together: enough work per batch to keep every core busy and amortise starting threads.
const DECODE_BATCH: usize = 32;

/// Hands finished samples to the ring. With an image stage it holds them back in small batches whose images
/// are decoded in parallel, so one shard's decoding uses every core while the output keeps the shard's order
/// (in ordered mode the other shards are only read ahead as far as the buffer allows).
pub(super) struct Emitter<'a> {
    shared: &'a Shared,
    lane: usize,
    held: Vec<Sample>,
    images: usize,
}

impl<'a> Emitter<'a> {
    pub(super) fn new(shared: &'a Shared, lane: usize) -> Self {
        Emitter { shared, lane, held: Vec::new(), images: 0 }
    }

    /// Reports a member dropped for `error`, after the samples completed before it.
    pub(super) fn skip(&mut self, error: ShardError) -> Result<(), Closed> {
        self.flush()?;
        self.shared.ring.push_urgent(self.lane, Item::Skipped(error))
    }

    pub(super) fn emit(&mut self, sample: Sample) -> Result<(), Closed> {
        let Some(stage) = &self.shared.config.images else {
            return self.shared.ring.push(self.lane, Item::Sample(sample));
        };
        self.images += sample.fields.iter().filter(|(field, _)| stage.wants(field)).count();
        self.held.push(sample);
        if self.images >= DECODE_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    pub(super) fn flush(&mut self) -> Result<(), Closed> {
        if let Some(stage) = &self.shared.config.images {
            decode_batch(stage, &mut self.held, self.shared)?;
        }
        self.images = 0;
        for sample in self.held.drain(..) {
            self.shared.ring.push(self.lane, Item::Sample(sample))?;
        }
        Ok(())
    }
}

/// Decodes the image fields of `samples` in place, on as many threads as decoding permits are free (at least
/// one, waiting for it), with decoders kept in `shared`. Fails only when the pool is cancelled.
fn decode_batch(stage: &ImageStage, samples: &mut [Sample], shared: &Shared) -> Result<(), Closed> {
    let jobs: Vec<Mutex<(&str, &str, &mut Value)>> = samples
        .iter_mut()
        .flat_map(|Sample { key, fields, .. }| {
            let key = key.as_str();
            fields
                .iter_mut()
                .filter(|(field, _)| stage.wants(field))
                .map(move |(field, value)| Mutex::new((key, field.as_str(), value)))
        })
        .collect();
    if jobs.is_empty() {
        return Ok(());
    }
    let mut permits = shared.decode_permits.acquire(jobs.len(), &shared.cancel).ok_or(Closed)?;
    let decoders = &shared.decoders;
    let next = AtomicUsize::new(0);
    // Each thread gives its permit back as soon as the batch has no job left for it, so another shard's
    // reader can start decoding while the last images of this batch finish.
    let run = |permit: Permit<'_>| {
        let mut taken = decoders.lock().map(|mut kept| kept.pop()).unwrap_or_else(|e| e.into_inner().pop());
        let decoder = taken.get_or_insert_with(Decoder::new);
        while let Some(job) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
            let mut job = job.lock().unwrap_or_else(|e| e.into_inner());
            let (key, field, value) = &mut *job;
            if let Value::Bytes(data) = std::mem::replace(&mut **value, Value::Bytes(Vec::new())) {
                **value = stage.decode(decoder, key, field, data);
            }
        }
        // Given back while the permit is still held, so no more decoders exist than permits and all are kept.
        if let (Some(decoder), Ok(mut kept)) = (taken.take(), decoders.lock()) {
            kept.push(decoder);
        }
        drop(permit);
    };
    let own = permits.pop().expect("acquire grants at least one permit");
    thread::scope(|scope| {
        for permit in permits {
            scope.spawn(|| run(permit));
        }
        run(own);
    });
    Ok(())
}
