//! Jaeger baggage: key/value pairs a caller attaches to a trace, which every service on the
//! way passes on.
//!
//! Inbound, as jaeger-client-go's HTTP propagator reads them: one `uberctx-{key}` header per
//! item (prefix `headers.traceBaggageHeaderPrefix`, value URL-encoded) and the
//! `jaeger-baggage` header (`headers.jaegerBaggageHeader`: `k1=v1, k2=v2`, which a caller
//! without a span of its own can send). When both carry a key, the `uberctx-` one wins.
//!
//! Each item then goes through the baggage restrictions, as jaeger-client-go's
//! `SetBaggageItem` does: with `baggage_restrictions` configured, the agent's
//! `GET /baggageRestrictions?service=` list says which keys are allowed and how long their
//! values may be (refetched every `refreshInterval`; until the first answer, every key is
//! allowed, or none with `denyBaggageOnInitializationFailure`); without it, every key is
//! allowed up to 2048 bytes. A sampled request span gets one `baggage` log per item
//! (`key`, `value`, and `truncated` or `invalid` as jaeger-client-go writes them), and the
//! items kept are sent on, as `uberctx-{key}` headers, with the request's outbound calls
//! (remote reads), sampled or not, as jaeger-client-go does.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use parking_lot::RwLock;
use tracing_subscriber::registry::{LookupSpan, Registry};

use crate::config::{BaggageRestrictionsConfig, DEFAULT_BAGGAGE_REFRESH_INTERVAL};
use crate::logging::LogLimiter;

/// jaeger-client-go's value limit when no restriction says otherwise.
pub const DEFAULT_MAX_VALUE_LENGTH: usize = 2048;

const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The baggage of a request, by key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Baggage(pub BTreeMap<String, String>);

#[derive(Debug, Default)]
struct Fetched {
    initialized: bool,
    keys: HashMap<String, usize>,
}

/// Which keys are allowed, and how long their values may be.
#[derive(Debug)]
pub struct Restrictions {
    /// `None`: no restriction manager (every key, 2048 bytes).
    remote: Option<RemoteRestrictions>,
}

#[derive(Debug)]
struct RemoteRestrictions {
    deny_until_fetched: bool,
    fetched: RwLock<Fetched>,
}

impl Restrictions {
    /// Every key allowed (no `baggage_restrictions:` configured).
    pub fn allow_all() -> Restrictions {
        Restrictions { remote: None }
    }

    fn remote(deny_until_fetched: bool) -> Restrictions {
        Restrictions {
            remote: Some(RemoteRestrictions {
                deny_until_fetched,
                fetched: RwLock::new(Fetched::default()),
            }),
        }
    }

    /// The longest value `key` may have, or `None` when the key is not allowed.
    pub fn max_value_len(&self, key: &str) -> Option<usize> {
        let Some(r) = &self.remote else {
            return Some(DEFAULT_MAX_VALUE_LENGTH);
        };
        let f = r.fetched.read();
        if !f.initialized {
            return (!r.deny_until_fetched).then_some(DEFAULT_MAX_VALUE_LENGTH);
        }
        f.keys.get(key).copied()
    }

    fn set(&self, keys: HashMap<String, usize>) {
        if let Some(r) = &self.remote {
            *r.fetched.write() = Fetched {
                initialized: true,
                keys,
            };
        }
    }
}

/// One inbound item and what the restrictions did to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Item {
    pub key: String,
    pub value: String,
    pub truncated: bool,
    pub invalid: bool,
}

/// How baggage travels: header names (jaeger-client-go's `headers:`) and restrictions.
#[derive(Clone, Debug)]
pub struct BaggagePropagation {
    /// Lower case, as header names are compared.
    pub prefix: String,
    /// The header carrying baggage without a trace context (`jaeger-baggage`).
    pub header: String,
    /// Which keys and value lengths are accepted.
    pub restrictions: Arc<Restrictions>,
}

