//! Label sets.
//!
//! A [`Labels`] is an immutable, sorted (by name) list of [`Label`]s behind one `Arc`, so a
//! clone is one atomic increment and the same set can be shared by the index, the head and every
//! query result that carries it. Names and values are `Arc<str>` so the storage engine can intern
//! them: the thousands of series with `job="api"` share one allocation for `api`.

use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

/// The label that holds a series' metric name.
pub const METRIC_NAME: &str = "__name__";

/// One label pair. Ordered by name, then value, as Prometheus orders them.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label {
    /// The label's name (`__name__` for the metric name).
    pub name: Arc<str>,
    /// The label's value, never empty in a stored set.
    pub value: Arc<str>,
}

impl Label {
    /// A pair from anything that converts to shared strings.
    pub fn new(name: impl Into<Arc<str>>, value: impl Into<Arc<str>>) -> Self {
        Label {
            name: name.into(),
            value: value.into(),
        }
    }
}

impl fmt::Debug for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={:?}", self.name, &*self.value)
    }
}

/// A sorted set of labels with unique names. Empty values are never stored: Prometheus treats
/// a label with an empty value as absent, and so do the constructors here.
///
/// Ordering and equality are Prometheus's `labels.Compare`: label by label, name then value,
/// then the shorter set first.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels(Arc<[Label]>);

impl Default for Labels {
    fn default() -> Self {
        Labels::empty()
    }
}

/// A fixed-seed hasher, so label hashes are stable within and across processes (they select
/// shards and group series; nothing persists them, but reproducible runs are easier to debug).
fn stable_hasher() -> impl Hasher {
    foldhash::fast::FixedState::with_seed(0x6d33_7175_6572_7931).build_hasher()
}

impl Labels {
    /// The empty label set.
    pub fn empty() -> Self {
        Labels(Arc::from(Vec::new()))
    }

    /// Builds a label set from pairs in any order; later duplicates win and empty values are
    /// dropped. Use [`Labels::try_from_pairs`] where duplicates must be an error.
    pub fn from_pairs<N, V>(pairs: impl IntoIterator<Item = (N, V)>) -> Self
    where
        N: Into<Arc<str>>,
        V: Into<Arc<str>>,
    {
        let mut v: Vec<Label> = pairs.into_iter().map(|(n, v)| Label::new(n, v)).collect();
        // Stable sort keeps input order among equal names, so dedup can keep the last one.
        v.sort_by(|a, b| a.name.cmp(&b.name));
        let mut out: Vec<Label> = Vec::with_capacity(v.len());
        for l in v {
            match out.last_mut() {
                Some(last) if last.name == l.name => *last = l,
                _ => out.push(l),
            }
        }
        out.retain(|l| !l.value.is_empty());
        Labels(Arc::from(out))
    }

    /// Builds a label set, failing on a duplicate or empty label name. Empty values are dropped.
    pub fn try_from_pairs<N, V>(pairs: impl IntoIterator<Item = (N, V)>) -> Result<Self, String>
    where
        N: Into<Arc<str>>,
        V: Into<Arc<str>>,
    {
        let mut v: Vec<Label> = pairs.into_iter().map(|(n, v)| Label::new(n, v)).collect();
        v.sort();
        for w in v.windows(2) {
            if w[0].name == w[1].name {
                return Err(format!("duplicate label name {:?}", &*w[0].name));
            }
        }
        if v.iter().any(|l| l.name.is_empty()) {
            return Err("empty label name".to_string());
        }
        v.retain(|l| !l.value.is_empty());
        Ok(Labels(Arc::from(v)))
    }

    /// Wraps labels that are already sorted by name with unique names and non-empty values.
    /// Debug builds check the invariant.
    pub fn from_sorted(v: Vec<Label>) -> Self {
        debug_assert!(
            v.windows(2).all(|w| w[0].name < w[1].name),
            "labels not sorted/unique"
        );
        debug_assert!(v.iter().all(|l| !l.value.is_empty()), "empty label value");
        Labels(Arc::from(v))
    }

