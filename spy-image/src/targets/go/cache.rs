//! One analysis per executable file, however many processes run it.
//!
//! uprobes live on inodes, and every container of one image runs the same
//! file from a shared layer: the entry is found by (device, inode), and
//! holds only while the content identity matches too (size, mtime and
//! ctime: a file rewritten in place keeps its inode, and whoever rewrote it
//! may set mtime back, but not ctime), so such a file is analysed again. Failures are cached as well: the common answer for a process is
//! `NotGo`, and asking again would read the whole file again.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use super::{analyze_bytes, io_error, read_bounded, GoAnalysisError, GoBinary};

/// Entries kept before the oldest is dropped: a node runs at most a few
/// hundred distinct executables.
pub const DEFAULT_CAPACITY: usize = 1024;

type Outcome = Result<Arc<GoBinary>, GoAnalysisError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileKey {
    dev: u64,
    ino: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    size: u64,
    mtime_s: i64,
    mtime_ns: i64,
    ctime_s: i64,
    ctime_ns: i64,
}

struct Entry {
    fingerprint: Fingerprint,
    /// Filled once; other callers for the same file wait on it.
    outcome: Arc<OnceLock<Outcome>>,
    inserted: u64,
}

/// Hit and miss counters of an [`AnalysisCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Look-ups answered from the cache.
    pub hits: u64,
    /// Analyses actually run.
    pub analyses: u64,
    pub entries: usize,
}

/// Analyses keyed by (device, inode); safe to share between threads.
pub struct AnalysisCache {
    entries: Mutex<HashMap<FileKey, Entry>>,
    capacity: usize,
    clock: AtomicU64,
    hits: AtomicU64,
    analyses: AtomicU64,
}

impl Default for AnalysisCache {
    fn default() -> Self {
        AnalysisCache::new(DEFAULT_CAPACITY)
    }
}

impl AnalysisCache {
    pub fn new(capacity: usize) -> Self {
        AnalysisCache {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            clock: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            analyses: AtomicU64::new(0),
        }
    }

    /// The analysis of the file at `path` (e.g. `/proc/PID/root/usr/bin/app`
    /// or `/proc/PID/exe`), from the cache when that file was seen before.
    pub fn analyze(&self, path: &Path) -> Result<Arc<GoBinary>, GoAnalysisError> {
        // Open first and key by the opened file's metadata, so the key and
        // the bytes analysed belong to the same file.
        let file = std::fs::File::open(path).map_err(|e| io_error(path, e))?;
        let meta = file.metadata().map_err(|e| io_error(path, e))?;
        let key = FileKey { dev: meta.dev(), ino: meta.ino() };
        let fingerprint = Fingerprint {
            size: meta.size(),
            mtime_s: meta.mtime(),
            mtime_ns: meta.mtime_nsec(),
            ctime_s: meta.ctime(),
            ctime_ns: meta.ctime_nsec(),
        };
        let cell = {
            let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
            match entries.get(&key) {
                Some(entry) if entry.fingerprint == fingerprint => Arc::clone(&entry.outcome),
                _ => {
                    if entries.len() >= self.capacity && !entries.contains_key(&key) {
                        evict_oldest(&mut entries);
                    }
                    let outcome = Arc::new(OnceLock::new());
                    entries.insert(
                        key,
                        Entry {
                            fingerprint,
                            outcome: Arc::clone(&outcome),
                            inserted: self.clock.fetch_add(1, Ordering::Relaxed),
                        },
                    );
                    outcome
                }
            }
        };
        let mut ran = false;
        let outcome = cell.get_or_init(|| {
            ran = true;
            self.analyses.fetch_add(1, Ordering::Relaxed);
            read_bounded(file, path).and_then(|data| analyze_bytes(&data)).map(Arc::new)
        });
        if !ran {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        outcome.clone()
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            analyses: self.analyses.load(Ordering::Relaxed),
            entries: self.entries.lock().unwrap_or_else(PoisonError::into_inner).len(),
        }
    }
}

fn evict_oldest(entries: &mut HashMap<FileKey, Entry>) {
    if let Some(oldest) = entries.iter().min_by_key(|(_, e)| e.inserted).map(|(k, _)| *k) {
        entries.remove(&oldest);
    }
}
