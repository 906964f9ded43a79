//! KV events on vLLM's ZMQ wire: a PUB socket per dp rank, one message per pass that changed
//! the cache (`[topic, sequence as 8-byte big-endian, msgpack payload]`), and vLLM's replay
//! socket (ROUTER): a subscriber that saw a sequence gap sends the first missing sequence number
//! and gets the buffered messages from there as `[seq, payload]` frames, ended by an empty
//! payload.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kvroute_protocol::events::zmq::{encode_payload, EventBatch};
use zeromq::{Endpoint, PubSocket, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

use crate::block_pool::CacheEvent;

/// Where a rank's publisher listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublisherEndpoints {
    /// `tcp://host:port` of the PUB socket.
    pub events: String,
    /// `tcp://host:port` of the replay ROUTER socket.
    pub replay: String,
}

type Ring = Arc<Mutex<VecDeque<(u64, Bytes)>>>;

pub struct Publisher {
    socket: PubSocket,
    topic: Bytes,
    dp_rank: u32,
    next_seq: u64,
    ring: Ring,
    ring_capacity: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot bind ZMQ {what} socket to {address}: {source}")]
pub struct BindError {
    what: &'static str,
    address: String,
    source: zeromq::ZmqError,
}

fn tcp_address(endpoint: &Endpoint) -> String {
    match endpoint {
        Endpoint::Tcp(host, port) => format!("tcp://{host}:{port}"),
        other => other.to_string(),
    }
}

impl Publisher {
    /// Bind the PUB socket at `events_address` (e.g. `tcp://127.0.0.1:0`) and the replay socket
    /// at `replay_address`; keep the last `ring_capacity` messages for replay.
    pub async fn bind(
        events_address: &str,
        replay_address: &str,
        topic: &str,
        dp_rank: u32,
        ring_capacity: usize,
    ) -> Result<(Publisher, PublisherEndpoints), BindError> {
        let mut socket = PubSocket::new();
        let events = socket.bind(events_address).await.map_err(|source| BindError {
            what: "PUB",
            address: events_address.to_owned(),
            source,
        })?;
        let mut router = RouterSocket::new();
        let replay = router.bind(replay_address).await.map_err(|source| BindError {
            what: "replay ROUTER",
            address: replay_address.to_owned(),
            source,
        })?;
        let ring: Ring = Arc::new(Mutex::new(VecDeque::new()));
        let endpoints = PublisherEndpoints { events: tcp_address(&events), replay: tcp_address(&replay) };
        tokio::spawn(supervise_replay(router, endpoints.replay.clone(), ring.clone()));
        let publisher = Publisher {
            socket,
            topic: Bytes::copy_from_slice(topic.as_bytes()),
            dp_rank,
            next_seq: 0,
            ring,
            ring_capacity,
        };
        Ok((publisher, endpoints))
    }

    /// Publish one pass's events (nothing when the pass did not change the cache).
    pub async fn publish(&mut self, events: &[CacheEvent], block_size: u32) {
        if let Some((seq, payload)) = self.record(events, block_size) {
            self.send(seq, payload).await;
        }
    }

    /// Fault injection for tests: number and buffer a message for replay but do not send it,
    /// as if it were lost on the wire.
    #[doc(hidden)]
    pub fn publish_lost(&mut self, events: &[CacheEvent], block_size: u32) {
        self.record(events, block_size);
    }

    /// Number the batch and keep it for replay.
    fn record(&mut self, events: &[CacheEvent], block_size: u32) -> Option<(u64, Bytes)> {
        if events.is_empty() {
            return None;
        }
        let ts = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        let batch = EventBatch {
            ts,
            events: events.iter().map(|e| e.to_engine_event(block_size)).collect(),
            dp_rank: Some(self.dp_rank),
        };
        let payload = Bytes::from(encode_payload(&batch));
        let seq = self.next_seq;
        self.next_seq += 1;
        {
            let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
            ring.push_back((seq, payload.clone()));
            while ring.len() > self.ring_capacity {
                ring.pop_front();
            }
        }
        Some((seq, payload))
    }

    async fn send(&mut self, seq: u64, payload: Bytes) {
        let mut message = ZmqMessage::from(self.topic.clone());
        message.push_back(Bytes::copy_from_slice(&seq.to_be_bytes()));
        message.push_back(payload);
        if let Err(e) = self.socket.send(message).await {
            tracing::warn!(error = %e, seq, "publishing KV events failed");
        }
    }
}

/// Serve replay requests for good: the zeromq crate's ROUTER panics (`todo!()`) on some peer
/// failures; the server then runs in a task of its own and is bound again at the same address.
async fn supervise_replay(mut router: RouterSocket, address: String, ring: Ring) {
    loop {
        match tokio::spawn(serve_replay(router, ring.clone())).await {
            Ok(()) => return, // the socket closed
            Err(e) => tracing::warn!(%address, error = %e, "replay socket failed; serving it again"),
        }
        router = loop {
            let mut fresh = RouterSocket::new();
            match fresh.bind(&address).await {
                Ok(_) => break fresh,
                Err(e) => {
                    tracing::warn!(%address, error = %e, "cannot bind the replay socket again yet");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            }
        };
    }
}

/// Answer replay requests `[identity, "", start_seq]` from the ring buffer.
async fn serve_replay(mut router: RouterSocket, ring: Ring) {
    loop {
        let request = match router.recv().await {
            Ok(m) => m.into_vec(),
            Err(e) => {
                tracing::debug!(error = %e, "replay socket closed");
                return;
            }
        };
        let Some(identity) = request.first().cloned() else { continue };
        let Some(start) = request.last().and_then(|f| <[u8; 8]>::try_from(f.as_ref()).ok()).map(u64::from_be_bytes)
        else {
            tracing::warn!("malformed replay request ignored");
            continue;
        };
        let replies: Vec<(u64, Bytes)> = {
            let ring = ring.lock().unwrap_or_else(|e| e.into_inner());
            ring.iter().filter(|(seq, _)| *seq >= start).cloned().collect()
        };
        let frames = |seq: [u8; 8], payload: Bytes| {
            let mut m = ZmqMessage::from(identity.clone());
            m.push_back(Bytes::new());
            m.push_back(Bytes::copy_from_slice(&seq));
            m.push_back(payload);
            m
        };
        for (seq, payload) in replies {
            if router.send(frames(seq.to_be_bytes(), payload)).await.is_err() {
                break;
            }
        }
        let _ = router.send(frames((-1i64).to_be_bytes(), Bytes::new())).await;
    }
}
