//! A local cache of remote shards, filled while they stream: the first sample does not wait for the whole
//! shard. A download is written to a `.part` file beside its entry and renamed into place only when the shard
//! was read to its end without error, so an entry is never partial. One process downloads a shard at a time
//! (an advisory lock beside the entry); the others wait for it and read the entry. The directory is kept
//! within a size by deleting the least recently used whole entries.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime};

/// Where the cache is and how large it may grow.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub dir: PathBuf,
    /// Bytes; after each new entry, least recently used entries are deleted while the total is larger.
    pub size: u64,
}

/// What the cache has for a shard.
pub enum Lookup {
    /// A complete entry (its use time refreshed).
    Hit(File),
    /// No entry: this caller downloads it, writing through the returned [`Fill`].
    Miss(Fill),
}

/// How often a reader waiting for another process's download looks again.
const WAIT_POLL: Duration = Duration::from_millis(20);

/// Looks up the entry at `path`; waits while another reader downloads it. None when `cancel` is set.
pub fn lookup(path: &Path, cancel: &AtomicBool) -> io::Result<Option<Lookup>> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    let lock_path = suffixed(path, ".lock");
    loop {
        if let Some(file) = open_entry(path)? {
            return Ok(Some(Lookup::Hit(file)));
        }
        let lock = OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&lock_path)?;
        if try_lock(&lock)? {
            // The holder may have finished between the look and the lock.
            if let Some(file) = open_entry(path)? {
                remove_lock(&lock_path, &lock);
                return Ok(Some(Lookup::Hit(file)));
            }
            let temp = temp_path(path);
            let file = File::create(&temp)?;
            return Ok(Some(Lookup::Miss(Fill {
                path: path.to_path_buf(),
                temp,
                file: Some(file),
                lock_path,
                _lock: lock,
            })));
        }
        if cancel.load(Ordering::Relaxed) {
            return Ok(None);
        }
        thread::sleep(WAIT_POLL);
    }
}

/// Removes the lock file at `path` if it is still the one `lock` holds (not one a later reader made), so no
/// lock file outlives its use.
fn remove_lock(path: &Path, lock: &File) {
    use std::os::unix::fs::MetadataExt;
    if let (Ok(named), Ok(held)) = (fs::metadata(path), lock.metadata()) {
        if named.dev() == held.dev() && named.ino() == held.ino() {
            let _ = fs::remove_file(path);
        }
    }
}

