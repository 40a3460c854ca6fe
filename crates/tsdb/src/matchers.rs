//! Resolving label matchers to postings, as Prometheus's `PostingsForMatchers`.
//!
//! Positive matchers (those that do not match the empty string) are intersected; matchers
//! that match the empty string also match series without the label, so they are applied by
//! subtracting the series whose value does *not* match. Equality and small regex alternations
//! (`Matcher::set_matches`) look their values up directly; literal prefixes
//! (`Matcher::prefix`) narrow the scan of a label's values to one sorted range.

use std::sync::Arc;

use m3query_model::{MatchOp, Matcher};

use crate::Result;
use crate::postings::{intersect, intersect_all, subtract, union_all};

/// An inverted index that postings can be read from (the head's or a block's).
pub(crate) trait PostingsIndex {
    type Ref: Ord + Copy;
    /// Series with `name="value"`, sorted.
    fn postings(&self, name: &str, value: &str) -> Result<Vec<Self::Ref>>;
    /// How many series have `name="value"`, without reading the list.
    fn postings_len(&self, name: &str, value: &str) -> Result<usize> {
        Ok(self.postings(name, value)?.len())
    }
    /// `acc ∩ postings(name, value)`. An index holding its lists in memory intersects with
    /// the list in place instead of copying it (a metric's list may be 1,000 times `acc`).
    fn intersect_postings(
        &self,
        name: &str,
        value: &str,
        acc: &[Self::Ref],
    ) -> Result<Vec<Self::Ref>> {
        Ok(intersect(acc, &self.postings(name, value)?))
    }
    /// Every series, sorted.
    fn all_postings(&self) -> Result<Vec<Self::Ref>>;
    /// The values of `name`, sorted.
    fn label_values(&self, name: &str) -> Result<Vec<Arc<str>>>;
    /// The values of `name` starting with `prefix`, sorted.
    fn label_values_with_prefix(&self, name: &str, prefix: &str) -> Result<Vec<Arc<str>>> {
        let mut v = self.label_values(name)?;
        v.retain(|x| x.starts_with(prefix));
        Ok(v)
    }
}

/// Series with a value of `m.name` that `m` matches (absent labels never count).
fn postings_for_matching_values<I: PostingsIndex>(ix: &I, m: &Matcher) -> Result<Vec<I::Ref>> {
    if let Some(set) = m.set_matches() {
        let lists = set
            .iter()
            .filter(|v| !v.is_empty())
            .map(|v| ix.postings(&m.name, v))
            .collect::<Result<Vec<_>>>()?;
        return Ok(union_all(lists));
    }
    let values = match m.prefix() {
        Some(p) if m.op == MatchOp::RegexMatch => ix.label_values_with_prefix(&m.name, p)?,
        _ => ix.label_values(&m.name)?,
    };
    let lists = values
        .iter()
        .filter(|v| m.matches(v))
        .map(|v| ix.postings(&m.name, v))
        .collect::<Result<Vec<_>>>()?;
    Ok(union_all(lists))
}

/// Series with a value of `m.name` that `m` does not match.
fn postings_for_non_matching_values<I: PostingsIndex>(ix: &I, m: &Matcher) -> Result<Vec<I::Ref>> {
    match m.op {
        MatchOp::NotEqual => ix.postings(&m.name, &m.value),
        MatchOp::RegexNoMatch => {
            // The values `!~re` rejects are the ones `=~re` accepts: use its fast paths.
            let inverse = Matcher::new(MatchOp::RegexMatch, m.name.clone(), m.value.clone())
                .map_err(|e| m3query_storage::Error::BadRequest(e.to_string()))?;
            postings_for_matching_values(ix, &inverse)
        }
        MatchOp::Equal | MatchOp::RegexMatch => {
            let values = ix.label_values(&m.name)?;
            let lists = values
                .iter()
                .filter(|v| !m.matches(v))
                .map(|v| ix.postings(&m.name, v))
                .collect::<Result<Vec<_>>>()?;
            Ok(union_all(lists))
        }
    }
}

/// `name="value"` with a value: what [`PostingsIndex::postings`] answers directly.
fn is_plain_equal(m: &Matcher) -> bool {
    m.op == MatchOp::Equal && !m.value.is_empty()
}

