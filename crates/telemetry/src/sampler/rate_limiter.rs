//! jaeger-client-go's `ReconfigurableRateLimiter` (utils/rate_limiter.go): a credit balance
//! refilled at `credits_per_second` up to `max_balance`, starting full; an item is allowed
//! when the balance covers its cost. `update` keeps the accumulated balance, pro-rated to the
//! new maximum, so a strategy refresh does not open the gates.

use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

/// Where rate limiters read the time; tests drive it by hand.
pub(crate) type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

pub(crate) fn system_clock() -> Clock {
    Arc::new(Instant::now)
}

pub(crate) struct RateLimiter {
    clock: Clock,
    state: Mutex<State>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state.lock();
        f.debug_struct("RateLimiter")
            .field("credits_per_second", &s.credits_per_second)
            .field("max_balance", &s.max_balance)
            .finish()
    }
}

struct State {
    credits_per_second: f64,
    balance: f64,
    max_balance: f64,
    last_tick: Instant,
}

impl State {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last_tick).as_secs_f64();
        self.last_tick = now;
        self.balance = (self.balance + elapsed * self.credits_per_second).min(self.max_balance);
    }
}

impl RateLimiter {
    pub(crate) fn new(credits_per_second: f64, max_balance: f64, clock: Clock) -> RateLimiter {
        let now = clock();
        RateLimiter {
            clock,
            state: Mutex::new(State {
                credits_per_second,
                balance: max_balance,
                max_balance,
                last_tick: now,
            }),
        }
    }

    /// Spends `cost` credits if the balance allows.
    pub(crate) fn check_credit(&self, cost: f64) -> bool {
        let mut s = self.state.lock();
        if s.balance >= cost {
            s.balance -= cost;
            return true;
        }
        s.refill((self.clock)());
        if s.balance >= cost {
            s.balance -= cost;
            return true;
        }
        false
    }

    /// New rate and maximum, keeping the balance pro-rated to the new maximum.
    pub(crate) fn update(&self, credits_per_second: f64, max_balance: f64) {
        let mut s = self.state.lock();
        s.refill((self.clock)());
        if s.max_balance > 0.0 {
            s.balance = s.balance * max_balance / s.max_balance;
        } else {
            s.balance = max_balance;
        }
        s.credits_per_second = credits_per_second;
        s.max_balance = max_balance;
    }
}

#[cfg(test)]
pub(crate) mod test_clock {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use parking_lot::Mutex;

    use super::Clock;

    /// A clock that moves only when told.
    #[derive(Clone)]
    pub(crate) struct ManualClock(Arc<Mutex<Instant>>);

    impl ManualClock {
        pub(crate) fn new() -> Self {
            ManualClock(Arc::new(Mutex::new(Instant::now())))
        }
        pub(crate) fn advance(&self, d: Duration) {
            *self.0.lock() += d;
        }
        pub(crate) fn clock(&self) -> Clock {
            let t = self.0.clone();
            Arc::new(move || *t.lock())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_clock::ManualClock;
    use super::*;
    use std::time::Duration;

    #[test]
    fn starts_full_refills_at_rate_and_caps() {
        let c = ManualClock::new();
        let rl = RateLimiter::new(2.0, 2.0, c.clock());
        assert!(rl.check_credit(1.0));
        assert!(rl.check_credit(1.0));
        assert!(!rl.check_credit(1.0));
        c.advance(Duration::from_millis(499));
        assert!(!rl.check_credit(1.0), "0.998 credits are not enough");
        c.advance(Duration::from_millis(1));
        assert!(rl.check_credit(1.0));
        c.advance(Duration::from_secs(100));
        assert!(rl.check_credit(1.0));
        assert!(rl.check_credit(1.0));
        assert!(
            !rl.check_credit(1.0),
            "the balance is capped at max_balance"
        );
    }

    #[test]
    fn update_keeps_balance_pro_rated() {
        let c = ManualClock::new();
        let rl = RateLimiter::new(1.0, 1.0, c.clock());
        // Balance 1 of max 1; the new max 10 scales it to 10.
        rl.update(10.0, 10.0);
        for _ in 0..10 {
            assert!(rl.check_credit(1.0));
        }
        assert!(!rl.check_credit(1.0));
        // Empty balance stays empty through an update.
        rl.update(1.0, 1.0);
        assert!(!rl.check_credit(1.0));
    }

    #[test]
    fn fractional_rates() {
        let c = ManualClock::new();
        // One per ten seconds, balance max(0.1, 1) = 1 as jaeger's lower bound sampler has it.
        let rl = RateLimiter::new(0.1, 1.0, c.clock());
        assert!(rl.check_credit(1.0));
        c.advance(Duration::from_secs(9));
        assert!(!rl.check_credit(1.0));
        c.advance(Duration::from_secs(1));
        assert!(rl.check_credit(1.0));
    }
}
