//! The status and rules routes Prometheus's clients and Grafana call besides queries:
//! `/api/v1/status/{config,flags,runtimeinfo,tsdb}`, `/api/v1/rules`, `/api/v1/alerts`,
//! `/api/v1/targets` and `/api/v1/alertmanagers`, in Prometheus's JSON shapes.
//!
//! m3query evaluates no rules, scrapes no targets and sends no alerts, so the last four
//! answer what Prometheus answers when it has none: empty lists, with the same parameter
//! checks. The status routes report our own equivalents of Prometheus's fields; where there
//! is no exact equivalent, [`RuntimeInfo`] says what stands in.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use m3query_model::time::{format_duration, format_rfc3339};
use serde::Serialize;

use super::blocking;
use super::params::Params;
use super::selector::parse_match_params;
use crate::AppState;
use crate::error::{ApiError, ApiResponse, ApiResult, ErrorType};

/// `/api/v1/status/config`.
#[derive(Debug, Serialize)]
pub struct ConfigStatus {
    /// The effective config (defaults filled in, `${VAR}`s expanded), with every secret
    /// redacted exactly as `m3query check-config` prints it.
    pub yaml: String,
}

/// `GET /api/v1/status/config`.
pub async fn config(State(state): State<Arc<AppState>>) -> ApiResult<ConfigStatus> {
    Ok(ApiResponse::new(ConfigStatus {
        yaml: state.config.to_redacted_yaml(),
    }))
}

/// `GET /api/v1/status/flags`: every command-line flag with its value as given (default
/// when not given), as strings.
pub async fn flags(State(state): State<Arc<AppState>>) -> ApiResult<BTreeMap<String, String>> {
    Ok(ApiResponse::new(state.flags()))
}

/// `/api/v1/status/runtimeinfo`, with Prometheus's field names. Stand-ins for Go runtime
/// figures:
/// - `goroutineCount`: the process's OS threads (`/proc/self/status`), which run our async
///   tasks and blocking storage work; the async runtime's worker count where `/proc` is
///   missing.
/// - `GOMAXPROCS`: the parallelism available to the process (CPU affinity and cgroup
///   quota), which sizes our async runtime as GOMAXPROCS sizes Go's scheduler.
/// - `GOMEMLIMIT`: `9223372036854775807`, Go's "no soft memory limit": m3query sets none.
/// - `GOGC`, `GODEBUG`: empty, as Go reports them unset; there is no garbage collector.
/// - `startTime`: when the server was assembled, milliseconds after the process started.
/// - `lastConfigTime`: the config is read once at start (no reload), so the same moment,
///   to the second as Prometheus gives it; `reloadConfigSuccess` is therefore always true.
/// - `corruptionCount`: damaged WAL stretches skipped at replay plus damaged blocks (the
///   embedded store's; 0 without local storage or before it is open). Prometheus counts
///   WAL corruptions only; it refuses to start on a damaged block, we leave it out.
/// - `storageRetention`: `storage.retention`, `or` `storage.retentionSize` when set,
///   formatted as Prometheus does (`15d`, `15d or 10GiB`).
#[derive(Debug, Serialize)]
pub struct RuntimeInfo {
    /// `startTime`, RFC 3339.
    #[serde(rename = "startTime")]
    pub start_time: String,
    /// `CWD`: the working directory.
    #[serde(rename = "CWD")]
    pub cwd: String,
    /// `reloadConfigSuccess`: always true (see above).
    #[serde(rename = "reloadConfigSuccess")]
    pub reload_config_success: bool,
    /// `lastConfigTime`, RFC 3339 (see above).
    #[serde(rename = "lastConfigTime")]
    pub last_config_time: String,
    /// `corruptionCount` (see above).
    #[serde(rename = "corruptionCount")]
    pub corruption_count: u64,
    /// `goroutineCount`: OS threads (see above).
    #[serde(rename = "goroutineCount")]
    pub goroutine_count: u64,
    /// `GOMAXPROCS`: available parallelism (see above).
    #[serde(rename = "GOMAXPROCS")]
    pub gomaxprocs: usize,
    /// `GOMEMLIMIT`: `i64::MAX`, no limit.
    #[serde(rename = "GOMEMLIMIT")]
    pub gomemlimit: i64,
    /// `GOGC`: empty.
    #[serde(rename = "GOGC")]
    pub gogc: String,
    /// `GODEBUG`: empty.
    #[serde(rename = "GODEBUG")]
    pub godebug: String,
    /// `storageRetention` (see above).
    #[serde(rename = "storageRetention")]
    pub storage_retention: String,
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The process's thread count from `/proc/self/status`.
fn os_threads() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
}

