//! Postings lists: sorted, duplicate-free series references, and their set algebra.
//!
//! Intersections walk both lists in step and switch to galloping (exponential then binary
//! search) when one list is much shorter, so `{__name__="x", instance="y"}` costs about the
//! size of the smaller list times a logarithm, not the size of the larger one.

/// When the longer list is this many times the shorter, intersections gallop.
const GALLOP_RATIO: usize = 16;

/// The first index `i >= from` with `list[i] >= x`, by exponential then binary search.
#[inline]
fn gallop<T: Ord + Copy>(list: &[T], from: usize, x: T) -> usize {
    let mut lo = from;
    let mut step = 1;
    let mut hi = from;
    while hi < list.len() && list[hi] < x {
        lo = hi + 1;
        hi = from + step;
        step *= 2;
    }
    let hi = hi.min(list.len());
    lo + list[lo..hi].partition_point(|&v| v < x)
}

/// `a ∩ b`.
pub fn intersect<T: Ord + Copy>(a: &[T], b: &[T]) -> Vec<T> {
    let (small, large) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    let mut out = Vec::with_capacity(small.len());
    if small.is_empty() {
        return out;
    }
    if large.len() / small.len() >= GALLOP_RATIO {
        let mut j = 0;
        for &x in small {
            j = gallop(large, j, x);
            if j >= large.len() {
                break;
            }
            if large[j] == x {
                out.push(x);
                j += 1;
            }
        }
        return out;
    }
    let (mut i, mut j) = (0, 0);
    while i < small.len() && j < large.len() {
        let (x, y) = (small[i], large[j]);
        if x == y {
            out.push(x);
            i += 1;
            j += 1;
        } else if x < y {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// The intersection of several lists, smallest first so intermediate results stay small.
pub fn intersect_all<T: Ord + Copy>(mut lists: Vec<Vec<T>>) -> Vec<T> {
    lists.sort_by_key(Vec::len);
    let mut it = lists.into_iter();
    let Some(mut acc) = it.next() else {
        return Vec::new();
    };
    for l in it {
        if acc.is_empty() {
            break;
        }
        acc = intersect(&acc, &l);
    }
    acc
}

/// `a ∪ b`.
pub fn union<T: Ord + Copy>(a: &[T], b: &[T]) -> Vec<T> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (x, y) = (a[i], b[j]);
        if x == y {
            out.push(x);
            i += 1;
            j += 1;
        } else if x < y {
            out.push(x);
            i += 1;
        } else {
            out.push(y);
            j += 1;
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// The union of several lists: pairwise merges in a balanced tree, so each element is
/// copied O(log k) times.
pub fn union_all<T: Ord + Copy>(mut lists: Vec<Vec<T>>) -> Vec<T> {
    lists.retain(|l| !l.is_empty());
    while lists.len() > 1 {
        let mut next = Vec::with_capacity(lists.len().div_ceil(2));
        let mut it = lists.into_iter();
        while let Some(a) = it.next() {
            match it.next() {
                Some(b) => next.push(union(&a, &b)),
                None => next.push(a),
            }
        }
        lists = next;
    }
    lists.pop().unwrap_or_default()
}

/// `a \ b`.
pub fn subtract<T: Ord + Copy>(a: &[T], b: &[T]) -> Vec<T> {
    if b.is_empty() {
        return a.to_vec();
    }
    let mut out = Vec::with_capacity(a.len());
    let gallop_b = b.len() / a.len().max(1) >= GALLOP_RATIO;
    let mut j = 0;
    for &x in a {
        if gallop_b {
            j = gallop(b, j, x);
        } else {
            while j < b.len() && b[j] < x {
                j += 1;
            }
        }
        if j < b.len() && b[j] == x {
            j += 1;
        } else {
            out.push(x);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn list() -> impl Strategy<Value = Vec<u32>> {
        prop_oneof![
            prop::collection::btree_set(0u32..200, 0..60),
            prop::collection::btree_set(0u32..5000, 0..2000),
            prop::collection::btree_set(0u32..10, 0..5),
        ]
        .prop_map(|s| s.into_iter().collect())
    }

    fn set(v: &[u32]) -> BTreeSet<u32> {
        v.iter().copied().collect()
    }

    fn vecof(s: BTreeSet<u32>) -> Vec<u32> {
        s.into_iter().collect()
    }

    proptest! {
        #[test]
        fn algebra_matches_btreeset(a in list(), b in list(), c in list()) {
            let (sa, sb, sc) = (set(&a), set(&b), set(&c));
            prop_assert_eq!(intersect(&a, &b), vecof(&sa & &sb));
            prop_assert_eq!(intersect(&b, &a), vecof(&sa & &sb));
            prop_assert_eq!(union(&a, &b), vecof(&sa | &sb));
            prop_assert_eq!(subtract(&a, &b), vecof(&sa - &sb));
            prop_assert_eq!(subtract(&b, &a), vecof(&sb - &sa));
            prop_assert_eq!(
                intersect_all(vec![a.clone(), b.clone(), c.clone()]),
                vecof(&(&sa & &sb) & &sc)
            );
            prop_assert_eq!(
                union_all(vec![a.clone(), b.clone(), c.clone(), Vec::new()]),
                vecof(&(&sa | &sb) | &sc)
            );
        }
    }

    #[test]
    fn lopsided_lists_gallop() {
        let large: Vec<u32> = (0..100_000).map(|i| i * 3).collect();
        let small = vec![0u32, 3, 4, 299_997, 299_998, 400_000];
        assert_eq!(intersect(&small, &large), vec![0, 3, 299_997]);
        assert_eq!(subtract(&small, &large), vec![4, 299_998, 400_000]);
        assert!(intersect_all::<u32>(Vec::new()).is_empty());
        assert!(union_all::<u32>(Vec::new()).is_empty());
    }
}
