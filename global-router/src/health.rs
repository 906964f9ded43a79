//! Health checks of every router replica: `GET /health` every `health_interval_ms`. A pool
//! with no healthy replica is never chosen while another can serve; a replica that failed a
//! forward is marked unhealthy at once and comes back when it answers here again.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::service::Shared;

pub(crate) async fn run(shared: Arc<Shared>) {
    let interval = shared.config.health_interval();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let checks = shared.pools.iter().flat_map(|p| p.replicas.iter().map(move |r| (p, r))).map(|(pool, replica)| {
            let client = shared.http.clone();
            async move {
                let answer = client.get(&format!("{}/health", replica.url), interval.min(std::time::Duration::from_secs(2))).await;
                let ok = answer.is_ok_and(|(head, _)| head.status().is_success());
                let was = replica.healthy.swap(ok, Ordering::Relaxed);
                if was != ok {
                    if ok {
                        tracing::info!(pool = %pool.name, router = %replica.url, "router replica healthy again");
                    } else {
                        tracing::warn!(pool = %pool.name, router = %replica.url, "router replica failed its health check");
                    }
                }
            }
        });
        futures::future::join_all(checks).await;
    }
}
