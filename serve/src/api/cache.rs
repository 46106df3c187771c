//! Serialised answers, kept until the data under them changes, so a repeated poll is a map lookup.
//!
//! ```text
//!   (path, normalised query) ─▶ { version, JSON bytes }     version = (view changes, acknowledgements)
//! ```
//!
//! An entry is valid for the version it was computed at: the first request after a change
//! recomputes it, every later one until the next change gets the same bytes. A live view changes
//! hundreds of times a second (every batch and every watermark step), so an entry younger than
//! [`REUSE_FOR`] is also served after a change of the view (never after an acknowledgement):
//! however many clients poll, each answer is computed about ten times a second. Such an entry is
//! served whatever the view's version, so [`ResponseCache::recent`] finds it without the view's
//! lock (which the dataflow's writes and other answers' computations hold). At most
//! [`MAX_ENTRIES`] are kept; when full, entries of older versions go first, then everything.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyper::body::Bytes;

/// Bounds the memory of the cache: each entry is one bounded response.
pub const MAX_ENTRIES: usize = 256;

/// How long an answer may outlive a change of the view.
pub const REUSE_FOR: Duration = Duration::from_millis(100);

/// What an answer was computed from: the view's change counter and the acknowledgement generation.
pub type Version = (u64, u64);

/// An endpoint's path and its normalised query (`query::Query::normalised`).
pub type Key = (&'static str, String);

struct Entry {
    version: Version,
    at: Instant,
    body: Bytes,
}

impl Entry {
    fn serves(&self, version: Version) -> bool {
        self.version == version || self.recent(version.1)
    }

    /// Young enough to serve at any version of the view with the acknowledgement generation `acks`.
    fn recent(&self, acks: u64) -> bool {
        self.version.1 == acks && self.at.elapsed() < REUSE_FOR
    }
}

#[derive(Default)]
pub struct ResponseCache {
    entries: Mutex<HashMap<Key, Entry>>,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

impl ResponseCache {
    /// The answer for `key` if it was computed less than [`REUSE_FOR`] ago at acknowledgement
    /// generation `acks`: what [`ResponseCache::get`] would return at any version of the view, so
    /// the caller need not read the view's version. Counts hits only; on `None` ask `get`.
    pub fn recent(&self, key: &Key, acks: u64) -> Option<Bytes> {
        let entries = self.entries.lock().expect("cache lock");
        let hit = entries
            .get(key)
            .filter(|e| e.recent(acks))
            .map(|e| e.body.clone());
        drop(entries);
        if hit.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    /// The answer for `key` if it serves `version`: computed at it, or recently (see
    /// [`ResponseCache::recent`]).
    pub fn get(&self, key: &Key, version: Version) -> Option<Bytes> {
        let entries = self.entries.lock().expect("cache lock");
        let hit = entries
            .get(key)
            .filter(|e| e.serves(version))
            .map(|e| e.body.clone());
        drop(entries);
        let counter = if hit.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        hit
    }

    pub fn put(&self, key: Key, version: Version, body: Bytes) {
        let mut entries = self.entries.lock().expect("cache lock");
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&key) {
            entries.retain(|_, e| e.serves(version));
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        let at = Instant::now();
        entries.insert(key, Entry { version, at, body });
    }

    pub fn len(&self) -> usize {
        self.entries.lock().expect("cache lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(path: &'static str, query: &str) -> Key {
        (path, query.to_string())
    }

    #[test]
    fn entries_expire_with_their_version() {
        let cache = ResponseCache::default();
        cache.put(key("/a", "q"), (1, 0), Bytes::from_static(b"one"));
        assert_eq!(
            cache.get(&key("/a", "q"), (1, 0)).as_deref(),
            Some(&b"one"[..])
        );
        // Briefly reused after a change of the view, never after an acknowledgement.
        assert!(cache.get(&key("/a", "q"), (2, 0)).is_some());
        assert_eq!(cache.get(&key("/a", "q"), (1, 1)), None);
        assert_eq!(cache.get(&key("/a", "other"), (1, 0)), None);
        std::thread::sleep(REUSE_FOR);
        assert_eq!(cache.get(&key("/a", "q"), (2, 0)), None);
        assert!(cache.get(&key("/a", "q"), (1, 0)).is_some());
        assert_eq!(cache.hits.load(Ordering::Relaxed), 3);
        assert_eq!(cache.misses.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn recent_entries_are_found_without_the_version() {
        let cache = ResponseCache::default();
        cache.put(key("/a", "q"), (7, 2), Bytes::from_static(b"one"));
        assert_eq!(
            cache.recent(&key("/a", "q"), 2).as_deref(),
            Some(&b"one"[..])
        );
        assert_eq!(
            cache.recent(&key("/a", "q"), 3),
            None,
            "another acknowledgement generation"
        );
        assert_eq!(cache.recent(&key("/a", "other"), 2), None);
        std::thread::sleep(REUSE_FOR);
        // Too old to serve any version: only the one it was computed at, which `get` checks.
        assert_eq!(cache.recent(&key("/a", "q"), 2), None);
        assert!(cache.get(&key("/a", "q"), (7, 2)).is_some());
        assert_eq!(cache.hits.load(Ordering::Relaxed), 2);
        assert_eq!(
            cache.misses.load(Ordering::Relaxed),
            0,
            "recent counts hits only"
        );
    }

    #[test]
    fn size_is_bounded() {
        let cache = ResponseCache::default();
        for i in 0..MAX_ENTRIES * 3 {
            cache.put(key("/a", &i.to_string()), (i as u64 / 100, 0), Bytes::new());
            assert!(cache.len() <= MAX_ENTRIES);
        }
        // Full of one version: the newest entry is still there.
        let last = MAX_ENTRIES * 3 - 1;
        let version = (last as u64 / 100, 0);
        assert!(cache.get(&key("/a", &last.to_string()), version).is_some());
    }
}