/// A byte count as Prometheus's `units.Base2Bytes` prints it: the largest binary unit that
/// divides it exactly (`10GiB`, `1536KiB`, `1000B`).
fn format_bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 6] = [
        ("EiB", 1 << 60),
        ("PiB", 1 << 50),
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if n >= size && n.is_multiple_of(size) {
            return format!("{}{unit}", n / size);
        }
    }
    format!("{n}B")
}

fn storage_retention(state: &AppState) -> String {
    let s = &state.config.storage;
    if !s.enabled {
        return "none (storage.enabled: false)".into();
    }
    let mut out = format_duration(s.retention.as_millis_i64());
    if s.retention_size.0 > 0 {
        out.push_str(" or ");
        out.push_str(&format_bytes(s.retention_size.0));
    }
    out
}

/// `GET /api/v1/status/runtimeinfo`.
pub async fn runtime_info(State(state): State<Arc<AppState>>) -> ApiResult<RuntimeInfo> {
    let started = unix_ms(state.started);
    let threads = os_threads()
        .unwrap_or_else(|| tokio::runtime::Handle::current().metrics().num_workers() as u64);
    let corruption_count = state
        .services_if_ready()
        .and_then(|s| s.tsdb.as_ref())
        .map_or(0, |db| db.corruption_count());
    Ok(ApiResponse::new(RuntimeInfo {
        start_time: format_rfc3339(started),
        cwd: std::env::current_dir()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        reload_config_success: true,
        last_config_time: format_rfc3339(started - started.rem_euclid(1000)),
        corruption_count,
        goroutine_count: threads,
        gomaxprocs: std::thread::available_parallelism().map_or(1, |n| n.get()),
        gomemlimit: i64::MAX,
        gogc: String::new(),
        godebug: String::new(),
        storage_retention: storage_retention(&state),
    }))
}

/// `/api/v1/status/tsdb`'s entries.
#[derive(Debug, Serialize)]
pub struct TsdbStat {
    /// The metric, label name, or `name=value`.
    pub name: String,
    /// The count (series, values, or bytes, by list).
    pub value: u64,
}

/// `headStats` of `/api/v1/status/tsdb`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeadStatsJson {
    /// Series in the head.
    pub num_series: u64,
    /// Distinct label name/value pairs in the head.
    pub num_label_pairs: u64,
    /// Chunks in the head.
    pub chunk_count: u64,
    /// The head's oldest timestamp, ms (`i64::MAX` when empty, as Prometheus).
    pub min_time: i64,
    /// The head's newest timestamp, ms (`i64::MIN` when empty, as Prometheus).
    pub max_time: i64,
}

/// `/api/v1/status/tsdb`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TsdbStatus {
    /// The head's figures.
    pub head_stats: HeadStatsJson,
    /// Series per metric name, largest first.
    pub series_count_by_metric_name: Vec<TsdbStat>,
    /// Distinct values per label name, largest first.
    pub label_value_count_by_label_name: Vec<TsdbStat>,
    /// Bytes of label values per label name, largest first.
    pub memory_in_bytes_by_label_name: Vec<TsdbStat>,
    /// Series per `name=value` pair, largest first.
    pub series_count_by_label_value_pair: Vec<TsdbStat>,
}

