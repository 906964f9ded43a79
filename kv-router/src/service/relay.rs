//! `kvroute kv-relay`: one worker's KV events from its ZMQ publisher (vLLM's or SGLang's
//! `--kv-events-config`, or the mocker's) onto NATS JetStream, so that routers consuming the
//! stream (`kv-router --kv-events-nats`) need no connection to the worker — Dynamo's
//! arrangement, where a publisher beside each engine forwards its events to NATS.
//!
//! Per dp rank: the same ZMQ following as the router's (`service::events`: catch-up
//! from the replay socket, gaps filled from it) feeding a [`kvroute_nats`] publisher. Blocks'
//! token ids become local hashes here, at the router's block size, so the stream carries
//! Dynamo's JSON form. A history that breaks (events lost for good, the engine restarted) is
//! published as a `cleared` event: routers drop the worker's entries and rebuild from what
//! follows.

use std::sync::Arc;

use kvroute_protocol::events::zmq::EventBatch;
use kvroute_protocol::events::KvCacheEventData;
use kvroute_protocol::{HashSeed, Worker};
use tokio::sync::{mpsc, watch};

use super::config::replay_endpoint;
use super::events::{follow, EventSink};

/// What one relay forwards.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// The worker's id in the routers' configuration (it names the NATS subjects).
    pub worker_id: u64,
    /// ZMQ KV-event endpoints, one per dp rank (`tcp://host:port`).
    pub kv_events: Vec<String>,
    /// Replay endpoints per dp rank; default: each events port + 1.
    pub kv_replay: Vec<String>,
    /// ZMQ topic prefix to subscribe to (empty: all).
    pub topic: String,
    /// Tokens per KV block: the engine's, which the routers use too.
    pub block_size: u32,
    /// The NATS server (`nats://host:port`).
    pub nats_url: String,
    /// When each rank's history on the stream is compacted into a snapshot.
    pub publisher: kvroute_nats::PublisherOptions,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("no ZMQ endpoint to relay from")]
    NoEndpoints,
    #[error("ZMQ endpoints must be tcp://, got {0:?}")]
    Endpoint(String),
    #[error("the NATS URL must start with nats://, got {0:?}")]
    NatsUrl(String),
    #[error("block size must be > 0")]
    BlockSize,
}

/// Start relaying; returns the NATS subjects written, one per rank.
pub fn start_relay(config: RelayConfig) -> Result<Vec<String>, RelayError> {
    if config.kv_events.is_empty() {
        return Err(RelayError::NoEndpoints);
    }
    if let Some(e) = config.kv_events.iter().chain(&config.kv_replay).find(|e| !e.starts_with("tcp://")) {
        return Err(RelayError::Endpoint(e.clone()));
    }
    if !config.nats_url.starts_with("nats://") {
        return Err(RelayError::NatsUrl(config.nats_url.clone()));
    }
    if config.block_size == 0 {
        return Err(RelayError::BlockSize);
    }
    let workers: Vec<Worker> = (0..config.kv_events.len() as u32).map(|r| Worker::new(config.worker_id, r)).collect();
    let sink = Arc::new(RelaySink {
        block_size: config.block_size as usize,
        publishers: workers
            .iter()
            .map(|&w| kvroute_nats::spawn_kv_event_publisher(config.nats_url.clone(), w, config.publisher))
            .collect(),
    });
    for (&worker, endpoint) in workers.iter().zip(&config.kv_events) {
        let (sink, endpoint, replay, topic) = (
            sink.clone(),
            endpoint.clone(),
            replay_endpoint(&config.kv_events, &config.kv_replay, worker.dp_rank),
            config.topic.clone(),
        );
        tokio::spawn(async move {
            // A relay follows its worker for good: nothing asks it to resubscribe.
            let (_never, reconnect) = watch::channel(0);
            follow(&*sink, worker, endpoint, replay, &topic, reconnect).await
        });
    }
    Ok(workers.iter().map(|&w| kvroute_nats::nats_kv_events_subject(w)).collect())
}

struct RelaySink {
    block_size: usize,
    /// One per dp rank.
    publishers: Vec<mpsc::UnboundedSender<Vec<KvCacheEventData>>>,
}

impl RelaySink {
    fn send(&self, worker: Worker, events: Vec<KvCacheEventData>) {
        if let Some(p) = self.publishers.get(worker.dp_rank as usize) {
            let _ = p.send(events);
        }
    }
}

impl EventSink for RelaySink {
    fn batch(&self, worker: Worker, batch: &EventBatch) {
        let events = batch
            .events
            .iter()
            .filter_map(|e| match e.to_kv_event(self.block_size, HashSeed::default()) {
                Ok(data) => Some(data),
                Err(err) => {
                    tracing::error!(%worker, error = %err, "KV event not relayed");
                    None
                }
            })
            .collect();
        self.send(worker, events);
    }

    fn clear(&self, worker: Worker) {
        self.send(worker, vec![KvCacheEventData::Cleared]);
    }
}
