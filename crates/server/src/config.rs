//! m3query's configuration file.
//!
//! One YAML file, keys as in M3's query service where M3 had them. Loading is two steps:
//! environment interpolation on the raw text ([`interpolate`]), then parsing with
//! `serde-saphyr`, every struct denying unknown keys. Values are checked while parsing where a
//! single key decides (so the error points at its line), and in [`Config::validate`] where
//! several keys must agree. Every key is documented in `config/m3query.yml`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use m3query_model::redact::{redact_config_error, redact_urls};
use m3query_telemetry::LoggingConfig;
use m3query_telemetry::config::{Duration, HttpUrl, REDACTED, TracingConfig};
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

/// Why a config could not be loaded. The message names the file, and the line and key where
/// the YAML parser knows them.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The config file.
        path: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A `${VAR}` reference that cannot be replaced.
    #[error("{path}: line {line}: {message}")]
    Interpolate {
        /// The config file.
        path: String,
        /// The line (1-based).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The YAML does not parse or has unknown or mistyped keys.
    #[error("{path}: {message}")]
    Parse {
        /// The config file.
        path: String,
        /// The parser's message, with secrets masked.
        message: String,
    },
    /// Values that parse but cannot work (a zero limit, an empty path).
    #[error("{path}: {message}")]
    Invalid {
        /// The config file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// `message` prefixed with `line N: ` when it names a dotted key (`logging.level`,
/// `query.timeout`) that `text` sets, so a validation error points where a parse error would.
fn with_key_line(message: &str, text: &str) -> String {
    let keys = message
        .split(|c: char| c.is_whitespace() || c == ':' || c == ',')
        .filter(|t| t.contains('.') && t.split('.').all(|p| !p.is_empty()))
        .filter(|t| {
            t.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
        });
    for key in keys {
        let path: Vec<&str> = key.split('.').collect();
        if let Some(line) = line_of_key(text, &path) {
            return format!("line {line}: {message}");
        }
    }
    message.to_string()
}

/// The 1-based line where the YAML block mapping `text` sets the key at `path`, by
/// indentation (flow mappings and list items are not followed).
fn line_of_key(text: &str, path: &[&str]) -> Option<usize> {
    let mut stack: Vec<(usize, &str)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('-') {
            continue;
        }
        let Some((key, _)) = trimmed.split_once(':') else {
            continue;
        };
        let indent = line.len() - trimmed.len();
        while stack.last().is_some_and(|&(ind, _)| ind >= indent) {
            stack.pop();
        }
        stack.push((indent, key.trim().trim_matches(['"', '\''])));
        if stack.len() == path.len() && stack.iter().zip(path).all(|(&(_, k), p)| k == *p) {
            return Some(i + 1);
        }
    }
    None
}

/// Replaces `${VAR}` and `${VAR:default}` with environment values, and `$$` with `$`.
/// Whole-line comments are left alone, so documentation may show placeholders.
///
/// `${VAR}` with VAR unset is an error naming VAR; `${VAR:default}` uses `default` verbatim
/// when VAR is unset (so `${TOKEN:""}` yields `""`, an empty YAML string). Values are inserted
/// verbatim, as M3 does; quote the placeholder in YAML if a value may hold `: ` or `#`.
pub fn interpolate(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, (usize, String)> {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
        } else {
            let l = interpolate_line(line, &lookup).map_err(|(_, m)| (i + 1, m))?;
            out.push_str(&l);
        }
    }
    Ok(out)
}