impl BaggagePropagation {
    /// The items `headers` carry, restricted.
    pub(crate) fn inbound(&self, headers: &HeaderMap) -> Vec<Item> {
        let mut raw: BTreeMap<String, String> = BTreeMap::new();
        if !self.header.is_empty() {
            for v in headers.get_all(self.header.as_str()) {
                if let Ok(v) = v.to_str() {
                    raw.extend(parse_baggage_header(v));
                }
            }
        }
        if !self.prefix.is_empty() {
            for (name, v) in headers {
                let Some(key) = name.as_str().strip_prefix(self.prefix.as_str()) else {
                    continue;
                };
                if key.is_empty() {
                    continue;
                }
                if let Ok(v) = v.to_str() {
                    // As jaeger-client-go: a value that does not unescape is taken as sent.
                    let value = query_unescape(v).unwrap_or_else(|| v.to_string());
                    raw.insert(key.to_string(), value);
                }
            }
        }
        raw.into_iter()
            .map(|(key, value)| self.restrict(key, value))
            .collect()
    }

    fn restrict(&self, key: String, mut value: String) -> Item {
        match self.restrictions.max_value_len(&key) {
            None => Item {
                key,
                value,
                truncated: false,
                invalid: true,
            },
            Some(max) => {
                let truncated = value.len() > max;
                if truncated {
                    let mut end = max;
                    while !value.is_char_boundary(end) {
                        end -= 1;
                    }
                    value.truncate(end);
                }
                Item {
                    key,
                    value,
                    truncated,
                    invalid: false,
                }
            }
        }
    }

    /// Reads the baggage of `headers`, logs it on `span` (when sampled, as jaeger-client-go
    /// logs baggage) and keeps what is allowed on `span` for [`Self::outbound_headers`].
    pub fn attach(&self, span: &tracing::Span, headers: &HeaderMap) {
        let items = self.inbound(headers);
        if items.is_empty() {
            return;
        }
        let mut kept = Baggage::default();
        // Entered, not just named as the parent: what reaches the OpenTelemetry layer is
        // decided from the current span.
        let entered = span.enter();
        for it in items {
            // DEBUG under our target: the OpenTelemetry layer records it inside a sampled
            // request, while the log output (info by default) stays quiet.
            match (it.truncated, it.invalid) {
                (_, true) => tracing::debug!(
                    target: "m3query::baggage",
                    key = %it.key, value = %it.value, invalid = "true", "baggage"
                ),
                (true, _) => tracing::debug!(
                    target: "m3query::baggage",
                    key = %it.key, value = %it.value, truncated = "true", "baggage"
                ),
                _ => tracing::debug!(
                    target: "m3query::baggage",
                    key = %it.key, value = %it.value, "baggage"
                ),
            }
            if !it.invalid {
                kept.0.insert(it.key, it.value);
            }
        }
        drop(entered);
        if kept.0.is_empty() {
            return;
        }
        span.with_subscriber(|(id, dispatch)| {
            if let Some(reg) = dispatch.downcast_ref::<Registry>()
                && let Some(s) = reg.span(id)
            {
                s.extensions_mut().insert(kept);
            }
        });
    }

    /// `{prefix}{key}: {URL-encoded value}` for the baggage of the current request.
    pub fn outbound_headers(&self) -> Vec<(String, String)> {
        let Some(b) = current() else {
            return Vec::new();
        };
        b.0.iter()
            .filter(|(k, _)| is_header_token(k))
            .map(|(k, v)| (format!("{}{k}", self.prefix), query_escape(v)))
            .collect()
    }
}

/// The baggage kept on the current span or the nearest span above it.
fn current() -> Option<Baggage> {
    tracing::Span::current()
        .with_subscriber(|(id, dispatch)| {
            let reg = dispatch.downcast_ref::<Registry>()?;
            let span = reg.span(id)?;
            span.scope()
                .find_map(|s| s.extensions().get::<Baggage>().cloned())
        })
        .flatten()
}

/// `k1=v1, k2=v2` (URL-encoded as a whole); pairs that are not exactly `k=v` are skipped.
fn parse_baggage_header(v: &str) -> Vec<(String, String)> {
    let Some(v) = query_unescape(v) else {
        return Vec::new();
    };
    v.split(',')
        .filter_map(|pair| {
            let mut kv = pair.trim().split('=');
            match (kv.next(), kv.next(), kv.next()) {
                (Some(k), Some(v), None) if !k.trim().is_empty() => {
                    Some((k.trim().to_string(), v.to_string()))
                }
                _ => None,
            }
        })
        .collect()
}

