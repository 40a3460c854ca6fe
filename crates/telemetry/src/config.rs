//! The `tracing:` section of m3query's configuration.
//!
//! Key names follow M3 (`serviceName`, `backend`), jaeger-client-go's `config.Configuration`
//! (`sampler`, `reporter`, `headers`, ...) and lightstep-tracer-go's `Options` (`access_token`,
//! `collector`, `tags`), so an M3 operator's config keeps working. Every struct denies unknown
//! keys; values are checked while parsing, so errors point at the offending line.

use std::collections::BTreeMap;
use std::fmt;
use std::net::ToSocketAddrs;

use m3query_model::redact::redact_urls;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

/// What replaces secrets in `check-config` output.
pub const REDACTED: &str = "<redacted>";

/// A duration in config: a Prometheus (`5m`, `15d`) or Go (`1.5s`, `500ms`) duration string.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// `s` seconds.
    pub const fn from_secs(s: u64) -> Self {
        Duration(std::time::Duration::from_secs(s))
    }
    /// `ms` milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms))
    }
    /// Whole milliseconds, saturating at `i64::MAX`.
    pub fn as_millis_i64(&self) -> i64 {
        i64::try_from(self.0.as_millis()).unwrap_or(i64::MAX)
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if u128::from(self.0.subsec_nanos() % 1_000_000) == 0 {
            f.write_str(&m3query_model::time::format_duration(
                i64::try_from(ms).unwrap_or(i64::MAX),
            ))
        } else {
            write!(f, "{}us", self.0.as_micros())
        }
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        m3query_model::time::parse_config_duration(&s)
            .map(Duration)
            .map_err(|_| {
                de::Error::custom(format!(
                    "invalid duration {s:?}: use a number with a unit, like 500ms, 30s, 5m, 1h or 15d"
                ))
            })
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// A `host:port` address, checked for shape (not resolved: DNS may not be up at start).
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct HostPort(pub String);

impl HostPort {
    /// Checks `host:port` shape: a non-empty host and a numeric port.
    pub fn parse(s: &str) -> Result<HostPort, String> {
        let bad = || {
            format!(
                "invalid address {s:?}: expected host:port, like localhost:6831 or 10.0.0.1:6831"
            )
        };
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(bad());
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(bad());
        }
        Ok(HostPort(s.to_string()))
    }

    /// Resolves the address now (at startup, and again when sends fail).
    pub fn resolve(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address for host"))
    }
}

impl fmt::Debug for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for HostPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HostPort::parse(&s).map_err(de::Error::custom)
    }
}

/// An http(s) URL, checked for scheme and host.
#[derive(Clone, PartialEq, Eq, Serialize, Debug)]
#[serde(transparent)]
pub struct HttpUrl(pub String);

impl HttpUrl {
    /// Accepts an `http://` or `https://` URL with a host.
    pub fn parse(s: &str) -> Result<HttpUrl, String> {
        let uri: http::Uri = s.parse().map_err(|e| format!("invalid URL {s:?}: {e}"))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => {
                return Err(format!(
                    "invalid URL {s:?}: the scheme must be http or https"
                ));
            }
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(format!("invalid URL {s:?}: no host"));
        }
        Ok(HttpUrl(s.to_string()))
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for HttpUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HttpUrl::parse(&s).map_err(de::Error::custom)
    }
}

/// Which tracing backend receives spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// No export. Requests are still traced for `X-Trace-Id`-less logs: nothing leaves.
    #[default]
    #[serde(rename = "")]
    None,
    /// Jaeger: compact thrift to the agent over UDP, or thrift over HTTP to a collector.
    Jaeger,
    /// Lightstep's collector, as lightstep-tracer-go reports.
    Lightstep,
    /// OpenTelemetry's OTLP, over gRPC or HTTP.
    Otlp,
}

impl<'de> Deserialize<'de> for Backend {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.to_ascii_lowercase().as_str() {
            "" | "none" => Ok(Backend::None),
            "jaeger" => Ok(Backend::Jaeger),
            "lightstep" => Ok(Backend::Lightstep),
            "otlp" => Ok(Backend::Otlp),
            _ => Err(de::Error::custom(format!(
                "unknown tracing backend {s:?}: use jaeger, lightstep, otlp, or \"\" for none"
            ))),
        }
    }
}

/// `tracing:`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct TracingConfig {
    /// Service name in every backend. M3's default for the query service.
    pub service_name: String,
    /// `jaeger`, `lightstep`, `otlp`, or empty for none. When empty but a `jaeger:` section
    /// is present, Jaeger is used (see [`TracingConfig::effective_backend`]).
    pub backend: Backend,
    /// `tracing.jaeger:`, jaeger-client-go's configuration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jaeger: Option<JaegerConfig>,
    /// `tracing.lightstep:`, lightstep-tracer-go's options.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lightstep: Option<LightstepConfig>,
    /// `tracing.otlp:`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp: Option<OtlpConfig>,
    /// Exports requests the head sampler passed over when they turn out slow or failed.
    pub tail_capture: TailCaptureConfig,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            service_name: "m3query".to_string(),
            backend: Backend::None,
            jaeger: None,
            lightstep: None,
            otlp: None,
            tail_capture: TailCaptureConfig::default(),
        }
    }
}