fn interpolate_line(
    text: &str,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<String, (usize, String)> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let line_of = |rest: &str| text[..text.len() - rest.len()].matches('\n').count() + 1;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                return Err((line_of(&rest[i..]), "unterminated ${ in config".into()));
            };
            let expr = &body[..end];
            let (name, default) = match expr.split_once(':') {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            let valid_name = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid_name {
                return Err((
                    line_of(&rest[i..]),
                    format!("invalid environment variable name {name:?} in ${{{expr}}}"),
                ));
            }
            match (lookup(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err((
                        line_of(&rest[i..]),
                        format!(
                            "environment variable {name} is not set (use ${{{name}:default}} to give a default)"
                        ),
                    ));
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// A listen address (`0.0.0.0:7201`, `[::1]:7201`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ListenAddress(pub SocketAddr);

impl fmt::Debug for ListenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl<'de> Deserialize<'de> for ListenAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        // Accept `:7201` as Go servers do: all interfaces.
        let full = if s.starts_with(':') {
            format!("0.0.0.0{s}")
        } else {
            s.clone()
        };
        full.parse().map(ListenAddress).map_err(|_| {
            de::Error::custom(format!(
                "invalid listen address {s:?}: expected ip:port, like 0.0.0.0:7201 or 127.0.0.1:7201"
            ))
        })
    }
}

impl Serialize for ListenAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

/// A byte size: an integer, or a number with a unit (`64MiB`, `512KB`, `1GB`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Bytes in `s` (`64MiB`, `512KB`, `1GB` or a plain integer); `None` if it is not a size.
    pub fn parse(s: &str) -> Option<u64> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: f64 = num.parse().ok()?;
        let mult: f64 = match unit.trim() {
            "" | "B" => 1.0,
            "KB" | "kB" => 1e3,
            "MB" => 1e6,
            "GB" => 1e9,
            "TB" => 1e12,
            "KiB" => 1024.0,
            "MiB" => 1024.0 * 1024.0,
            "GiB" => 1024.0 * 1024.0 * 1024.0,
            "TiB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
            _ => return None,
        };
        let v = (n * mult).round();
        (v.is_finite() && v >= 0.0 && v < u64::MAX as f64).then_some(v as u64)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte size like 1048576, 64MiB or 512MB")
            }
            fn visit_u64<E>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a byte size must not be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map(ByteSize).ok_or_else(|| {
                    E::custom(format!(
                        "invalid byte size {v:?}: use a number with an optional unit (B, KB, MB, GB, KiB, MiB, GiB)"
                    ))
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

/// The whole file.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Config {
    /// The Prometheus API listens here (M3's default `0.0.0.0:7201`).
    pub listen_address: ListenAddress,
    /// `logging:`: level and format of the logs.
    pub logging: LoggingConfig,
    /// `metrics:`: the self-metrics endpoint.
    pub metrics: MetricsConfig,
    /// `tracing:`: the trace backend, sampling and propagation.
    pub tracing: TracingConfig,
    /// `query:`: timeouts, concurrency and engine limits.
    pub query: QueryConfig,
    /// How far back an instant selector looks for a sample (Prometheus's lookback delta).
    pub lookback_duration: Duration,
    /// `limits:`: per-query series limits.
    pub limits: LimitsConfig,
    /// `middleware:`: the slow-request log.
    pub middleware: MiddlewareConfig,
    /// `http:`: connection, header and body limits.
    pub http: HttpConfig,
    /// `storage:`: the embedded TSDB.
    pub storage: StorageConfig,
    /// `remoteRead:`: stores queried alongside (or instead of) the local one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remote_read: Vec<RemoteReadConfig>,
    /// `ui:`: the built-in query page.
    pub ui: UiConfig,
}

/// `ui:`: the built-in query page served at `/`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct UiConfig {
    /// Base URL of a Jaeger UI that receives our traces; the page links each query to
    /// `<jaegerURL>/trace/<X-Trace-Id>`. Empty: no trace links. An http(s) URL, or a path
    /// (`/jaeger`) when Jaeger is behind the same reverse proxy. Shown to the page's users.
    #[serde(rename = "jaegerURL")]
    pub jaeger_url: String,
}

