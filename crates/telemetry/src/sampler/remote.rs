//! jaeger-client-go's remotely controlled sampler (sampler_remote.go): starts probabilistic
//! with `sampler.param`, polls `samplingServerURL?service=<name>` every
//! `samplingRefreshInterval` on its own thread, and applies what the server says:
//!
//! - `operationSampling` (what Jaeger's adaptive sampling serves) wins and becomes a
//!   per-operation sampler, updated in place on later polls so rate limiters keep their
//!   balance;
//! - else `probabilisticSampling`, else `rateLimitingSampling` (also updated in place when
//!   the current sampler is of the same kind).
//!
//! When the server is down, answers an error status, or sends something that is not a
//! strategy (bad JSON, probabilities outside [0, 1], negative rates, no strategy at all), the
//! current strategy stays, the failure is counted on `/metrics` and logged at most once a
//! minute. Unlike jaeger-client-go, the first poll happens at startup instead of one
//! interval later, so a configured strategy applies from the first minute.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use serde::Deserialize;

use super::jaeger::{
    Decision, PerOperationSampler, PerOperationStrategies, ProbabilisticSampler,
    RateLimitingSampler, RootSampler,
};
use super::rate_limiter::Clock;
use crate::logging::LogLimiter;
use crate::metrics::{BackendCounters, RefreshResult};