/// `tracing.tailCapture`: a request the head sampler did not sample is still exported, with
/// its phase spans, when it is slower than `threshold` or answers 5xx. Head sampling at 0.1%
/// otherwise hides 999 of 1,000 of exactly the requests operators search Jaeger for.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct TailCaptureConfig {
    /// Capture such requests at all.
    pub enabled: bool,
    /// Slower than this is captured; unset means `middleware.logging.threshold`, so the slow
    /// log's requests are the ones found in Jaeger.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<Duration>,
    /// Capture requests that answer 5xx (or fail in the handler).
    pub errors: bool,
    /// At most this many captured traces per second (a burst of as many); more are counted on
    /// `/metrics`, not exported, so a storm of failures cannot flood the backend.
    pub max_per_second: f64,
}

impl Default for TailCaptureConfig {
    fn default() -> Self {
        TailCaptureConfig {
            enabled: true,
            threshold: None,
            errors: true,
            max_per_second: 10.0,
        }
    }
}

impl TracingConfig {
    /// The backend in force: the configured one, or Jaeger when only `jaeger:` is given, and
    /// none when `jaeger.disabled` is set.
    pub fn effective_backend(&self) -> Backend {
        let b = match self.backend {
            Backend::None if self.jaeger.is_some() => Backend::Jaeger,
            b => b,
        };
        if b == Backend::Jaeger && self.jaeger.as_ref().is_some_and(|j| j.disabled) {
            return Backend::None;
        }
        b
    }

    /// The service name spans are reported under: `jaeger.serviceName` overrides the
    /// top-level one for the Jaeger backend, as jaeger-client-go's own key does.
    pub fn effective_service_name(&self) -> &str {
        if self.effective_backend() == Backend::Jaeger
            && let Some(n) = self
                .jaeger
                .as_ref()
                .and_then(|j| j.service_name.as_deref())
                .filter(|n| !n.is_empty())
        {
            return n;
        }
        &self.service_name
    }

    /// Checks what the per-field parsers cannot: cross-section rules.
    pub fn validate(&self) -> Result<(), String> {
        if self.service_name.trim().is_empty() {
            return Err("tracing.serviceName must not be empty".into());
        }
        if self.backend == Backend::Lightstep && self.lightstep.is_none() {
            return Err(
                "tracing.backend is lightstep but there is no tracing.lightstep section".into(),
            );
        }
        if self.backend == Backend::Otlp && self.otlp.is_none() {
            return Err("tracing.backend is otlp but there is no tracing.otlp section".into());
        }
        let rate = self.tail_capture.max_per_second;
        if !rate.is_finite() || rate < 0.0 {
            return Err(format!(
                "tracing.tailCapture.maxPerSecond must be 0 or more, not {rate}"
            ));
        }
        Ok(())
    }

    /// The keys that are accepted (so an M3 / jaeger-client-go / lightstep-tracer-go config
    /// loads unchanged) but change nothing here, each with the reason; `check-config` prints
    /// them. A key is listed when it is set to something that would act in the Go client.
    pub fn without_effect(&self) -> Vec<(String, &'static str)> {
        let mut out = Vec::new();
        let mut note = |set: bool, key: &str, why: &'static str| {
            if set {
                out.push((format!("tracing.{key}"), why));
            }
        };
        if let Some(j) = &self.jaeger {
            note(
                j.rpc_metrics,
                "jaeger.rpc_metrics",
                "request metrics (m3query_http_*) are always on /metrics",
            );
            note(
                j.traceid_128bit == Some(false),
                "jaeger.traceid_128bit",
                "trace ids are always 128-bit (W3C trace context needs them)",
            );
            note(
                j.sampler.options_given,
                "jaeger.sampler.options",
                "holds Go functions (jaeger.SamplerOption) that only code can pass",
            );
            note(
                j.throttler.is_some(),
                "jaeger.throttler",
                "jaeger-client-go throttles jaeger-debug-id spans by credits from the agent's \
                 /credits endpoint, which jaeger-agent does not serve (with it set, \
                 jaeger-client-go would refuse every debug span); jaeger-debug-id requests \
                 are always traced here",
            );
        }
        if let Some(l) = &self.lightstep {
            note(
                l.lightstep_api.is_some(),
                "lightstep.lightstep_api",
                "LightStep's web API: lightstep-tracer-go never calls it, nor does m3query",
            );
            note(
                l.meta_event_reporting_enabled,
                "lightstep.meta_event_reporting_enabled",
                "meta events describe lightstep-tracer-go's own tracer (inject, extract, \
                 span finish); m3query's tracer is OpenTelemetry and sends none",
            );
            note(
                l.grpc_max_call_send_msg_size_bytes.is_some(),
                "lightstep.grpc_max_call_send_msg_size_bytes",
                "the OpenTelemetry OTLP exporter m3query uses has no send-size cap to set; \
                 batches are bounded by count (at most 512 spans) instead",
            );
            note(
                l.system_metrics.is_some(),
                "lightstep.system_metrics",
                "m3query sends no metrics to LightStep: process and runtime metrics are \
                 on /metrics for Prometheus to scrape",
            );
        }
        out
    }

    /// A copy with secrets (tokens, passwords, header values) replaced by [`REDACTED`], and
    /// URL passwords by `xxxxx`.
    pub fn redacted(&self) -> Self {
        let mut c = self.clone();
        let url = |u: &mut HttpUrl| u.0 = redact_urls(&u.0).into_owned();
        if let Some(j) = &mut c.jaeger {
            url(&mut j.sampler.sampling_server_url);
            if let Some(e) = &mut j.reporter.collector_endpoint {
                url(e);
            }
            if j.reporter.password.as_ref().is_some_and(|p| !p.is_empty()) {
                j.reporter.password = Some(REDACTED.into());
            }
            redact_map(&mut j.reporter.http_headers);
        }
        if let Some(l) = &mut c.lightstep
            && !l.access_token.is_empty()
        {
            l.access_token = REDACTED.into();
        }
        if let Some(o) = &mut c.otlp {
            url(&mut o.endpoint);
            redact_map(&mut o.headers);
        }
        c
    }
}

