//! jaeger-client-go's samplers (sampler.go), decision for decision and tag for tag:
//!
//! - `const`: always the configured decision; tags `sampler.type=const`,
//!   `sampler.param=<bool>`.
//! - `probabilistic`: samples when `boundary >= traceId.Low & 0x7fff_ffff_ffff_ffff`, with
//!   `boundary = uint64(float64(0x7fff_ffff_ffff_ffff) * rate)`; so the decision is a pure
//!   function of the trace id, and every service that sees the trace agrees.
//! - `ratelimiting`: a token bucket of `max(rate, 1)` credits refilled at `rate` per second,
//!   starting full; `sampler.param` is the rate.
//! - guaranteed throughput (per operation): the probabilistic sampler first (its tags win),
//!   else the lower-bound rate limiter, tagged `sampler.type=lowerbound` with the probability
//!   as param. A probabilistic hit also spends a lower-bound credit, as in Go.
//! - per-operation: one guaranteed-throughput sampler per operation, for at most
//!   `maxOperations` operations; later ones get the default probabilistic sampler.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};

use super::rate_limiter::{Clock, RateLimiter};

pub(crate) const TYPE_CONST: &str = "const";
pub(crate) const TYPE_PROBABILISTIC: &str = "probabilistic";
pub(crate) const TYPE_RATE_LIMITING: &str = "ratelimiting";
pub(crate) const TYPE_LOWER_BOUND: &str = "lowerbound";

/// `sampler.param`'s value: a bool for `const`, a number otherwise.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Param {
    Bool(bool),
    Float(f64),
}

/// A root span's sampling decision and the tags that explain it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Decision {
    pub sampled: bool,
    pub sampler_type: &'static str,
    pub param: Param,
}

/// Decides for root spans (spans without a parent).
pub(crate) trait RootSampler: Send + Sync + fmt::Debug {
    /// `trace_id` as a 128-bit number (Jaeger's `Low` is its lower 64 bits).
    fn sample(&self, trace_id: u128, operation: &str) -> Decision;
}

// ------------------------------------------------------------------------------- const

#[derive(Debug, Clone, Copy)]
pub(crate) struct ConstSampler(pub bool);

impl RootSampler for ConstSampler {
    fn sample(&self, _: u128, _: &str) -> Decision {
        Decision {
            sampled: self.0,
            sampler_type: TYPE_CONST,
            param: Param::Bool(self.0),
        }
    }
}

// ----------------------------------------------------------------------- probabilistic

const MAX_RANDOM_NUMBER: u64 = !(1u64 << 63);

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ProbabilisticSampler {
    rate: f64,
    boundary: u64,
}

impl ProbabilisticSampler {
    /// `rate` is clamped to [0, 1], as Go's `init` does.
    pub(crate) fn new(rate: f64) -> Self {
        let rate = rate.clamp(0.0, 1.0);
        ProbabilisticSampler {
            rate,
            // Go's uint64(float64) conversion; `as` saturates the same way for [0, 2^63].
            boundary: (MAX_RANDOM_NUMBER as f64 * rate) as u64,
        }
    }

    pub(crate) fn rate(&self) -> f64 {
        self.rate
    }

    fn decide(&self, trace_id: u128) -> bool {
        self.boundary >= (trace_id as u64) & MAX_RANDOM_NUMBER
    }
}

impl RootSampler for ProbabilisticSampler {
    fn sample(&self, trace_id: u128, _: &str) -> Decision {
        Decision {
            sampled: self.decide(trace_id),
            sampler_type: TYPE_PROBABILISTIC,
            param: Param::Float(self.rate),
        }
    }
}

// ------------------------------------------------------------------------ ratelimiting

pub(crate) struct RateLimitingSampler {
    max_traces_per_second: AtomicU64,
    limiter: RateLimiter,
}

impl fmt::Debug for RateLimitingSampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitingSampler")
            .field("max_traces_per_second", &self.rate())
            .finish()
    }
}

impl RateLimitingSampler {
    pub(crate) fn new(max_traces_per_second: f64, clock: Clock) -> Self {
        RateLimitingSampler {
            max_traces_per_second: AtomicU64::new(max_traces_per_second.to_bits()),
            limiter: RateLimiter::new(max_traces_per_second, max_traces_per_second.max(1.0), clock),
        }
    }