fn to_json(stats: Vec<m3query_tsdb::Stat>) -> Vec<TsdbStat> {
    stats
        .into_iter()
        .map(|s| TsdbStat {
            name: s.name,
            value: s.value,
        })
        .collect()
}

/// Entries per list when `limit` is absent, as Prometheus.
const DEFAULT_TSDB_LIMIT: usize = 10;

/// `GET /api/v1/status/tsdb`: the embedded store's head (the last ~2 hours), with the top
/// `limit` (default 10) entries per list.
///
/// Without local storage (`storage.enabled: false`, queries served by `remoteRead` stores
/// only) there is no head to describe, and the remote stores' own status pages are theirs to
/// give: the answer is 422 `execution`, as Prometheus in agent mode answers routes it cannot
/// serve, naming the reason, rather than empty stats a dashboard would take for an empty
/// store.
pub async fn tsdb(State(state): State<Arc<AppState>>, params: Params) -> ApiResult<TsdbStatus> {
    let limit = match params.get("limit") {
        None | Some("") => DEFAULT_TSDB_LIMIT,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 1)
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
            .ok_or_else(|| ApiError::bad_data("limit must be a positive number"))?,
    };
    if !state.config.storage.enabled {
        return Err(ApiError::new(
            ErrorType::Execution,
            "TSDB status is unavailable: local storage is off (storage.enabled: false); \
             queries are answered by the remoteRead stores, whose own status pages describe them",
        ));
    }
    let Some(db) = state.services()?.tsdb.clone() else {
        return Err(ApiError::internal("local storage is enabled but not open"));
    };
    let s = blocking(move || Ok(db.head_stats("__name__", limit))).await?;
    Ok(ApiResponse::new(TsdbStatus {
        head_stats: HeadStatsJson {
            num_series: s.num_series,
            num_label_pairs: s.num_label_pairs,
            chunk_count: s.chunk_count,
            min_time: s.min_time_ms,
            max_time: s.max_time_ms,
        },
        series_count_by_metric_name: to_json(s.series_count_by_metric_name),
        label_value_count_by_label_name: to_json(s.label_value_count_by_label_name),
        memory_in_bytes_by_label_name: to_json(s.memory_in_bytes_by_label_name),
        series_count_by_label_value_pair: to_json(s.series_count_by_label_value_pair),
    }))
}

/// An always-empty list whose JSON is `[]`.
#[derive(Debug, Default, Serialize)]
pub struct EmptyList([(); 0]);

/// `/api/v1/rules`.
#[derive(Debug, Default, Serialize)]
pub struct RuleGroups {
    /// Always empty: m3query evaluates no rules.
    pub groups: EmptyList,
}

/// Go's `strconv.ParseBool`, which Prometheus uses for boolean parameters.
fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// `GET /api/v1/rules`: no rules are evaluated here, so no groups, whatever the filters
/// (`rule_name[]`, `rule_group[]`, `file[]`). The parameters Prometheus checks are checked
/// the same way, so a client's mistake is reported here as it would be there: `type`
/// (`alert`, `record`), `exclude_alerts` (a boolean), `match[]` (selectors), `group_limit`
/// (a positive integer, required with `group_next_token`).
pub async fn rules(params: Params) -> ApiResult<RuleGroups> {
    match params.get("type").unwrap_or("") {
        "" | "alert" | "record" => {}
        other => {
            return Err(ApiError::bad_data(format!(
                "invalid parameter \"type\": not supported value {other:?}"
            )));
        }
    }
    if let Some(v) = params.get("exclude_alerts").filter(|v| !v.is_empty())
        && parse_go_bool(v).is_none()
    {
        return Err(ApiError::bad_data(format!(
            "error converting exclude_alerts: {v:?} is not a boolean"
        )));
    }
    parse_match_params(params.get_all("match[]"))?;
    let group_limit = params.get("group_limit").filter(|v| !v.is_empty());
    if let Some(v) = group_limit {
        match v.parse::<i32>() {
            Ok(n) if n > 0 => {}
            Ok(_) => {
                return Err(ApiError::bad_data(
                    "invalid parameter \"group_limit\": group_limit needs to be greater than 0",
                ));
            }
            Err(_) => {
                return Err(ApiError::bad_data(format!(
                    "invalid parameter \"group_limit\": group_limit needs to be a valid number: {v:?}"
                )));
            }
        }
    }
    if params
        .get("group_next_token")
        .is_some_and(|v| !v.is_empty())
        && group_limit.is_none()
    {
        return Err(ApiError::bad_data(
            "invalid parameter \"group_next_token\": group_limit needs to be present in order to paginate over the groups",
        ));
    }
    Ok(ApiResponse::new(RuleGroups::default()))
}

