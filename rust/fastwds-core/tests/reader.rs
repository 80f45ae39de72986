//! Integration tests of the reader pool over real shard files in a temporary directory.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use fastwds_core::remote::RemoteOptions;
use fastwds_core::{ErrorKind, Item, Next, Pool, ReaderConfig, Sample, ShardError, ShardSpec, Value};

// ---------------------------------------------------------------------------------------------------------
// Scaffolding
// ---------------------------------------------------------------------------------------------------------

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("fastwds-core-reader-{}-{label}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes a file and returns its path as a URL string.
    fn write(&self, name: &str, bytes: &[u8]) -> String {
        let path = self.path(name);
        fs::write(&path, bytes).expect("write shard");
        path_str(&path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("utf-8 temp path").to_string()
}

type Fields = Vec<(String, Vec<u8>)>;
/// A sample as written: key and (field, data) pairs.
type Spec = (String, Fields);
/// Tar members: (name, data).
type Members = Vec<(String, Vec<u8>)>;
/// Samples as (key, [(field, data)]), borrowed, for readable comparisons.
type Shape<'a> = Vec<(&'a str, Vec<(&'a str, &'a [u8])>)>;

fn data_of(size: usize, seed: usize) -> Vec<u8> {
    (0..size).map(|i| (i.wrapping_mul(131).wrapping_add(seed * 7)) as u8).collect()
}

/// `n` samples for shard `shard`, each with a text, a class and a binary field of about `size` bytes.
fn make_samples(shard: usize, n: usize, size: usize) -> Vec<Spec> {
    (0..n)
        .map(|i| {
            let key = format!("shard{shard:02}/sample{i:05}");
            let fields = vec![
                ("txt".to_string(), format!("shard {shard} sample {i}").into_bytes()),
                ("cls".to_string(), (i % 10).to_string().into_bytes()),
                ("bin".to_string(), data_of(size + i % 7, shard * 1000 + i)),
            ];
            (key, fields)
        })
        .collect()
}

fn members_of(samples: &[Spec]) -> Members {
    samples
        .iter()
        .flat_map(|(key, fields)| fields.iter().map(move |(f, d)| (format!("{key}.{f}"), d.clone())))
        .collect()
}

/// A tar archive (GNU headers, as the tar crate writes them) of the given members, with its end marker.
fn tar_bytes(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, name, data.as_slice()).expect("append");
    }
    b.into_inner().expect("finish")
}

fn padded(n: usize) -> usize {
    n.div_ceil(512) * 512
}

/// Header offsets of the members of `tar_bytes(members)` (short names only), and the end marker's offset.
fn layout(members: &[(String, Vec<u8>)]) -> (Vec<usize>, usize) {
    let mut offsets = Vec::new();
    let mut at = 0;
    for (name, data) in members {
        assert!(name.len() < 100, "layout() handles short names only");
        offsets.push(at);
        at += 512 + padded(data.len());
    }
    (offsets, at)
}

fn as_values(fields: &Fields) -> Vec<(String, Value)> {
    fields.iter().map(|(name, data)| (name.clone(), Value::Bytes(data.clone()))).collect()
}

fn expected(url: &str, samples: &[Spec]) -> Vec<Sample> {
    samples
        .iter()
        .map(|(key, fields)| Sample { key: key.clone(), url: Arc::from(url), fields: as_values(fields) })
        .collect()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).expect("gzip");
    enc.finish().expect("gzip")
}

fn zstd_of(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).expect("zstd")
}

#[derive(Debug)]
enum Ev {
    Sample(Sample),
    Error(ShardError),
    Skipped(ShardError),
    End,
}

fn config() -> ReaderConfig {
    ReaderConfig { threads: 2, prefetch: 3, ..ReaderConfig::default() }
}

/// Runs a pool over `specs` (submitting as slots free up) until every shard ended.
fn run_specs(config: ReaderConfig, specs: Vec<ShardSpec>) -> Vec<Ev> {
    let mut pool = Pool::start(config);
    let mut queue = specs.into_iter().peekable();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        while pool.wants_shard() && queue.peek().is_some() {
            pool.submit(queue.next().expect("peeked"));
        }
        match pool.next(Duration::from_millis(100)) {
            Next::Item(Item::Sample(s)) => out.push(Ev::Sample(s)),
            Next::Item(Item::Error(e)) => out.push(Ev::Error(e)),
            Next::Item(Item::Skipped(e)) => out.push(Ev::Skipped(e)),
            Next::Item(Item::End) => out.push(Ev::End),
            Next::Pending => assert!(Instant::now() < deadline, "the pool made no progress for 60 s"),
            Next::Idle => {
                if queue.peek().is_none() {
                    break;
                }
            }
        }
    }
    assert!(pool.shutdown(Duration::from_secs(10)), "threads did not exit");
    assert_eq!(pool.threads_running(), 0);
    out
}

fn run(config: ReaderConfig, urls: &[String]) -> Vec<Ev> {
    run_specs(config, urls.iter().map(|u| ShardSpec::Url(u.clone())).collect())
}

