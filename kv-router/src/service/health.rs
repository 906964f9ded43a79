//! Health checks: every `health_interval`, `GET /health` on each worker. A worker that fails
//! is taken out of selection (its cache view and load are dropped); one that answers again is
//! put back and its event subscribers reconnect.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::Shared;

pub async fn run(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.config.health_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let checks = shared.workers.iter().map(|w| {
            let url = format!("{}/health", w.spec.url.trim_end_matches('/'));
            let timeout = shared.config.health_interval.min(Duration::from_secs(2));
            let client = shared.http.clone();
            async move {
                match client.get(&url, timeout).await {
                    Ok((head, _)) if head.status().is_success() => Ok(()),
                    Ok((head, _)) => Err(format!("health check answered {}", head.status())),
                    Err(e) => Err(format!("health check failed: {e}")),
                }
            }
        });
        let results = futures::future::join_all(checks).await;
        for (w, result) in shared.workers.iter().zip(results) {
            match result {
                Ok(()) if !w.healthy.load(Ordering::Relaxed) => shared.mark_healthy(w),
                Ok(()) => {}
                Err(why) => shared.mark_unhealthy(w, &why),
            }
        }
    }
}