impl UiConfig {
    fn validate(&self) -> Result<(), String> {
        let u = &self.jaeger_url;
        if u.is_empty() || (u.starts_with('/') && !u.starts_with("//")) {
            return Ok(());
        }
        HttpUrl::parse(u)
            .map(|_| ())
            .map_err(|e| format!("ui.jaegerURL: {e} (or give a path such as /jaeger, or \"\")"))
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen_address: ListenAddress(SocketAddr::from(([0, 0, 0, 0], 7201))),
            logging: LoggingConfig::default(),
            metrics: MetricsConfig::default(),
            tracing: TracingConfig::default(),
            query: QueryConfig::default(),
            lookback_duration: Duration::from_secs(300),
            limits: LimitsConfig::default(),
            middleware: MiddlewareConfig::default(),
            http: HttpConfig::default(),
            storage: StorageConfig::default(),
            remote_read: Vec::new(),
            ui: UiConfig::default(),
        }
    }
}

/// `metrics:`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `metrics.prometheus:`: where `/metrics` is served.
    pub prometheus: PrometheusMetricsConfig,
}

/// `metrics.prometheus:`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct PrometheusMetricsConfig {
    /// Path of our own metrics in Prometheus text format.
    pub handler_path: String,
    /// Serve metrics on their own address too (M3 uses `0.0.0.0:7203`); always also served
    /// on the main listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_address: Option<ListenAddress>,
}

impl Default for PrometheusMetricsConfig {
    fn default() -> Self {
        PrometheusMetricsConfig {
            handler_path: "/metrics".into(),
            listen_address: None,
        }
    }
}

/// `query:`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct QueryConfig {
    /// Longest a query may run; a request's `timeout` parameter or `M3-Timeout` header may
    /// lower it, never raise it.
    pub timeout: Duration,
    /// `query.prometheus:`: Prometheus engine limits.
    pub prometheus: QueryPrometheusConfig,
    /// Answer from the stores that responded when a remote store fails (with a warning);
    /// when false, any store failure fails the query with 503.
    pub partial_response: bool,
    /// Turns on experimental PromQL functions and aggregations (`limitk`, `limit_ratio`,
    /// `sort_by_label`, `mad_over_time`, ...), as Prometheus's
    /// `--enable-feature=promql-experimental-functions`.
    pub experimental_functions: bool,
    /// Longest query range in points per series (Prometheus: 11,000).
    pub max_points_per_series: u64,
    /// Queries (instant and range) evaluated at once, as Prometheus's
    /// `--query.max-concurrency`; 0 (the default): twice the CPU cores, at most 20 (see
    /// [`Config::query_max_concurrent`]). More wait in a queue, up to their deadline.
    pub max_concurrent: usize,
    /// Queries that may wait for a slot; beyond this a query is refused at once with 503.
    pub max_queued: usize,
    /// Range query results kept for dashboards' refreshes.
    pub results_cache: ResultsCacheConfig,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            timeout: Duration::from_secs(30),
            prometheus: QueryPrometheusConfig::default(),
            partial_response: true,
            experimental_functions: false,
            max_points_per_series: 11_000,
            max_concurrent: 0,
            max_queued: 500,
            results_cache: ResultsCacheConfig::default(),
        }
    }
}

/// `query.resultsCache:`: range query results kept per split interval, so a dashboard's
/// refresh computes only the new tail (see [`crate::results_cache`]).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ResultsCacheConfig {
    /// Off by default, as in Thanos and Cortex: it trades memory for refresh latency.
    pub enabled: bool,
    /// Memory bound of the cached results; the least recently used go first.
    pub max_bytes: ByteSize,
    /// Results are cached in pieces aligned to this interval (from the Unix epoch), so a
    /// moving window reuses whole pieces and old ones age out independently.
    pub split_interval: Duration,
    /// Steps newer than now minus this are never cached: samples may still arrive for them
    /// (the only protection for remoteRead stores, which cannot report late writes).
    pub freshness: Duration,
}

impl Default for ResultsCacheConfig {
    fn default() -> Self {
        ResultsCacheConfig {
            enabled: false,
            max_bytes: ByteSize(256 << 20),
            split_interval: Duration::from_secs(24 * 3600),
            freshness: Duration::from_secs(600),
        }
    }
}

/// `query.prometheus:`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct QueryPrometheusConfig {
    /// Most samples a query may hold in memory at once (M3's default 100,000,000).
    pub max_samples_per_query: u64,
}

