//! Health checks: every `health_interval`, `GET /health` on each worker. A worker that fails
//! is taken out of selection (its cache view and load are dropped); one that answers again is
//! put back and its event subscribers reconnect.
//!
//! Unless `worker_kv_blocks` is configured, a healthy worker's `GET /metrics` is also read once
//! each time it comes up, for its KV cache size (vLLM's and the mocker's
//! `vllm:cache_config_info`), which scales the duplicate charge; a worker whose metrics do not
//! say is routed with the whole charge.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use kvroute_protocol::engine_metrics::kv_cache_blocks;

use super::{Shared, WorkerRuntime};

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
        let unsized_workers = shared.workers.iter().filter(|w| {
            w.healthy.load(Ordering::Relaxed)
                && shared.router().worker_kv_blocks(w.worker_id).is_none()
                && !w.cache_size_asked.swap(true, Ordering::SeqCst)
        });
        futures::future::join_all(unsized_workers.map(|w| read_cache_size(&shared, w))).await;
    }
}

/// Read `w`'s KV cache size from its metrics and give it to the router.
async fn read_cache_size(shared: &Shared, w: &WorkerRuntime) {
    let url = format!("{}/metrics", w.spec.url.trim_end_matches('/'));
    let timeout = shared.config.health_interval.min(Duration::from_secs(2));
    let stated = match shared.http.get(&url, timeout).await {
        Ok((head, body)) if head.status().is_success() => kv_cache_blocks(&String::from_utf8_lossy(&body))
            .ok_or_else(|| "no num_gpu_blocks in a vllm:cache_config_info sample".to_owned()),
        Ok((head, _)) => Err(format!("{url} answered {}", head.status())),
        Err(e) => {
            w.cache_size_asked.store(false, Ordering::SeqCst); // unreachable now: ask at the next check
            Err(e)
        }
    };
    match stated {
        Ok(blocks) => {
            tracing::info!(worker_id = w.worker_id, blocks, "KV cache size read from the worker's metrics");
            shared.router().set_worker_kv_blocks(w.worker_id, blocks);
        }
        Err(why) => tracing::info!(
            worker_id = w.worker_id,
            reason = %why,
            "KV cache size unknown: the duplicate charge stays whole on this worker (--worker-kv-blocks sets it)"
        ),
    }
}
