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
//! however many clients poll, each answer is computed at most ten times a second. At most
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

type Key = (&'static str, String);

struct Entry {
    version: Version,
    at: Instant,
    body: Bytes,
}

impl Entry {
    fn serves(&self, version: Version) -> bool {
        self.version == version || (self.version.1 == version.1 && self.at.elapsed() < REUSE_FOR)
    }
}

#[derive(Default)]
pub struct ResponseCache {
    entries: Mutex<HashMap<Key, Entry>>,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

impl ResponseCache {
    pub fn get(&self, path: &'static str, query: &str, version: Version) -> Option<Bytes> {
        let entries = self.entries.lock().expect("cache lock");
        let hit = entries
            .get(&(path, query.to_string()))
            .filter(|e| e.serves(version))
            .map(|e| e.body.clone());
        let counter = if hit.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        hit
    }

    pub fn put(&self, path: &'static str, query: String, version: Version, body: Bytes) {
        let mut entries = self.entries.lock().expect("cache lock");
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&(path, query.clone())) {
            entries.retain(|_, e| e.serves(version));
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        let at = Instant::now();
        entries.insert((path, query), Entry { version, at, body });
    }

    pub fn len(&self) -> usize {
        self.entries.lock().expect("cache lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_with_their_version() {
        let cache = ResponseCache::default();
        cache.put("/a", "q".into(), (1, 0), Bytes::from_static(b"one"));
        assert_eq!(cache.get("/a", "q", (1, 0)).as_deref(), Some(&b"one"[..]));
        // Briefly reused after a change of the view, never after an acknowledgement.
        assert!(cache.get("/a", "q", (2, 0)).is_some());
        assert_eq!(cache.get("/a", "q", (1, 1)), None);
        assert_eq!(cache.get("/a", "other", (1, 0)), None);
        std::thread::sleep(REUSE_FOR);
        assert_eq!(cache.get("/a", "q", (2, 0)), None);
        assert!(cache.get("/a", "q", (1, 0)).is_some());
        assert_eq!(cache.hits.load(Ordering::Relaxed), 3);
        assert_eq!(cache.misses.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn size_is_bounded() {
        let cache = ResponseCache::default();
        for i in 0..MAX_ENTRIES * 3 {
            cache.put("/a", i.to_string(), (i as u64 / 100, 0), Bytes::new());
            assert!(cache.len() <= MAX_ENTRIES);
        }
        // Full of one version: the newest entry is still there.
        let last = MAX_ENTRIES * 3 - 1;
        let version = (last as u64 / 100, 0);
        assert!(cache.get("/a", &last.to_string(), version).is_some());
    }
}
