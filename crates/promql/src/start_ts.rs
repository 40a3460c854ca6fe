//! Start timestamps (Prometheus 3.x's `ST`, OpenTelemetry's start time) in the counter
//! functions: `rate`, `increase`, `irate` and `resets` read them to see counter resets the
//! values alone hide (a counter restarted and already climbed past its old value), to treat
//! delta samples (each one starting where the previous one ended) as the resets they are,
//! and to count from zero at a start inside the window instead of extrapolating to the left.
//!
//! They reach the engine as a side stream of the series (`SelSeries::sts`), so series without
//! them take the plain float path unchanged. A window's start timestamps are given aligned
//! with its samples, 0 where a sample has none (Prometheus's "unknown"); subqueries and other
//! expressions produce none.

use m3query_storage::StartTimestamp;

use crate::annotations::msg;
use crate::functions::RangeCtx;
use crate::value::Point;

/// The range functions that read start timestamps (as in Prometheus's engine).
pub(crate) fn used_by(name: &str) -> bool {
    matches!(name, "rate" | "increase" | "irate" | "resets")
}

/// The start timestamps of samples at `times` (in order), aligned with them: 0 for a sample
/// without one. `sts` is the series' sparse side stream, in time order.
pub(crate) fn align(times: impl Iterator<Item = i64>, sts: &[StartTimestamp]) -> Vec<i64> {
    let mut j = 0;
    times
        .map(|t| {
            while j < sts.len() && sts[j].t < t {
                j += 1;
            }
            match sts.get(j) {
                Some(s) if s.t == t => s.st,
                _ => 0,
            }
        })
        .collect()
}

/// The start timestamp of the sample at `t`, or 0 when it has none.
pub(crate) fn at(sts: &[StartTimestamp], t: i64) -> i64 {
    let i = sts.partition_point(|s| s.t < t);
    match sts.get(i) {
        Some(s) if s.t == t => s.st,
        _ => 0,
    }
}

/// Whether the current sample's start timestamp says the counter restarted since the
/// previous sample (Prometheus's `isStartTimestampReset`).
pub(crate) fn is_reset(prev_st: i64, prev_t: i64, cur_st: i64, cur_t: i64) -> bool {
    // Unknown (0), invalid (after the sample) and OTel's "unknown start" (ST == T): no reset.
    if cur_st == 0 || cur_st >= cur_t {
        return false;
    }
    if cur_st != prev_t {
        // Before the previous sample: the same run; after it: a restart in between.
        return cur_st > prev_t;
    }
    // The current sample starts at the previous one: a delta sample (a reset each time), or
    // a cumulative series whose first start was unknown (no reset). A known previous start
    // tells them apart; a previous start after its own sample is invalid and counts as
    // unknown.
    prev_st != 0 && prev_st < prev_t
}

/// Whether the current sample's start lies before the previous sample without being the
/// same run (Prometheus's `checkStartTimeOverlap`): the data contradict themselves.
pub(crate) fn overlaps(prev_st: i64, prev_t: i64, cur_st: i64) -> bool {
    cur_st != 0 && cur_st < prev_t && cur_st != prev_st
}

/// Notes the overlap warning for the window (once per window, as Prometheus does per series
/// and step), when any neighbouring pair of samples overlaps.
pub(crate) fn warn_overlap(
    times: impl Iterator<Item = i64>,
    sts: &[i64],
    metric: &str,
    c: &mut RangeCtx,
    pos: crate::parser::PosRange,
) {
    let mut prev: Option<(i64, i64)> = None;
    for (t, &st) in times.zip(sts) {
        if let Some((pst, pt)) = prev
            && overlaps(pst, pt, st)
        {
            c.annos.counted_warn(msg::start_time_overlap(metric), pos);
            return;
        }
        prev = Some((st, t));
    }
}

/// How `rate`/`increase` scale a window's raw increase (Prometheus's `extrapolatedRate`
/// after the increase is known).
pub(crate) struct Extrapolation {
    /// Multiply the increase (after adding `add_first`) by this.
    pub factor: f64,
    /// The first sample's start lies inside the window: the counter was zero there, so the
    /// first sample's whole value is part of the increase.
    pub add_first: bool,
}