fn samples(evs: &[Ev]) -> Vec<Sample> {
    evs.iter()
        .filter_map(|e| match e {
            Ev::Sample(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

fn errors(evs: &[Ev]) -> Vec<ShardError> {
    evs.iter()
        .filter_map(|e| match e {
            Ev::Error(x) => Some(x.clone()),
            _ => None,
        })
        .collect()
}

fn skipped(evs: &[Ev]) -> Vec<ShardError> {
    evs.iter()
        .filter_map(|e| match e {
            Ev::Skipped(x) => Some(x.clone()),
            _ => None,
        })
        .collect()
}

/// The keys of the samples and a marker for each skipped member, in stream order.
fn keys_and_skips(evs: &[Ev]) -> Vec<String> {
    evs.iter()
        .filter_map(|e| match e {
            Ev::Sample(s) => Some(s.key.clone()),
            Ev::Skipped(_) => Some("<skipped>".to_string()),
            Ev::Error(_) => Some("<error>".to_string()),
            Ev::End => None,
        })
        .collect()
}

fn ends(evs: &[Ev]) -> usize {
    evs.iter().filter(|e| matches!(e, Ev::End)).count()
}

/// Splits an ordered run into one group of events per shard (each group ends with its `End`).
fn per_shard(evs: Vec<Ev>) -> Vec<Vec<Ev>> {
    let mut groups = vec![Vec::new()];
    for e in evs {
        let is_end = matches!(e, Ev::End);
        groups.last_mut().expect("a group").push(e);
        if is_end {
            groups.push(Vec::new());
        }
    }
    assert!(groups.pop().expect("a group").is_empty(), "events after the last End");
    groups
}

/// A one-shard run that must end in exactly one error: returns the samples before it and the error.
fn failing_shard(config: ReaderConfig, url: &str) -> (Vec<Sample>, ShardError) {
    let evs = run(config, &[url.to_string()]);
    split_failure(evs)
}

fn split_failure(evs: Vec<Ev>) -> (Vec<Sample>, ShardError) {
    let n = evs.len();
    assert!(n >= 2, "expected samples, an error and End: {evs:?}");
    assert!(matches!(evs[n - 1], Ev::End), "the last event is End: {evs:?}");
    let Ev::Error(e) = &evs[n - 2] else { panic!("an error right before End: {evs:?}") };
    let e = e.clone();
    let before = samples(&evs[..n - 2]);
    assert_eq!(before.len(), n - 2, "only samples before the error: {evs:?}");
    (before, e)
}

// ---------------------------------------------------------------------------------------------------------
// Order
// ---------------------------------------------------------------------------------------------------------

/// Shards of very different sizes, the first the largest, so later ones finish first when read ahead.
fn uneven_shards(dir: &TempDir) -> (Vec<String>, Vec<Sample>) {
    let counts = [120, 3, 40, 1, 17, 60, 5];
    let mut urls = Vec::new();
    let mut all = Vec::new();
    for (shard, &n) in counts.iter().enumerate() {
        let specs = make_samples(shard, n, if shard == 0 { 3000 } else { 100 });
        let url = dir.write(&format!("shard-{shard}.tar"), &tar_bytes(&members_of(&specs)));
        all.extend(expected(&url, &specs));
        urls.push(url);
    }
    (urls, all)
}

#[test]
fn ordered_mode_yields_samples_in_shard_order() {
    let dir = TempDir::new("ordered");
    let (urls, want) = uneven_shards(&dir);
    for (threads, prefetch, buffer_samples) in [(2, 3, 8), (3, 5, 4096), (1, 1, 1), (0, 0, 4096)] {
        let cfg = ReaderConfig { threads, prefetch, buffer_samples, ordered: true, ..ReaderConfig::default() };
        let evs = run(cfg, &urls);
        assert!(errors(&evs).is_empty(), "{:?}", errors(&evs));
        let groups = per_shard(evs);
        assert_eq!(groups.len(), urls.len());
        for (group, url) in groups.iter().zip(&urls) {
            assert!(samples(group).iter().all(|s| &*s.url == url.as_str()), "a shard's group holds only its samples");
        }
        let got: Vec<Sample> = groups.iter().flat_map(|g| samples(g)).collect();
        assert_eq!(got.len(), want.len(), "threads {threads} prefetch {prefetch}");
        assert!(got == want, "ordered output differs (threads {threads}, prefetch {prefetch})");
    }
}

#[test]
fn unordered_mode_yields_the_same_multiset() {
    let dir = TempDir::new("unordered");
    let (urls, want) = uneven_shards(&dir);
    let cfg = ReaderConfig { threads: 3, prefetch: 4, buffer_samples: 16, ordered: false, ..ReaderConfig::default() };
    let evs = run(cfg, &urls);
    assert!(errors(&evs).is_empty(), "{:?}", errors(&evs));
    assert_eq!(ends(&evs), urls.len());
    let got = samples(&evs);
    // Within a shard the order is kept.
    for url in &urls {
        let mine: Vec<&Sample> = got.iter().filter(|s| &*s.url == url.as_str()).collect();
        let theirs: Vec<&Sample> = want.iter().filter(|s| &*s.url == url.as_str()).collect();
        assert!(mine == theirs, "shard {url} out of order or incomplete");
    }
    let key = |s: &Sample| (s.url.to_string(), s.key.clone());
    let mut got_sorted = got.clone();
    got_sorted.sort_by_key(key);
    let mut want_sorted = want.clone();
    want_sorted.sort_by_key(key);
    assert!(got_sorted == want_sorted, "different multisets");
}

#[test]
fn nothing_submitted_is_idle_and_shutdown_stops_accepting() {
    let mut pool = Pool::start(config());
    assert!(matches!(pool.next(Duration::from_millis(10)), Next::Idle));
    assert!(pool.wants_shard());
    assert!(pool.shutdown(Duration::from_secs(5)));
    assert_eq!(pool.threads_running(), 0);
    assert!(!pool.wants_shard());
}

// ---------------------------------------------------------------------------------------------------------
// Sources and compression
// ---------------------------------------------------------------------------------------------------------

#[test]
fn gzip_zstd_and_multi_member_gzip() {
    let dir = TempDir::new("compressed");
    let specs = make_samples(1, 30, 700);
    let members = members_of(&specs);
    let tar = tar_bytes(&members);
    let (offsets, _) = layout(&members);
    // Two gzip members split on a member boundary, and two split at an arbitrary byte.
    let boundary = offsets[members.len() / 2];
    let odd = tar.len() / 3 + 123;
    let mut split_boundary = gzip(&tar[..boundary]);
    split_boundary.extend(gzip(&tar[boundary..]));
    let mut split_odd = gzip(&tar[..odd]);
    split_odd.extend(gzip(&tar[odd..]));
    // Three members, one of them empty.
    let mut three = gzip(&tar[..odd]);
    three.extend(gzip(b""));
    three.extend(gzip(&tar[odd..]));
    // zstd with two frames.
    let mut zstd_frames = zstd_of(&tar[..odd]);
    zstd_frames.extend(zstd_of(&tar[odd..]));
    let shards: Vec<(&str, Vec<u8>)> = vec![
        ("plain.tar", tar.clone()),
        ("one.tar.gz", gzip(&tar)),
        ("misnamed.tar", gzip(&tar)), // by magic, not by name
        ("boundary.tgz", split_boundary),
        ("odd.tgz", split_odd),
        ("three.tgz", three),
        ("z.tar.zst", zstd_of(&tar)),
        ("frames.tar.zst", zstd_frames),
    ];
    let urls: Vec<String> = shards.iter().map(|(name, bytes)| dir.write(name, bytes)).collect();
    let evs = run(config(), &urls);
    assert!(errors(&evs).is_empty(), "{:?}", errors(&evs));
    let groups = per_shard(evs);
    for (group, url) in groups.iter().zip(&urls) {
        assert!(samples(group) == expected(url, &specs), "{url}: wrong samples");
    }
}

#[test]
fn file_urls_and_in_memory_streams() {
    let dir = TempDir::new("file-urls");
    let specs = make_samples(2, 5, 10);
    let tar = tar_bytes(&members_of(&specs));
    let path = dir.write("a.tar", &tar);
    let urls = vec![format!("file:{path}"), format!("file://{path}")];
    let evs = run(config(), &urls);
    assert!(errors(&evs).is_empty(), "{:?}", errors(&evs));
    let want: Vec<Sample> = urls.iter().flat_map(|u| expected(u, &specs)).collect();
    assert!(samples(&evs) == want);

    let stream = ShardSpec::Stream { url: "memory:shard".to_string(), stream: Box::new(io::Cursor::new(gzip(&tar))) };
    let evs = run_specs(config(), vec![stream]);
    assert!(samples(&evs) == expected("memory:shard", &specs));
    assert_eq!(ends(&evs), 1);
}

#[test]
fn missing_file_is_an_open_error() {
    let dir = TempDir::new("missing");
    let url = path_str(&dir.path("nope.tar"));
    let (before, e) = failing_shard(config(), &url);
    assert!(before.is_empty());
    assert_eq!(e.kind, ErrorKind::Open);
    assert_eq!(e.url, url);
}

#[test]
fn unsupported_scheme_is_an_open_error_pointing_at_pipe() {
    for url in ["azure://bucket/shard-000.tar", "abfs://bucket/x.tar"] {
        let (before, e) = failing_shard(config(), url);
        assert!(before.is_empty());
        assert_eq!(e.kind, ErrorKind::Open, "{url}");
        assert_eq!(e.url, url);
        assert!(e.message.contains("pipe:"), "{url}: {}", e.message);
    }
}

#[test]
fn an_error_in_one_shard_does_not_disturb_the_others() {
    let dir = TempDir::new("mixed-errors");
    let a = make_samples(0, 4, 10);
    let c = make_samples(2, 6, 10);
    let urls = vec![
        dir.write("a.tar", &tar_bytes(&members_of(&a))),
        path_str(&dir.path("missing.tar")),
        dir.write("c.tar", &tar_bytes(&members_of(&c))),
    ];
    let mut groups = per_shard(run(config(), &urls)).into_iter();
    assert_eq!(groups.len(), 3);
    let first = groups.next().expect("first");
    assert!(errors(&first).is_empty());
    assert!(samples(&first) == expected(&urls[0], &a));
    let (none, e) = split_failure(groups.next().expect("second"));
    assert!(none.is_empty());
    assert_eq!(e.kind, ErrorKind::Open);
    assert_eq!(e.url, urls[1]);
    let third = groups.next().expect("third");
    assert!(errors(&third).is_empty());
    assert!(samples(&third) == expected(&urls[2], &c));
}

// ---------------------------------------------------------------------------------------------------------
// Truncation
// ---------------------------------------------------------------------------------------------------------

/// Three samples of two members each; the last member of each is 700 bytes (data plus padding).
fn small_shard() -> (Vec<Spec>, Members, Vec<u8>) {
    let specs: Vec<Spec> = (0..3)
        .map(|i| {
            (
                format!("s{i}"),
                vec![("txt".to_string(), format!("t{i}").into_bytes()), ("bin".to_string(), data_of(700, i))],
            )
        })
        .collect();
    let members = members_of(&specs);
    let tar = tar_bytes(&members);
    (specs, members, tar)
}

/// How many whole samples a cut tar stream delivers: a sample is pushed once the header of the next sample's
/// first member has been read (a sample's end is only known then).
fn delivered_before(cut: usize, specs: &[Spec], offsets: &[usize]) -> usize {
    let mut member = 0;
    let mut delivered = 0;
    for (k, (_, fields)) in specs.iter().enumerate() {
        member += fields.len();
        if k + 1 < specs.len() && offsets[member] + 512 <= cut {
            delivered = k + 1;
        }
    }
    delivered
}

#[test]
fn truncated_plain_shards_at_interesting_points() {
    let dir = TempDir::new("truncated");
    let (specs, members, tar) = small_shard();
    let (offsets, marker) = layout(&members);
    // Members: 0 s0.txt, 1 s0.bin, 2 s1.txt, 3 s1.bin, 4 s2.txt, 5 s2.bin.
    let cases: Vec<(&str, usize, Option<&str>, usize)> = vec![
        ("boundary-no-end-marker", marker, None, 2),
        ("inside-end-marker", marker + 100, None, 2),
        ("inside-first-header-of-s1", offsets[2] + 100, None, 0),
        ("inside-header-of-s1.bin", offsets[3] + 100, None, 1),
        ("inside-data-of-s1.bin", offsets[3] + 512 + 350, Some("s1.bin"), 1),
        ("end-of-data-of-s1.bin", offsets[3] + 512 + 700, Some("s1.bin"), 1),
        ("inside-padding-of-s1.bin", offsets[3] + 512 + 900, Some("s1.bin"), 1),
        ("inside-data-of-s2.txt", offsets[4] + 513, Some("s2.txt"), 2),
        ("empty", 0, None, 0),
    ];
    let urls: Vec<String> = cases.iter().map(|(name, cut, _, _)| dir.write(name, &tar[..*cut])).collect();
    let groups = per_shard(run(config(), &urls));
    assert_eq!(groups.len(), cases.len());
    let full = expected("", &specs);
    for ((group, url), (name, cut, member, n)) in groups.into_iter().zip(&urls).zip(&cases) {
        let (before, e) = split_failure(group);
        assert_eq!(e.kind, ErrorKind::Truncated, "{name}: {e}");
        assert_eq!(&e.url, url, "{name}");
        assert_eq!(e.offset, Some(*cut as u64), "{name}: {e}");
        assert_eq!(e.member.as_deref(), *member, "{name}: {e}");
        assert_eq!(before.len(), *n, "{name}: samples delivered before the cut");
        for (got, want) in before.iter().zip(&full) {
            assert_eq!((&got.key, &got.fields), (&want.key, &want.fields), "{name}: a partial sample");
        }
        assert_eq!(delivered_before(*cut, &specs, &offsets), *n, "{name}: the model agrees");
        assert!(e.to_string().contains(url.as_str()), "{name}: display names the url");
    }
}

#[test]
fn truncated_plain_shard_cut_at_many_offsets() {
    let dir = TempDir::new("truncated-sweep");
    let (specs, members, tar) = small_shard();
    let (offsets, marker) = layout(&members);
    let mut cuts: Vec<usize> = (0..marker + 512).step_by(61).collect();
    for &o in &offsets {
        cuts.extend([o, o + 1, o + 511, o + 512, o + 513]);
    }
    cuts.extend([marker, marker + 511]);
    cuts.sort_unstable();
    cuts.dedup();
    let urls: Vec<String> = cuts.iter().map(|c| dir.write(&format!("cut-{c}.tar"), &tar[..*c])).collect();
    let cfg = ReaderConfig { threads: 2, prefetch: 4, ..ReaderConfig::default() };
    let groups = per_shard(run(cfg, &urls));
    let full = expected("", &specs);
    for ((group, url), &cut) in groups.into_iter().zip(&urls).zip(&cuts) {
        let (before, e) = split_failure(group);
        assert_eq!(e.kind, ErrorKind::Truncated, "cut {cut}: {e}");
        assert_eq!(&e.url, url);
        assert_eq!(e.offset, Some(cut as u64), "cut {cut}: {e}");
        assert_eq!(before.len(), delivered_before(cut, &specs, &offsets), "cut {cut}");
        for (got, want) in before.iter().zip(&full) {
            assert_eq!((&got.key, &got.fields), (&want.key, &want.fields), "cut {cut}: a partial sample");
        }
    }
    // Past the first zero block, the shard is whole.
    let url = dir.write("whole-enough.tar", &tar[..marker + 512]);
    let evs = run(config(), std::slice::from_ref(&url));
    assert!(errors(&evs).is_empty(), "{:?}", errors(&evs));
    assert!(samples(&evs) == expected(&url, &specs));
}

#[test]
fn truncated_gzip_shards() {
    let dir = TempDir::new("truncated-gzip");
    let specs = make_samples(3, 40, 1500);
    let tar = tar_bytes(&members_of(&specs));
    let gz = gzip(&tar);
    let mut two = gzip(&tar[..tar.len() / 2 + 5]);
    let first_len = two.len();
    two.extend(gzip(&tar[tar.len() / 2 + 5..]));
    let mut shards = Vec::new();
    for cut in [3, 10, 11, 100, gz.len() / 3, gz.len() / 2, gz.len() - 100, gz.len() - 8, gz.len() - 1] {
        shards.push((format!("cut-{cut}.tgz"), gz[..cut].to_vec()));
    }
    for cut in [first_len / 2, first_len - 3, first_len, first_len + 5, first_len + 500] {
        shards.push((format!("two-cut-{cut}.tgz"), two[..cut].to_vec()));
    }
    let urls: Vec<String> = shards.iter().map(|(n, b)| dir.write(n, b)).collect();
    let groups = per_shard(run(config(), &urls));
    let full = expected("", &specs);
    for (group, (url, (name, _))) in groups.into_iter().zip(urls.iter().zip(&shards)) {
        let (before, e) = split_failure(group);
        assert_eq!(e.kind, ErrorKind::Truncated, "{name}: {e}");
        assert_eq!(&e.url, url);
        assert!(e.offset.is_some(), "{name}: {e}");
        assert!(before.len() < full.len(), "{name}: the last sample is never delivered from a cut stream");
        for (got, want) in before.iter().zip(&full) {
            assert_eq!((&got.key, &got.fields), (&want.key, &want.fields), "{name}: a partial sample");
        }
    }
}

#[test]
fn corrupt_header_is_a_format_error_after_the_samples_before_it() {
    let dir = TempDir::new("corrupt");
    let (specs, members, mut tar) = small_shard();
    let (offsets, _) = layout(&members);
    tar[offsets[4] + 3] ^= 0x20; // s2.txt's name, after its checksum was computed
    let url = dir.write("corrupt.tar", &tar);
    let (before, e) = failing_shard(config(), &url);
    assert_eq!(e.kind, ErrorKind::Format);
    assert_eq!(e.offset, Some(offsets[4] as u64));
    assert!(before == expected(&url, &specs[..1]), "s0 only: s1 may not be complete");
}

// ---------------------------------------------------------------------------------------------------------
// pipe:
// ---------------------------------------------------------------------------------------------------------

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[test]
fn pipe_cat_reads_the_shard() {
    let dir = TempDir::new("pipe-cat");
    let specs = make_samples(4, 25, 2000);
    let tar = tar_bytes(&members_of(&specs));
    let plain = dir.write("p.tar", &tar);
    let gz = dir.write("p.tgz", &gzip(&tar));
    let urls = vec![format!("pipe:cat {}", quote(&plain)), format!("pipe:cat {} | cat", quote(&gz))];
    let evs = run(config(), &urls);
    assert!(errors(&evs).is_empty(), "{:?}", errors(&evs));
    let want: Vec<Sample> = urls.iter().flat_map(|u| expected(u, &specs)).collect();
    assert!(samples(&evs) == want);
}

#[test]
fn pipe_exit_status_is_a_command_error() {
    let (before, e) = failing_shard(config(), "pipe:exit 3");
    assert!(before.is_empty());
    assert_eq!(e.kind, ErrorKind::Command, "{e}");
    assert_eq!(e.url, "pipe:exit 3");
    assert!(e.message.contains("status 3"), "{}", e.message);
    assert!(e.message.contains("exit 3"), "names the command: {}", e.message);
}

#[test]
fn pipe_failure_includes_the_stderr_tail() {
    let url = "pipe:echo first line >&2; echo the-real-reason >&2; exit 2";
    let (_, e) = failing_shard(config(), url);
    assert_eq!(e.kind, ErrorKind::Command, "{e}");
    assert!(e.message.contains("status 2"), "{}", e.message);
    assert!(e.message.contains("the-real-reason"), "{}", e.message);

    // A long stderr keeps its end.
    let url = "pipe:i=0; while [ $i -lt 2000 ]; do echo noise-$i >&2; i=$((i+1)); done; echo LAST-WORDS >&2; exit 1";
    let (_, e) = failing_shard(config(), url);
    assert_eq!(e.kind, ErrorKind::Command, "{e}");
    assert!(e.message.contains("LAST-WORDS"), "{}", e.message);
    assert!(!e.message.contains("noise-0\n"), "only the tail is kept");
    assert!(e.message.len() < 10_000, "the tail is bounded: {} bytes", e.message.len());

    // cat of a missing file: stderr explains.
    let dir = TempDir::new("pipe-missing");
    let url = format!("pipe:cat {}", quote(&path_str(&dir.path("absent.tar"))));
    let (_, e) = failing_shard(config(), &url);
    assert_eq!(e.kind, ErrorKind::Command, "{e}");
    assert!(e.message.contains("absent.tar"), "{}", e.message);
}

#[test]
fn pipe_failing_after_a_whole_shard_delivers_the_samples_then_the_error() {
    let dir = TempDir::new("pipe-late-failure");
    let specs = make_samples(5, 8, 100);
    let path = dir.write("a.tar", &tar_bytes(&members_of(&specs)));
    let url = format!("pipe:cat {}; echo disk on fire >&2; exit 7", quote(&path));
    let (before, e) = failing_shard(config(), &url);
    assert!(before == expected(&url, &specs));
    assert_eq!(e.kind, ErrorKind::Command);
    assert!(e.message.contains("status 7") && e.message.contains("disk on fire"), "{}", e.message);
}

#[test]
fn pipe_of_a_cut_stream_with_success_status_is_truncated() {
    let dir = TempDir::new("pipe-cut");
    let (specs, members, tar) = small_shard();
    let (offsets, _) = layout(&members);
    let path = dir.write("a.tar", &tar);
    let cut = offsets[3] + 600;
    let url = format!("pipe:head -c {cut} {}", quote(&path));
    let (before, e) = failing_shard(config(), &url);
    assert_eq!(e.kind, ErrorKind::Truncated, "{e}");
    assert_eq!(e.offset, Some(cut as u64));
    assert!(before == expected(&url, &specs[..1]));
}

fn process_gone(pid: u32, deadline: Instant) -> bool {
    loop {
        let state = fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        // Gone, or a zombie whose parent (not us) has yet to reap it: either way it no longer runs.
        let gone = match state {
            None => true,
            Some(s) => s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        };
        if gone {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn read_pid(path: &Path, deadline: Instant) -> u32 {
    loop {
        if let Ok(text) = fs::read_to_string(path) {
            if let Ok(pid) = text.trim().parse() {
                return pid;
            }
        }
        assert!(Instant::now() < deadline, "the command never wrote {}", path.display());
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn shutdown_kills_a_pipe_that_would_run_forever() {
    let dir = TempDir::new("pipe-forever");
    let specs = make_samples(6, 10, 100);
    let path = dir.write("a.tar", &tar_bytes(&members_of(&specs)));
    let sh_pid = dir.path("sh.pid");
    let sleep_pid = dir.path("sleep.pid");
    let url = format!(
        "pipe:echo $$ > {}; cat {}; sleep 100 & echo $! > {}; wait",
        quote(&path_str(&sh_pid)),
        quote(&path),
        quote(&path_str(&sleep_pid))
    );
    let mut pool = Pool::start(ReaderConfig { threads: 1, prefetch: 1, ..ReaderConfig::default() });
    pool.submit(ShardSpec::Url(url.clone()));
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        match pool.next(Duration::from_millis(100)) {
            Next::Item(Item::Sample(s)) => break s,
            Next::Item(Item::Error(e) | Item::Skipped(e)) => panic!("unexpected error {e}"),
            Next::Item(Item::End) | Next::Idle => panic!("the shard ended early"),
            Next::Pending => assert!(Instant::now() < deadline, "no sample within 20 s"),
        }
    };
    assert_eq!(first.key, specs[0].0);
    let sh = read_pid(&sh_pid, deadline);
    let sleeper = read_pid(&sleep_pid, deadline);
    let started = Instant::now();
    assert!(pool.shutdown(Duration::from_secs(5)), "threads still running after 5 s");
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1500), "shutdown took {took:?}");
    assert_eq!(pool.threads_running(), 0);
    assert!(!Path::new(&format!("/proc/{sh}")).exists(), "the shell {sh} was not reaped");
    assert!(process_gone(sleeper, Instant::now() + Duration::from_secs(2)), "sleep {sleeper} survived");
}

#[test]
fn dropping_a_pool_kills_its_pipe() {
    let dir = TempDir::new("pipe-drop");
    let pid_file = dir.path("sh.pid");
    let url = format!("pipe:echo $$ > {}; exec sleep 100", quote(&path_str(&pid_file)));
    let mut pool = Pool::start(ReaderConfig { threads: 1, prefetch: 1, ..ReaderConfig::default() });
    pool.submit(ShardSpec::Url(url));
    let pid = read_pid(&pid_file, Instant::now() + Duration::from_secs(20));
    // The worker is blocked reading the command's stdout.
    assert!(matches!(pool.next(Duration::from_millis(50)), Next::Pending));
    drop(pool);
    assert!(process_gone(pid, Instant::now() + Duration::from_secs(2)), "sleep {pid} survived the drop");
}

// ---------------------------------------------------------------------------------------------------------
// Grouping options
// ---------------------------------------------------------------------------------------------------------

fn shard_of(dir: &TempDir, name: &str, members: &[(&str, &[u8])]) -> String {
    let owned: Members = members.iter().map(|(n, d)| (n.to_string(), d.to_vec())).collect();
    dir.write(name, &tar_bytes(&owned))
}

fn fields(s: &Sample) -> Vec<(&str, &[u8])> {
    s.fields.iter().map(|(f, d)| (f.as_str(), d.as_slice())).collect()
}

#[test]
fn duplicate_field_is_an_error_naming_key_and_field() {
    let dir = TempDir::new("duplicate");
    let url = shard_of(
        &dir,
        "dup.tar",
        &[("a.txt", b"1"), ("a.json", b"{}"), ("b.txt", b"2"), ("b.txt", b"3"), ("c.txt", b"4")],
    );
    let evs = run(config(), std::slice::from_ref(&url));
    // As the reference: the repeated member is dropped, `b` keeps its first copy, and the shard goes on.
    assert_eq!(keys_and_skips(&evs), ["a", "<skipped>", "b", "c"]);
    assert_eq!(fields(&samples(&evs)[1]), [("txt", &b"2"[..])]);
    assert_eq!(ends(&evs), 1);
    let e = skipped(&evs).remove(0);
    assert_eq!(e.kind, ErrorKind::DuplicateField);
    assert_eq!(e.url, url);
    assert!(e.message.contains("\"b\"") && e.message.contains("\"txt\""), "{}", e.message);
    assert_eq!(e.member.as_deref(), Some("b.txt"));
    assert_eq!(e.offset, Some(3 * 1024), "offset of the second b.txt");

    // Field names are lower-cased first, so these collide too.
    let url = shard_of(&dir, "dup-case.tar", &[("c.TXT", b"1"), ("c.txt", b"2")]);
    let evs = run(config(), std::slice::from_ref(&url));
    assert_eq!(skipped(&evs)[0].kind, ErrorKind::DuplicateField);
    // ... unless lower-casing is off.
    let evs = run(ReaderConfig { lcase: false, ..config() }, std::slice::from_ref(&url));
    assert!(errors(&evs).is_empty());
    assert_eq!(fields(&samples(&evs)[0]), [("TXT", &b"1"[..]), ("txt", b"2")]);
}

#[test]
fn fields_filter_keeps_only_the_named_fields() {
    let dir = TempDir::new("fields");
    let specs = make_samples(7, 12, 3000);
    let url = dir.write("a.tar", &tar_bytes(&members_of(&specs)));
    let keep: HashSet<String> = ["cls", "bin", "absent"].iter().map(|s| s.to_string()).collect();
    let evs = run(ReaderConfig { fields: Some(keep), ..config() }, std::slice::from_ref(&url));
    assert!(errors(&evs).is_empty());
    let got = samples(&evs);
    let want: Vec<Sample> = expected(&url, &specs)
        .into_iter()
        .map(|mut s| {
            s.fields.retain(|(f, _)| f != "txt");
            s
        })
        .collect();
    assert!(got == want);
}

#[test]
fn grouping_follows_the_key_rule_and_skips_metadata() {
    let dir = TempDir::new("grouping");
    let url = shard_of(
        &dir,
        "g.tar",
        &[
            ("__meta__", b"m"),
            ("__a.b__", b"m"),
            ("__index__/x.json", b"m"),
            ("dir/base.input.PNG", b"png"),
            ("dir/base.json", b"{}"),
            ("noext", b"skipped"),
            ("dir/__x__.txt", b"kept: not top-level"),
            ("other.tar.gz", b"gz"),
            ("dir/base.cls", b"a new sample with a repeated key"),
        ],
    );
    let evs = run(config(), std::slice::from_ref(&url));
    assert!(errors(&evs).is_empty(), "{:?}", errors(&evs));
    let got = samples(&evs);
    let shape: Shape = got.iter().map(|s| (s.key.as_str(), fields(s))).collect();
    assert_eq!(
        shape,
        vec![
            ("dir/base", vec![("input.png", &b"png"[..]), ("json", b"{}")]),
            ("dir/__x__", vec![("txt", &b"kept: not top-level"[..])]),
            ("other", vec![("tar.gz", &b"gz"[..])]),
            ("dir/base", vec![("cls", &b"a new sample with a repeated key"[..])]),
        ]
    );
    assert!(got.iter().all(|s| &*s.url == url.as_str()));
}

#[test]
fn members_mode_yields_each_regular_member() {
    let dir = TempDir::new("members");
    let mut b = tar::Builder::new(Vec::new());
    let mut d = tar::Header::new_gnu();
    d.set_entry_type(tar::EntryType::Directory);
    d.set_size(0);
    d.set_mode(0o755);
    b.append_data(&mut d, "dir/", io::empty()).expect("dir");
    for (name, data) in [("dir/a.txt", &b"A"[..]), ("__meta__", b"m"), ("noext", b"N"), ("dir/a.txt", b"again")] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data).expect("file");
    }
    let url = dir.write("m.tar", &b.into_inner().expect("finish"));
    let evs = run(ReaderConfig { members: true, ..config() }, std::slice::from_ref(&url));
    assert!(errors(&evs).is_empty(), "{:?}", errors(&evs));
    let got: Vec<(String, Fields)> = samples(&evs)
        .into_iter()
        .map(|s| (s.key, s.fields.into_iter().map(|(f, v)| (f, v.as_slice().to_vec())).collect()))
        .collect();
    let want: Vec<(String, Fields)> = [("dir/a.txt", &b"A"[..]), ("noext", b"N"), ("dir/a.txt", b"again")]
        .iter()
        .map(|(n, d)| (n.to_string(), vec![(String::new(), d.to_vec())]))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn rename_and_select_callbacks() {
    let dir = TempDir::new("callbacks");
    let url = shard_of(
        &dir,
        "c.tar",
        &[("a.jpeg", b"J"), ("a.json", b"{}"), ("a.txt", b"t"), ("b.jpeg", b"K"), ("b.txt", b"u"), ("c.json", b"x")],
    );
    let seen = Arc::new(AtomicUsize::new(0));
    let seen2 = Arc::clone(&seen);
    let cfg = ReaderConfig {
        rename_files: Some(Arc::new(|name: &str| Ok(name.replace(".jpeg", ".jpg")))),
        select_files: Some(Arc::new(move |name: &str| {
            seen2.fetch_add(1, Ordering::SeqCst);
            assert!(!name.ends_with(".jpeg"), "select sees renamed names");
            Ok(!name.ends_with(".json"))
        })),
        ..config()
    };
    let evs = run(cfg, std::slice::from_ref(&url));
    assert!(errors(&evs).is_empty(), "{:?}", errors(&evs));
    let got = samples(&evs);
    let shape: Shape = got.iter().map(|s| (s.key.as_str(), fields(s))).collect();
    assert_eq!(
        shape,
        vec![("a", vec![("jpg", &b"J"[..]), ("txt", b"t")]), ("b", vec![("jpg", &b"K"[..]), ("txt", b"u")])],
        "c has only a deselected member, so there is no sample c"
    );
    assert_eq!(seen.load(Ordering::SeqCst), 6);

    // Renaming can merge members into another key.
    let cfg = ReaderConfig { rename_files: Some(Arc::new(|name: &str| Ok(name.replace("b.", "a.")))), ..config() };
    let url2 = shard_of(&dir, "merge.tar", &[("a.x", b"1"), ("b.y", b"2")]);
    let got = samples(&run(cfg, std::slice::from_ref(&url2)));
    assert_eq!(got.len(), 1);
    assert_eq!(fields(&got[0]), [("x", &b"1"[..]), ("y", b"2")]);
}

#[test]
fn callback_errors_name_the_member() {
    let dir = TempDir::new("callback-errors");
    let url = shard_of(&dir, "c.tar", &[("a.txt", b"1"), ("b.txt", b"2"), ("bad.txt", b"3"), ("z.txt", b"4")]);
    let refused = |what: &str| -> fastwds_core::error::CallbackError { Arc::new(io::Error::other(what.to_string())) };
    let cfg = ReaderConfig {
        rename_files: Some(Arc::new(move |name: &str| {
            if name.starts_with("bad") {
                Err(refused("rename refused"))
            } else {
                Ok(name.to_string())
            }
        })),
        ..config()
    };
    let evs = run(cfg, std::slice::from_ref(&url));
    // The member is dropped and the shard goes on; samples completed before it come first.
    assert_eq!(keys_and_skips(&evs), ["a", "<skipped>", "b", "z"]);
    let e = skipped(&evs).remove(0);
    assert_eq!(e.kind, ErrorKind::Callback);
    assert_eq!(e.member.as_deref(), Some("bad.txt"));
    assert_eq!(e.offset, Some(2048));
    assert!(e.message.contains("rename refused"));
    let cause = e.cause.as_ref().expect("the callback's own error is kept");
    assert_eq!(cause.downcast_ref::<io::Error>().map(|e| e.to_string()).as_deref(), Some("rename refused"));

    let cfg = ReaderConfig { select_files: Some(Arc::new(move |_: &str| Err(refused("select refused")))), ..config() };
    let evs = run(cfg, std::slice::from_ref(&url));
    assert!(samples(&evs).is_empty());
    let errs = skipped(&evs);
    assert_eq!(errs.len(), 4, "one per member");
    assert_eq!(errs[0].kind, ErrorKind::Callback);
    assert_eq!(errs[0].member.as_deref(), Some("a.txt"));
    assert!(errs[0].message.contains("select refused"));
}

#[test]
fn a_member_over_the_size_limit_is_skipped_before_it_is_buffered() {
    let dir = TempDir::new("too-large");
    let big = vec![7u8; 5000];
    let url = shard_of(&dir, "big.tar", &[("a.txt", b"1"), ("b.bin", &big), ("b.txt", b"2"), ("c.txt", b"3")]);
    let evs = run(ReaderConfig { max_member_bytes: 4096, ..config() }, std::slice::from_ref(&url));
    // The error comes when the member is read, before grouping: `a` is finished only by the next member that
    // reaches it (`b.txt`), as the reference orders an error raised while reading a member.
    assert_eq!(keys_and_skips(&evs), ["<skipped>", "a", "b", "c"]);
    let e = skipped(&evs).remove(0);
    assert_eq!(e.kind, ErrorKind::TooLarge);
    assert_eq!(e.member.as_deref(), Some("b.bin"));
    assert_eq!(e.offset, Some(1024));
    assert!(e.message.contains("5000 bytes"), "{}", e.message);
    assert_eq!(fields(&samples(&evs)[1]), [("txt", &b"2"[..])], "b keeps its other fields");
    // At the limit it is read.
    let evs = run(ReaderConfig { max_member_bytes: 5000, ..config() }, std::slice::from_ref(&url));
    assert!(skipped(&evs).is_empty());
}

#[test]
fn secure_mode_refuses_commands_before_they_run() {
    let dir = TempDir::new("secure");
    let url = shard_of(&dir, "a.tar", &[("a.txt", b"1")]);
    let marker = dir.path("ran");
    let pipe = format!("pipe:touch {}; cat {url}", marker.display());
    let secure = ReaderConfig { secure: true, ..config() };
    let evs = run(secure.clone(), &[pipe.clone(), url.clone(), format!("file:{url}")]);
    let errs = errors(&evs);
    assert_eq!(errs.len(), 1, "{evs:?}");
    assert_eq!(errs[0].kind, ErrorKind::Insecure);
    assert!(errs[0].message.contains("secure mode"), "{}", errs[0].message);
    assert_eq!(samples(&evs).len(), 2, "local files are read, as the reference's WebDataset reads them");
    assert!(!marker.exists(), "the command must not run");
    // A stream handed over by the caller, and a cached copy under another name, are read.
    let cached = ShardSpec::Alias { url: "https://example.invalid/a.tar".into(), location: url.clone() };
    let evs = run_specs(secure, vec![cached]);
    assert_eq!(samples(&evs).len(), 1);
    // Off, the same URLs are read.
    let evs = run(config(), &[pipe]);
    assert_eq!(samples(&evs).len(), 1);
    assert!(marker.exists());
}

// ---------------------------------------------------------------------------------------------------------
// Memory bounds
// ---------------------------------------------------------------------------------------------------------

#[test]
fn tiny_byte_budget_still_delivers_everything_in_order() {
    let dir = TempDir::new("tiny-budget");
    let (urls, want) = uneven_shards(&dir);
    for ordered in [true, false] {
        let cfg = ReaderConfig { threads: 2, prefetch: 3, buffer_bytes: 1, buffer_samples: 1, ordered, ..config() };
        let evs = run(cfg, &urls);
        assert!(errors(&evs).is_empty());
        assert_eq!(ends(&evs), urls.len());
        let mut got = samples(&evs);
        if ordered {
            assert!(got == want, "ordered output differs with a 1-byte budget");
        } else {
            let mut want = want.clone();
            let key = |s: &Sample| (s.url.to_string(), s.key.clone());
            got.sort_by_key(key);
            want.sort_by_key(key);
            assert!(got == want, "unordered output differs with a 1-byte budget");
        }
    }
}

/// Counts the bytes read through it.
struct Counting<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::SeqCst);
        Ok(n)
    }
}

#[test]
fn a_slow_consumer_bounds_how_far_the_readers_get() {
    // 24 MB of 200 KB samples; a 256 KB budget. While the consumer sleeps, the reader must stop after the
    // budget plus its read buffers, far short of the shard.
    let specs: Vec<Spec> =
        (0..120).map(|i| (format!("k{i:04}"), vec![("bin".to_string(), data_of(200_000, i))])).collect();
    let tar = tar_bytes(&members_of(&specs));
    let total = tar.len() as u64;
    for ordered in [true, false] {
        let read = Arc::new(AtomicU64::new(0));
        let stream = Counting { inner: io::Cursor::new(tar.clone()), read: Arc::clone(&read) };
        let cfg = ReaderConfig { threads: 2, prefetch: 2, buffer_bytes: 256 << 10, ordered, ..ReaderConfig::default() };
        let mut pool = Pool::start(cfg);
        pool.submit(ShardSpec::Stream { url: "mem".to_string(), stream: Box::new(stream) });
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while got.is_empty() {
            match pool.next(Duration::from_millis(100)) {
                Next::Item(Item::Sample(s)) => got.push(s),
                Next::Pending => assert!(Instant::now() < deadline),
                _ => panic!("unexpected item"),
            }
        }
        thread::sleep(Duration::from_millis(400));
        let ahead = read.load(Ordering::SeqCst);
        assert!(ahead < 6 << 20, "read {ahead} of {total} bytes ahead of a sleeping consumer (ordered {ordered})");
        loop {
            match pool.next(Duration::from_millis(100)) {
                Next::Item(Item::Sample(s)) => got.push(s),
                Next::Item(Item::End) | Next::Idle => break,
                Next::Item(Item::Error(e) | Item::Skipped(e)) => panic!("{e}"),
                Next::Pending => assert!(Instant::now() < deadline),
            }
        }
        assert!(pool.shutdown(Duration::from_secs(5)));
        assert_eq!(read.load(Ordering::SeqCst), total);
        assert!(got == expected("mem", &specs), "ordered {ordered}");
    }
}

// ---------------------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------------------

/// Serves `routes` (path -> (status, body)) on 127.0.0.1 for `connections` requests; returns the base URL.
fn serve(routes: Vec<(&'static str, u16, Vec<u8>)>, connections: usize) -> String {
    serve_with(connections, move |_, path, _| {
        let (status, body) = routes
            .iter()
            .find(|(p, _, _)| *p == path)
            .map(|(_, s, b)| (*s, b.clone()))
            .unwrap_or((404, b"not found".to_vec()));
        (status, String::new(), body)
    })
}

/// Answers `requests` requests on 127.0.0.1 with `answer(method, path, range header)` -> (status, extra
/// headers, body), one a connection; a HEAD gets the headers with the body's length but not the body.
/// Returns the base URL.
fn serve_with(
    requests: usize,
    answer: impl Fn(&str, &str, Option<&str>) -> (u16, String, Vec<u8>) + Send + 'static,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&request).to_string();
            let mut words = text.split_whitespace();
            let method = words.next().unwrap_or("GET").to_string();
            let path = words.next().unwrap_or("/").to_string();
            let range = text.lines().find_map(|l| {
                l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case("range")).map(|(_, v)| v.trim())
            });
            let (status, headers, body) = answer(&method, &path, range);
            let length = body.len();
            let head = format!("HTTP/1.1 {status} X\r\nContent-Length: {length}\r\n{headers}Connection: close\r\n\r\n");
            let _ = stream.write_all(head.as_bytes());
            if method != "HEAD" {
                let _ = stream.write_all(&body);
            }
        }
    });
    base
}