impl Default for QueryPrometheusConfig {
    fn default() -> Self {
        QueryPrometheusConfig {
            max_samples_per_query: 100_000_000,
        }
    }
}

/// `limits:`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct LimitsConfig {
    /// `limits.perQuery:`.
    pub per_query: PerQueryLimits,
}

/// `limits.perQuery:`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct PerQueryLimits {
    /// Most series one query may fetch (0: no limit). `M3-Limit-Max-Series` lowers it.
    pub max_fetched_series: u64,
    /// Over the limit: fail the query (true) or answer with the first series and the
    /// `M3-Results-Limited` header (false). `M3-Limit-Require-Exhaustive` overrides it.
    pub require_exhaustive: bool,
}

impl Default for PerQueryLimits {
    fn default() -> Self {
        PerQueryLimits {
            max_fetched_series: 100_000,
            require_exhaustive: true,
        }
    }
}

/// `middleware:`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MiddlewareConfig {
    /// `middleware.logging:`: which requests are logged as slow.
    pub logging: SlowQueryLogConfig,
}

/// `middleware.logging:`: the slow-request log.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlowQueryLogConfig {
    /// Requests slower than this are logged once, with their query and trace id.
    pub threshold: Duration,
}

impl Default for SlowQueryLogConfig {
    fn default() -> Self {
        SlowQueryLogConfig {
            threshold: Duration::from_secs(1),
        }
    }
}

/// `http:`: limits of the HTTP server.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct HttpConfig {
    /// Largest request body accepted as sent (compressed, for remote write); larger gets 413.
    pub max_request_body_bytes: ByteSize,
    /// Largest remote-write body after snappy decompression; larger gets 413.
    pub max_decompressed_body_bytes: ByteSize,
    /// How long in-flight requests may run after SIGTERM/SIGINT before the server stops.
    pub shutdown_timeout: Duration,
    /// Remote-read requests served at once; more wait (Prometheus's default 10).
    pub remote_read_concurrency: usize,
    /// Remote-read requests that may wait for a slot; beyond this 503 at once.
    pub remote_read_queue: usize,
    /// Remote-write requests decompressed and decoded at once; more wait in a queue.
    pub remote_write_concurrency: usize,
    /// Remote-write requests that may wait; beyond this 503, which senders retry.
    pub remote_write_queue: usize,
    /// A request's headers must arrive within this (also how long an idle keep-alive
    /// connection is kept); otherwise the connection is closed.
    pub header_read_timeout: Duration,
    /// A request's body must arrive within this from the request's start; otherwise 408.
    pub body_read_timeout: Duration,
    /// Connections served at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_request_body_bytes: ByteSize(32 << 20),
            max_decompressed_body_bytes: ByteSize(256 << 20),
            shutdown_timeout: Duration::from_secs(10),
            remote_read_concurrency: 10,
            remote_read_queue: 100,
            remote_write_concurrency: 8,
            remote_write_queue: 256,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(60),
            max_connections: 4096,
        }
    }
}

/// WAL sync policy of the embedded store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum WalSync {
    /// Concurrent writes share one fsync; a write is acknowledged after its fsync.
    #[default]
    GroupCommit,
    /// One fsync per write.
    Always,
    /// Fsync on a timer (`storage.walSyncInterval`); a crash may lose the last interval.
    Interval,
    /// Never fsync (tests, throwaway data).
    Never,
}

/// `storage:`: the embedded TSDB.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct StorageConfig {
    /// Store data locally. With `false`, m3query only queries `remoteRead` stores and remote
    /// write is refused.
    pub enabled: bool,
    /// The data directory (blocks and WAL).
    pub path: PathBuf,
    /// Delete blocks older than this.
    pub retention: Duration,
    /// Also delete the oldest blocks while the store is larger than this (0: no size limit).
    pub retention_size: ByteSize,
    /// Accept samples up to this far behind a series' newest sample (0: in-order only).
    pub out_of_order_window: Duration,
    /// Refuse samples more than this far ahead of the server's clock (0: no limit), as
    /// Mimir's creation grace period.
    pub future_grace_period: Duration,
    /// When the WAL is fsynced: at every commit, or on a timer.
    pub wal_sync: WalSync,
    /// Timer of `walSync: interval`.
    pub wal_sync_interval: Duration,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            enabled: true,
            path: PathBuf::from("./data"),
            retention: Duration::from_secs(15 * 86_400),
            retention_size: ByteSize(0),
            out_of_order_window: Duration::from_secs(0),
            future_grace_period: Duration::from_secs(600),
            wal_sync: WalSync::GroupCommit,
            wal_sync_interval: Duration::from_secs(1),
        }
    }
}

