//! Endpoint selection: weighted round robin (smooth, so weights interleave),
//! least request by power of two choices, and weighted random. Each skips
//! endpoints that are unhealthy, have their circuit open, or were already
//! tried by this request.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use super::Endpoint;
use crate::config::Balance;

/// Picks an endpoint index for each request.
pub struct Balancer {
    policy: Balance,
    /// Round robin: endpoint indices in smooth weighted order.
    sequence: Vec<usize>,
    next: AtomicUsize,
    /// Random: cumulative weights.
    cumulative: Vec<u64>,
}

/// Longest precomputed round-robin sequence; weights beyond it are scaled down.
const MAX_SEQUENCE: u64 = 4096;

impl Balancer {
    /// A balancer for endpoints with these weights.
    pub fn new(policy: Balance, weights: &[u32]) -> Self {
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let scale = total.div_ceil(MAX_SEQUENCE).max(1);
        let scaled: Vec<i64> = weights
            .iter()
            .map(|&w| (u64::from(w) / scale).max(1) as i64)
            .collect();
        // nginx's smooth weighted round robin, unrolled once.
        let sum: i64 = scaled.iter().sum();
        let mut current = vec![0i64; scaled.len()];
        let mut sequence = Vec::with_capacity(sum as usize);
        for _ in 0..sum {
            let mut best = 0;
            for i in 0..scaled.len() {
                current[i] += scaled[i];
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= sum;
            sequence.push(best);
        }
        let mut acc = 0;
        let cumulative = weights
            .iter()
            .map(|&w| {
                acc += u64::from(w);
                acc
            })
            .collect();
        Balancer {
            policy,
            sequence,
            next: AtomicUsize::new(fastrand::usize(..sum.max(1) as usize)),
            cumulative,
        }
    }

    /// An available endpoint not in `exclude`, or `None`.
    pub(super) fn pick(&self, eps: &[Endpoint], exclude: &[usize], now: Instant) -> Option<usize> {
        if eps.is_empty() {
            return None;
        }
        let ok = |i: usize| !exclude.contains(&i) && eps[i].available(now);
        let found = match self.policy {
            Balance::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                let n = self.sequence.len();
                (0..n)
                    .map(|k| self.sequence[(start + k) % n])
                    .find(|&i| ok(i))
            }
            Balance::Random => {
                let total = self.cumulative.last().copied().unwrap_or(0);
                let mut found = None;
                for _ in 0..3 {
                    let r = fastrand::u64(..total.max(1));
                    let i = self.cumulative.partition_point(|&c| c <= r);
                    if i < eps.len() && ok(i) {
                        found = Some(i);
                        break;
                    }
                }
                found
            }
            Balance::LeastRequest => {
                let n = eps.len();
                let a = fastrand::usize(..n);
                let b = if n > 1 {
                    (a + 1 + fastrand::usize(..n - 1)) % n
                } else {
                    a
                };
                let load = |i: usize| {
                    (eps[i].inflight.load(Ordering::Relaxed) as u64 + 1) * 1000
                        / u64::from(eps[i].weight.max(1))
                };
                let (first, second) = if load(a) <= load(b) { (a, b) } else { (b, a) };
                if ok(first) {
                    Some(first)
                } else if second != first && ok(second) {
                    Some(second)
                } else {
                    None
                }
            }
        };
        // Fall back to a scan so a mostly-down cluster still finds its last good endpoint.
        found.or_else(|| {
            let start = fastrand::usize(..eps.len());
            (0..eps.len())
                .map(|k| (start + k) % eps.len())
                .find(|&i| ok(i))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_round_robin_interleaves() {
        let b = Balancer::new(Balance::RoundRobin, &[5, 1, 1]);
        assert_eq!(b.sequence.len(), 7);
        assert_eq!(b.sequence.iter().filter(|&&i| i == 0).count(), 5);
        // nginx's example: a a b a c a a
        assert_eq!(b.sequence, vec![0, 0, 1, 0, 2, 0, 0]);
    }
}