fn open_entry(path: &Path) -> io::Result<Option<File>> {
    match File::open(path) {
        Ok(file) => {
            // The modification time is the use time that eviction orders by.
            let _ = file.set_modified(SystemTime::now());
            Ok(Some(file))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Takes the lock without waiting; false when another process (or reader) holds it.
fn try_lock(file: &File) -> io::Result<bool> {
    // SAFETY: flock(2) on a descriptor this File owns; no memory is touched.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    suffixed(path, &format!(".{}.{n}.part", std::process::id()))
}

/// A download in progress into the cache; holds the entry's lock until it is committed or dropped.
pub struct Fill {
    path: PathBuf,
    temp: PathBuf,
    file: Option<File>,
    lock_path: PathBuf,
    _lock: File,
}

impl Fill {
    /// Wraps `stream`: what is read from it is written to the download too. The returned [`Filled`] commits
    /// the entry if the stream was read to its end and every byte was written.
    pub fn tee(mut self, stream: Box<dyn Read + Send>) -> (Box<dyn Read + Send>, Filled) {
        let state = Arc::new(TeeState::default());
        let file = self.file.take().map(|f| BufWriter::with_capacity(1 << 20, f));
        let tee = Tee { stream, file, state: Arc::clone(&state) };
        (Box::new(tee), Filled { fill: self, state })
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        // Not committed: the download is incomplete or failed and must never be served.
        let _ = fs::remove_file(&self.temp);
        // Removed while still held: a reader waiting on it finds the entry (or downloads it, should this one
        // have failed); one arriving later finds the entry first. At worst a failure costs a second download.
        remove_lock(&self.lock_path, &self._lock);
    }
}

#[derive(Default)]
struct TeeState {
    /// The stream ended and every byte reached the file.
    complete: AtomicBool,
}

struct Tee {
    stream: Box<dyn Read + Send>,
    /// None once writing failed (a full disk): the shard is still read, just not cached.
    file: Option<BufWriter<File>>,
    state: Arc<TeeState>,
}

impl Read for Tee {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.stream.read(buf)?;
        if let Some(file) = &mut self.file {
            let written = if n == 0 { file.flush() } else { file.write_all(&buf[..n]) };
            match written {
                Ok(()) if n == 0 => {
                    self.file = None; // closes it
                    self.state.complete.store(true, Ordering::SeqCst);
                }
                Ok(()) => {}
                Err(_) => self.file = None,
            }
        }
        Ok(n)
    }
}

/// The other end of a [`Fill::tee`]: commits or discards the download.
pub struct Filled {
    fill: Fill,
    state: Arc<TeeState>,
}

impl Filled {
    /// After the shard was read to its end without error: renames the download into place (if the stream
    /// was read to its end and fully written), then evicts old entries to keep the cache within `settings`.
    pub fn commit(self, settings: &CacheSettings) {
        if !self.state.complete.load(Ordering::SeqCst) {
            return; // dropping `fill` removes the download
        }
        if fs::rename(&self.fill.temp, &self.fill.path).is_ok() {
            evict(settings, &self.fill.path);
        }
    }
}

/// Deletes least recently used entries (never `keep`) while the cache is larger than its size.
pub fn evict(settings: &CacheSettings, keep: &Path) {
    let mut entries = Vec::new();
    collect_entries(&settings.dir, &mut entries);
    let mut total: u64 = entries.iter().map(|(_, size, _)| size).sum();
    if total <= settings.size {
        return;
    }
    entries.sort_by_key(|(_, _, used)| *used);
    for (path, size, _) in entries {
        if total <= settings.size {
            break;
        }
        if path != keep && fs::remove_file(&path).is_ok() {
            total -= size;
        }
    }
}

fn collect_entries(dir: &Path, out: &mut Vec<(PathBuf, u64, SystemTime)>) {
    let Ok(listing) = fs::read_dir(dir) else { return };
    for entry in listing.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            collect_entries(&path, out);
            continue;
        }
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if meta.is_file() && !name.ends_with(".part") && !name.ends_with(".lock") {
            out.push((path, meta.len(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_through(path: &Path, data: &[u8], to_end: bool) -> Option<Filled> {
        let Some(Lookup::Miss(fill)) = lookup(path, &AtomicBool::new(false)).ok().flatten() else { return None };
        let (mut stream, filled) = fill.tee(Box::new(io::Cursor::new(data.to_vec())));
        let mut out = vec![0; data.len() / 2];
        stream.read_exact(&mut out).ok()?;
        if to_end {
            stream.read_to_end(&mut out).ok()?;
        }
        Some(filled)
    }

    #[test]
    fn an_entry_appears_only_when_committed_after_the_end() {
        let dir = std::env::temp_dir().join(format!("fastwds-cache-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let settings = CacheSettings { dir: dir.clone(), size: u64::MAX };
        let path = dir.join("s3/bkt/a.tar");
        // Read halfway, then committed: nothing appears.
        read_through(&path, b"0123456789", false).expect("miss").commit(&settings);
        assert!(!path.exists());
        // Read to the end but dropped (the shard failed): nothing appears.
        drop(read_through(&path, b"0123456789", true));
        assert!(!path.exists());
        read_through(&path, b"0123456789", true).expect("miss").commit(&settings);
        assert_eq!(fs::read(&path).ok().as_deref(), Some(&b"0123456789"[..]));
        assert!(matches!(lookup(&path, &AtomicBool::new(false)), Ok(Some(Lookup::Hit(_)))));
        let left: Vec<_> =
            fs::read_dir(dir.join("s3/bkt")).into_iter().flatten().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, ["a.tar"], "no .part or .lock file left");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn eviction_keeps_the_newest_within_the_size() {
        let dir = std::env::temp_dir().join(format!("fastwds-evict-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).ok();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let path = dir.join(name);
            fs::write(&path, [0u8; 100]).ok();
            let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 + i as u64);
            File::options().write(true).open(&path).and_then(|f| f.set_modified(time)).ok();
        }
        evict(&CacheSettings { dir: dir.clone(), size: 250 }, &dir.join("a"));
        assert!(dir.join("a").exists() && !dir.join("b").exists() && dir.join("c").exists());
        let _ = fs::remove_dir_all(&dir);
    }
}
