//! Prometheus durations and API timestamps, in milliseconds.
//!
//! - [`parse_duration`] / [`format_duration`]: Prometheus's `model.Duration` syntax
//!   (`1y2w3d4h5m6s7ms`, units in descending order, `0` alone allowed), as used in configs,
//!   PromQL and the promqltest scripts.
//! - [`parse_api_time`] / [`parse_api_duration`]: what `/api/v1/*` accept: unix seconds with
//!   fractions or RFC3339, and float seconds or a Prometheus duration.
//! - [`format_rfc3339`]: timestamps for build info and logs.

use std::fmt::Write;

/// Milliseconds per unit, in the order the syntax requires.
const UNITS: [(&str, i64); 7] = [
    ("y", 365 * 24 * 3_600_000),
    ("w", 7 * 24 * 3_600_000),
    ("d", 24 * 3_600_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// The smallest and largest timestamps the API accepts (Prometheus's `minTime`/`maxTime`,
/// which are the Go time range representable in int64 milliseconds after rounding).
pub const MIN_TIME_MS: i64 = -9_223_309_901_257_974;
/// See [`MIN_TIME_MS`].
pub const MAX_TIME_MS: i64 = 9_223_309_901_257_974;

/// Why a time or duration does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// A Prometheus duration string (`5m`, `1h30m`) that is not one.
    #[error("not a valid duration string: {0:?}")]
    Duration(String),
    /// An API timestamp that is neither a float of seconds nor RFC 3339.
    #[error("cannot parse {0:?} to a valid timestamp")]
    Timestamp(String),
    /// An API duration that is neither a float of seconds nor a duration string.
    #[error("cannot parse {0:?} to a valid duration")]
    ApiDuration(String),
    /// An API duration whose milliseconds do not fit an `i64`.
    #[error("cannot parse {0:?} to a valid duration. It overflows int64")]
    ApiDurationOverflow(String),
}

/// Parses a Prometheus duration (`5m`, `1h30m`, `0`) into milliseconds.
pub fn parse_duration(s: &str) -> Result<i64, TimeError> {
    let bad = || TimeError::Duration(s.to_string());
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(bad());
    }
    let b = s.as_bytes();
    let mut i = 0;
    let mut next_unit = 0; // index into UNITS: each unit at most once, in order
    let mut total: i64 = 0;
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(bad());
        }
        let n: i64 = s[start..i].parse().map_err(|_| bad())?;
        let ustart = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = &s[ustart..i];
        let pos = UNITS[next_unit..]
            .iter()
            .position(|(u, _)| *u == unit)
            .ok_or_else(bad)?;
        let (_, mult) = UNITS[next_unit + pos];
        next_unit += pos + 1;
        total = n
            .checked_mul(mult)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    Ok(total)
}

/// Formats milliseconds as Prometheus does (`1h30m`, `1d`, `0s`, `-5m`). Years and weeks
/// only when they divide the whole duration (`2w`, `1y`, but `15d`, `7d2h`, `366d`), as
/// Prometheus's `model.Duration` prints them: `90d` reads better than `12w6d`.
pub fn format_duration(ms: i64) -> String {
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    let mut rest = ms.unsigned_abs();
    if ms < 0 {
        out.push('-');
    }
    for (unit, mult) in UNITS {
        let mult = mult as u64;
        let exact_only = matches!(unit, "y" | "w");
        if rest >= mult && (!exact_only || rest.is_multiple_of(mult)) {
            let _ = write!(out, "{}{}", rest / mult, unit);
            rest %= mult;
        }
    }
    out
}

/// Parses an API timestamp: unix seconds (fractions allowed) or RFC3339, into milliseconds.
/// Sub-millisecond precision is rounded as Prometheus rounds it.
pub fn parse_api_time(s: &str) -> Result<i64, TimeError> {
    let bad = || TimeError::Timestamp(s.to_string());
    if let Ok(f) = s.parse::<f64>() {
        if !f.is_finite() {
            return Err(bad());
        }
        let ms = (f * 1000.0).round();
        if ms < MIN_TIME_MS as f64 || ms > MAX_TIME_MS as f64 {
            return Err(bad());
        }
        return Ok(ms as i64);
    }
    // Prometheus's formatted minTime/maxTime, which clients echo back.
    match s {
        "-292273086-05-16T16:47:06Z" => return Ok(MIN_TIME_MS),
        "292277025-08-18T07:12:54.999999999Z" => return Ok(MAX_TIME_MS),
        _ => {}
    }
    parse_rfc3339(s).ok_or_else(bad)
}