    /// The number of labels.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set has no labels.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The labels in name order.
    pub fn iter(&self) -> std::slice::Iter<'_, Label> {
        self.0.iter()
    }

    /// The labels in name order, as a slice.
    pub fn as_slice(&self) -> &[Label] {
        &self.0
    }

    /// The value of label `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        // Sets are small (typically < 20): a linear scan beats binary search on cache behaviour.
        self.0.iter().find(|l| &*l.name == name).map(|l| &*l.value)
    }

    /// The value of `__name__`, if present.
    pub fn metric_name(&self) -> Option<&str> {
        self.get(METRIC_NAME)
    }

    /// Whether label `name` is present.
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// A stable 64-bit hash of the whole set.
    pub fn stable_hash(&self) -> u64 {
        let mut h = stable_hasher();
        for l in self.0.iter() {
            h.write(l.name.as_bytes());
            h.write_u8(0xff);
            h.write(l.value.as_bytes());
            h.write_u8(0xff);
        }
        h.finish()
    }

    /// Hash of only the labels named in `names` (which need not be sorted): the grouping key
    /// of `by (...)` and `on (...)`.
    pub fn hash_for_labels(&self, names: &[impl AsRef<str>]) -> u64 {
        let mut h = stable_hasher();
        for l in self.0.iter() {
            if names.iter().any(|n| n.as_ref() == &*l.name) {
                h.write(l.name.as_bytes());
                h.write_u8(0xff);
                h.write(l.value.as_bytes());
                h.write_u8(0xff);
            }
        }
        h.finish()
    }

    /// Hash of every label except `__name__` and those named in `names`: the grouping key of
    /// `without (...)` and `ignoring (...)`.
    pub fn hash_without_labels(&self, names: &[impl AsRef<str>]) -> u64 {
        let mut h = stable_hasher();
        for l in self.0.iter() {
            if &*l.name == METRIC_NAME || names.iter().any(|n| n.as_ref() == &*l.name) {
                continue;
            }
            h.write(l.name.as_bytes());
            h.write_u8(0xff);
            h.write(l.value.as_bytes());
            h.write_u8(0xff);
        }
        h.finish()
    }

    /// A new set holding only the labels named in `names`.
    pub fn keep(&self, names: &[impl AsRef<str>]) -> Labels {
        Labels(
            self.0
                .iter()
                .filter(|l| names.iter().any(|n| n.as_ref() == &*l.name))
                .cloned()
                .collect(),
        )
    }

    /// A new set without `__name__` and the labels named in `names`.
    pub fn without(&self, names: &[impl AsRef<str>]) -> Labels {
        Labels(
            self.0
                .iter()
                .filter(|l| {
                    &*l.name != METRIC_NAME && !names.iter().any(|n| n.as_ref() == &*l.name)
                })
                .cloned()
                .collect(),
        )
    }

    /// A new set without `__name__`; returns a cheap clone when there is none.
    pub fn drop_metric_name(&self) -> Labels {
        if !self.has(METRIC_NAME) {
            return self.clone();
        }
        Labels(
            self.0
                .iter()
                .filter(|l| &*l.name != METRIC_NAME)
                .cloned()
                .collect(),
        )
    }

    /// A builder seeded with this set, for edits.
    pub fn builder(&self) -> LabelsBuilder {
        LabelsBuilder::new(self.clone())
    }

    /// True when this set and `other` agree on every label named in `names`.
    pub fn equal_on(&self, other: &Labels, names: &[impl AsRef<str>]) -> bool {
        names
            .iter()
            .all(|n| self.get(n.as_ref()) == other.get(n.as_ref()))
    }

    /// Size in bytes of names and values, for memory accounting.
    pub fn byte_size(&self) -> usize {
        self.0
            .iter()
            .map(|l| l.name.len() + l.value.len())
            .sum::<usize>()
    }

    /// Validates label names and values as a write path must: non-empty names, valid UTF-8 is
    /// guaranteed by `str`, names unique (a `Labels` is unique by construction).
    pub fn validate(&self) -> Result<(), String> {
        for l in self.0.iter() {
            if l.name.is_empty() {
                return Err("empty label name".into());
            }
        }
        Ok(())
    }
}