#[test]
fn http_stat_asks_head_and_falls_back_to_a_one_byte_range() {
    let options = RemoteOptions { max_retries: 0, ..RemoteOptions::default() };
    // A server that answers HEAD: its Content-Length and ETag.
    let base = serve_with(1, |method, _, _| {
        assert_eq!(method, "HEAD");
        (200, "ETag: \"abc\"\r\n".to_string(), vec![0; 1234])
    });
    let stat = fastwds_core::remote::stat(&format!("{base}/a.tar"), &options).expect("stat");
    assert_eq!(stat, (Some(1234), Some("\"abc\"".to_string())));
    // One that refuses HEAD (405): the total of a one-byte range.
    let base = serve_with(2, |method, _, range| match method {
        "HEAD" => (405, String::new(), Vec::new()),
        _ => {
            assert_eq!(range, Some("bytes=0-0"));
            (206, "Content-Range: bytes 0-0/98765\r\nETag: W/\"w1\"\r\n".to_string(), b"x".to_vec())
        }
    });
    let stat = fastwds_core::remote::stat(&format!("{base}/b.tar"), &options).expect("stat");
    assert_eq!(stat, (Some(98765), Some("W/\"w1\"".to_string())));
    // Neither size nor ETag told: both unknown. A missing resource is an open error naming it.
    let base = serve_with(3, |method, path, _| match (method, path) {
        ("HEAD", "/c.tar") => (405, String::new(), Vec::new()),
        (_, "/c.tar") => (200, String::new(), b"whole body".to_vec()),
        _ => (404, String::new(), Vec::new()),
    });
    let stat = fastwds_core::remote::stat(&format!("{base}/c.tar"), &options).expect("stat");
    assert_eq!(stat, (None, None));
    let url = format!("{base}/gone.tar");
    let e = fastwds_core::remote::stat(&url, &options).expect_err("404");
    assert_eq!((e.kind, e.url.as_str()), (ErrorKind::Open, url.as_str()));
    assert!(e.message.contains("404"), "{e}");
}