/// `/api/v1/alerts`.
#[derive(Debug, Default, Serialize)]
pub struct Alerts {
    /// Always empty: m3query evaluates no alerting rules.
    pub alerts: EmptyList,
}

/// `GET /api/v1/alerts`: no alerting rules, so no alerts.
pub async fn alerts() -> ApiResult<Alerts> {
    Ok(ApiResponse::new(Alerts::default()))
}

/// `/api/v1/targets`.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Targets {
    /// Always empty: m3query scrapes nothing.
    pub active_targets: EmptyList,
    /// Always empty.
    pub dropped_targets: EmptyList,
    /// Dropped targets per scrape pool (Prometheus 2.49+).
    pub dropped_target_counts: BTreeMap<String, u64>,
}

/// `GET /api/v1/targets`: m3query scrapes nothing (data arrives by remote write), so no
/// targets, whatever `state` and `scrapePool` ask for.
pub async fn targets() -> ApiResult<Targets> {
    Ok(ApiResponse::new(Targets::default()))
}

/// `/api/v1/alertmanagers`.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Alertmanagers {
    /// Always empty: m3query sends no alerts.
    pub active_alertmanagers: EmptyList,
    /// Always empty.
    pub dropped_alertmanagers: EmptyList,
}

/// `GET /api/v1/alertmanagers`: no alerts are sent, so no Alertmanagers.
pub async fn alertmanagers() -> ApiResult<Alertmanagers> {
    Ok(ApiResponse::new(Alertmanagers::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_as_prometheus_prints_them() {
        assert_eq!(format_bytes(10 << 30), "10GiB");
        assert_eq!(format_bytes(1536 << 10), "1536KiB");
        assert_eq!(format_bytes(1000), "1000B");
        assert_eq!(format_bytes(512 << 20), "512MiB");
    }

    fn json<T: Serialize>(x: &T) -> String {
        serde_json::to_string(x).unwrap_or_default()
    }

    #[test]
    fn empty_lists_serialize_as_prometheus_does() {
        assert_eq!(json(&RuleGroups::default()), r#"{"groups":[]}"#);
        assert_eq!(json(&Alerts::default()), r#"{"alerts":[]}"#);
        assert_eq!(
            json(&Targets::default()),
            r#"{"activeTargets":[],"droppedTargets":[],"droppedTargetCounts":{}}"#
        );
        assert_eq!(
            json(&Alertmanagers::default()),
            r#"{"activeAlertmanagers":[],"droppedAlertmanagers":[]}"#
        );
    }

    #[test]
    fn go_bools() {
        for t in ["1", "t", "true", "TRUE", "True"] {
            assert_eq!(parse_go_bool(t), Some(true));
        }
        for f in ["0", "f", "false", "FALSE", "False"] {
            assert_eq!(parse_go_bool(f), Some(false));
        }
        assert_eq!(parse_go_bool("yes"), None);
    }
}