fn redact_map(m: &mut BTreeMap<String, String>) {
    for v in m.values_mut() {
        *v = REDACTED.into();
    }
}

/// Process tags: a map (`tags: {env: prod}`) or jaeger-client-go's list of
/// `{key: .., value: ..}`.
#[derive(Clone, Debug, PartialEq, Default, Serialize)]
#[serde(transparent)]
pub struct Tags(pub BTreeMap<String, TagValue>);

/// A tag value keeps its YAML type, so Jaeger gets bool/long/double tags where they were given.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum TagValue {
    /// A YAML boolean.
    Bool(bool),
    /// A YAML integer.
    Int(i64),
    /// A YAML float.
    Float(f64),
    /// Any other scalar, as text.
    String(String),
}

impl<'de> Deserialize<'de> for TagValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = TagValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean tag value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<TagValue, E> {
                Ok(TagValue::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<TagValue, E> {
                Ok(TagValue::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<TagValue, E> {
                i64::try_from(v)
                    .map(TagValue::Int)
                    .map_err(|_| E::custom("tag value out of range"))
            }
            fn visit_f64<E>(self, v: f64) -> Result<TagValue, E> {
                Ok(TagValue::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<TagValue, E> {
                Ok(TagValue::String(v.to_string()))
            }
            fn visit_unit<E>(self) -> Result<TagValue, E> {
                Ok(TagValue::String(String::new()))
            }
        }
        d.deserialize_any(V)
    }
}

impl fmt::Display for TagValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TagValue::Bool(b) => write!(f, "{b}"),
            TagValue::Int(i) => write!(f, "{i}"),
            TagValue::Float(x) => write!(f, "{x}"),
            TagValue::String(s) => f.write_str(s),
        }
    }
}

impl<'de> Deserialize<'de> for Tags {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Kv {
            key: String,
            value: TagValue,
        }
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Tags;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of tags (env: prod) or a list of {key: .., value: ..}")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut m: A) -> Result<Tags, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((k, v)) = m.next_entry::<String, TagValue>()? {
                    out.insert(k, v);
                }
                Ok(Tags(out))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut s: A) -> Result<Tags, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(kv) = s.next_element::<Kv>()? {
                    out.insert(kv.key, kv.value);
                }
                Ok(Tags(out))
            }
            fn visit_unit<E>(self) -> Result<Tags, E> {
                Ok(Tags::default())
            }
        }
        d.deserialize_any(V)
    }
}

/// `tracing.jaeger:`, jaeger-client-go's `config.Configuration`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct JaegerConfig {
    /// Overrides `tracing.serviceName` for Jaeger.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// Turns tracing off (jaeger-client-go returns a no-op tracer).
    pub disabled: bool,
    /// Accepted for compatibility; RPC metrics are always on `/metrics` in m3query.
    #[serde(rename = "rpc_metrics")]
    pub rpc_metrics: bool,
    /// Accepted for compatibility; trace ids are always 128-bit, so only `false` (64-bit in
    /// jaeger-client-go) is without effect.
    #[serde(rename = "traceid_128bit", skip_serializing_if = "Option::is_none")]
    pub traceid_128bit: Option<bool>,
    /// Tags added to the process (every span's `process.tags`).
    pub tags: Tags,
    /// Which traces are recorded.
    pub sampler: SamplerConfig,
    /// Where and how spans are sent.
    pub reporter: ReporterConfig,
    /// The propagation header names.
    pub headers: HeadersConfig,
    /// Present: poll the agent for which baggage keys are allowed (see
    /// [`crate::baggage`]); absent: every key is allowed, values up to 2048 bytes.
    #[serde(
        rename = "baggage_restrictions",
        skip_serializing_if = "Option::is_none"
    )]
    pub baggage_restrictions: Option<BaggageRestrictionsConfig>,
    /// jaeger-client-go's debug-span throttler; accepted without effect (see
    /// [`TracingConfig::without_effect`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throttler: Option<ThrottlerConfig>,
}

