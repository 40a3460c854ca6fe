//! PromQL annotations (warnings and infos), as Prometheus's `util/annotations`.
//!
//! Each annotation has a message and the position of the sub-expression it is about; they are
//! deduplicated by message (the last position wins, as in Prometheus's map) and rendered as the
//! HTTP API renders them: `PromQL warning: <msg> (line:col)`.

use crate::parser::PosRange;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Warning,
    Info,
}

#[derive(Clone, Debug)]
struct Anno {
    kind: Kind,
    /// The message without the `PromQL warning: ` prefix and without position.
    msg: String,
    pos: PosRange,
    /// For the histogram_quantile monotonicity info, which merges across steps.
    mono: Option<Mono>,
    /// For annotations that count how often they were raised (the start time overlap
    /// warning): `(N occurrences)` when more than once.
    count: Option<usize>,
}

#[derive(Clone, Copy, Debug)]
struct Mono {
    min_ts: i64,
    max_ts: i64,
    min_bucket: f64,
    max_bucket: f64,
    max_diff: f64,
    count: usize,
}

/// A set of annotations for one query.
#[derive(Clone, Debug, Default)]
pub struct Annotations {
    items: Vec<Anno>,
    /// Where each (kind, message) is in `items`: a query of thousands of terms may raise
    /// thousands of distinct annotations, and finding duplicates by scanning was quadratic.
    index: foldhash::HashMap<(Kind, String), usize>,
}

impl Annotations {
    /// No annotations.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether nothing was noted.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn add(&mut self, a: Anno) {
        let key = (a.kind, a.msg);
        let found = self.index.get(&key).copied();
        let a = Anno { msg: key.1, ..a };
        if let Some(prev) = found.and_then(|i| self.items.get_mut(i)) {
            match (prev.mono, a.mono) {
                (Some(p), Some(n)) => {
                    prev.mono = Some(Mono {
                        min_ts: p.min_ts.min(n.min_ts),
                        max_ts: p.max_ts.max(n.max_ts),
                        min_bucket: p.min_bucket.min(n.min_bucket),
                        max_bucket: p.max_bucket.max(n.max_bucket),
                        max_diff: p.max_diff.max(n.max_diff),
                        count: p.count + n.count + 1,
                    });
                    prev.pos = a.pos;
                }
                _ => match (prev.count, a.count) {
                    // As Prometheus's `startTimeOverlapErr.Merge`: the earlier one stays,
                    // with both counts.
                    (Some(p), Some(n)) => prev.count = Some(p + n),
                    _ => *prev = a,
                },
            }
            return;
        }
        self.index.insert((a.kind, a.msg.clone()), self.items.len());
        self.items.push(a);
    }

    /// Notes a warning at `pos`; the same message twice is kept once.
    pub fn warn(&mut self, msg: impl Into<String>, pos: PosRange) {
        self.add(Anno {
            kind: Kind::Warning,
            msg: msg.into(),
            pos,
            mono: None,
            count: None,
        });
    }

    /// Notes a warning at `pos` that counts its occurrences: the same message again adds
    /// to the count instead of replacing it, and it renders `(N occurrences)` when N > 1.
    pub(crate) fn counted_warn(&mut self, msg: impl Into<String>, pos: PosRange) {
        self.add(Anno {
            kind: Kind::Warning,
            msg: msg.into(),
            pos,
            mono: None,
            count: Some(1),
        });
    }

    /// Notes an info annotation at `pos`; the same message twice is kept once.
    pub fn info(&mut self, msg: impl Into<String>, pos: PosRange) {
        self.add(Anno {
            kind: Kind::Info,
            msg: msg.into(),
            pos,
            mono: None,
            count: None,
        });
    }

    /// Adds another set's annotations (deduplicated, as `warn` and `info` do).
    pub fn merge(&mut self, other: Annotations) {
        for a in other.items {
            self.add(a);
        }
    }

    /// The histogram_quantile "fixed for monotonicity" info, merged over steps.
    pub(crate) fn monotonicity_info(
        &mut self,
        metric_name: &str,
        pos: PosRange,
        ts: i64,
        min_bucket: f64,
        max_bucket: f64,
        max_diff: f64,
    ) {
        let mut msg = String::from(
            "input to histogram_quantile needed to be fixed for monotonicity (see https://prometheus.io/docs/prometheus/latest/querying/functions/#histogram_quantile)",
        );
        if !metric_name.is_empty() {
            msg.push_str(&format!(" for metric name {metric_name:?}"));
        }
        self.add(Anno {
            kind: Kind::Info,
            msg,
            pos,
            mono: Some(Mono {
                min_ts: ts,
                max_ts: ts,
                min_bucket,
                max_bucket,
                max_diff,
                count: 0,
            }),
            count: None,
        });
    }

    /// Renders warnings and infos against the query text, as the HTTP API does.
    pub fn as_strings(&self, query: &str) -> (Vec<String>, Vec<String>) {
        let mut warnings = Vec::new();
        let mut infos = Vec::new();
        // Line starts found once, not once per annotation (each scan is the query's length).
        let breaks: Vec<usize> = query
            .bytes()
            .enumerate()
            .filter(|(_, c)| *c == b'\n')
            .map(|(i, _)| i)
            .collect();
        for a in &self.items {
            let prefix = match a.kind {
                Kind::Warning => "PromQL warning",
                Kind::Info => "PromQL info",
            };
            let pos = start_pos_input(a.pos, query.len(), &breaks);
            let s = match a.mono {
                Some(m) => format!(
                    "{prefix}: {}, from buckets {} to {}, with a max diff of {}, over {} samples from {} to {} ({pos})",
                    a.msg,
                    go_g(m.min_bucket),
                    go_g(m.max_bucket),
                    go_2g(m.max_diff),
                    m.count + 1,
                    rfc3339_secs(m.min_ts),
                    rfc3339_secs(m.max_ts),
                ),
                None => match a.count {
                    Some(n) if n > 1 => format!("{prefix}: {} ({n} occurrences) ({pos})", a.msg),
                    _ => format!("{prefix}: {} ({pos})", a.msg),
                },
            };
            match a.kind {
                Kind::Warning => warnings.push(s),
                Kind::Info => infos.push(s),
            }
        }
        (warnings, infos)
    }
}