/// jaeger-client-go's `defaultRemoteSamplingTimeout`.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// A validated strategy, as the server described it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Strategy {
    Probabilistic(f64),
    RateLimiting(f64),
    PerOperation(PerOperationStrategies),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Response {
    probabilistic_sampling: Option<ProbabilisticJson>,
    rate_limiting_sampling: Option<RateLimitingJson>,
    operation_sampling: Option<OperationSamplingJson>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProbabilisticJson {
    #[serde(default)]
    sampling_rate: f64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RateLimitingJson {
    #[serde(default)]
    max_traces_per_second: f64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OperationSamplingJson {
    #[serde(default)]
    default_sampling_probability: f64,
    #[serde(default)]
    default_lower_bound_traces_per_second: f64,
    #[serde(default)]
    default_upper_bound_traces_per_second: Option<f64>,
    #[serde(default)]
    per_operation_strategies: Vec<OperationStrategyJson>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OperationStrategyJson {
    operation: String,
    probabilistic_sampling: ProbabilisticJson,
}

fn probability(what: &str, p: f64) -> Result<f64, String> {
    if p.is_finite() && (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!(
            "{what} must be a probability between 0 and 1, got {p}"
        ))
    }
}

fn rate(what: &str, r: f64) -> Result<f64, String> {
    if r.is_finite() && r >= 0.0 {
        Ok(r)
    } else {
        Err(format!("{what} must be a non-negative rate, got {r}"))
    }
}

/// Parses and checks a sampling server's answer (`SamplingStrategyResponse` as JSON; the
/// `strategyType` field is informational, as in Go, which looks at the fields present).
pub(crate) fn parse_strategy(body: &[u8]) -> Result<Strategy, String> {
    let r: Response =
        serde_json::from_slice(body).map_err(|e| format!("not a sampling strategy: {e}"))?;
    if let Some(o) = r.operation_sampling {
        let mut per_operation = Vec::with_capacity(o.per_operation_strategies.len());
        for s in o.per_operation_strategies {
            let p = probability(
                &format!("samplingRate of operation {:?}", s.operation),
                s.probabilistic_sampling.sampling_rate,
            )?;
            per_operation.push((s.operation, p));
        }
        return Ok(Strategy::PerOperation(PerOperationStrategies {
            default_sampling_probability: probability(
                "defaultSamplingProbability",
                o.default_sampling_probability,
            )?,
            default_lower_bound_traces_per_second: rate(
                "defaultLowerBoundTracesPerSecond",
                o.default_lower_bound_traces_per_second,
            )?,
            default_upper_bound_traces_per_second: o
                .default_upper_bound_traces_per_second
                .map(|u| rate("defaultUpperBoundTracesPerSecond", u))
                .transpose()?,
            per_operation,
        }));
    }
    if let Some(p) = r.probabilistic_sampling {
        return Ok(Strategy::Probabilistic(probability(
            "probabilisticSampling.samplingRate",
            p.sampling_rate,
        )?));
    }
    if let Some(rl) = r.rate_limiting_sampling {
        return Ok(Strategy::RateLimiting(rate(
            "rateLimitingSampling.maxTracesPerSecond",
            rl.max_traces_per_second,
        )?));
    }
    Err("the response holds no sampling strategy".into())
}

enum Current {
    Probabilistic(ProbabilisticSampler),
    RateLimiting(RateLimitingSampler),
    PerOperation(PerOperationSampler),
}

/// The sampler whose strategy the poller replaces.
pub(crate) struct RemoteSampler {
    current: RwLock<Current>,
    max_operations: usize,
    clock: Clock,
}

impl std::fmt::Debug for RemoteSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.current.read() {
            Current::Probabilistic(p) => write!(f, "RemoteSampler(probabilistic {})", p.rate()),
            Current::RateLimiting(r) => write!(f, "RemoteSampler(ratelimiting {})", r.rate()),
            Current::PerOperation(p) => write!(f, "RemoteSampler({p:?})"),
        }
    }
}

impl RemoteSampler {
    pub(crate) fn new(initial_probability: f64, max_operations: usize, clock: Clock) -> Self {
        RemoteSampler {
            current: RwLock::new(Current::Probabilistic(ProbabilisticSampler::new(
                initial_probability,
            ))),
            max_operations,
            clock,
        }
    }

    /// Applies a strategy the way jaeger-client-go's updaters do.
    pub(crate) fn apply(&self, s: &Strategy) {
        let mut cur = self.current.write();
        match (s, &*cur) {
            (Strategy::PerOperation(p), Current::PerOperation(existing)) => existing.update(p),
            (Strategy::PerOperation(p), _) => {
                *cur = Current::PerOperation(PerOperationSampler::new(
                    p,
                    self.max_operations,
                    self.clock.clone(),
                ));
            }
            (Strategy::Probabilistic(rate), _) => {
                *cur = Current::Probabilistic(ProbabilisticSampler::new(*rate));
            }
            (Strategy::RateLimiting(r), Current::RateLimiting(existing)) => existing.update(*r),
            (Strategy::RateLimiting(r), _) => {
                *cur = Current::RateLimiting(RateLimitingSampler::new(*r, self.clock.clone()));
            }
        }
    }
}

impl RootSampler for RemoteSampler {
    fn sample(&self, trace_id: u128, operation: &str) -> Decision {
        match &*self.current.read() {
            Current::Probabilistic(p) => p.sample(trace_id, operation),
            Current::RateLimiting(r) => r.sample(trace_id, operation),
            Current::PerOperation(p) => p.sample(trace_id, operation),
        }
    }
}

/// Polls the strategy server for the remote sampler (see [`crate::poller::Poller`]).
pub(crate) struct Poller(crate::poller::Poller);

impl Poller {
    pub(crate) fn start(
        sampler: Arc<RemoteSampler>,
        server_url: &str,
        service: &str,
        interval: Duration,
        counters: BackendCounters,
    ) -> Result<Poller, String> {
        let mut url = reqwest::Url::parse(server_url)
            .map_err(|e| format!("samplingServerURL {server_url:?}: {e}"))?;
        url.query_pairs_mut().append_pair("service", service);
        let client = crate::export::http_client::client(FETCH_TIMEOUT)?;
        let log = LogLimiter::new(Duration::from_secs(60));
        let mut last: Option<Strategy> = None;
        crate::poller::Poller::start("m3query-sampler", interval, async move || {
            poll_once(&client, &url, &sampler, &counters, &log, &mut last).await
        })
        .map(Poller)
    }

    /// Stops polling at once (a poll in flight is abandoned).
    pub(crate) fn stop(&mut self) {
        self.0.stop();
    }
}

async fn fetch(client: &reqwest::Client, url: &reqwest::Url) -> Result<Vec<u8>, String> {
    let r = client
        .get(url.clone())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status();
    let body = r.bytes().await.map_err(|e| e.to_string())?;
    if status.as_u16() >= 400 {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        return Err(format!("status {status}: {text}"));
    }
    Ok(body.to_vec())
}

async fn poll_once(
    client: &reqwest::Client,
    url: &reqwest::Url,
    sampler: &RemoteSampler,
    counters: &BackendCounters,
    log: &LogLimiter,
    last: &mut Option<Strategy>,
) {
    let body = match fetch(client, url).await {
        Ok(b) => b,
        Err(e) => {
            counters.refreshed(RefreshResult::FetchFailed);
            if let Some(suppressed) = log.check() {
                tracing::warn!(
                    target: "m3query::tracing",
                    url = %url,
                    error = %e,
                    suppressed,
                    "cannot fetch the sampling strategy; keeping the current one"
                );
            }
            return;
        }
    };
    match parse_strategy(&body) {
        Ok(s) => {
            sampler.apply(&s);
            counters.refreshed(RefreshResult::Updated);
            log.reset();
            if last.as_ref() != Some(&s) {
                tracing::info!(
                    target: "m3query::tracing",
                    strategy = ?s,
                    "sampling strategy applied"
                );
                *last = Some(s);
            }
        }
        Err(e) => {
            counters.refreshed(RefreshResult::Rejected);
            if let Some(suppressed) = log.check() {
                tracing::warn!(
                    target: "m3query::tracing",
                    url = %url,
                    error = %e,
                    suppressed,
                    "the sampling server's answer is not a usable strategy; keeping the current one"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::rate_limiter::test_clock::ManualClock;
    use super::*;

    #[test]
    fn parses_jaeger_responses() {
        let s = parse_strategy(
            br#"{"strategyType":"PROBABILISTIC","probabilisticSampling":{"samplingRate":0.25}}"#,
        )
        .expect("valid");
        assert_eq!(s, Strategy::Probabilistic(0.25));
        let s = parse_strategy(
            br#"{"strategyType":1,"rateLimitingSampling":{"maxTracesPerSecond":7}}"#,
        )
        .expect("valid");
        assert_eq!(s, Strategy::RateLimiting(7.0));
        let s = parse_strategy(
            br#"{"strategyType":"PROBABILISTIC","probabilisticSampling":{"samplingRate":0.5},
                 "operationSampling":{"defaultSamplingProbability":0.1,
                   "defaultLowerBoundTracesPerSecond":0.5,"defaultUpperBoundTracesPerSecond":10,
                   "perOperationStrategies":[{"operation":"GET /x",
                     "probabilisticSampling":{"samplingRate":0}}]}}"#,
        )
        .expect("valid");
        assert_eq!(
            s,
            Strategy::PerOperation(PerOperationStrategies {
                default_sampling_probability: 0.1,
                default_lower_bound_traces_per_second: 0.5,
                default_upper_bound_traces_per_second: Some(10.0),
                per_operation: vec![("GET /x".into(), 0.0)],
            }),
            "operationSampling wins over probabilisticSampling, as in Go's updater order"
        );
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            &b"not json"[..],
            b"{}",
            b"[1,2]",
            br#"{"probabilisticSampling":{"samplingRate":1.5}}"#,
            br#"{"rateLimitingSampling":{"maxTracesPerSecond":-1}}"#,
            br#"{"operationSampling":{"defaultSamplingProbability":2}}"#,
            br#"{"operationSampling":{"perOperationStrategies":[{"operation":"x","probabilisticSampling":{"samplingRate":-0.1}}]}}"#,
        ] {
            assert!(
                parse_strategy(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn apply_switches_kinds_and_updates_in_place() {
        let c = ManualClock::new();
        let s = RemoteSampler::new(0.0, 10, c.clock());
        let high = 1u128 << 40;
        assert!(!s.sample(high, "op").sampled);
        s.apply(&Strategy::Probabilistic(1.0));
        assert!(s.sample(high, "op").sampled);
        s.apply(&Strategy::RateLimiting(1.0));
        assert!(s.sample(high, "op").sampled);
        assert!(!s.sample(high, "op").sampled);
        // Same kind again: the spent bucket is kept, no burst after a refresh.
        s.apply(&Strategy::RateLimiting(1.0));
        assert!(!s.sample(high, "op").sampled);
        let per_op = Strategy::PerOperation(PerOperationStrategies {
            default_sampling_probability: 1.0,
            default_lower_bound_traces_per_second: 1.0,
            default_upper_bound_traces_per_second: None,
            per_operation: vec![("slow".into(), 0.0)],
        });
        s.apply(&per_op);
        let d = s.sample(high, "slow");
        assert_eq!((d.sampled, d.sampler_type), (true, "lowerbound"));
        assert!(!s.sample(high, "slow").sampled);
        assert!(s.sample(high, "other").sampled, "default probability 1");
        s.apply(&per_op);
        assert!(!s.sample(high, "slow").sampled, "updated in place");
    }
}