/// jaeger-client-go's defaults for the agent's HTTP endpoints (baggage restrictions,
/// throttling credits).
pub const DEFAULT_AGENT_HTTP_HOST_PORT: &str = "localhost:5778";
/// How often baggage restrictions are fetched again by default.
pub const DEFAULT_BAGGAGE_REFRESH_INTERVAL: Duration = Duration::from_secs(60);
/// jaeger-client-go's throttler refresh default (the throttler is accepted without effect).
pub const DEFAULT_THROTTLER_REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// `tracing.jaeger.baggage_restrictions:`, jaeger-client-go's `BaggageRestrictionsConfig`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct BaggageRestrictionsConfig {
    /// Until the first answer from the agent: refuse all baggage (true) or allow any key
    /// (false).
    pub deny_baggage_on_initialization_failure: bool,
    /// The agent's HTTP address; restrictions come from `GET /baggageRestrictions?service=`.
    pub host_port: HostPort,
    /// How often the restrictions are fetched again (0: the default, 1m).
    pub refresh_interval: Duration,
}

impl Default for BaggageRestrictionsConfig {
    fn default() -> Self {
        BaggageRestrictionsConfig {
            deny_baggage_on_initialization_failure: false,
            host_port: HostPort(DEFAULT_AGENT_HTTP_HOST_PORT.into()),
            refresh_interval: DEFAULT_BAGGAGE_REFRESH_INTERVAL,
        }
    }
}

/// `tracing.jaeger.throttler:`, jaeger-client-go's `ThrottlerConfig`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ThrottlerConfig {
    /// The agent's HTTP address for throttling credits.
    pub host_port: HostPort,
    /// How often credits would be fetched.
    pub refresh_interval: Duration,
    /// Fetch credits before the first span.
    pub synchronous_initialization: bool,
}

impl Default for ThrottlerConfig {
    fn default() -> Self {
        ThrottlerConfig {
            host_port: HostPort(DEFAULT_AGENT_HTTP_HOST_PORT.into()),
            refresh_interval: DEFAULT_THROTTLER_REFRESH_INTERVAL,
            synchronous_initialization: false,
        }
    }
}

/// Sampler types, as jaeger-client-go names them (case-insensitive).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SamplerType {
    /// Sample all (`param: 1`) or nothing (`param: 0`).
    Const,
    /// Sample each trace with probability `param`.
    Probabilistic,
    /// Sample up to `param` traces per second.
    #[serde(rename = "ratelimiting")]
    RateLimiting,
    /// The default: poll the agent/collector for strategies, starting probabilistic.
    #[default]
    Remote,
}

/// `tracing.jaeger.sampler:`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", try_from = "RawSampler")]
pub struct SamplerConfig {
    /// The sampler (`type:`).
    #[serde(rename = "type")]
    pub sampler_type: SamplerType,
    /// const: 0 or 1; probabilistic and remote (initial): a probability; ratelimiting:
    /// traces per second.
    pub param: f64,
    /// Where the remote sampler polls strategies (`samplingServerURL`).
    #[serde(rename = "samplingServerURL")]
    pub sampling_server_url: HttpUrl,
    /// How often the remote sampler polls.
    pub sampling_refresh_interval: Duration,
    /// Operations the remote sampler keeps per-operation samplers for; others use the default.
    pub max_operations: usize,
    /// jaeger-client-go's `OperationNameLateBinding`: parsed, but m3query's samplers do not use it.
    pub operation_name_late_binding: bool,
    /// `options:` was given (empty): jaeger-client-go's `SamplerConfig.Options` holds Go
    /// functions that only code can pass, so YAML can only leave it empty.
    #[serde(skip)]
    pub options_given: bool,
}