fn is_header_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Go's `url.QueryEscape`, which jaeger-client-go applies to baggage header values.
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Go's `url.QueryUnescape`; `None` for a bad escape or bytes that are not UTF-8.
fn query_unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The restrictions for `cfg`, and the poller that keeps them current (none without
/// `baggage_restrictions`).
pub(crate) fn restrictions(
    cfg: Option<&BaggageRestrictionsConfig>,
    service: &str,
) -> Result<(Arc<Restrictions>, Option<Poller>), String> {
    let Some(c) = cfg else {
        return Ok((Arc::new(Restrictions::allow_all()), None));
    };
    let r = Arc::new(Restrictions::remote(
        c.deny_baggage_on_initialization_failure,
    ));
    let interval = if c.refresh_interval.0.is_zero() {
        DEFAULT_BAGGAGE_REFRESH_INTERVAL.0
    } else {
        c.refresh_interval.0
    };
    let poller = Poller::start(r.clone(), &c.host_port.0, service, interval)?;
    Ok((r, Some(poller)))
}

/// Polls the agent's baggage restrictions on its own thread; stops when dropped.
#[derive(Debug)]
pub(crate) struct Poller(crate::poller::Poller);

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireRestriction {
    baggage_key: String,
    max_value_length: i64,
}

impl Poller {
    fn start(
        restrictions: Arc<Restrictions>,
        host_port: &str,
        service: &str,
        interval: Duration,
    ) -> Result<Poller, String> {
        let mut url = reqwest::Url::parse(&format!("http://{host_port}/baggageRestrictions"))
            .map_err(|e| format!("baggage_restrictions.hostPort {host_port:?}: {e}"))?;
        url.query_pairs_mut().append_pair("service", service);
        let client = crate::export::http_client::client(FETCH_TIMEOUT)?;
        let log = LogLimiter::new(Duration::from_secs(60));
        crate::poller::Poller::start("m3query-baggage", interval, async move || {
            match fetch(&client, &url).await {
                Ok(keys) => restrictions.set(keys),
                Err(error) => {
                    if let Some(suppressed) = log.check() {
                        tracing::warn!(
                            target: "m3query::tracing", %error, suppressed,
                            "fetching baggage restrictions failed; keeping the last ones"
                        );
                    }
                }
            }
        })
        .map(Poller)
    }

    pub(crate) fn stop(&mut self) {
        self.0.stop();
    }
}

async fn fetch(
    client: &reqwest::Client,
    url: &reqwest::Url,
) -> Result<HashMap<String, usize>, String> {
    let r = client
        .get(url.clone())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status();
    let body = r.bytes().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("status {status}"));
    }
    let list: Vec<WireRestriction> =
        serde_json::from_slice(&body).map_err(|e| format!("bad restrictions: {e}"))?;
    Ok(list
        .into_iter()
        .map(|r| {
            (
                r.baggage_key,
                usize::try_from(r.max_value_length).unwrap_or(0),
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn prop(r: Restrictions) -> BaggagePropagation {
        BaggagePropagation {
            prefix: "uberctx-".into(),
            header: "jaeger-baggage".into(),
            restrictions: Arc::new(r),
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn item(key: &str, value: &str, truncated: bool, invalid: bool) -> Item {
        Item {
            key: key.into(),
            value: value.into(),
            truncated,
            invalid,
        }
    }

    #[test]
    fn reads_prefixed_headers_and_the_baggage_header() {
        let p = prop(Restrictions::allow_all());
        let got = p.inbound(&headers(&[
            ("uberctx-tenant", "acme%20corp"),
            ("uberctx-user", "from+prefix"),
            ("jaeger-baggage", "user=bob, team=db,broken, x=1=2"),
            ("other", "x"),
        ]));
        assert_eq!(
            got,
            vec![
                item("team", "db", false, false),
                item("tenant", "acme corp", false, false),
                item("user", "from prefix", false, false),
            ]
        );
    }

    #[test]
    fn restrictions_allow_keys_and_cut_values() {
        let r = Restrictions::remote(false);
        // Before the first fetch: anything, up to 2048 bytes.
        assert_eq!(r.max_value_len("any"), Some(DEFAULT_MAX_VALUE_LENGTH));
        r.set(HashMap::from([("tenant".to_string(), 3)]));
        let p = prop(r);
        let got = p.inbound(&headers(&[
            ("uberctx-tenant", "acme"),
            ("uberctx-secret", "s"),
        ]));
        assert_eq!(
            got,
            vec![
                item("secret", "s", false, true),
                item("tenant", "acm", true, false),
            ]
        );
        let deny = Restrictions::remote(true);
        assert_eq!(deny.max_value_len("any"), None);
        let long = "é".repeat(2000);
        let p = prop(Restrictions::allow_all());
        let mut h = HeaderMap::new();
        h.insert(
            "uberctx-long",
            HeaderValue::from_str(&query_escape(&long)).expect("value"),
        );
        let got = p.inbound(&h);
        assert!(got[0].truncated);
        assert_eq!(got[0].value.len(), 2048);
    }

    #[test]
    fn escaping_round_trips() {
        for s in ["plain", "a b", "x=y,z", "é/?&%+"] {
            assert_eq!(query_unescape(&query_escape(s)).as_deref(), Some(s));
        }
        assert_eq!(query_unescape("%zz"), None);
        assert_eq!(query_unescape("%4"), None);
    }
}

#[cfg(test)]
mod telemetry_tests {
    use crate::config::{Backend, JaegerConfig, SamplerType};
    use crate::{LoggingConfig, Telemetry, TracingConfig};
    use http::{HeaderMap, HeaderValue};
    use opentelemetry_sdk::trace::InMemorySpanExporter;

    fn telemetry(sampled: bool) -> (Telemetry, InMemorySpanExporter) {
        let mut j = JaegerConfig::default();
        j.sampler.sampler_type = SamplerType::Const;
        j.sampler.param = if sampled { 1.0 } else { 0.0 };
        let cfg = TracingConfig {
            backend: Backend::Jaeger,
            jaeger: Some(j),
            ..TracingConfig::default()
        };
        let sink = InMemorySpanExporter::default();
        let t = Telemetry::builder(cfg, LoggingConfig::default())
            .with_exporter(sink.clone())
            .with_log_writer(crate::LogWriter::new(std::io::sink))
            .build()
            .expect("telemetry");
        (t, sink)
    }

    fn request_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("uberctx-tenant", HeaderValue::from_static("acme%20corp"));
        h.insert("jaeger-baggage", HeaderValue::from_static("user=bob"));
        h
    }

    /// What a request brings is logged on its span and sent on by the calls it makes,
    /// from a child span too; an unsampled request still passes it on.
    #[test]
    fn inbound_baggage_is_logged_and_sent_on() {
        for sampled in [true, false] {
            let (t, sink) = telemetry(sampled);
            let p = t.propagation();
            tracing::dispatcher::with_default(t.dispatch(), || {
                let h = request_headers();
                let req = crate::http::RequestSpan::start(p, "GET", Some("/q"), "/q", &h);
                p.attach_baggage(req.span(), &h);
                let _in = req.span().enter();
                let child = tracing::debug_span!(target: "m3query::remote", "remote.read");
                let _c = child.enter();
                let out = p.outbound_headers();
                let baggage: Vec<_> = out
                    .iter()
                    .filter(|(k, _)| k.starts_with("uberctx-"))
                    .cloned()
                    .collect();
                assert_eq!(
                    baggage,
                    vec![
                        ("uberctx-tenant".to_string(), "acme+corp".to_string()),
                        ("uberctx-user".to_string(), "bob".to_string()),
                    ],
                    "sampled: {sampled}"
                );
                assert_eq!(
                    out.iter().any(|(k, _)| k == "uber-trace-id"),
                    sampled,
                    "{out:?}"
                );
            });
            // Outside the request: nothing.
            tracing::dispatcher::with_default(t.dispatch(), || {
                assert!(p.outbound_headers().is_empty());
            });
            let spans = sink.get_finished_spans().expect("spans");
            if sampled {
                let root = spans
                    .iter()
                    .find(|s| s.name == "GET /q")
                    .expect("root span");
                let logs: Vec<String> = root
                    .events
                    .iter()
                    .filter(|e| e.name == "baggage")
                    .map(|e| {
                        e.attributes
                            .iter()
                            .filter(|kv| !matches!(kv.key.as_str(), "level" | "target"))
                            .map(|kv| format!("{}={}", kv.key, kv.value))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .collect();
                assert_eq!(
                    logs,
                    vec!["key=tenant,value=acme corp", "key=user,value=bob"]
                );
            } else {
                assert!(spans.is_empty());
            }
        }
    }
}
