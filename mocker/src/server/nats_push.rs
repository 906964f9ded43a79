//! KV events in Dynamo's JSON form on NATS JetStream — the scale-out event plane: one subject
//! per rank (`kvroute.kv_events.<worker_id>.<dp_rank>`), kept in the `KVROUTE_KV_EVENTS`
//! stream, so routers need no connection to the worker and one that starts later replays the
//! worker's history. One task per rank publishes each pass's events in order, waiting for the
//! stream's acknowledgement; at start it drops what the stream still holds from an earlier run
//! of this worker (a new engine's cache is empty, and its event ids start again from 0).

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use kvroute_protocol::events::{nats_kv_events_subject, NATS_KV_EVENTS_MAX_BYTES, NATS_KV_EVENTS_STREAM, NATS_KV_EVENTS_SUBJECTS};
use kvroute_protocol::Worker;
use tokio::sync::mpsc;

use super::http_push::to_router_events;
use crate::block_pool::CacheEvent;

/// Start the publisher for one rank; send it each pass's events.
pub fn spawn(url: String, worker: Worker) -> mpsc::UnboundedSender<Vec<CacheEvent>> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<CacheEvent>>();
    tokio::spawn(async move {
        let subject = nats_kv_events_subject(worker);
        let mut next_id = 0u64;
        let mut backoff = Duration::from_millis(100);
        let js = loop {
            match connect(&url, &subject).await {
                Ok(js) => break js,
                Err(e) => {
                    tracing::warn!(%subject, error = %e, "NATS JetStream not ready for KV events; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    // Not kept while unpublishable; the ids still advance, so routers see
                    // that the history does not start at 0.
                    while let Ok(events) = rx.try_recv() {
                        next_id += events.len() as u64;
                    }
                }
            }
        };
        tracing::info!(%subject, "publishing KV events on NATS JetStream");
        while let Some(events) = rx.recv().await {
            let body = to_router_events(worker, next_id, &events);
            next_id += body.len() as u64;
            let payload = serde_json::to_vec(&body).expect("events serialize");
            let acked = match js.publish(subject.clone(), payload.into()).await {
                Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = acked {
                // Routers see the hole in the event ids and start this worker's view over.
                tracing::warn!(%subject, error = %e, "publishing KV events to NATS failed");
            }
        }
    });
    tx
}

/// Connect, make sure the stream exists, and purge this rank's earlier history.
async fn connect(url: &str, subject: &str) -> Result<jetstream::Context, Box<dyn std::error::Error + Send + Sync>> {
    let js = jetstream::new(async_nats::connect(url).await?);
    let stream = js
        .get_or_create_stream(stream::Config {
            name: NATS_KV_EVENTS_STREAM.into(),
            subjects: vec![NATS_KV_EVENTS_SUBJECTS.into()],
            max_bytes: NATS_KV_EVENTS_MAX_BYTES,
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        })
        .await?;
    stream.purge().filter(subject).await?;
    Ok(js)
}