#[test]
fn http_shards_and_http_errors() {
    let specs = make_samples(8, 20, 1000);
    let tar = tar_bytes(&members_of(&specs));
    let base =
        serve(vec![("/a.tar", 200, tar.clone()), ("/b.tgz", 200, gzip(&tar)), ("/boom.tar", 503, Vec::new())], 4);
    let urls = vec![
        format!("{base}/a.tar"),
        format!("{base}/b.tgz"),
        format!("{base}/missing.tar"),
        format!("{base}/boom.tar"),
    ];
    // No retries: the server answers 4 requests, and a 503 that is not retried is reported as it came.
    let remote = RemoteOptions { max_retries: 0, ..RemoteOptions::default() };
    let cfg = ReaderConfig { threads: 1, prefetch: 1, remote, ..ReaderConfig::default() };
    let groups = per_shard(run(cfg, &urls));
    assert_eq!(groups.len(), 4);
    assert!(samples(&groups[0]) == expected(&urls[0], &specs));
    assert!(samples(&groups[1]) == expected(&urls[1], &specs));
    let mut groups = groups.into_iter().skip(2);
    for (code, url) in [("404", &urls[2]), ("503", &urls[3])] {
        let (before, e) = split_failure(groups.next().expect("group"));
        assert!(before.is_empty());
        assert_eq!(e.kind, ErrorKind::Open);
        assert_eq!(&e.url, url);
        assert!(e.message.contains(code), "{}", e.message);
    }
}

