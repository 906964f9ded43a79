//! KV events from a worker's ZMQ publisher (the embedded default: no broker).
//!
//! One task per (worker, dp rank): connect a SUB socket, decode each message with
//! `kvroute-protocol`'s decoder, apply its events to the index. Sequence numbers are checked:
//! - right after subscribing, the replay socket is asked for everything from sequence 0: a new
//!   or restarted worker still buffers its whole history, so nothing published before the
//!   subscription took effect is lost; otherwise the first live message starts the stream;
//! - a jump ahead is a gap: the missing range is asked from the worker's replay socket, and if
//!   it cannot be had, the worker's entries are cleared (a wrong index is worse than an empty
//!   one) and counted;
//! - a jump back means the publisher restarted (its cache is new): the entries are cleared.
//!
//! The socket is re-created when the worker comes back after a failed health check.
//!
//! Following a stream ([`follow`]) is separate from what is done with it ([`EventSink`]): the
//! router applies the events to its index; `kvroute kv-relay` ([`super::relay`]) publishes
//! them on NATS.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kvroute_protocol::events::zmq::{decode_multipart, decode_payload, ConvertError, EventBatch};
use kvroute_protocol::events::{KvCacheEventData, RouterEvent};
use kvroute_protocol::{HashSeed, Worker};
use tokio::sync::{mpsc, watch};
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, SubSocket, ZmqMessage};

use super::Shared;

/// What a followed stream of KV events feeds.
pub(crate) trait EventSink {
    /// A batch of `worker`'s events, in order, none twice.
    fn batch(&self, worker: Worker, batch: &EventBatch);
    /// `worker`'s history is broken (events lost for good, or the publisher restarted): what
    /// was built from it must go.
    fn clear(&self, worker: Worker);
    /// A message arrived that could not be decoded.
    fn undecodable(&self, worker: Worker) {
        let _ = worker;
    }
    /// A sequence gap was seen (`filled`: the replay socket had the missing messages).
    fn gap(&self, worker: Worker, filled: bool) {
        let _ = (worker, filled);
    }
}

/// The router's sink: the index it reads.
impl EventSink for Shared {
    fn batch(&self, worker: Worker, batch: &EventBatch) {
        apply(self, worker, batch);
    }

    fn clear(&self, worker: Worker) {
        let _ = self.index().apply_event(&RouterEvent::new(worker, 0, KvCacheEventData::Cleared));
    }

    fn undecodable(&self, worker: Worker) {
        self.metrics.events_rejected.with_label_values(&[&worker.worker_id.to_string(), "decode"]).inc();
    }

    fn gap(&self, worker: Worker, filled: bool) {
        let label = worker.worker_id.to_string();
        self.metrics.event_gaps.with_label_values(&[&label]).inc();
        if !filled {
            self.metrics.event_resyncs.with_label_values(&[&label]).inc();
        }
    }
}

/// Subscribe to `endpoint` for `workers[index]`'s `rank`, forever.
pub async fn subscribe(shared: Arc<Shared>, index: usize, rank: u32, endpoint: String) {
    let w = &shared.workers[index];
    let worker = Worker::new(w.worker_id, rank);
    let replay_endpoint = w.spec.replay_endpoint(rank);
    let reconnect = w.reconnect.subscribe();
    let topic = shared.config.kv_events_topic.clone();
    follow(&*shared, worker, endpoint, replay_endpoint, &topic, reconnect).await
}

/// Follow one publisher's stream for `worker` into `sink`, forever (until `reconnect`'s sender
/// is gone); each change of `reconnect` subscribes again from scratch.
pub(crate) async fn follow(
    sink: &impl EventSink,
    worker: Worker,
    endpoint: String,
    replay_endpoint: Option<String>,
    topic: &str,
    mut reconnect: watch::Receiver<u64>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut socket = SubSocket::new();
        let connected = async {
            socket.connect(&endpoint).await?;
            socket.subscribe(topic).await
        }
        .await;
        if let Err(e) = connected {
            tracing::debug!(%worker, %endpoint, error = %e, "KV event socket not reachable yet");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            continue;
        }
        backoff = Duration::from_millis(100);
        tracing::info!(%worker, %endpoint, "subscribed to KV events");
        let mut messages = receive_in_task(socket);
        let mut stream =
            StreamState { worker, replay_endpoint: replay_endpoint.clone(), expected: None, duplicates_below: 0 };
        stream.catch_up(sink).await;
        loop {
            tokio::select! {
                changed = reconnect.changed() => {
                    if changed.is_err() { return; }
                    tracing::info!(%worker, "worker came back: resubscribing");
                    break;
                }
                message = messages.recv() => match message {
                    Some(m) => stream.handle(sink, m).await,
                    None => {
                        tracing::warn!(%worker, "KV event socket failed; reconnecting");
                        break;
                    }
                },
            }
        }
    }
}

/// Receive from `socket` in a task of its own, handing the messages over a channel that
/// closes when the socket fails. The zeromq crate's sockets panic (`todo!()`) on some peer
/// failures; in their own task that ends the task, not the subscription (tokio keeps the
/// panic in the task), and the caller reconnects.
fn receive_in_task(mut socket: SubSocket) -> mpsc::Receiver<ZmqMessage> {
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tx.closed() => return, // the subscription moved on
                message = socket.recv() => match message {
                    Ok(m) => {
                        if tx.send(m).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "KV event socket failed");
                        return;
                    }
                },
            }
        }
    });
    rx
}

/// Where one subscription stands in the publisher's sequence.
struct StreamState {
    worker: Worker,
    replay_endpoint: Option<String>,
    /// The next sequence number due (None: nothing seen yet).
    expected: Option<u64>,
    /// Live messages below this were already applied by the catch-up replay.
    duplicates_below: u64,
}