    pub(crate) fn rate(&self) -> f64 {
        f64::from_bits(self.max_traces_per_second.load(Ordering::Relaxed))
    }

    /// A new rate, keeping the accumulated balance (no-op when unchanged).
    pub(crate) fn update(&self, max_traces_per_second: f64) {
        if self.rate() != max_traces_per_second {
            self.limiter
                .update(max_traces_per_second, max_traces_per_second.max(1.0));
            self.max_traces_per_second
                .store(max_traces_per_second.to_bits(), Ordering::Relaxed);
        }
    }

    fn decide(&self) -> bool {
        self.limiter.check_credit(1.0)
    }
}

impl RootSampler for RateLimitingSampler {
    fn sample(&self, _: u128, _: &str) -> Decision {
        Decision {
            sampled: self.decide(),
            sampler_type: TYPE_RATE_LIMITING,
            param: Param::Float(self.rate()),
        }
    }
}

// ---------------------------------------------------------------- guaranteed throughput

/// Probability per operation with a lower bound in traces per second.
#[derive(Debug)]
pub(crate) struct GuaranteedThroughputSampler {
    probabilistic: Mutex<ProbabilisticSampler>,
    lower_bound: Mutex<f64>,
    lower: RateLimitingSampler,
}

impl GuaranteedThroughputSampler {
    pub(crate) fn new(lower_bound: f64, rate: f64, clock: Clock) -> Self {
        GuaranteedThroughputSampler {
            probabilistic: Mutex::new(ProbabilisticSampler::new(rate)),
            lower_bound: Mutex::new(lower_bound),
            lower: RateLimitingSampler::new(lower_bound, clock),
        }
    }

    pub(crate) fn update(&self, lower_bound: f64, rate: f64) {
        {
            let mut p = self.probabilistic.lock();
            if p.rate() != rate {
                *p = ProbabilisticSampler::new(rate);
            }
        }
        let mut lb = self.lower_bound.lock();
        if *lb != lower_bound {
            self.lower.update(lower_bound);
            *lb = lower_bound;
        }
    }
}

impl RootSampler for GuaranteedThroughputSampler {
    fn sample(&self, trace_id: u128, operation: &str) -> Decision {
        let p = *self.probabilistic.lock();
        let d = p.sample(trace_id, operation);
        if d.sampled {
            // Spend a lower-bound credit too, so the bound is not exceeded on top.
            let _ = self.lower.decide();
            return d;
        }
        Decision {
            sampled: self.lower.decide(),
            sampler_type: TYPE_LOWER_BOUND,
            param: Param::Float(p.rate()),
        }
    }
}

// ------------------------------------------------------------------------ per operation

/// `operationSampling` of a strategy response.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PerOperationStrategies {
    pub default_sampling_probability: f64,
    pub default_lower_bound_traces_per_second: f64,
    /// Parsed and kept; jaeger-client-go does not act on it, and neither do we.
    pub default_upper_bound_traces_per_second: Option<f64>,
    pub per_operation: Vec<(String, f64)>,
}

pub(crate) struct PerOperationSampler {
    state: RwLock<PerOperationState>,
    max_operations: usize,
    clock: Clock,
}

struct PerOperationState {
    samplers: HashMap<String, Arc<GuaranteedThroughputSampler>>,
    default: ProbabilisticSampler,
    lower_bound: f64,
}

impl fmt::Debug for PerOperationSampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state.read();
        f.debug_struct("PerOperationSampler")
            .field("operations", &s.samplers.len())
            .field("default_probability", &s.default.rate())
            .field("lower_bound", &s.lower_bound)
            .field("max_operations", &self.max_operations)
            .finish()
    }
}