/// [`PosRange::start_pos_input`] given the positions of the query's line breaks.
fn start_pos_input(pos: PosRange, len: usize, breaks: &[usize]) -> String {
    if pos.start > len {
        return "invalid position".into();
    }
    let before = breaks.partition_point(|b| *b < pos.start);
    let col = match before.checked_sub(1).and_then(|i| breaks.get(i)) {
        Some(b) => pos.start - b,
        None => pos.start + 1,
    };
    format!("{}:{col}", before + 1)
}

fn go_g(v: f64) -> String {
    crate::parser::printer_g(v)
}

/// Go's `%.2g`.
fn go_2g(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return go_g(v);
    }
    let exp = v.abs().log10().floor() as i32;
    if !(-4..2).contains(&exp) {
        let s = format!("{v:.1e}");
        if let Some((mant, e)) = s.split_once('e') {
            let mant = mant.trim_end_matches('0').trim_end_matches('.');
            let (sign, digits) = match e.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', e),
            };
            return format!("{mant}e{sign}{digits:0>2}");
        }
        return s;
    }
    let decimals = (1 - exp).max(0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

fn rfc3339_secs(ms: i64) -> String {
    m3query_model::time::format_rfc3339(ms.div_euclid(1000) * 1000)
}

/// Message builders for the annotations the float engine raises.
pub(crate) mod msg {
    use crate::parser::printer_g;

    pub fn invalid_quantile(q: f64) -> String {
        format!(
            "quantile value should be between 0 and 1, got {}",
            printer_g(q)
        )
    }

    pub fn invalid_ratio(q: f64, to: f64) -> String {
        format!(
            "ratio value should be between -1 and 1, got {}, capping to {}",
            printer_g(q),
            printer_g(to)
        )
    }

    pub fn bad_bucket_label(metric: &str, le: &str) -> String {
        let mut s = format!("bucket label \"le\" is missing or has a malformed value of {le:?}");
        if !metric.is_empty() {
            s.push_str(&format!(" for metric name {metric:?}"));
        }
        s
    }

    pub fn possible_non_counter(metric: &str) -> String {
        format!(
            "metric might not be a counter, name does not end in _total/_sum/_count/_bucket: {metric:?}"
        )
    }

    /// Go's `maybeAddMetricName`.
    fn with_metric(base: &str, metric: &str) -> String {
        if metric.is_empty() {
            base.to_string()
        } else {
            format!("{base} for metric name {metric:?}")
        }
    }

    pub fn mixed_classic_native(metric: &str) -> String {
        with_metric(
            "vector contains a mix of classic and native histograms",
            metric,
        )
    }

    pub fn quantile_nan_result(metric: &str) -> String {
        with_metric(
            "input to histogram_quantile has NaN observations, result is NaN",
            metric,
        )
    }

    pub fn quantile_nan_skew(metric: &str) -> String {
        with_metric(
            "input to histogram_quantile has NaN observations, result is skewed higher",
            metric,
        )
    }

    pub fn fraction_nans(metric: &str) -> String {
        with_metric(
            "input to histogram_fraction has NaN observations, which are excluded from all fractions",
            metric,
        )
    }

    pub fn mixed_floats_histograms(metric: &str) -> String {
        format!("encountered a mix of histograms and floats for metric name {metric:?}")
    }

    pub fn mixed_floats_histograms_agg() -> String {
        "encountered a mix of histograms and floats for aggregation".into()
    }

    pub fn not_counter(metric: &str) -> String {
        format!("this native histogram metric is not a counter: {metric:?}")
    }

    /// Raised with [`Annotations::counted_warn`](super::Annotations::counted_warn).
    pub fn start_time_overlap(metric: &str) -> String {
        format!(
            "sample has start time that overlaps with previous sample timestamp for metric {metric:?}"
        )
    }

    pub fn not_gauge(metric: &str) -> String {
        format!("this native histogram metric is not a gauge: {metric:?}")
    }

    pub fn mixed_exponential_custom(metric: &str) -> String {
        format!(
            "vector contains a mix of histograms with exponential and custom buckets schemas for metric name {metric:?}"
        )
    }

    pub fn histogram_ignored_in_agg(op: &str) -> String {
        format!("ignored histogram in {op} aggregation")
    }

    pub fn histogram_ignored_in_mixed_range(metric: &str) -> String {
        format!(
            "ignored histograms in a range containing both floats and histograms for metric name {metric:?}"
        )
    }

    pub fn incompatible_types_in_binop(lhs: &str, op: &str, rhs: &str) -> String {
        format!(
            "incompatible sample types encountered for binary operator {op:?}: {lhs} {op} {rhs}"
        )
    }

    pub fn incompatible_layout_in_binop(op: &str) -> String {
        format!("incompatible bucket layout encountered for binary operator {op}")
    }

    pub fn counter_reset_collision(operation: &str) -> String {
        format!("conflicting counter resets during histogram {operation}")
    }

    pub fn mismatched_custom_buckets(operation: &str) -> String {
        format!("mismatched custom buckets were reconciled during {operation}")
    }

    pub fn sort_in_range_query() -> String {
        "sort is ineffective for range queries since results are always ordered by labels".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_and_render() {
        let mut a = Annotations::new();
        a.warn(msg::invalid_quantile(1.5), PosRange::new(9, 12));
        a.warn(msg::invalid_quantile(1.5), PosRange::new(0, 1));
        a.info(msg::possible_non_counter("x"), PosRange::new(5, 6));
        let (w, i) = a.as_strings("quantile(1.5, x)");
        assert_eq!(
            w,
            vec!["PromQL warning: quantile value should be between 0 and 1, got 1.5 (1:1)"]
        );
        assert_eq!(i.len(), 1);
        assert_eq!(go_2g(0.5), "0.5");
        assert_eq!(go_2g(123.0), "1.2e+02");
        assert_eq!(go_2g(0.001234), "0.0012");
    }

    #[test]
    fn positions_match_the_scanning_rendering() {
        let q = "a\n+ b\n\n  * c";
        let breaks: Vec<usize> = q.match_indices('\n').map(|(i, _)| i).collect();
        for start in 0..q.len() + 3 {
            let p = PosRange::new(start, start);
            assert_eq!(
                start_pos_input(p, q.len(), &breaks),
                p.start_pos_input(q),
                "{start}"
            );
        }
    }
}
