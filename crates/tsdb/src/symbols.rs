//! The head's string interner: every label name and value is stored once and shared by
//! every series (and query result) that carries it.

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::Arc;

use foldhash::fast::RandomState;
use m3query_model::{Label, LabelPairs, Labels};
use parking_lot::Mutex;

const SHARDS: usize = 16;

/// A sharded set of `Arc<str>`.
#[derive(Debug)]
pub(crate) struct Symbols {
    shards: Box<[Mutex<StrSet>]>,
    hasher: RandomState,
}

/// Seeded per process, like the head's series map: label strings come from writers, and
/// foldhash hashes short strings several times faster than SipHash.
type StrSet = HashSet<Arc<str>, RandomState>;

impl Default for Symbols {
    fn default() -> Self {
        Symbols {
            shards: (0..SHARDS).map(|_| Mutex::new(StrSet::default())).collect(),
            hasher: RandomState::default(),
        }
    }
}

impl Symbols {
    fn shard(&self, s: &str) -> &Mutex<StrSet> {
        // Bits the sets themselves do not use (their buckets take the low bits, their tags
        // the top 7), in case a set's hasher ever shares this one's seed.
        &self.shards[((self.hasher.hash_one(s) >> 32) as usize) % SHARDS]
    }

    /// The shared copy of `s`.
    pub(crate) fn intern(&self, s: &Arc<str>) -> Arc<str> {
        let mut set = self.shard(s).lock();
        if let Some(x) = set.get(&**s) {
            return x.clone();
        }
        set.insert(s.clone());
        s.clone()
    }

    /// The shared copy of `s`, allocated on first use.
    pub(crate) fn intern_str(&self, s: &str) -> Arc<str> {
        let mut set = self.shard(s).lock();
        if let Some(x) = set.get(s) {
            return x.clone();
        }
        let a: Arc<str> = Arc::from(s);
        set.insert(a.clone());
        a
    }

    /// `pairs` as a label set of interned strings.
    pub(crate) fn intern_pairs(&self, pairs: LabelPairs<'_>) -> Labels {
        let v: Vec<Label> = pairs
            .as_slice()
            .iter()
            .map(|&(n, v)| Label {
                name: self.intern_str(n),
                value: self.intern_str(v),
            })
            .collect();
        Labels::from_sorted(v)
    }

    /// A copy of `labels` whose strings are the interned ones.
    pub(crate) fn intern_labels(&self, labels: &Labels) -> Labels {
        let v: Vec<Label> = labels
            .iter()
            .map(|l| Label {
                name: self.intern(&l.name),
                value: self.intern(&l.value),
            })
            .collect();
        Labels::from_sorted(v)
    }

    /// Drops strings no series uses any more (only the interner holds them).
    pub(crate) fn gc(&self) -> usize {
        let mut dropped = 0;
        for s in self.shards.iter() {
            let mut set = s.lock();
            let before = set.len();
            set.retain(|a| Arc::strong_count(a) > 1);
            dropped += before - set.len();
            set.shrink_to_fit();
        }
        dropped
    }

    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interned_labels_share_strings_and_gc_frees_unused() {
        let s = Symbols::default();
        let a = s.intern_labels(&Labels::from_pairs([("job", "api"), ("i", "1")]));
        let b = s.intern_labels(&Labels::from_pairs([("job", "api"), ("i", "2")]));
        let ja = &a.iter().find(|l| &*l.name == "job").expect("job").value;
        let jb = &b.iter().find(|l| &*l.name == "job").expect("job").value;
        assert!(Arc::ptr_eq(ja, jb));
        assert_eq!(s.len(), 5); // job, api, i, 1, 2
        drop(b);
        assert_eq!(s.gc(), 1); // "2"
        assert_eq!(s.len(), 4);
    }
}