impl fmt::Display for Labels {
    /// Prometheus's `labels.String()`: `{a="b", c="d"}`, values quoted and escaped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, l) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            if is_valid_legacy_metric_name(&l.name) {
                f.write_str(&l.name)?;
            } else {
                write_go_quoted(f, &l.name)?;
            }
            f.write_str("=")?;
            write_go_quoted(f, &l.value)?;
        }
        f.write_str("}")
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Writes `s` in double quotes with Go's `strconv.Quote` escapes for the characters that occur
/// in label values.
fn write_go_quoted(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    use fmt::Write;
    f.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c if (c as u32) < 0x20 || c as u32 == 0x7f => write!(f, "\\x{:02x}", c as u32)?,
            c => f.write_char(c)?,
        }
    }
    f.write_char('"')
}

/// A label set borrowed as name/value pairs, for write paths that look series up without
/// building a [`Labels`] (and its `Arc`s) per request: sorted by name, names unique and
/// non-empty, values non-empty — exactly the pairs a `Labels` would hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabelPairs<'a>(&'a [(&'a str, &'a str)]);

impl<'a> LabelPairs<'a> {
    /// Checks the invariant; `Err` says what is wrong.
    pub fn new(pairs: &'a [(&'a str, &'a str)]) -> Result<Self, String> {
        for w in pairs.windows(2) {
            if w[0].0 >= w[1].0 {
                return Err(if w[0].0 == w[1].0 {
                    format!("duplicate label name {:?}", w[0].0)
                } else {
                    "labels not sorted by name".to_string()
                });
            }
        }
        if pairs.iter().any(|(n, _)| n.is_empty()) {
            return Err("empty label name".to_string());
        }
        if pairs.iter().any(|(_, v)| v.is_empty()) {
            return Err("empty label value".to_string());
        }
        Ok(LabelPairs(pairs))
    }

    /// Wraps pairs the caller has already checked (as [`LabelPairs::new`] would), to spare
    /// a write path checking every series twice. Debug builds check the invariant.
    pub fn from_checked(pairs: &'a [(&'a str, &'a str)]) -> Self {
        debug_assert!(Self::new(pairs).is_ok(), "unchecked label pairs");
        LabelPairs(pairs)
    }

    /// The pairs, sorted by name.
    pub fn as_slice(&self) -> &'a [(&'a str, &'a str)] {
        self.0
    }

    /// The number of pairs.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The same set as a [`Labels`].
    pub fn to_labels(&self) -> Labels {
        Labels(self.0.iter().map(|&(n, v)| Label::new(n, v)).collect())
    }

    /// Equals [`Labels::stable_hash`] of [`LabelPairs::to_labels`].
    pub fn stable_hash(&self) -> u64 {
        let mut h = stable_hasher();
        for (n, v) in self.0 {
            h.write(n.as_bytes());
            h.write_u8(0xff);
            h.write(v.as_bytes());
            h.write_u8(0xff);
        }
        h.finish()
    }

    /// Whether `labels` holds exactly these pairs.
    pub fn eq_labels(&self, labels: &Labels) -> bool {
        labels.len() == self.0.len()
            && labels.iter().zip(self.0).all(|(l, (n, v))| {
                short_eq(l.name.as_bytes(), n.as_bytes())
                    && short_eq(l.value.as_bytes(), v.as_bytes())
            })
    }
}

/// `a == b`, inline for the short strings labels mostly are: a write looks every series of
/// a request up by comparing its pairs with the stored set, and a `memcmp` call per name
/// and value cost more than the comparing.
#[inline]
fn short_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    // Overlapping first and last words cover lengths up to twice the word.
    fn word<const W: usize>(s: &[u8], at: usize) -> [u8; W] {
        let mut w = [0u8; W];
        w.copy_from_slice(&s[at..at + W]);
        w
    }
    match n {
        0 => true,
        1..=3 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        4..=7 => word::<4>(a, 0) == word::<4>(b, 0) && word::<4>(a, n - 4) == word::<4>(b, n - 4),
        8..=16 => word::<8>(a, 0) == word::<8>(b, 0) && word::<8>(a, n - 8) == word::<8>(b, n - 8),
        _ => a == b,
    }
}