/// jaeger-client-go's defaults.
pub const DEFAULT_SAMPLING_PROBABILITY: f64 = 0.001;
/// The agent's sampling endpoint.
pub const DEFAULT_SAMPLING_SERVER_URL: &str = "http://127.0.0.1:5778/sampling";
/// How often strategies are polled.
pub const DEFAULT_SAMPLING_REFRESH_INTERVAL: Duration = Duration::from_secs(60);
/// Per-operation samplers kept.
pub const DEFAULT_MAX_OPERATIONS: usize = 2000;

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            sampler_type: SamplerType::Remote,
            param: DEFAULT_SAMPLING_PROBABILITY,
            sampling_server_url: HttpUrl(DEFAULT_SAMPLING_SERVER_URL.into()),
            sampling_refresh_interval: DEFAULT_SAMPLING_REFRESH_INTERVAL,
            max_operations: DEFAULT_MAX_OPERATIONS,
            operation_name_late_binding: false,
            options_given: false,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSampler {
    #[serde(rename = "type", default)]
    sampler_type: Option<String>,
    param: Option<f64>,
    #[serde(rename = "samplingServerURL")]
    sampling_server_url: Option<HttpUrl>,
    sampling_refresh_interval: Option<Duration>,
    max_operations: Option<usize>,
    #[serde(default)]
    operation_name_late_binding: bool,
    /// jaeger-client-go's untagged `Options` field, which yaml.v2 names `options`.
    #[serde(default)]
    options: Option<Vec<serde::de::IgnoredAny>>,
}

impl TryFrom<RawSampler> for SamplerConfig {
    type Error = String;
    fn try_from(r: RawSampler) -> Result<Self, String> {
        let t = r.sampler_type.unwrap_or_default();
        let sampler_type = match t.to_ascii_lowercase().as_str() {
            "const" => SamplerType::Const,
            "probabilistic" => SamplerType::Probabilistic,
            "ratelimiting" => SamplerType::RateLimiting,
            "remote" | "" => SamplerType::Remote,
            _ => {
                return Err(format!(
                    "tracing.jaeger.sampler.type {t:?} is not a sampler: use const, probabilistic, ratelimiting or remote"
                ));
            }
        };
        let param = match (sampler_type, r.param) {
            (SamplerType::Remote, None) => DEFAULT_SAMPLING_PROBABILITY,
            (SamplerType::Const, None) => 1.0,
            (_, None) => {
                return Err(format!(
                    "tracing.jaeger.sampler.param is required for the {t} sampler"
                ));
            }
            (_, Some(p)) => p,
        };
        if !param.is_finite() {
            return Err(format!(
                "tracing.jaeger.sampler.param must be a number, got {param}"
            ));
        }
        match sampler_type {
            SamplerType::Const if param != 0.0 && param != 1.0 => {
                return Err(format!(
                    "tracing.jaeger.sampler.param for the const sampler must be 0 (never) or 1 (always), got {param}"
                ));
            }
            SamplerType::Probabilistic | SamplerType::Remote if !(0.0..=1.0).contains(&param) => {
                return Err(format!(
                    "tracing.jaeger.sampler.param is a probability for the {} sampler and must be between 0 and 1, got {param}",
                    if sampler_type == SamplerType::Remote {
                        "remote"
                    } else {
                        "probabilistic"
                    }
                ));
            }
            SamplerType::RateLimiting if param < 0.0 => {
                return Err(format!(
                    "tracing.jaeger.sampler.param for the ratelimiting sampler is traces per second and must not be negative, got {param}"
                ));
            }
            _ => {}
        }
        let max_operations = r.max_operations.unwrap_or(DEFAULT_MAX_OPERATIONS);
        if max_operations == 0 {
            return Err("tracing.jaeger.sampler.maxOperations must be at least 1".into());
        }
        let refresh = r
            .sampling_refresh_interval
            .unwrap_or(DEFAULT_SAMPLING_REFRESH_INTERVAL);
        if refresh.0.is_zero() {
            return Err("tracing.jaeger.sampler.samplingRefreshInterval must be positive".into());
        }
        if r.options.as_ref().is_some_and(|o| !o.is_empty()) {
            return Err(
                "tracing.jaeger.sampler.options holds jaeger-client-go's SamplerOption \
                 functions, which only Go code can pass: leave it empty"
                    .into(),
            );
        }
        Ok(SamplerConfig {
            sampler_type,
            param,
            sampling_server_url: r
                .sampling_server_url
                .unwrap_or_else(|| HttpUrl(DEFAULT_SAMPLING_SERVER_URL.into())),
            sampling_refresh_interval: refresh,
            max_operations,
            operation_name_late_binding: r.operation_name_late_binding,
            options_given: r.options.is_some(),
        })
    }
}

/// `tracing.jaeger.reporter:`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ReporterConfig {
    /// Spans held for export before new ones are dropped (jaeger-client-go: 100).
    pub queue_size: usize,
    /// How often buffered spans are sent even when a packet is not full (default 1s).
    #[serde(alias = "bufferflushinterval")]
    pub buffer_flush_interval: Duration,
    /// Also log every reported span.
    pub log_spans: bool,
    /// The Jaeger agent's compact-thrift UDP address.
    pub local_agent_host_port: HostPort,
    /// Accepted for compatibility: the agent address is re-resolved when sends fail.
    pub disable_attempt_reconnecting: bool,
    /// How often the agent address is resolved again.
    #[serde(alias = "attemptreconnectinterval")]
    pub attempt_reconnect_interval: Duration,
    /// A Jaeger collector's `/api/traces` URL; when set, spans go there over HTTP instead of
    /// to the agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collector_endpoint: Option<HttpUrl>,
    /// Basic-auth user for `collector_endpoint`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Basic-auth password for `collector_endpoint` (redacted in `check-config`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Extra headers sent to `collector_endpoint`.
    #[serde(rename = "http_headers", skip_serializing_if = "BTreeMap::is_empty")]
    pub http_headers: BTreeMap<String, String>,
}