/// The extrapolation of a window with samples from `first_t` to `last_t` (`n` of them), whose
/// first sample started at `st0` (0: unknown). `zero_ratio` is first value / increase when
/// the increase is positive and the first value not negative (how far back the counter would
/// reach zero); `None` for no output (one sample and no usable start).
pub(crate) fn extrapolate(
    first_t: i64,
    last_t: i64,
    n: usize,
    st0: i64,
    zero_ratio: Option<f64>,
    c: &RangeCtx,
    is_rate: bool,
) -> Option<Extrapolation> {
    let mut to_start = (first_t - c.range_start) as f64 / 1000.0;
    let mut to_end = (c.range_end - last_t) as f64 / 1000.0;
    let mut sampled = (last_t - first_t) as f64 / 1000.0;
    let avg = if n > 1 { sampled / (n - 1) as f64 } else { 0.0 };
    let threshold = avg * 1.1;
    // The window start is exclusive: a start exactly there is outside.
    let add_first = st0 != 0 && st0 > c.range_start && st0 < first_t;
    if add_first {
        // A zero-valued sample at the start replaces the extrapolation to the left. With
        // one sample the threshold is 0, so there is no extrapolation to the right either.
        to_start = 0.0;
        sampled = (last_t - st0) as f64 / 1000.0;
    } else if n < 2 {
        return None;
    } else {
        if to_start >= threshold {
            to_start = avg / 2.0;
        }
        if let Some(r) = zero_ratio {
            to_start = to_start.min(sampled * r);
        }
    }
    if to_end >= threshold {
        to_end = avg / 2.0;
    }
    let mut factor = if sampled != 0.0 {
        (sampled + to_start + to_end) / sampled
    } else {
        1.0
    };
    if is_rate {
        factor /= c.range_ms as f64 / 1000.0;
    }
    Some(Extrapolation { factor, add_first })
}

/// `rate`/`increase` over a float window with start timestamps `sts` (aligned with `w`).
pub(crate) fn rate(
    w: &[Point],
    sts: &[i64],
    c: &mut RangeCtx,
    is_rate: bool,
    metric: &str,
    pos: crate::parser::PosRange,
) -> Option<f64> {
    let (first, last) = (*w.first()?, *w.last()?);
    let mut result = last.v - first.v;
    warn_overlap(w.iter().map(|p| p.t), sts, metric, c, pos);
    for (i, pair) in w.windows(2).enumerate() {
        let (prev, cur) = (pair[0], pair[1]);
        let reset = cur.v < prev.v || is_reset(st(sts, i), prev.t, st(sts, i + 1), cur.t);
        if reset {
            result += prev.v;
        }
    }
    let zero_ratio = (result > 0.0 && first.v >= 0.0).then(|| first.v / result);
    let e = extrapolate(first.t, last.t, w.len(), st(sts, 0), zero_ratio, c, is_rate)?;
    if e.add_first {
        result += first.v;
    }
    Some(result * e.factor)
}

/// `irate` over a float window: the last two samples, a reset by value or by start.
pub(crate) fn irate(w: &[Point], sts: &[i64]) -> Option<f64> {
    let n = w.len();
    if n < 2 {
        return None;
    }
    let (a, b) = (w[n - 2], w[n - 1]);
    let interval = b.t - a.t;
    if interval == 0 {
        return None;
    }
    let reset = b.v < a.v || is_reset(st(sts, n - 2), a.t, st(sts, n - 1), b.t);
    let v = if reset { b.v } else { b.v - a.v };
    Some(v / (interval as f64 / 1000.0))
}

/// `resets` over a float window (from the first sample counted, `anchored` already applied).
pub(crate) fn resets(w: &[Point], sts: &[i64]) -> f64 {
    w.windows(2)
        .enumerate()
        .filter(|(i, p)| p[1].v < p[0].v || is_reset(st(sts, *i), p[0].t, st(sts, i + 1), p[1].t))
        .count() as f64
}

/// A window's start timestamps, aligned with its float and its histogram samples; empty
/// slices when the series has none (or the function does not read them).
#[derive(Clone, Copy, Default)]
pub(crate) struct WindowSts<'a> {
    pub floats: &'a [i64],
    pub hists: &'a [i64],
}