impl<'a> IntoIterator for &'a Labels {
    type Item = &'a Label;
    type IntoIter = std::slice::Iter<'a, Label>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Edits a label set: set, delete, keep; `labels()` sorts once at the end.
#[derive(Clone, Debug)]
pub struct LabelsBuilder {
    base: Labels,
    del: Vec<Arc<str>>,
    add: Vec<Label>,
}

impl LabelsBuilder {
    /// A builder starting from `base`, with no edits.
    pub fn new(base: Labels) -> Self {
        LabelsBuilder {
            base,
            del: Vec::new(),
            add: Vec::new(),
        }
    }

    /// Sets `name` to `value`; an empty value deletes the label, as in Prometheus.
    pub fn set(&mut self, name: impl Into<Arc<str>>, value: impl Into<Arc<str>>) -> &mut Self {
        let name = name.into();
        let value = value.into();
        if value.is_empty() {
            return self.del(&name);
        }
        self.del.retain(|d| *d != name);
        if let Some(a) = self.add.iter_mut().find(|a| a.name == name) {
            a.value = value;
        } else {
            self.add.push(Label { name, value });
        }
        self
    }

    /// Deletes label `name` (a no-op if absent).
    pub fn del(&mut self, name: &str) -> &mut Self {
        self.add.retain(|a| &*a.name != name);
        // Only a label of `base` needs deleting, and its own name is shared, not copied:
        // queries delete `__name__` from every series they transform.
        if !self.del.iter().any(|d| &**d == name)
            && let Some(l) = self.base.iter().find(|l| &*l.name == name)
        {
            self.del.push(l.name.clone());
        }
        self
    }

    /// Deletes every label not named in `names`.
    pub fn keep(&mut self, names: &[impl AsRef<str>]) -> &mut Self {
        let base = self.base.clone();
        for l in base.iter() {
            if !names.iter().any(|n| n.as_ref() == &*l.name) {
                self.del(&l.name);
            }
        }
        self.add
            .retain(|a| names.iter().any(|n| n.as_ref() == &*a.name));
        self
    }

    /// The current value of `name` with edits applied.
    pub fn get(&self, name: &str) -> Option<&str> {
        if let Some(a) = self.add.iter().find(|a| &*a.name == name) {
            return Some(&a.value);
        }
        if self.del.iter().any(|d| &**d == name) {
            return None;
        }
        self.base.get(name)
    }

    /// The edited set, sorted; `base` itself when nothing was edited.
    pub fn labels(&self) -> Labels {
        if self.del.is_empty() && self.add.is_empty() {
            return self.base.clone();
        }
        let mut out: Vec<Label> = self
            .base
            .iter()
            .filter(|l| !self.del.contains(&l.name) && !self.add.iter().any(|a| a.name == l.name))
            .cloned()
            .collect();
        if !self.add.is_empty() {
            out.extend(self.add.iter().cloned());
            out.sort_by(|a, b| a.name.cmp(&b.name));
        }
        Labels(Arc::from(out))
    }
}

/// Prometheus's legacy metric name rule: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn is_valid_legacy_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// A label name as Prometheus 3.x accepts it: any non-empty UTF-8 string (the legacy
/// `[a-zA-Z_][a-zA-Z0-9_]*` rule applies only in legacy validation mode).
pub fn is_valid_label_name(s: &str) -> bool {
    !s.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ls(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs.iter().map(|(a, b)| (*a, *b)))
    }