impl Default for ReporterConfig {
    fn default() -> Self {
        ReporterConfig {
            queue_size: 100,
            buffer_flush_interval: Duration::from_secs(1),
            log_spans: false,
            local_agent_host_port: HostPort("localhost:6831".into()),
            disable_attempt_reconnecting: false,
            attempt_reconnect_interval: Duration::from_secs(30),
            collector_endpoint: None,
            user: None,
            password: None,
            http_headers: BTreeMap::new(),
        }
    }
}

/// `tracing.jaeger.headers:`, jaeger-client-go's `HeadersConfig`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeadersConfig {
    /// Header that forces sampling and names the trace (`jaeger-debug-id`).
    #[serde(rename = "jaegerDebugHeader")]
    pub jaeger_debug_header: String,
    /// Header carrying baggage without a trace (`jaeger-baggage`).
    #[serde(rename = "jaegerBaggageHeader")]
    pub jaeger_baggage_header: String,
    /// Header carrying the trace context (`uber-trace-id`).
    #[serde(rename = "TraceContextHeaderName")]
    pub trace_context_header_name: String,
    /// Prefix of per-key baggage headers (`uberctx-`).
    #[serde(rename = "traceBaggageHeaderPrefix")]
    pub trace_baggage_header_prefix: String,
}

impl Default for HeadersConfig {
    fn default() -> Self {
        HeadersConfig {
            jaeger_debug_header: "jaeger-debug-id".into(),
            jaeger_baggage_header: "jaeger-baggage".into(),
            trace_context_header_name: "uber-trace-id".into(),
            trace_baggage_header_prefix: "uberctx-".into(),
        }
    }
}

/// `tracing.lightstep:`, lightstep-tracer-go's `Options`, with its yaml names. Numbers and
/// durations left at 0 take lightstep-tracer-go's defaults, as there.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LightstepConfig {
    /// The project access token; `${LIGHTSTEP_ACCESS_TOKEN:""}` is the usual form. Empty is
    /// allowed (satellites may not need one) and warned about at startup.
    pub access_token: String,
    /// The satellite. Absent: LightStep's public ingest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collector: Option<LightstepEndpoint>,
    /// Resource attributes for every span.
    pub tags: Tags,
    /// LightStep's web API; lightstep-tracer-go never calls it. Without effect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lightstep_api: Option<LightstepApiEndpoint>,
    /// Send OTLP/HTTP to `/v1/traces` instead of OTLP/gRPC. Wins over `usegrpc`, as in
    /// lightstep-tracer-go.
    pub use_http: bool,
    /// OTLP/gRPC (also what m3query uses when neither is set). lightstep-tracer-go spells it
    /// `usegrpc`; `use_grpc` is kept as an alias.
    #[serde(rename = "usegrpc", alias = "use_grpc")]
    pub use_grpc: bool,
    /// Spans held for export before new ones are dropped (1000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_buffered_spans: Option<usize>,
    /// Longest span-event (log) attribute key; longer ones are cut, ending in `…` (256).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_log_key_len: Option<usize>,
    /// Longest span-event string value (and event name); longer ones are cut (1024).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_log_value_len: Option<usize>,
    /// Most events kept per span (500); the last kept one then says how many were dropped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_logs_per_span: Option<usize>,
    /// lightstep-tracer-go's gRPC send-size cap. Without effect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_max_call_send_msg_size_bytes: Option<usize>,
    /// Longest time between two exports (2.5s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reporting_period: Option<Duration>,
    /// Shortest time between two exports, even when the buffer fills faster (500ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_reporting_period: Option<Duration>,
    /// Time limit of one export request (30s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_timeout: Option<Duration>,
    /// Drop every span event (log) before it is recorded.
    #[serde(skip_serializing_if = "is_false")]
    pub drop_span_logs: bool,
    /// Log every report (spans sent, result, time taken) at info.
    #[serde(skip_serializing_if = "is_false")]
    pub verbose: bool,
    /// Reconnect to the collector this often, so a load-balanced satellite pool stays
    /// balanced (5m, plus up to 20% jitter).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconnect_period: Option<Duration>,
    /// lightstep-tracer-go's meta events about its own tracer. Without effect.
    #[serde(skip_serializing_if = "is_false")]
    pub meta_event_reporting_enabled: bool,
    /// lightstep-tracer-go's runtime metrics. Without effect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_metrics: Option<LightstepSystemMetrics>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// lightstep-tracer-go's defaults.