/// Basic auth for a remote store.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    /// The user name.
    pub username: String,
    /// The password (redacted in `check-config`).
    pub password: String,
}

/// One `remoteRead:` entry: a Prometheus-compatible store read through remote read.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RemoteReadConfig {
    /// The store's remote-read endpoint, e.g. `http://prometheus:9090/api/v1/read`.
    pub url: HttpUrl,
    /// Name in warnings, spans and metrics; defaults to the URL's host and port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Per-request time limit for this store.
    #[serde(default = "default_remote_timeout")]
    pub timeout: Duration,
    /// Extra headers sent with every read (values redacted in `check-config`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// HTTP basic authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
    /// `Authorization: Bearer` token (redacted in `check-config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token: Option<String>,
    /// Also ask this store for recent data (within the local store's head window).
    #[serde(default = "yes")]
    pub read_recent: bool,
    /// Only send queries whose selectors have these label values (`{region: eu}`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub required_matchers: BTreeMap<String, String>,
    /// Ask for STREAMED_XOR_CHUNKS, falling back to SAMPLES.
    #[serde(default = "yes")]
    pub prefer_streamed: bool,
    /// Labels that tell HA replicas apart (`[replica]`): dropped, one replica kept per gap.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dedup_labels: Vec<String>,
    /// Largest answer one read may bring from this store (the compressed body of a SAMPLES
    /// answer, all frames of a streamed one); over it the read fails.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: ByteSize,
}

fn default_remote_timeout() -> Duration {
    Duration::from_secs(30)
}

/// 1 GiB: the cap that was fixed before it became `remoteRead[].maxResponseBytes`.
fn default_max_response_bytes() -> ByteSize {
    ByteSize(1 << 30)
}

fn yes() -> bool {
    true
}

