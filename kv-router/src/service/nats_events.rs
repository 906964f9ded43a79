//! KV events from NATS JetStream (the scale-out event plane): workers, or a relay in front of
//! them, publish Dynamo-JSON events on `kvroute.kv_events.<worker_id>.<dp_rank>`, and the
//! `KVROUTE_KV_EVENTS` stream keeps them, so the router needs no connection to the workers and
//! a router that starts later replays each worker's history from the stream.
//!
//! One connection per router, one ordered consumer per worker rank, from the start of what the
//! stream holds. Event ids are checked as on ZMQ:
//! - a first id above 0 means the stream no longer holds the start of the worker's history
//!   (its size limit): blocks stored before are unknown here until the cache turns over;
//! - a jump back means the worker restarted (its cache is new): its entries are cleared;
//! - a jump ahead means events were lost: its entries are cleared (a wrong index is worse than
//!   an empty one) and counted.
//!
//! When a worker comes back after failing its health checks, its consumer starts over from the
//! stream's beginning, rebuilding what was dropped. Publishers compact their history into
//! snapshots (see `kvroute_nats`), which a consumer that is already following skips.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{consumer, stream};
use futures::StreamExt;
use kvroute_nats::{kv_events_stream, nats_kv_events_subject};
use kvroute_protocol::events::{parse_router_events, KvCacheEventData, RouterEvent};
use kvroute_protocol::Worker;

use super::events::EventSink;
use super::Shared;

/// Connect to `url` (retrying), then consume every configured worker rank that has no ZMQ
/// endpoint, for the router's lifetime.
pub async fn run(shared: Arc<Shared>, url: String) {
    let mut backoff = Duration::from_millis(100);
    let stream = loop {
        match kv_events_stream(&url).await {
            Ok((_, stream)) => break stream,
            Err(e) => {
                tracing::warn!(error = %e, "KV events: cannot open the NATS JetStream stream yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    for (index, w) in shared.workers.iter().enumerate() {
        if !w.spec.kv_events.is_empty() {
            continue; // this worker's events come on ZMQ
        }
        for rank in 0..w.ranks {
            tokio::spawn(consume(shared.clone(), stream.clone(), index, rank));
        }
    }
}

/// One worker rank's events, from the stream's beginning; again from the beginning whenever
/// the worker comes back.
async fn consume(shared: Arc<Shared>, stream: stream::Stream, index: usize, rank: u32) {
    let w = &shared.workers[index];
    let worker = Worker::new(w.worker_id, rank);
    let subject = nats_kv_events_subject(worker);
    let mut reconnect = w.reconnect.subscribe();
    loop {
        let config = consumer::pull::OrderedConfig {
            filter_subject: subject.clone(),
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        };
        let messages = match stream.create_consumer(config).await {
            Ok(c) => c.messages().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(%worker, %subject, error = %e, "KV events: cannot consume from NATS; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        tracing::info!(%worker, %subject, "consuming KV events from NATS JetStream");
        let mut expected: Option<u64> = None;
        loop {
            tokio::select! {
                changed = reconnect.changed() => {
                    if changed.is_err() { return; }
                    tracing::info!(%worker, "worker came back: replaying its KV events from the stream");
                    break;
                }
                message = messages.next() => match message {
                    Some(Ok(m)) => {
                        let snapshot = m.headers.as_ref().is_some_and(|h| h.get(kvroute_nats::SNAPSHOT_HEADER).is_some());
                        handle(&shared, worker, &mut expected, &m.payload, snapshot)
                    }
                    Some(Err(e)) => {
                        tracing::warn!(%worker, error = %e, "KV events: NATS consumer failed; starting over");
                        break;
                    }
                    None => break,
                },
            }
        }
        // Starting over from the stream's beginning: forget what this consumer applied.
        let _ = shared.index().apply_event(&RouterEvent::new(worker, 0, KvCacheEventData::Cleared));
    }
}

/// Apply one message. A snapshot's messages re-state the worker's cache: a consumer that has
/// followed every event up to them already holds the same blocks and skips them; one that
/// starts from them (the history before was purged) or missed events applies them.
fn handle(shared: &Shared, worker: Worker, expected: &mut Option<u64>, payload: &[u8], snapshot: bool) {
    let label = worker.worker_id.to_string();
    let events = match parse_router_events(payload) {
        Ok(e) => e,
        Err(e) => {
            shared.undecodable(worker);
            tracing::warn!(%worker, error = %e, "undecodable KV event message on NATS dropped");
            return;
        }
    };
    // Late events of a worker taken out of selection must not rebuild what was dropped; when
    // it comes back, the consumer replays the stream.
    if shared.worker(worker.worker_id).is_some_and(|w| !w.healthy.load(Ordering::SeqCst)) {
        return;
    }
    if snapshot {
        if let (Some(next), Some(first), Some(last)) = (*expected, events.first(), events.last()) {
            if first.event.event_id == next {
                *expected = Some(last.event.event_id + 1);
                return;
            }
        }
    }
    let mut index = shared.index();
    for ev in &events {
        if ev.worker() != worker {
            shared.metrics.events_rejected.with_label_values(&[&label, "malformed"]).inc();
            tracing::warn!(%worker, sent_for = %ev.worker(), "KV event on another worker's subject dropped");
            continue;
        }
        let id = ev.event.event_id;
        match *expected {
            _ if snapshot => {} // a re-statement: it begins with `cleared`
            None if id > 0 => {
                shared.metrics.event_gaps.with_label_values(&[&label]).inc();
                tracing::warn!(%worker, first_event_id = id, "the stream no longer holds this worker's first KV events: blocks stored before them are unknown until its cache turns over");
            }
            Some(next) if id < next => {
                tracing::info!(%worker, event_id = id, "KV event ids restarted (the worker restarted): clearing");
                let _ = index.apply_event(&RouterEvent::new(worker, 0, KvCacheEventData::Cleared));
            }
            Some(next) if id > next => {
                shared.gap(worker, false); // nothing to fill it from: counted as a resync too
                tracing::warn!(%worker, missing_from = next, got = id, "KV events lost: clearing this worker's index entries");
                let _ = index.apply_event(&RouterEvent::new(worker, 0, KvCacheEventData::Cleared));
            }
            _ => {}
        }
        *expected = Some(id + 1);
        match index.apply_event(ev) {
            Ok(()) => shared.metrics.events_applied.with_label_values(&[&label]).inc(),
            Err(e) => {
                shared.metrics.events_rejected.with_label_values(&[&label, "index"]).inc();
                tracing::debug!(%worker, error = %e, "KV event not applied");
            }
        }
    }
}