impl StreamState {
    /// Right after subscribing: take whatever the publisher published before we could hear it,
    /// if its buffer still starts at the beginning (a new or restarted worker).
    async fn catch_up(&mut self, sink: &impl EventSink) {
        let Some(endpoint) = &self.replay_endpoint else { return };
        let Some(batches) = replay(endpoint, 0, u64::MAX).await else { return };
        if batches.is_empty() {
            return;
        }
        tracing::info!(worker = %self.worker, messages = batches.len(), "caught up on KV events published before subscribing");
        for batch in &batches {
            sink.batch(self.worker, batch);
        }
        self.expected = Some(batches.len() as u64);
        self.duplicates_below = batches.len() as u64;
    }

    async fn handle(&mut self, sink: &impl EventSink, message: ZmqMessage) {
        let worker = self.worker;
        let frames: Vec<Bytes> = message.into_vec();
        let decoded = match decode_multipart(&frames) {
            Ok(d) => d,
            Err(e) => {
                sink.undecodable(worker);
                tracing::warn!(%worker, error = %e, "undecodable KV event message dropped");
                return;
            }
        };
        if decoded.seq < self.duplicates_below {
            return; // heard live and by the catch-up replay: applied once already
        }
        self.duplicates_below = 0;
        match self.expected {
            Some(next) if decoded.seq > next => {
                tracing::warn!(%worker, missing_from = next, got = decoded.seq, "KV event gap: asking the replay socket");
                let replayed = match &self.replay_endpoint {
                    Some(endpoint) => replay(endpoint, next, decoded.seq).await,
                    None => None,
                };
                sink.gap(worker, replayed.is_some());
                match replayed {
                    Some(batches) => {
                        for batch in &batches {
                            sink.batch(worker, batch);
                        }
                    }
                    None => {
                        tracing::warn!(%worker, "missed KV events are gone: clearing what was built from this worker's");
                        sink.clear(worker);
                    }
                }
            }
            Some(next) if decoded.seq < next => {
                tracing::info!(%worker, seq = decoded.seq, "KV event sequence restarted (publisher restarted): clearing");
                sink.clear(worker);
            }
            _ => {}
        }
        self.expected = Some(decoded.seq + 1);
        sink.batch(worker, &decoded.batch);
    }
}

fn apply(shared: &Shared, worker: Worker, batch: &EventBatch) {
    // Late messages from a worker taken out of selection must not rebuild what was dropped;
    // when it comes back, the resubscription catches up from its replay buffer.
    if shared.worker(worker.worker_id).is_some_and(|w| !w.healthy.load(std::sync::atomic::Ordering::SeqCst)) {
        return;
    }
    let worker = Worker::new(worker.worker_id, batch.dp_rank.unwrap_or(worker.dp_rank));
    let label = worker.worker_id.to_string();
    let block_size = shared.config.router.block_size as usize;
    // Convert (hash every stored block's tokens) before taking the index's lock (requests being
    // routed do not wait for it, but other event sources do).
    let converted: Vec<_> =
        batch.events.iter().map(|event| event.to_kv_event(block_size, HashSeed::default())).collect();
    let mut index = shared.index();
    for data in converted {
        match data {
            Ok(data) => match index.apply_event(&RouterEvent::new(worker, 0, data)) {
                Ok(()) => shared.metrics.events_applied.with_label_values(&[&label]).inc(),
                Err(e) => {
                    shared.metrics.events_rejected.with_label_values(&[&label, "index"]).inc();
                    tracing::debug!(%worker, error = %e, "KV event not applied");
                }
            },
            Err(e @ ConvertError::BlockSizeMismatch { .. }) => {
                index.record_block_size_mismatch(worker);
                shared.metrics.events_rejected.with_label_values(&[&label, "block_size"]).inc();
                tracing::error!(%worker, error = %e, "KV event rejected");
            }
            Err(e) => {
                shared.metrics.events_rejected.with_label_values(&[&label, "malformed"]).inc();
                tracing::warn!(%worker, error = %e, "KV event rejected");
            }
        }
    }
}

/// Fetch messages `from..to` from a replay socket (`to = u64::MAX`: all it has); None if the
/// range does not start at `from` or has holes, or if `to` is bounded and not reached.
/// Runs in a task of its own: the zeromq crate's DEALER panics when the peer goes away
/// mid-reply, which then reads as a failed replay.
async fn replay(endpoint: &str, from: u64, to: u64) -> Option<Vec<EventBatch>> {
    let endpoint = endpoint.to_owned();
    let fetch = async move {
        let mut dealer = DealerSocket::new();
        dealer.connect(&endpoint).await.ok()?;
        let mut request = ZmqMessage::from(Bytes::new());
        request.push_back(Bytes::copy_from_slice(&from.to_be_bytes()));
        dealer.send(request).await.ok()?;
        let mut batches = Vec::new();
        let mut next = from;
        loop {
            let frames = dealer.recv().await.ok()?.into_vec();
            let [.., seq, payload] = frames.as_slice() else { return None };
            if payload.is_empty() {
                break;
            }
            let seq = u64::from_be_bytes(seq.as_ref().try_into().ok()?);
            if seq >= to {
                continue;
            }
            if seq != next {
                return None; // the start of the range is no longer buffered
            }
            batches.push(decode_payload(payload).ok()?);
            next += 1;
        }
        (next == to || to == u64::MAX).then_some(batches)
    };
    let task = tokio::spawn(fetch);
    let abort = task.abort_handle();
    match tokio::time::timeout(Duration::from_secs(2), task).await {
        Ok(Ok(batches)) => batches,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "KV event replay socket failed");
            None
        }
        Err(_) => {
            abort.abort();
            None
        }
    }
}