impl Config {
    /// Reads, interpolates, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Config::from_yaml(&shown, &text, |k| std::env::var(k).ok())
    }

    /// Parses config text; `name` is what errors call it.
    pub fn from_yaml(
        name: &str,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        // Error messages quote config lines and echo values, secrets included (also those
        // interpolated from the environment): every message goes through
        // `redact_config_error` with the text it came from.
        let raw = text;
        let text = interpolate(text, env).map_err(|(line, message)| ConfigError::Interpolate {
            path: name.to_string(),
            line,
            message: redact_config_error(&message, raw),
        })?;
        // An empty file (or only comments) is the default config.
        let cfg: Config = if text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            Config::default()
        } else {
            serde_saphyr::from_str(&text).map_err(|e| ConfigError::Parse {
                path: name.to_string(),
                message: redact_config_error(&e.to_string(), &text),
            })?
        };
        cfg.validate().map_err(|message| ConfigError::Invalid {
            path: name.to_string(),
            message: redact_config_error(&with_key_line(&message, &text), &text),
        })?;
        Ok(cfg)
    }

    /// Rules that involve several keys.
    pub fn validate(&self) -> Result<(), String> {
        self.logging.validate().map_err(|e| e.to_string())?;
        self.tracing.validate()?;
        self.ui.validate()?;
        if !self.metrics.prometheus.handler_path.starts_with('/') {
            return Err(format!(
                "metrics.prometheus.handlerPath must start with /, got {:?}",
                self.metrics.prometheus.handler_path
            ));
        }
        if self.query.timeout.0.is_zero() {
            return Err("query.timeout must be positive".into());
        }
        if self.lookback_duration.0.is_zero() {
            return Err("lookbackDuration must be positive".into());
        }
        if self.query.prometheus.max_samples_per_query == 0 {
            return Err("query.prometheus.maxSamplesPerQuery must be at least 1".into());
        }
        if self.query.max_points_per_series == 0 {
            return Err("query.maxPointsPerSeries must be at least 1".into());
        }
        if self.query.results_cache.split_interval.0 < std::time::Duration::from_secs(1) {
            return Err("query.resultsCache.splitInterval must be at least 1s".into());
        }
        if self.storage.enabled && self.storage.path.as_os_str().is_empty() {
            return Err("storage.path must not be empty".into());
        }
        if self.storage.retention.0.is_zero() {
            return Err("storage.retention must be positive".into());
        }
        if !self.storage.enabled && self.remote_read.is_empty() {
            return Err(
                "storage.enabled is false and there is no remoteRead store: nothing to query"
                    .into(),
            );
        }
        if self.http.remote_write_concurrency == 0 {
            return Err("http.remoteWriteConcurrency must be at least 1".into());
        }
        if self.http.max_connections == 0 {
            return Err("http.maxConnections must be at least 1".into());
        }
        if self.http.header_read_timeout.0.is_zero() || self.http.body_read_timeout.0.is_zero() {
            return Err("http.headerReadTimeout and http.bodyReadTimeout must be positive".into());
        }
        if self.http.max_request_body_bytes.0 == 0 || self.http.max_decompressed_body_bytes.0 == 0 {
            return Err("http body limits must be positive".into());
        }
        let mut names = std::collections::HashSet::new();
        for (i, r) in self.remote_read.iter().enumerate() {
            if r.basic_auth.is_some() && r.bearer_token.is_some() {
                return Err(format!(
                    "remoteRead[{i}] ({}): set basicAuth or bearerToken, not both",
                    r.url
                ));
            }
            if r.max_response_bytes.0 == 0 {
                return Err(format!(
                    "remoteRead[{i}] ({}): maxResponseBytes must be positive",
                    self.remote_read_name(i)
                ));
            }
            if !names.insert(self.remote_read_name(i)) {
                return Err(format!(
                    "remoteRead[{i}]: name {:?} is used twice; give each store a distinct name",
                    self.remote_read_name(i)
                ));
            }
        }
        Ok(())
    }

    /// `query.maxConcurrent`, with 0 resolved to twice the CPU cores, at most Prometheus's 20.
    /// Queries are CPU-bound: more running than cores only adds memory and latency (measured
    /// on 2 cores, 100 clients: 20 at once gave the same query throughput as 4, with 3x the
    /// peak memory, writes at 12 instead of 140 req/s and label lookups 30x slower).
    pub fn query_max_concurrent(&self) -> usize {
        match self.query.max_concurrent {
            0 => std::thread::available_parallelism()
                .map_or(2, |n| n.get() * 2)
                .clamp(2, 20),
            n => n,
        }
    }

    /// The name of remote store `i`: its `name`, else the URL's host and port (never its
    /// userinfo: the name is in warnings, spans and metrics).
    pub fn remote_read_name(&self, i: usize) -> String {
        let r = &self.remote_read[i];
        if let Some(n) = &r.name {
            return n.clone();
        }
        r.url
            .0
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| {
                u.authority()
                    .map(|a| a.as_str().rsplit('@').next().unwrap_or("").to_string())
            })
            .unwrap_or_else(|| redact_urls(&r.url.0).into_owned())
    }

    /// A copy with every secret replaced by `<redacted>`: tokens, passwords, header values,
    /// and URL passwords by `xxxxx`.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        c.tracing = c.tracing.redacted();
        c.ui.jaeger_url = redact_urls(&c.ui.jaeger_url).into_owned();
        for r in &mut c.remote_read {
            r.url = HttpUrl(redact_urls(&r.url.0).into_owned());
            for v in r.headers.values_mut() {
                *v = REDACTED.into();
            }
            if let Some(b) = &mut r.basic_auth {
                b.password = REDACTED.into();
            }
            if r.bearer_token.is_some() {
                r.bearer_token = Some(REDACTED.into());
            }
        }
        c
    }

    /// The effective config as YAML (secrets redacted), for `check-config`.
    pub fn to_redacted_yaml(&self) -> String {
        serde_saphyr::to_string(&self.redacted())
            .unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn ui_jaeger_url_is_a_url_a_path_or_empty() {
        for ok in [
            "",
            "http://jaeger:16686",
            "https://j.example/jaeger",
            "/jaeger",
        ] {
            let text = format!("ui:\n  jaegerURL: \"{ok}\"\n");
            let c = Config::from_yaml("c.yml", &text, |_| None).expect(ok);
            assert_eq!(c.ui.jaeger_url, ok);
        }
        for bad in ["jaeger:16686", "ftp://x", "//host/x"] {
            let text = format!("ui:\n  jaegerURL: \"{bad}\"\n");
            let err = Config::from_yaml("c.yml", &text, |_| None).expect_err(bad);
            assert!(err.to_string().contains("ui.jaegerURL"), "{err}");
        }
        let text = "ui:\n  jaegerURL: http://u:secret@jaeger:16686\n";
        let c = Config::from_yaml("c.yml", text, |_| None).expect("parses");
        assert!(!c.to_redacted_yaml().contains("secret"));
    }

    #[test]
    fn validation_errors_name_the_line_of_their_key() {
        let text = "listenAddress: 127.0.0.1:1\nlogging:\n  format: text\n  level: warning\n";
        let err = Config::from_yaml("c.yml", text, |_| None).expect_err("warning is not a level");
        let msg = err.to_string();
        assert!(
            msg.contains("line 4") && msg.contains("logging.level"),
            "{msg}"
        );
        assert!(msg.contains("\"warning\" is not a level"), "{msg}");
        for ok in ["warn", "INFO", "info,m3query_tsdb=debug", "error,hyper=off"] {
            let text = format!("logging:\n  level: \"{ok}\"\n");
            assert!(Config::from_yaml("c.yml", &text, |_| None).is_ok(), "{ok}");
        }
        for bad in ["verbose", "info,m3query_tsdb=loud", "m3query_tsdb"] {
            let text = format!("logging:\n  level: \"{bad}\"\n");
            assert!(
                Config::from_yaml("c.yml", &text, |_| None).is_err(),
                "{bad}"
            );
        }
        assert_eq!(
            line_of_key("a:\n  b: 1\nc:\n  b: 2\n", &["c", "b"]),
            Some(4)
        );
        assert_eq!(line_of_key("a:\n  b: 1\n", &["b"]), None);
    }

    #[test]
    fn interpolation() {
        let e = env(&[("A", "x"), ("EMPTY", "")]);
        assert_eq!(interpolate("a: ${A}", &e).expect("ok"), "a: x");
        assert_eq!(interpolate("a: ${A:d}", &e).expect("ok"), "a: x");
        assert_eq!(interpolate("a: ${B:d}", &e).expect("ok"), "a: d");
        assert_eq!(interpolate("a: ${B:\"\"}", &e).expect("ok"), "a: \"\"");
        assert_eq!(interpolate("a: ${EMPTY:d}", &e).expect("ok"), "a: ");
        assert_eq!(interpolate("a: $${A} $x", &e).expect("ok"), "a: ${A} $x");
        assert_eq!(
            interpolate("a: ${B:http://h:1}", &e).expect("ok"),
            "a: http://h:1"
        );
        let err = interpolate("x: 1\na: ${NOPE}", &e).expect_err("unset");
        assert_eq!(err.0, 2);
        assert!(err.1.contains("NOPE"), "{}", err.1);
        assert!(interpolate("a: ${A", &e).is_err());
        assert!(interpolate("a: ${A-B}", &e).is_err());
        assert_eq!(
            interpolate("# ${NOPE}\na: ${A}", &e).expect("comments untouched"),
            "# ${NOPE}\na: x"
        );
    }

    #[test]
    fn defaults_and_full_shape() {
        let c = Config::from_yaml("t", "", |_| None).expect("empty is default");
        assert_eq!(c, Config::default());
        assert_eq!(c.listen_address.0.port(), 7201);
        let y = r#"
listenAddress: 127.0.0.1:7201
logging: { level: debug, format: json }
metrics: { prometheus: { handlerPath: /metrics, listenAddress: 127.0.0.1:7203 } }
tracing:
  serviceName: m3query
  backend: jaeger
  jaeger:
    sampler: { type: remote, param: 0.001, samplingServerURL: "http://127.0.0.1:5778/sampling" }
    reporter: { localAgentHostPort: "localhost:6831", queueSize: 100, bufferFlushInterval: 1s }
  lightstep:
    access_token: ${LIGHTSTEP_ACCESS_TOKEN:""}
    collector: { scheme: https, host: my-satellite.example, port: 8181 }
query:
  timeout: 30s
  prometheus: { maxSamplesPerQuery: 100000000 }
lookbackDuration: 5m
limits: { perQuery: { maxFetchedSeries: 100000, requireExhaustive: true } }
middleware: { logging: { threshold: 1s } }
storage:
  path: ./data
  retention: 15d
remoteRead:
  - url: http://prometheus-a:9090/api/v1/read
"#;
        let c = Config::from_yaml("t", y, |_| None).expect("design shape parses");
        assert_eq!(c.lookback_duration, Duration::from_secs(300));
        assert_eq!(c.remote_read_name(0), "prometheus-a:9090");
        assert_eq!(
            c.tracing
                .lightstep
                .as_ref()
                .map(|l| l.access_token.as_str()),
            Some("")
        );
    }

    #[test]
    fn errors_name_line_and_key() {
        let e = Config::from_yaml("f.yml", "query:\n  timeout: 1s\n  bogus: 1\n", |_| None)
            .expect_err("unknown key")
            .to_string();
        assert!(
            e.contains("f.yml") && e.contains("line 3") && e.contains("bogus"),
            "{e}"
        );
        let e = Config::from_yaml("f.yml", "storage:\n  retention: soon\n", |_| None)
            .expect_err("bad duration")
            .to_string();
        assert!(e.contains("line 2") && e.contains("retention"), "{e}");
        let e = Config::from_yaml("f.yml", "listenAddress: nowhere\n", |_| None)
            .expect_err("bad addr")
            .to_string();
        assert!(e.contains("listenAddress"), "{e}");
        let e = Config::from_yaml("f.yml", "storage: {enabled: false}\n", |_| None)
            .expect_err("nothing to query")
            .to_string();
        assert!(e.contains("nothing to query"), "{e}");
    }

    #[test]
    fn remote_store_names_urls_and_caps_keep_secrets_out() {
        let y = "remoteRead:\n  - url: http://u:pw9@prom:9090/api/v1/read\n  - url: http://b/api/v1/read\n    maxResponseBytes: 64MiB\n";
        let c = Config::from_yaml("t", y, |_| None).expect("valid");
        assert_eq!(c.remote_read_name(0), "prom:9090");
        assert_eq!(c.remote_read[0].max_response_bytes, ByteSize(1 << 30));
        assert_eq!(c.remote_read[1].max_response_bytes, ByteSize(64 << 20));
        let shown = c.to_redacted_yaml();
        assert!(
            !shown.contains("pw9") && shown.contains("u:xxxxx@prom"),
            "{shown}"
        );
        let e = Config::from_yaml(
            "t",
            "remoteRead:\n  - url: http://b/api/v1/read\n    bearerToken: ${T}\n    timeout: ${T}\n",
            |_| Some("tok-77".into()),
        )
        .expect_err("bad timeout")
        .to_string();
        assert!(!e.contains("tok-77") && e.contains("line 4"), "{e}");
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(ByteSize::parse("64MiB"), Some(64 << 20));
        assert_eq!(ByteSize::parse("1.5KB"), Some(1500));
        assert_eq!(ByteSize::parse("12"), Some(12));
        assert_eq!(ByteSize::parse("12 parsecs"), None);
    }
}