#[test]
fn http_body_cut_short_is_truncated() {
    let specs = make_samples(9, 10, 1000);
    let tar = tar_bytes(&members_of(&specs));
    let cut = tar.len() / 2 + 100;
    // The server promises the full length but closes early.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/cut.tar", listener.local_addr().expect("addr"));
    let body = tar.clone();
    thread::spawn(move || {
        if let Some(Ok(mut stream)) = listener.incoming().next() {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body[..cut]);
        }
    });
    // No retries: the server is gone after one answer, and the cut is reported as it came.
    let remote = RemoteOptions { max_retries: 0, ..RemoteOptions::default() };
    let (before, e) = failing_shard(ReaderConfig { remote, ..config() }, &url);
    assert_eq!(e.kind, ErrorKind::Truncated, "{e}");
    assert!(e.message.contains("gave up after 1 attempts"), "{e}");
    assert_eq!(e.url, url);
    let full = expected(&url, &specs);
    assert!(before.len() < full.len() && before[..] == full[..before.len()]);
}

#[test]
fn pipe_with_a_background_process_holding_stderr_ends_and_shuts_down() {
    // The shell exits 0 right after cat; a background process it left holds stderr (not stdout) open.
    // Expected: the shard ends once the shell has exited, and shutdown() kills what is left of the
    // command's process group. Got (at the time of writing): End only arrives when the background process
    // exits (PipeCommand::finish joins the stderr reader thread, which waits for stderr EOF), and shutdown()
    // cannot stop it, because the group was removed from the ChildRegistry when the shell was reaped.
    let dir = TempDir::new("pipe-background");
    let specs = make_samples(6, 3, 100);
    let path = dir.write("a.tar", &tar_bytes(&members_of(&specs)));
    let pid_file = dir.path("bg.pid");
    let url = format!("pipe:cat {}; sleep 30 >/dev/null & echo $! > {}", quote(&path), quote(&path_str(&pid_file)));
    let mut pool = Pool::start(ReaderConfig { threads: 1, prefetch: 1, ..ReaderConfig::default() });
    pool.submit(ShardSpec::Url(url.clone()));
    let started = Instant::now();
    let mut got = Vec::new();
    let mut ended = false;
    while started.elapsed() < Duration::from_secs(3) {
        match pool.next(Duration::from_millis(100)) {
            Next::Item(Item::Sample(s)) => got.push(s),
            Next::Item(Item::Error(e) | Item::Skipped(e)) => panic!("{e}"),
            Next::Item(Item::End) => {
                ended = true;
                break;
            }
            Next::Pending | Next::Idle => {}
        }
    }
    let background = read_pid(&pid_file, Instant::now() + Duration::from_secs(5));
    let shut = pool.shutdown(Duration::from_secs(1));
    let gone = process_gone(background, Instant::now() + Duration::from_secs(1));
    if !gone {
        // Clean up the process this test started, by its id.
        let _ = std::process::Command::new("kill").arg(background.to_string()).status();
    }
    assert!(got == expected(&url, &specs), "all samples arrive");
    assert!(ended, "no End within 3 s of a shell that exited at once");
    assert!(shut, "shutdown did not finish within 1 s");
    assert!(gone, "the background process {background} outlived shutdown");
}