impl PerOperationSampler {
    pub(crate) fn new(s: &PerOperationStrategies, max_operations: usize, clock: Clock) -> Self {
        let lower_bound = s.default_lower_bound_traces_per_second;
        let samplers = s
            .per_operation
            .iter()
            .map(|(op, rate)| {
                (
                    op.clone(),
                    Arc::new(GuaranteedThroughputSampler::new(
                        lower_bound,
                        *rate,
                        clock.clone(),
                    )),
                )
            })
            .collect();
        PerOperationSampler {
            state: RwLock::new(PerOperationState {
                samplers,
                default: ProbabilisticSampler::new(s.default_sampling_probability),
                lower_bound,
            }),
            max_operations: if max_operations == 0 {
                crate::config::DEFAULT_MAX_OPERATIONS
            } else {
                max_operations
            },
            clock,
        }
    }

    /// Applies a new strategy, keeping the rate limiters of operations it still lists;
    /// operations it no longer lists start over (as Go's `update` rebuilds the map).
    pub(crate) fn update(&self, s: &PerOperationStrategies) {
        let mut st = self.state.write();
        let lower_bound = s.default_lower_bound_traces_per_second;
        let mut next = HashMap::with_capacity(s.per_operation.len());
        for (op, rate) in &s.per_operation {
            let sampler = match st.samplers.get(op) {
                Some(existing) => {
                    existing.update(lower_bound, *rate);
                    existing.clone()
                }
                None => Arc::new(GuaranteedThroughputSampler::new(
                    lower_bound,
                    *rate,
                    self.clock.clone(),
                )),
            };
            next.insert(op.clone(), sampler);
        }
        st.lower_bound = lower_bound;
        if st.default.rate() != s.default_sampling_probability {
            st.default = ProbabilisticSampler::new(s.default_sampling_probability);
        }
        st.samplers = next;
    }

    #[cfg(test)]
    pub(crate) fn operations(&self) -> usize {
        self.state.read().samplers.len()
    }
}

impl RootSampler for PerOperationSampler {
    fn sample(&self, trace_id: u128, operation: &str) -> Decision {
        {
            let st = self.state.read();
            if let Some(s) = st.samplers.get(operation) {
                return s.sample(trace_id, operation);
            }
        }
        let sampler = {
            let mut st = self.state.write();
            match st.samplers.get(operation) {
                Some(s) => s.clone(),
                None if st.samplers.len() >= self.max_operations => {
                    return st.default.sample(trace_id, operation);
                }
                None => {
                    let s = Arc::new(GuaranteedThroughputSampler::new(
                        st.lower_bound,
                        st.default.rate(),
                        self.clock.clone(),
                    ));
                    st.samplers.insert(operation.to_string(), s.clone());
                    s
                }
            }
        };
        sampler.sample(trace_id, operation)
    }
}

#[cfg(test)]
mod tests {
    use super::super::rate_limiter::test_clock::ManualClock;
    use super::*;
    use std::time::Duration;

    fn id(low: u64) -> u128 {
        (0xdead_beef_u128 << 64) | u128::from(low)
    }

    #[test]
    fn probabilistic_compares_low_bits_with_the_boundary_like_go() {
        let s = ProbabilisticSampler::new(0.5);
        // Go: boundary = uint64(float64(0x7fffffffffffffff) * 0.5) = 0x4000000000000000.
        assert_eq!(s.boundary, 0x4000_0000_0000_0000);
        assert!(s.sample(id(0x4000_0000_0000_0000), "").sampled);
        assert!(!s.sample(id(0x4000_0000_0000_0001), "").sampled);
        // The top bit of Low is masked off; High does not matter.
        assert!(s.sample(id(0x8000_0000_0000_0001), "").sampled);
        assert!(s.sample(u128::from(0x10u64), "").sampled);
        let all = ProbabilisticSampler::new(1.0);
        assert!(all.sample(id(u64::MAX), "").sampled);
        let none = ProbabilisticSampler::new(0.0);
        assert!(!none.sample(id(1), "").sampled);
        assert!(
            none.sample(id(0), "").sampled,
            "Go samples id 0 even at rate 0"
        );
        assert_eq!(
            ProbabilisticSampler::new(0.001).sample(id(1), "op"),
            Decision {
                sampled: true,
                sampler_type: "probabilistic",
                param: Param::Float(0.001)
            }
        );
        assert_eq!(ProbabilisticSampler::new(7.0).rate(), 1.0, "clamped");
    }