pub const LIGHTSTEP_MAX_BUFFERED_SPANS: usize = 1000;
/// Longest log key sent, bytes.
pub const LIGHTSTEP_MAX_LOG_KEY_LEN: usize = 256;
/// Longest log value sent, bytes.
pub const LIGHTSTEP_MAX_LOG_VALUE_LEN: usize = 1024;
/// Most logs kept on a span.
pub const LIGHTSTEP_MAX_LOGS_PER_SPAN: usize = 500;
/// Longest time between reports.
pub const LIGHTSTEP_REPORTING_PERIOD: std::time::Duration = std::time::Duration::from_millis(2500);
/// Shortest time between reports.
pub const LIGHTSTEP_MIN_REPORTING_PERIOD: std::time::Duration =
    std::time::Duration::from_millis(500);
/// Longest a report may take.
pub const LIGHTSTEP_REPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// How often the collector connection is reopened.
pub const LIGHTSTEP_RECONNECT_PERIOD: std::time::Duration = std::time::Duration::from_secs(300);

/// An unset or zero option takes its default, as lightstep-tracer-go's `Initialize` does.
fn or_default(v: Option<usize>, d: usize) -> usize {
    v.filter(|&n| n > 0).unwrap_or(d)
}

fn or_default_duration(v: Option<Duration>, d: std::time::Duration) -> std::time::Duration {
    v.map(|d| d.0).filter(|d| !d.is_zero()).unwrap_or(d)
}

impl LightstepConfig {
    /// `max_buffered_spans`, or its default when unset or 0.
    pub fn max_buffered_spans(&self) -> usize {
        or_default(self.max_buffered_spans, LIGHTSTEP_MAX_BUFFERED_SPANS)
    }
    /// `max_log_key_len`, or its default when unset or 0.
    pub fn max_log_key_len(&self) -> usize {
        or_default(self.max_log_key_len, LIGHTSTEP_MAX_LOG_KEY_LEN)
    }
    /// `max_log_value_len`, or its default when unset or 0.
    pub fn max_log_value_len(&self) -> usize {
        or_default(self.max_log_value_len, LIGHTSTEP_MAX_LOG_VALUE_LEN)
    }
    /// `max_logs_per_span`, or its default when unset or 0.
    pub fn max_logs_per_span(&self) -> usize {
        or_default(self.max_logs_per_span, LIGHTSTEP_MAX_LOGS_PER_SPAN)
    }
    /// `reporting_period`, or its default when unset or 0.
    pub fn reporting_period(&self) -> std::time::Duration {
        or_default_duration(self.reporting_period, LIGHTSTEP_REPORTING_PERIOD)
    }
    /// Never longer than the reporting period itself.
    pub fn min_reporting_period(&self) -> std::time::Duration {
        or_default_duration(self.min_reporting_period, LIGHTSTEP_MIN_REPORTING_PERIOD)
            .min(self.reporting_period())
    }
    /// `report_timeout`, or its default when unset or 0.
    pub fn report_timeout(&self) -> std::time::Duration {
        or_default_duration(self.report_timeout, LIGHTSTEP_REPORT_TIMEOUT)
    }
    /// `reconnect_period`, or its default when unset or 0.
    pub fn reconnect_period(&self) -> std::time::Duration {
        or_default_duration(self.reconnect_period, LIGHTSTEP_RECONNECT_PERIOD)
    }
}

/// `tracing.lightstep.lightstep_api:` (and `system_metrics.endpoint:`): lightstep-tracer-go's
/// `Endpoint`, every field optional.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LightstepApiEndpoint {
    /// `https` or `http`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub scheme: String,
    /// The host.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub host: String,
    /// The port (the scheme's default when unset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// No TLS.
    pub plaintext: bool,
    /// A CA certificate to trust for TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custom_ca_cert_file: Option<String>,
}

/// `tracing.lightstep.system_metrics:`, lightstep-tracer-go's `SystemMetricsOptions`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LightstepSystemMetrics {
    /// lightstep-tracer-go's switch (the section is accepted without effect).
    pub disabled: bool,
    /// Where lightstep-tracer-go sends them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<LightstepApiEndpoint>,
    /// How often lightstep-tracer-go measures them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measurement_frequency: Option<Duration>,
    /// lightstep-tracer-go's send timeout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// `tracing.lightstep.collector:`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LightstepEndpoint {
    /// `https` (default) or `http`.
    #[serde(default = "https")]
    pub scheme: String,
    /// The collector's host.
    pub host: String,
    /// The collector's port.
    pub port: u16,
    /// No TLS.
    #[serde(default)]
    pub plaintext: bool,
    /// A CA certificate to trust for TLS.
    #[serde(
        default,
        rename = "custom_ca_cert_file",
        skip_serializing_if = "Option::is_none"
    )]
    pub custom_ca_cert_file: Option<String>,
}

fn https() -> String {
    "https".into()
}

/// OTLP protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (port 4317 by convention).
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP protobuf over HTTP (port 4318 by convention), `http/protobuf`.
    #[serde(rename = "http/protobuf", alias = "http")]
    HttpProtobuf,
}