#[test]
fn shutdown_right_after_submitting_a_pipe_shard() {
    // Expected: shutdown() returns promptly whenever it is called. Got (at the time of writing): in a few
    // percent of runs it times out, because the command is spawned after kill_all() ran (or before it was
    // registered), nothing kills it, and the worker blocks in decompress()'s first read of its stdout, for as
    // long as the command runs. The sweep of delays below hits the window reliably on a 2-core machine.
    for i in 0..200u64 {
        let mut pool = Pool::start(ReaderConfig { threads: 1, prefetch: 1, ..ReaderConfig::default() });
        pool.submit(ShardSpec::Url("pipe:sleep 3".to_string()));
        thread::sleep(Duration::from_micros(i % 100 * 40));
        let t = Instant::now();
        assert!(pool.shutdown(Duration::from_secs(2)), "delay {} us: shutdown timed out", i % 100 * 40);
        assert!(t.elapsed() < Duration::from_secs(1), "delay {} us: shutdown took {:?}", i % 100 * 40, t.elapsed());
    }
}

#[test]
fn shutdown_while_readers_wait_on_a_full_buffer() {
    let dir = TempDir::new("shutdown-full");
    let (urls, _) = uneven_shards(&dir);
    for ordered in [true, false] {
        let cfg = ReaderConfig { threads: 2, prefetch: 3, buffer_bytes: 1, buffer_samples: 1, ordered, ..config() };
        let mut pool = Pool::start(cfg);
        for url in &urls[..3] {
            pool.submit(ShardSpec::Url(url.clone()));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match pool.next(Duration::from_millis(100)) {
                Next::Item(Item::Sample(_)) => break,
                Next::Pending => assert!(Instant::now() < deadline),
                _ => panic!("unexpected item"),
            }
        }
        thread::sleep(Duration::from_millis(100)); // let the readers fill the buffer and block
        let t = Instant::now();
        assert!(pool.shutdown(Duration::from_secs(5)));
        assert!(t.elapsed() < Duration::from_secs(1), "shutdown took {:?}", t.elapsed());
        assert_eq!(pool.threads_running(), 0);
        assert!(matches!(pool.next(Duration::from_millis(10)), Next::Idle), "nothing after shutdown");
    }
}

