//! A per-endpoint circuit breaker: closed until N consecutive failures, then
//! open for a while, then half-open, letting one probe request through whose
//! outcome closes or re-opens it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::CircuitBreaker;

/// Breaker state for one endpoint.
pub struct Breaker {
    threshold: u32,
    open_for: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    failures: u32,
    open_until: Option<Instant>,
    /// When the half-open probe was let through, if one is out.
    probe_since: Option<Instant>,
}

impl Breaker {
    pub fn new(cfg: &CircuitBreaker) -> Self {
        Breaker {
            threshold: cfg.consecutive_failures.max(1),
            open_for: cfg.open_for.get(),
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May a request go to this endpoint now? In the half-open state this
    /// claims the single probe slot.
    pub fn allow(&self, now: Instant) -> bool {
        let mut s = self.lock();
        match s.open_until {
            None => true,
            Some(until) if now < until => false,
            Some(_) => match s.probe_since {
                // A probe is out; a lost probe frees the slot after `open_for`.
                Some(since) if now.duration_since(since) < self.open_for => false,
                _ => {
                    s.probe_since = Some(now);
                    true
                }
            },
        }
    }

    /// A request succeeded: close the circuit.
    pub fn success(&self) {
        let mut s = self.lock();
        if s.failures != 0 || s.open_until.is_some() {
            *s = State::default();
        }
    }

    /// A request failed. Returns true when this failure opened the circuit.
    pub fn failure(&self, now: Instant) -> bool {
        let mut s = self.lock();
        s.failures = s.failures.saturating_add(1);
        let half_open = s.open_until.is_some_and(|u| now >= u);
        if half_open || (s.open_until.is_none() && s.failures >= self.threshold) {
            s.open_until = Some(now + self.open_for);
            s.probe_since = None;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_and_half_opens() {
        let b = Breaker::new(&CircuitBreaker {
            consecutive_failures: 2,
            open_for: crate::config::Duration::from_millis(100),
        });
        let t0 = Instant::now();
        assert!(b.allow(t0));
        assert!(!b.failure(t0));
        assert!(b.failure(t0));
        assert!(!b.allow(t0 + Duration::from_millis(50)));
        let t1 = t0 + Duration::from_millis(150);
        assert!(b.allow(t1), "half-open lets one probe through");
        assert!(!b.allow(t1), "only one probe at a time");
        assert!(b.failure(t1), "failed probe re-opens");
        assert!(!b.allow(t1 + Duration::from_millis(10)));
        let t2 = t1 + Duration::from_millis(150);
        assert!(b.allow(t2));
        b.success();
        assert!(b.allow(t2) && b.allow(t2));
    }
}