/// `tracing.otlp:`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct OtlpConfig {
    /// gRPC: `http://host:4317`; HTTP: `http://host:4318` (`/v1/traces` is appended when the
    /// URL has no path).
    pub endpoint: HttpUrl,
    /// gRPC or HTTP.
    pub protocol: OtlpProtocol,
    /// Extra headers sent with every export (e.g. an API key; redacted in `check-config`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// No TLS even for https URLs is not offered; `insecure` allows plaintext gRPC.
    pub insecure: bool,
    /// Longest an export may take.
    pub timeout: Duration,
    /// Spans held for export before new ones are dropped.
    pub queue_size: usize,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            endpoint: HttpUrl("http://localhost:4317".into()),
            protocol: OtlpProtocol::Grpc,
            headers: BTreeMap::new(),
            insecure: false,
            timeout: Duration::from_secs(10),
            queue_size: 2048,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(y: &str) -> Result<TracingConfig, String> {
        serde_saphyr::from_str::<TracingConfig>(y).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_follow_jaeger_client_go() {
        let c = parse("backend: jaeger\n").expect("valid");
        assert_eq!(c.effective_backend(), Backend::Jaeger);
        let c = parse("jaeger: {}\n").expect("valid");
        assert_eq!(c.effective_backend(), Backend::Jaeger);
        let j = c.jaeger.expect("jaeger");
        assert_eq!(j.sampler.sampler_type, SamplerType::Remote);
        assert_eq!(j.sampler.param, 0.001);
        assert_eq!(
            j.sampler.sampling_server_url.0,
            "http://127.0.0.1:5778/sampling"
        );
        assert_eq!(j.sampler.max_operations, 2000);
        assert_eq!(j.reporter.queue_size, 100);
        assert_eq!(j.reporter.local_agent_host_port.0, "localhost:6831");
        assert_eq!(c.service_name, "m3query");
        let c = parse("jaeger: {disabled: true}\n").expect("valid");
        assert_eq!(c.effective_backend(), Backend::None);
    }

    #[test]
    fn sampler_values_are_checked() {
        let e = parse("jaeger: {sampler: {type: bogus}}\n").expect_err("bad type");
        assert!(e.contains("not a sampler"), "{e}");
        let e = parse("jaeger: {sampler: {type: probabilistic, param: 2}}\n").expect_err("p>1");
        assert!(e.contains("between 0 and 1"), "{e}");
        let e = parse("jaeger: {sampler: {type: const, param: 0.5}}\n").expect_err("const");
        assert!(e.contains("0 (never) or 1"), "{e}");
        let c = parse("jaeger: {sampler: {type: rateLimiting, param: 5}}\n").expect("valid");
        assert_eq!(
            c.jaeger.expect("j").sampler.sampler_type,
            SamplerType::RateLimiting
        );
        let e = parse("jaeger: {reporter: {localAgentHostPort: nope}}\n").expect_err("hp");
        assert!(e.contains("host:port"), "{e}");
        let e = parse("jaeger: {sampler: {samplingServerURL: 'ftp://x'}}\n").expect_err("url");
        assert!(e.contains("http or https"), "{e}");
    }

    #[test]
    fn tags_as_map_or_list() {
        let c =
            parse("jaeger: {tags: [{key: env, value: prod}, {key: n, value: 3}]}\n").expect("list");
        let t = c.jaeger.expect("j").tags.0;
        assert_eq!(t.get("env"), Some(&TagValue::String("prod".into())));
        assert_eq!(t.get("n"), Some(&TagValue::Int(3)));
        let c = parse("lightstep: {tags: {env: prod}}\n").expect("map");
        assert_eq!(c.lightstep.expect("l").tags.0.len(), 1);
    }

    #[test]
    fn redaction() {
        let c = parse(
            "backend: lightstep\nlightstep: {access_token: sekrit, collector: {host: h, port: 1}}\njaeger: {reporter: {password: pw, http_headers: {X-Auth: tok}}}\n",
        )
        .expect("valid");
        let r = c.redacted();
        let s = serde_saphyr::to_string(&r).expect("serialize");
        assert!(
            !s.contains("sekrit") && !s.contains(": pw") && !s.contains(": tok"),
            "{s}"
        );
        assert!(s.contains(REDACTED));
        let c = parse(
            "otlp: {endpoint: \"http://o:pw1@h:4318\"}\njaeger: {sampler: {samplingServerURL: \"http://s:pw2@h:5778/sampling\"}, reporter: {collectorEndpoint: \"https://c:pw3@h/api/traces\"}}\n",
        )
        .expect("valid");
        let s = serde_saphyr::to_string(&c.redacted()).expect("serialize");
        assert!(
            !s.contains("pw1") && !s.contains("pw2") && !s.contains("pw3"),
            "{s}"
        );
        assert!(s.contains("o:xxxxx@h:4318"), "{s}");
    }
}
