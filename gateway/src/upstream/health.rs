//! Active health checks: every interval, `GET path` on each endpoint; N
//! failures in a row take it out, M successes bring it back.

use std::sync::Weak;
use std::sync::atomic::{AtomicU32, Ordering};

use super::Upstream;
use crate::config::HealthCheck;

pub(super) fn spawn(upstream: Weak<Upstream>, hc: HealthCheck) {
    let Ok(path) = hc.path.parse::<http::uri::PathAndQuery>() else {
        return;
    };
    tokio::spawn(async move {
        let mut streaks: Vec<(AtomicU32, AtomicU32)> = Vec::new();
        let mut ticker = tokio::time::interval(hc.interval.get());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            // Stop when the upstream was replaced by a reload.
            let Some(up) = upstream.upgrade() else { return };
            if streaks.len() != up.endpoints.len() {
                streaks = (0..up.endpoints.len())
                    .map(|_| (AtomicU32::new(0), AtomicU32::new(0)))
                    .collect();
            }
            let probes = up.endpoints.iter().map(|ep| {
                let timeout = hc.timeout.get();
                let probe = up.probe(ep, &path);
                async move { tokio::time::timeout(timeout, probe).await.unwrap_or(false) }
            });
            let results = futures_util::future::join_all(probes).await;
            for (i, ok) in results.into_iter().enumerate() {
                let ep = &up.endpoints[i];
                let (good, bad) = &streaks[i];
                if ok {
                    bad.store(0, Ordering::Relaxed);
                    let n = good.fetch_add(1, Ordering::Relaxed) + 1;
                    if !ep.is_healthy() && n >= hc.healthy_after {
                        tracing::info!(upstream = %up.name, endpoint = %ep.address, "health check passed: endpoint back in");
                        ep.set_healthy(true);
                    }
                } else {
                    good.store(0, Ordering::Relaxed);
                    let n = bad.fetch_add(1, Ordering::Relaxed) + 1;
                    if ep.is_healthy() && n >= hc.unhealthy_after {
                        tracing::warn!(upstream = %up.name, endpoint = %ep.address, "health check failed: endpoint taken out");
                        ep.set_healthy(false);
                    }
                }
            }
        }
    });
}