#[test]
fn shutdown_while_a_reader_waits_on_a_silent_pipe() {
    let dir = TempDir::new("pipe-silent");
    let pid_file = dir.path("sh.pid");
    let url = format!("pipe:echo $$ > {}; exec sleep 100", quote(&path_str(&pid_file)));
    let mut pool = Pool::start(ReaderConfig { threads: 1, prefetch: 1, ..ReaderConfig::default() });
    pool.submit(ShardSpec::Url(url));
    let pid = read_pid(&pid_file, Instant::now() + Duration::from_secs(20));
    assert!(matches!(pool.next(Duration::from_millis(50)), Next::Pending));
    let t = Instant::now();
    assert!(pool.shutdown(Duration::from_secs(5)));
    assert!(t.elapsed() < Duration::from_secs(1), "shutdown took {:?}", t.elapsed());
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "the command {pid} was not reaped");
}

#[test]
fn gzip_trailer_checksum_is_verified() {
    // A bad CRC is only seen after the end-of-archive marker, when the reader drains the stream: the shard
    // fails there, and its last sample (not yet delivered) is dropped with it.
    let dir = TempDir::new("gzip-crc");
    let specs = make_samples(10, 6, 300);
    let mut gz = gzip(&tar_bytes(&members_of(&specs)));
    let n = gz.len();
    gz[n - 8] ^= 0xff; // the CRC32 of the trailer
    let url = dir.write("bad-crc.tgz", &gz);
    let (before, e) = failing_shard(config(), &url);
    assert_eq!(e.kind, ErrorKind::Read, "{e}");
    assert_eq!(e.url, url);
    assert!(before == expected(&url, &specs[..specs.len() - 1]));
}