/// Parses an API duration: float seconds or a Prometheus duration, into milliseconds.
pub fn parse_api_duration(s: &str) -> Result<i64, TimeError> {
    if let Ok(f) = s.parse::<f64>() {
        let ms = f * 1000.0;
        if !ms.is_finite() || ms >= i64::MAX as f64 / 1e6 || ms <= i64::MIN as f64 / 1e6 {
            // Go checks the nanosecond value against int64.
            return Err(TimeError::ApiDurationOverflow(s.to_string()));
        }
        return Ok(ms.round() as i64);
    }
    parse_duration(s).map_err(|_| TimeError::ApiDuration(s.to_string()))
}

/// Parses a configuration duration: a Prometheus duration (`5m`, `1h30m`, `15d`, `0`) or a Go
/// duration (`1.5s`, `500ms`, `100us`, `1m30s`), as jaeger-client-go's YAML keys take them.
pub fn parse_config_duration(s: &str) -> Result<std::time::Duration, TimeError> {
    if let Ok(ms) = parse_duration(s) {
        return Ok(std::time::Duration::from_millis(ms as u64));
    }
    parse_go_duration(s).ok_or_else(|| TimeError::Duration(s.to_string()))
}

/// Go's `time.ParseDuration` for non-negative values: decimal numbers with units
/// `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`, in any order.
fn parse_go_duration(s: &str) -> Option<std::time::Duration> {
    let s = s.strip_prefix('+').unwrap_or(s);
    if s.is_empty() {
        return None;
    }
    let mut total_ns: f64 = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(n);
        if num.is_empty() || num == "." {
            return None;
        }
        let v: f64 = num.parse().ok()?;
        let u = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(u);
        let mult = match unit {
            "ns" => 1.0,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total_ns += v * mult;
        rest = tail;
    }
    if !total_ns.is_finite() || total_ns > u64::MAX as f64 {
        return None;
    }
    Some(std::time::Duration::from_nanos(total_ns.round() as u64))
}

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` into milliseconds (rounded).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) && !part.is_empty() {
            part.parse().ok()
        } else {
            None
        }
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if b[10] != b'T' && b[10] != b't' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 60
    {
        return None;
    }
    let mut i = 19;
    let mut frac_ns: i64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = &s[start..i];
        if digits.is_empty() || digits.len() > 9 {
            return None;
        }
        frac_ns = digits.parse::<i64>().ok()? * 10_i64.pow(9 - digits.len() as u32);
    }
    let offset_s = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        c @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            let o = oh * 3600 + om * 60;
            if *c == b'-' { -o } else { o }
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset_s;
    Some(secs * 1000 + (frac_ns + 500_000) / 1_000_000)
}

/// Formats milliseconds since the epoch as RFC3339 in UTC (`2006-01-02T15:04:05.000Z`,
/// fraction omitted when zero).
pub fn format_rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let frac = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mut out = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        y,
        m,
        d,
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    );
    if frac != 0 {
        let _ = write!(out, ".{frac:03}");
    }
    out.push('Z');
    out
}

/// Calendar fields of a UTC timestamp, for PromQL's date functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    /// Year, e.g. 2024.
    pub year: i64,
    /// Month, 1 to 12.
    pub month: i64,
    /// Day of the month, from 1.
    pub day: i64,
    /// Hour, 0 to 23.
    pub hour: i64,
    /// Minute, 0 to 59.
    pub minute: i64,
    /// 0 = Sunday.
    pub weekday: i64,
    /// 1-based day of the year.
    pub yearday: i64,
    /// Days in this month (28 to 31).
    pub days_in_month: i64,
}

/// Calendar fields of `secs` seconds since the epoch, in UTC.
pub fn civil(secs: i64) -> Civil {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    Civil {
        year: y,
        month: m,
        day: d,
        hour: sod / 3600,
        minute: (sod / 60) % 60,
        weekday: (days + 4).rem_euclid(7),
        yearday: days - days_from_civil(y, 1, 1) + 1,
        days_in_month: days_in_month(y, m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0"), Ok(0));
        assert_eq!(parse_duration("5m"), Ok(300_000));
        assert_eq!(parse_duration("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration("1d2h"), Ok(93_600_000));
        assert_eq!(parse_duration("100ms"), Ok(100));
        assert_eq!(parse_duration("1y"), Ok(31_536_000_000));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("1m1h").is_err());
        assert!(parse_duration("1m1m").is_err());
        assert!(parse_duration("-5m").is_err());
        assert!(parse_duration("1.5h").is_err());
        assert_eq!(format_duration(5_400_000), "1h30m");
        assert_eq!(format_duration(0), "0s");
        assert_eq!(format_duration(86_400_000), "1d");
        assert_eq!(format_duration(1_500), "1s500ms");
        // What Prometheus 2.42's format_query prints for these ranges.
        let d = 86_400_000;
        for (ms, want) in [
            (15 * d, "15d"),
            (8 * d, "8d"),
            (14 * d, "2w"),
            (365 * d, "1y"),
            (366 * d, "366d"),
            (372 * d, "372d"),
            (7 * d + 7_200_000, "7d2h"),
            (-15 * d, "-15d"),
        ] {
            assert_eq!(format_duration(ms), want, "{ms}ms");
        }
    }

    #[test]
    fn config_durations() {
        use std::time::Duration;
        assert_eq!(parse_config_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(
            parse_config_duration("15d"),
            Ok(Duration::from_secs(15 * 86_400))
        );
        assert_eq!(
            parse_config_duration("1.5s"),
            Ok(Duration::from_millis(1500))
        );
        assert_eq!(parse_config_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(
            parse_config_duration("100us"),
            Ok(Duration::from_micros(100))
        );
        assert_eq!(parse_config_duration("0"), Ok(Duration::ZERO));
        assert!(parse_config_duration("").is_err());
        assert!(parse_config_duration("10").is_err());
        assert!(parse_config_duration("-1s").is_err());
        assert!(parse_config_duration("1x").is_err());
    }

    #[test]
    fn api_times() {
        assert_eq!(parse_api_time("1548876672.544"), Ok(1_548_876_672_544));
        assert_eq!(parse_api_time("0"), Ok(0));
        assert_eq!(parse_api_time("-1.5"), Ok(-1500));
        assert_eq!(
            parse_api_time("2015-07-01T20:10:51.781Z"),
            Ok(1_435_781_451_781)
        );
        assert_eq!(
            parse_api_time("2015-07-01T22:10:51.781+02:00"),
            Ok(1_435_781_451_781)
        );
        assert_eq!(parse_api_time("1970-01-01T00:00:00Z"), Ok(0));
        assert!(parse_api_time("2015-02-30T00:00:00Z").is_err());
        assert!(parse_api_time("yesterday").is_err());
        assert!(parse_api_time("NaN").is_err());
        assert!(parse_api_time("1e300").is_err());
        assert_eq!(parse_api_duration("15"), Ok(15_000));
        assert_eq!(parse_api_duration("0.5"), Ok(500));
        assert_eq!(parse_api_duration("1m"), Ok(60_000));
        assert!(parse_api_duration("1e30").is_err());
        assert!(parse_api_duration("x").is_err());
    }

    #[test]
    fn civil_fields() {
        // 2024-02-29T13:45:00Z was a Thursday, day 60 of a leap year.
        let c = civil(1_709_214_300);
        assert_eq!(
            (c.year, c.month, c.day, c.hour, c.minute),
            (2024, 2, 29, 13, 45)
        );
        assert_eq!((c.weekday, c.yearday, c.days_in_month), (4, 60, 29));
        assert_eq!(civil(0).weekday, 4);
    }

    proptest! {
        #[test]
        fn rfc3339_round_trip(ms in -62_135_596_800_000i64..253_402_300_799_999) {
            prop_assert_eq!(parse_rfc3339(&format_rfc3339(ms)), Some(ms));
        }

        #[test]
        fn duration_round_trip(ms in 0i64..10_000_000_000_000) {
            prop_assert_eq!(parse_duration(&format_duration(ms)), Ok(ms));
        }
    }
}