/// The sorted series matching every matcher. With no matcher that narrows, starts from all
/// series (callers that must refuse such selects check before).
pub(crate) fn postings_for_matchers<I: PostingsIndex>(
    ix: &I,
    matchers: &[Matcher],
) -> Result<Vec<I::Ref>> {
    // Equality matchers first, smallest list first, each intersected into the result so
    // far: an empty one (a metric that does not exist) ends the select before any list is
    // read, and a long one (all of a metric's series, when another matcher picks one
    // instance) is probed, not copied.
    let mut eqs = Vec::new();
    for m in matchers {
        if is_plain_equal(m) {
            let n = ix.postings_len(&m.name, &m.value)?;
            if n == 0 {
                return Ok(Vec::new());
            }
            eqs.push((n, m));
        }
    }
    eqs.sort_by_key(|&(n, _)| n);
    let mut its = Vec::new();
    let mut acc: Option<Vec<I::Ref>> = None;
    for (_, m) in eqs {
        let p = match &acc {
            None => ix.postings(&m.name, &m.value)?,
            Some(a) => ix.intersect_postings(&m.name, &m.value, a)?,
        };
        if p.is_empty() {
            return Ok(Vec::new());
        }
        acc = Some(p);
    }
    its.extend(acc);
    let mut not_its = Vec::new();
    for m in matchers {
        if m.matches_everything() || is_plain_equal(m) {
            continue;
        }
        if m.matches_empty() {
            not_its.push(postings_for_non_matching_values(ix, m)?);
        } else {
            let p = postings_for_matching_values(ix, m)?;
            if p.is_empty() {
                return Ok(Vec::new());
            }
            its.push(p);
        }
    }
    if its.is_empty() {
        its.push(ix.all_postings()?);
    }
    let mut out = intersect_all(its);
    for n in not_its {
        if out.is_empty() {
            break;
        }
        out = subtract(&out, &n);
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use m3query_model::Labels;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// A naive index over a list of label sets: refs are positions.
    pub(crate) struct NaiveIndex(pub(crate) Vec<Labels>);

    impl PostingsIndex for NaiveIndex {
        type Ref = u32;
        fn postings(&self, name: &str, value: &str) -> Result<Vec<u32>> {
            Ok((0..self.0.len() as u32)
                .filter(|&i| self.0[i as usize].get(name) == Some(value))
                .collect())
        }
        fn all_postings(&self) -> Result<Vec<u32>> {
            Ok((0..self.0.len() as u32).collect())
        }
        fn label_values(&self, name: &str) -> Result<Vec<Arc<str>>> {
            let s: BTreeSet<&str> = self.0.iter().filter_map(|l| l.get(name)).collect();
            Ok(s.into_iter().map(Arc::from).collect())
        }
    }

    pub(crate) fn label_sets() -> impl Strategy<Value = Vec<Labels>> {
        prop::collection::vec(
            prop::collection::btree_map(
                prop::sample::select(vec!["__name__", "job", "i", "le"]),
                prop::sample::select(vec!["a", "b", "ab", "abc", "x", "b1"]),
                1..4,
            ),
            0..40,
        )
        .prop_map(|v: Vec<BTreeMap<&str, &str>>| {
            let mut out: Vec<Labels> = v.into_iter().map(Labels::from_pairs).collect();
            out.sort();
            out.dedup();
            out
        })
    }

    pub(crate) fn matcher() -> impl Strategy<Value = Matcher> {
        let ops = prop::sample::select(vec![
            MatchOp::Equal,
            MatchOp::NotEqual,
            MatchOp::RegexMatch,
            MatchOp::RegexNoMatch,
        ]);
        let names = prop::sample::select(vec!["__name__", "job", "i", "le", "none"]);
        let values = prop::sample::select(vec![
            "", "a", "b", "ab", "a|b", "a.*", ".*", ".+", "b.*|x", "a?b?", ".*b", "zz", "x|",
        ]);
        (ops, names, values)
            .prop_filter_map("valid matcher", |(op, n, v)| Matcher::new(op, n, v).ok())
    }

    proptest! {
        #[test]
        fn matchers_agree_with_naive_scan(
            sets in label_sets(),
            ms in prop::collection::vec(matcher(), 0..4),
        ) {
            let ix = NaiveIndex(sets.clone());
            let got = postings_for_matchers(&ix, &ms).expect("in memory");
            let want: Vec<u32> = (0..sets.len() as u32)
                .filter(|&i| ms.iter().all(|m| m.matches(sets[i as usize].get(&m.name).unwrap_or(""))))
                .collect();
            prop_assert_eq!(got, want, "matchers {:?}", ms);
        }
    }
}