    #[test]
    fn label_pairs_hash_and_compare_like_labels() {
        let pairs = [("__name__", "up"), ("instance", "a:1"), ("job", "node")];
        let p = LabelPairs::new(&pairs).expect("valid");
        let l = ls(&pairs);
        assert_eq!(p.to_labels(), l);
        assert_eq!(p.stable_hash(), l.stable_hash());
        assert!(p.eq_labels(&l));
        assert!(!p.eq_labels(&ls(&[("__name__", "up"), ("instance", "a:1")])));
        assert!(!p.eq_labels(&ls(&[
            ("__name__", "up"),
            ("instance", "a:1"),
            ("job", "x")
        ])));
        assert!(LabelPairs::new(&[("b", "1"), ("a", "1")]).is_err());
        // Equality at every length the inline comparison splits on, a byte off anywhere.
        for n in 0..40 {
            let a: String = (0..n).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
            let pairs = [("x", a.as_str())];
            let same = Labels::from_pairs([("x", a.clone())]);
            let p = LabelPairs::new(&pairs).ok();
            if n > 0 {
                assert!(p.is_some_and(|p| p.eq_labels(&same)), "{n}");
            }
            for i in 0..n {
                let mut b = a.clone().into_bytes();
                b[i] = b'_';
                let other = Labels::from_pairs([("x", String::from_utf8(b).unwrap_or_default())]);
                assert!(!p.is_some_and(|p| p.eq_labels(&other)), "{n} {i}");
            }
            assert!(!p.is_some_and(|p| p.eq_labels(&Labels::from_pairs([("x", format!("{a}a"))]))));
        }
        assert!(LabelPairs::new(&[("a", "1"), ("a", "2")]).is_err());
        assert!(LabelPairs::new(&[("", "1")]).is_err());
        assert!(LabelPairs::new(&[("a", "")]).is_err());
    }

    #[test]
    fn sorted_dedup_and_empty_values_dropped() {
        let l = ls(&[("b", "2"), ("a", "1"), ("b", "3"), ("c", "")]);
        assert_eq!(l.to_string(), r#"{a="1", b="3"}"#);
        assert!(Labels::try_from_pairs([("a", "1"), ("a", "2")]).is_err());
        assert!(Labels::try_from_pairs([("", "1")]).is_err());
    }

    #[test]
    fn ordering_matches_prometheus_compare() {
        let a = ls(&[("a", "1")]);
        let b = ls(&[("a", "1"), ("b", "1")]);
        let c = ls(&[("a", "2")]);
        assert!(a < b);
        assert!(b < c);
        assert!(ls(&[("a", "1"), ("c", "1")]) > ls(&[("a", "1"), ("b", "9")]));
    }

    #[test]
    fn grouping_hashes() {
        let a = ls(&[("__name__", "x"), ("job", "a"), ("i", "1")]);
        let b = ls(&[("__name__", "y"), ("job", "a"), ("i", "2")]);
        assert_eq!(a.hash_for_labels(&["job"]), b.hash_for_labels(&["job"]));
        assert_ne!(
            a.hash_for_labels(&["job", "i"]),
            b.hash_for_labels(&["job", "i"])
        );
        assert_eq!(a.hash_without_labels(&["i"]), b.hash_without_labels(&["i"]));
        assert_eq!(a.without(&["i"]), ls(&[("job", "a")]));
        assert_eq!(a.keep(&["i", "nope"]), ls(&[("i", "1")]));
        assert_eq!(a.drop_metric_name(), ls(&[("job", "a"), ("i", "1")]));
    }

    #[test]
    fn builder_edits() {
        let a = ls(&[("__name__", "x"), ("job", "a")]);
        let mut b = a.builder();
        b.set("z", "1").del("__name__").set("job", "b");
        assert_eq!(b.labels(), ls(&[("job", "b"), ("z", "1")]));
        b.set("job", "");
        assert_eq!(b.labels(), ls(&[("z", "1")]));
        assert_eq!(b.get("z"), Some("1"));
        let mut k = a.builder();
        k.set("q", "1").keep(&["job"]);
        assert_eq!(k.labels(), ls(&[("job", "a")]));
    }

    #[test]
    fn display_quotes() {
        let a = ls(&[("a", "x\"y\n"), ("weird name", "v")]);
        assert_eq!(a.to_string(), r#"{a="x\"y\n", "weird name"="v"}"#);
    }
}
