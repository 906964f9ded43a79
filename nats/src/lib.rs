//! kvroute's NATS plane, shared by whatever publishes KV events (the mocker, `kvroute
//! kv-relay` in front of a vLLM/SGLang worker) and the routers that consume them:
//! - [`kv_events_stream`]: the JetStream stream that keeps every worker's KV events
//!   ([`NATS_KV_EVENTS_STREAM`], subjects `kvroute.kv_events.<worker_id>.<dp_rank>`, see
//!   [`nats_kv_events_subject`]), created by whichever side comes first;
//! - [`spawn_kv_event_publisher`]: one worker rank's events onto its subject, in order, as
//!   Dynamo-JSON `RouterEvent` arrays with event ids
//!   counting from 0 (the rank's earlier history is purged first: a new engine's cache is empty).
//!
//! Plain `nats://` connections (no TLS crypto provider is built in).
#![forbid(unsafe_code)]

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use kvroute_protocol::events::{KvCacheEventData, RouterEvent};
pub use kvroute_protocol::events::{nats_kv_events_subject, NATS_KV_EVENTS_MAX_BYTES, NATS_KV_EVENTS_STREAM, NATS_KV_EVENTS_SUBJECTS};
use kvroute_protocol::Worker;
use tokio::sync::mpsc;

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The KV-event stream on the server at `url`, created if missing (1 GiB, oldest out first).
pub async fn kv_events_stream(url: &str) -> Result<(jetstream::Context, stream::Stream), Error> {
    let js = jetstream::new(async_nats::connect(url).await?);
    let config = stream::Config {
        name: NATS_KV_EVENTS_STREAM.into(),
        subjects: vec![NATS_KV_EVENTS_SUBJECTS.into()],
        max_bytes: NATS_KV_EVENTS_MAX_BYTES,
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    };
    let stream = js.get_or_create_stream(config).await?;
    Ok((js, stream))
}

/// Publish `worker`'s KV events on its subject: send the publisher each batch (one engine pass,
/// one message). It connects in the background (retrying); batches that arrive while the
/// server cannot be reached are dropped, their ids still counted, so routers see where the
/// history they hold starts. Each message waits for the stream's acknowledgement, keeping order.
pub fn spawn_kv_event_publisher(url: String, worker: Worker) -> mpsc::UnboundedSender<Vec<KvCacheEventData>> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<KvCacheEventData>>();
    tokio::spawn(async move {
        let subject = nats_kv_events_subject(worker);
        let mut next_id = 0u64;
        let mut backoff = Duration::from_millis(100);
        let js = loop {
            match connect_and_purge(&url, &subject).await {
                Ok(js) => break js,
                Err(e) => {
                    tracing::warn!(%subject, error = %e, "NATS JetStream not ready for KV events; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    while let Ok(events) = rx.try_recv() {
                        next_id += events.len() as u64;
                    }
                }
            }
        };
        tracing::info!(%subject, "publishing KV events on NATS JetStream");
        while let Some(events) = rx.recv().await {
            if events.is_empty() {
                continue;
            }
            let body: Vec<RouterEvent> = events
                .into_iter()
                .enumerate()
                .map(|(i, data)| RouterEvent::new(worker, next_id + i as u64, data))
                .collect();
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

async fn connect_and_purge(url: &str, subject: &str) -> Result<jetstream::Context, Error> {
    let (js, stream) = kv_events_stream(url).await?;
    stream.purge().filter(subject).await?;
    Ok(js)
}
