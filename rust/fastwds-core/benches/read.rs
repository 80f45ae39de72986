//! Throughput of the whole core (parse, group, ring) on in-memory shards, without Python.
//! Run: `cargo bench -p fastwds-core --bench read`.

use std::io::Cursor;
use std::time::{Duration, Instant};

use fastwds_core::{Item, Next, Pool, ReaderConfig, ShardSpec};

fn shard(samples: usize, field_size: usize, fields: &[&str]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let data = vec![b'x'; field_size];
    for i in 0..samples {
        for f in fields {
            let mut header = tar::Header::new_ustar();
            header.set_size(field_size as u64);
            header.set_mode(0o444);
            header.set_cksum();
            builder.append_data(&mut header, format!("sample{i:08}.{f}"), data.as_slice()).expect("in-memory tar");
        }
    }
    builder.into_inner().expect("in-memory tar")
}

fn run(name: &str, shards: &[Vec<u8>], threads: usize) {
    let bytes: usize = shards.iter().map(Vec::len).sum();
    let start = Instant::now();
    let mut pool = Pool::start(ReaderConfig { threads, ..ReaderConfig::default() });
    let mut pending = shards.iter().enumerate();
    let (mut samples, mut errors) = (0usize, 0usize);
    loop {
        while pool.wants_shard() {
            match pending.next() {
                Some((i, s)) => {
                    pool.submit(ShardSpec::Stream { url: format!("mem{i}"), stream: Box::new(Cursor::new(s.clone())) })
                }
                None => break,
            }
        }
        match pool.next(Duration::from_millis(100)) {
            Next::Item(Item::Sample(_)) => samples += 1,
            Next::Item(Item::Error(_) | Item::Skipped(_)) => errors += 1,
            Next::Item(Item::End) | Next::Pending => {}
            Next::Idle if pending.len() == 0 => break,
            Next::Idle => {}
        }
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(errors, 0);
    println!(
        "{name:<28} threads={threads}  {:>10.0} samples/s  {:>8.1} MB/s",
        samples as f64 / secs,
        bytes as f64 / secs / 1e6
    );
}

fn main() {
    let tiny: Vec<Vec<u8>> = (0..8).map(|_| shard(50_000, 30, &["txt", "cls"])).collect();
    let medium: Vec<Vec<u8>> = (0..8).map(|_| shard(1_000, 40_000, &["jpg", "cls", "json"])).collect();
    let large: Vec<Vec<u8>> = (0..4).map(|_| shard(64, 4 << 20, &["npy"])).collect();
    for threads in [1, 2] {
        run("tiny (2 x 30 B fields)", &tiny, threads);
        run("medium (40 KB fields)", &medium, threads);
        run("large (4 MB fields)", &large, threads);
    }
}