    #[test]
    fn probabilistic_rate_is_honoured_over_many_ids() {
        let s = ProbabilisticSampler::new(0.25);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut hits = 0;
        for _ in 0..100_000 {
            // splitmix64: well-spread ids.
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            if s.sample(u128::from(z), "").sampled {
                hits += 1;
            }
        }
        assert!((24_000..26_000).contains(&hits), "{hits}");
    }

    #[test]
    fn const_tags_carry_a_bool_param() {
        assert_eq!(
            ConstSampler(true).sample(1, "x"),
            Decision {
                sampled: true,
                sampler_type: "const",
                param: Param::Bool(true)
            }
        );
        assert!(!ConstSampler(false).sample(1, "x").sampled);
    }

    #[test]
    fn rate_limiting_allows_the_rate_per_second() {
        let c = ManualClock::new();
        let s = RateLimitingSampler::new(2.0, c.clock());
        let sampled = |n: usize| (0..n).filter(|_| s.sample(1, "").sampled).count();
        assert_eq!(sampled(10), 2, "starts with a full bucket of 2");
        c.advance(Duration::from_secs(1));
        assert_eq!(sampled(10), 2);
        c.advance(Duration::from_millis(500));
        assert_eq!(sampled(10), 1);
        assert_eq!(s.sample(1, "").param, Param::Float(2.0));
        s.update(5.0);
        c.advance(Duration::from_secs(1));
        assert_eq!(sampled(10), 5);
    }

    #[test]
    fn guaranteed_throughput_uses_lower_bound_when_probability_says_no() {
        let c = ManualClock::new();
        let s = GuaranteedThroughputSampler::new(1.0, 0.0, c.clock());
        let d = s.sample(id(5), "op");
        assert_eq!(
            d,
            Decision {
                sampled: true,
                sampler_type: "lowerbound",
                param: Param::Float(0.0)
            }
        );
        assert!(!s.sample(id(6), "op").sampled, "one per second");
        c.advance(Duration::from_secs(1));
        assert!(s.sample(id(7), "op").sampled);
        // Probability 1: always sampled, tagged probabilistic, and spends lower-bound credit.
        s.update(1.0, 1.0);
        c.advance(Duration::from_secs(1));
        let d = s.sample(id(8), "op");
        assert_eq!((d.sampled, d.sampler_type), (true, "probabilistic"));
        s.update(1.0, 0.0);
        assert!(
            !s.sample(id(9), "op").sampled,
            "the probabilistic hit spent the credit"
        );
    }

    #[test]
    fn per_operation_limits_operations_and_updates_in_place() {
        let c = ManualClock::new();
        let strategies = PerOperationStrategies {
            default_sampling_probability: 0.0,
            default_lower_bound_traces_per_second: 1.0,
            default_upper_bound_traces_per_second: None,
            per_operation: vec![("GET /a".into(), 1.0), ("GET /b".into(), 0.0)],
        };
        let s = PerOperationSampler::new(&strategies, 3, c.clock());
        for i in 1..20 {
            let d = s.sample(id(i << 40), "GET /a");
            assert_eq!((d.sampled, d.sampler_type), (true, "probabilistic"));
        }
        let b: Vec<Decision> = (1..20).map(|i| s.sample(id(i << 40), "GET /b")).collect();
        assert_eq!(b.iter().filter(|d| d.sampled).count(), 1, "lower bound 1/s");
        assert_eq!(b[0].sampler_type, "lowerbound");
        // A new operation gets its own guaranteed-throughput sampler with the defaults...
        assert!(s.sample(id(1 << 40), "GET /c").sampled);
        assert_eq!(s.operations(), 3);
        // ...until maxOperations; then the default probabilistic sampler (0 here).
        let d = s.sample(id(1 << 40), "GET /d");
        assert_eq!((d.sampled, d.sampler_type), (false, "probabilistic"));
        assert_eq!(s.operations(), 3);

        // An update keeps /b's spent balance (no burst), drops /c.
        let mut next = strategies.clone();
        next.per_operation = vec![("GET /b".into(), 0.0)];
        s.update(&next);
        assert!(!s.sample(id(1 << 40), "GET /b").sampled);
        assert_eq!(s.operations(), 1);
        c.advance(Duration::from_secs(1));
        assert!(s.sample(id(1 << 40), "GET /b").sampled);
    }
}
