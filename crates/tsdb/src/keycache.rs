//! Head series by a writer's raw encoding of their labels.
//!
//! A remote-write sender encodes a series' labels the same way in every request, and most
//! requests carry series the head already has. Finding the series by those bytes (one hash
//! and one comparison of the bytes) skips decoding the labels, checking them, hashing the
//! pairs and comparing them with the series' labels, which is most of ingest's cost per
//! series. Prometheus's scrape loop keeps series refs by the scraped line for the same
//! reason.
//!
//! An entry is only a hint: the head may have dropped the series since (garbage collection
//! after a block is cut, or a failed transaction's cleanup), so users check the series is
//! still the head's under its shard lock before they append to it ([`crate::head::Head`]'s
//! `pin_if_live`). Entries are added after a commit, for series still in the head, and
//! dropped with their series when the head is truncated, so the cache holds about one entry
//! per head series and sender encoding.

use std::hash::BuildHasher;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::head::{FastMap, MemSeries};

const SHARDS: usize = 16;

/// One remembered key.
#[derive(Debug)]
struct Entry {
    key: Box<[u8]>,
    series: Arc<MemSeries>,
    /// The series' label hash: which head shard holds it.
    label_hash: u64,
}

/// Entries by key hash; the rare other keys with the same hash in `conflicts`.
#[derive(Debug, Default)]
struct Shard {
    main: FastMap<u64, Entry>,
    conflicts: FastMap<u64, Vec<Entry>>,
}

impl Shard {
    fn get(&self, h: u64, key: &[u8]) -> Option<&Entry> {
        match self.main.get(&h) {
            Some(e) if *e.key == *key => Some(e),
            Some(_) => self
                .conflicts
                .get(&h)
                .and_then(|v| v.iter().find(|e| *e.key == *key)),
            None => None,
        }
    }

    fn len(&self) -> usize {
        self.main.len() + self.conflicts.values().map(Vec::len).sum::<usize>()
    }

    fn retain(&mut self, keep: &mut impl FnMut(&MemSeries) -> bool) {
        self.conflicts.retain(|_, v| {
            v.retain(|e| keep(&e.series));
            !v.is_empty()
        });
        let conflicts = &mut self.conflicts;
        let mut promote = Vec::new();
        self.main.retain(|h, e| {
            let k = keep(&e.series);
            if !k && conflicts.contains_key(h) {
                promote.push(*h);
            }
            k
        });
        for h in promote {
            if let Some(v) = self.conflicts.get_mut(&h)
                && let Some(e) = v.pop()
            {
                if v.is_empty() {
                    self.conflicts.remove(&h);
                }
                self.main.insert(h, e);
            }
        }
    }
}

/// Head series by raw label bytes.
#[derive(Debug)]
pub(crate) struct KeyCache {
    shards: Box<[RwLock<Shard>]>,
    hasher: foldhash::fast::RandomState,
}

impl Default for KeyCache {
    fn default() -> Self {
        KeyCache {
            shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl KeyCache {
    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    fn shard(&self, h: u64) -> &RwLock<Shard> {
        // The low bits pick the map slot inside the shard; the high ones pick the shard.
        &self.shards[(h >> 58) as usize % SHARDS]
    }

    /// The series remembered for `key` and its label hash. It may have left the head since.
    pub(crate) fn get(&self, key: &[u8]) -> Option<(Arc<MemSeries>, u64)> {
        let h = self.hash(key);
        let shard = self.shard(h).read();
        shard.get(h, key).map(|e| (e.series.clone(), e.label_hash))
    }

    /// Remembers `series` (label hash `label_hash`) for `key`, replacing what `key` named.
    /// Takes the key owned: callers collect it for after their commit.
    pub(crate) fn insert(
        &self,
        key: impl Into<Box<[u8]>>,
        series: Arc<MemSeries>,
        label_hash: u64,
    ) {
        let key = key.into();
        let h = self.hash(&key);
        let mut shard = self.shard(h).write();
        let same = |e: &Entry| e.key == key;
        match shard.main.get_mut(&h) {
            None => {
                shard.main.insert(
                    h,
                    Entry {
                        key,
                        series,
                        label_hash,
                    },
                );
            }
            Some(e) if same(e) => (e.series, e.label_hash) = (series, label_hash),
            Some(_) => {
                let v = shard.conflicts.entry(h).or_default();
                match v.iter_mut().find(|e| same(e)) {
                    Some(e) => (e.series, e.label_hash) = (series, label_hash),
                    None => v.push(Entry {
                        key,
                        series,
                        label_hash,
                    }),
                }
            }
        }
    }

    /// Keeps the entries whose series `keep` accepts.
    pub(crate) fn retain(&self, mut keep: impl FnMut(&MemSeries) -> bool) {
        for s in self.shards.iter() {
            s.write().retain(&mut keep);
        }
    }

    /// Entries held.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    pub(crate) fn clear(&self) {
        for s in self.shards.iter() {
            *s.write() = Shard::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::Head;
    use m3query_model::Labels;

    fn series(head: &Head, name: &str) -> (Arc<MemSeries>, u64) {
        let l = Labels::from_pairs([("__name__", name)]);
        let h = l.stable_hash();
        let (s, _) = head.get_or_create(crate::head::SeriesKey::Labels(&l), h, false, |_| {});
        (s, h)
    }

    #[test]
    fn keys_name_their_series_until_dropped() {
        let head = Head::new(7_200_000, 0, i64::MIN);
        let c = KeyCache::default();
        let (a, ha) = series(&head, "a");
        let (b, hb) = series(&head, "b");
        c.insert(*b"ka", a.clone(), ha);
        c.insert(*b"kb", b.clone(), hb);
        c.insert(*b"kb2", b.clone(), hb);
        assert!(c.get(b"k").is_none());
        let (got, h) = c.get(b"ka").expect("ka");
        assert!(Arc::ptr_eq(&got, &a) && h == ha);
        assert_eq!(c.len(), 3);
        // A key names one series: inserting it again replaces that.
        c.insert(*b"ka", b.clone(), hb);
        assert!(Arc::ptr_eq(&c.get(b"ka").expect("ka").0, &b));
        assert_eq!(c.len(), 3);
        c.retain(|s| s.r != b.r);
        assert_eq!(c.len(), 0);
        c.insert(*b"ka", a.clone(), ha);
        c.clear();
        assert!(c.get(b"ka").is_none());
    }

    #[test]
    fn colliding_key_hashes_keep_apart() {
        let head = Head::new(7_200_000, 0, i64::MIN);
        let (a, ha) = series(&head, "a");
        let (b, hb) = series(&head, "b");
        let mut s = Shard::default();
        for (k, se, h) in [(&b"x"[..], &a, ha), (&b"y"[..], &b, hb)] {
            let e = Entry {
                key: k.into(),
                series: se.clone(),
                label_hash: h,
            };
            // Both under hash 7, as a collision would put them.
            match s.main.get(&7) {
                None => {
                    s.main.insert(7, e);
                }
                Some(_) => s.conflicts.entry(7).or_default().push(e),
            }
        }
        assert!(Arc::ptr_eq(&s.get(7, b"x").expect("x").series, &a));
        assert!(Arc::ptr_eq(&s.get(7, b"y").expect("y").series, &b));
        // Dropping the main entry moves the conflict up.
        s.retain(&mut |m: &MemSeries| m.r != a.r);
        assert!(s.get(7, b"x").is_none());
        assert!(Arc::ptr_eq(&s.get(7, b"y").expect("y").series, &b));
        assert!(s.conflicts.is_empty());
    }
}