/// The start timestamp at `i`, 0 past the end (a window given no start timestamps).
pub(crate) fn st(sts: &[i64], i: usize) -> i64 {
    sts.get(i).copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::annotations::Annotations;
    use crate::parser::PosRange;

    fn ctx(range_start: i64, range_end: i64) -> RangeCtx {
        RangeCtx {
            ts: range_end,
            range_start,
            range_end,
            range_ms: range_end - range_start,
            params: Vec::new(),
            anchored: false,
            smoothed: false,
            pos: PosRange::default(),
            param_pos: None,
            annos: Annotations::new(),
            err: None,
            no_resets: false,
        }
    }

    fn pts(v: &[(i64, f64)]) -> Vec<Point> {
        v.iter().map(|&(t, v)| Point { t, v }).collect()
    }

    #[test]
    fn reset_rules() {
        // Unknown, invalid (after T) and "unknown start" (ST == T): never a reset.
        assert!(!is_reset(0, 60, 0, 120));
        assert!(!is_reset(0, 60, 121, 120));
        assert!(!is_reset(0, 60, 120, 120));
        // Before the previous sample: the same run; after it: a restart.
        assert!(!is_reset(10, 60, 10, 120));
        assert!(is_reset(10, 60, 61, 120));
        // At the previous sample: a delta if the previous start is known and sane.
        assert!(is_reset(30, 60, 60, 120));
        assert!(!is_reset(0, 60, 60, 120));
        assert!(!is_reset(60, 60, 60, 120));
        assert!(!is_reset(90, 60, 60, 120));
    }

    #[test]
    fn overlap_rule() {
        assert!(!overlaps(0, 60, 0));
        assert!(!overlaps(30, 60, 60), "a delta");
        assert!(!overlaps(30, 60, 30), "a cumulative run");
        assert!(overlaps(30, 60, 20));
        assert!(overlaps(0, 60, 20));
    }

    #[test]
    fn align_fills_unknown_with_zero() {
        let sts = [
            StartTimestamp { t: 20, st: 5 },
            StartTimestamp { t: 25, st: 7 },
            StartTimestamp { t: 40, st: 30 },
        ];
        assert_eq!(align([10, 20, 30, 40].into_iter(), &sts), vec![0, 5, 0, 30]);
        assert_eq!(at(&sts, 25), 7);
        assert_eq!(at(&sts, 26), 0);
    }

    #[test]
    fn rate_sees_a_restart_the_values_hide() {
        // 0, 60, 120 and then a restart at 150s that climbed to 180 by 180s.
        let w = pts(&[(60_000, 60.0), (120_000, 120.0), (180_000, 180.0)]);
        let mut c = ctx(0, 180_000);
        let no_st = rate(&w, &[], &mut c, false, "m", PosRange::default());
        let st = rate(
            &w,
            &[1, 1, 150_000],
            &mut c,
            false,
            "m",
            PosRange::default(),
        );
        // Without: 120 over 120s extrapolated to zero at 0s: 180. With: 60 + 180 = 240, and
        // the first start (1ms) lies inside the window: +60 and no left extrapolation.
        assert_eq!(no_st, Some(180.0));
        assert_eq!(st, Some(300.0));
        assert!(c.annos.is_empty());
    }

    #[test]
    fn one_sample_with_a_start_inside_the_window() {
        let w = pts(&[(240_000, 3.0)]);
        let mut c = ctx(60_000, 360_000);
        assert_eq!(
            rate(&w, &[90_000], &mut c, false, "m", PosRange::default()),
            Some(3.0)
        );
        // At the window start (exclusive) or unknown: not enough samples.
        for st0 in [60_000, 0, 240_000] {
            assert_eq!(
                rate(&w, &[st0], &mut c, false, "m", PosRange::default()),
                None
            );
        }
    }

    #[test]
    fn delta_samples_are_resets() {
        // OTel deltas: 60 per minute, each starting at the previous sample.
        let w = pts(&[(60_000, 60.0), (120_000, 60.0), (180_000, 60.0)]);
        let sts = [0, 60_000, 120_000];
        // The first start is unknown, so the second is not yet a delta.
        assert_eq!(resets(&w, &sts), 1.0);
        assert_eq!(resets(&w, &[1, 60_000, 120_000]), 2.0);
        assert_eq!(irate(&w, &[1, 60_000, 120_000]), Some(1.0));
        assert_eq!(irate(&w, &[]), Some(0.0));
    }

    #[test]
    fn overlapping_starts_warn_once_per_window() {
        let w = pts(&[(60_000, 60.0), (120_000, 120.0), (180_000, 180.0)]);
        let sts = [1, 0, 10];
        let mut c = ctx(0, 180_000);
        rate(&w, &[1, 1, 1], &mut c, true, "m", PosRange::default());
        assert!(c.annos.is_empty());
        rate(
            &w,
            &[-60_000, -60_000, -60_000],
            &mut c,
            true,
            "m",
            PosRange::default(),
        );
        assert!(c.annos.is_empty(), "one run that started before the window");
        rate(&w, &sts, &mut c, true, "m", PosRange::default());
        rate(&w, &sts, &mut c, true, "m", PosRange::default());
        let (warns, _) = c.annos.as_strings("rate(m[3m])");
        assert_eq!(
            warns,
            vec![
                "PromQL warning: sample has start time that overlaps with previous sample timestamp for metric \"m\" (2 occurrences) (1:1)"
            ]
        );
    }
}
