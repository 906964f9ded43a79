//! Replica sync: the replicas of one router group tell each other what they route, so that each
//! counts the group's whole load on every worker, not only its own share, and two replicas do
//! not both send a burst to the worker that each believes idle.
//!
//! Owns the wire form ([`ReplicaMessage`]: a sender, its sequence number and a batch of
//! [`LoadUpdate`]s; JSON on the message bus) and the receiving side's bookkeeping ([`Peers`]):
//! which replicas are alive, whether a message was lost, and when a silent replica's requests
//! are released. Pure: the caller passes the time and owns the bus (`service::replica_sync`).
//!
//! What is shared is load only — the requests in flight. The index needs no sharing: every
//! replica hears every worker's KV events itself.
//!
//! Failure handling, all on the receiving side:
//! - a sender's messages are numbered; a gap (lost messages) or a restart (numbering starts
//!   over) makes the receiver drop everything it held for that sender and start again from the
//!   message at hand (a lost `freed` would otherwise leave load behind for ever);
//! - every replica sends at least a heartbeat (an empty batch) each interval; one not heard
//!   from for the expiry time is gone, and its requests are released;
//! - a replica that has just started, or has just dropped a sender's view, asks for a resend
//!   (`resend` on its next message): every replica then announces all the requests it has in
//!   flight (`routed` again, then `prefill_complete` for those past it), which receivers take
//!   in place of what they held under the same ids — so a replica joining a busy group counts
//!   the long streams already running, not only what starts after it;
//! - updates about requests the receiver does not know (sent before it joined) are ignored.
//!
//! A batch is cut into as many messages as the bus's payload limit needs ([`pack`]); a
//! request whose sequence hashes alone exceed it (a very long prompt) is sent as `routed` with
//! the first hashes, then `more_blocks` with the rest, in order.

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

/// One change to the load a replica routed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum LoadUpdate {
    /// A request was routed to `(worker_id, dp_rank)`: `prefill_tokens` to compute there, and
    /// the sequence hashes of its blocks.
    Routed {
        request_id: String,
        worker_id: u64,
        dp_rank: u32,
        prefill_tokens: u64,
        blocks: Vec<u64>,
    },
    /// Further sequence hashes of a request `routed` in an earlier update (its prompt's hashes
    /// did not fit in one message).
    MoreBlocks {
        request_id: String,
        blocks: Vec<u64>,
    },
    PrefillComplete {
        request_id: String,
    },
    Freed {
        request_id: String,
    },
}

/// What one replica publishes: its updates since its last message, numbered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaMessage {
    /// The sender's replica id (unique within the group).
    pub replica: String,
    /// 0 for the sender's first message, then +1 per message.
    pub seq: u64,
    /// Empty: a heartbeat.
    #[serde(default)]
    pub updates: Vec<LoadUpdate>,
    /// The sender asks every replica to announce all its requests in flight again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resend: bool,
}

/// Room left in a message for numbers the size of the sequence number (and the `resend` flag),
/// beyond what an empty message with sequence number 0 takes.
const ENVELOPE_SLACK: usize = 48;
/// The most a sequence hash takes in JSON: 20 digits and a comma.
const HASH_BYTES: usize = 21;

/// The JSON payloads of `updates`: numbered messages (from `first_seq`) that each fit in
/// `max_bytes`, in order; the `resend` request rides on the first. An empty batch is one
/// message (a heartbeat). A batch that fits is serialized once; otherwise it is cut, and a
/// `routed` update too large for a message on its own is split into `routed` with its first
/// hashes and `more_blocks` with the rest.
pub fn pack(replica: &str, first_seq: u64, updates: Vec<LoadUpdate>, resend: bool, max_bytes: usize) -> Vec<Vec<u8>> {
    let whole = ReplicaMessage { replica: replica.to_owned(), seq: first_seq, updates, resend };
    let payload = to_json(&whole);
    if payload.len() <= max_bytes {
        return vec![payload];
    }
    let envelope =
        to_json(&ReplicaMessage { replica: replica.to_owned(), seq: 0, updates: Vec::new(), resend: false }).len();
    let room = max_bytes.saturating_sub(envelope + ENVELOPE_SLACK).max(1);
    let mut batches: Vec<Vec<LoadUpdate>> = vec![Vec::new()];
    let mut used = 0;
    for update in whole.updates.into_iter().flat_map(|u| split_to_fit(u, room)) {
        let size = to_json(&update).len() + 1; // and a comma
        if used + size > room && !batches.last().is_some_and(Vec::is_empty) {
            batches.push(Vec::new());
            used = 0;
        }
        used += size;
        batches.last_mut().expect("at least one batch").push(update);
    }
    batches
        .into_iter()
        .enumerate()
        .map(|(i, updates)| {
            to_json(&ReplicaMessage {
                replica: replica.to_owned(),
                seq: first_seq + i as u64,
                updates,
                resend: resend && i == 0,
            })
        })
        .collect()
}

/// One update, or a `routed` one cut into parts that each fit in `room` bytes.
fn split_to_fit(update: LoadUpdate, room: usize) -> Vec<LoadUpdate> {
    let LoadUpdate::Routed { request_id, worker_id, dp_rank, prefill_tokens, mut blocks } = update else {
        return vec![update];
    };
    let header =
        LoadUpdate::Routed { request_id: request_id.clone(), worker_id, dp_rank, prefill_tokens, blocks: Vec::new() };
    // `more_blocks` parts carry less besides their hashes than `routed`, so they fit too.
    let per_part = (room.saturating_sub(to_json(&header).len() + 1) / HASH_BYTES).max(1);
    let rest = blocks.split_off(per_part.min(blocks.len()));
    let mut out =
        vec![LoadUpdate::Routed { request_id: request_id.clone(), worker_id, dp_rank, prefill_tokens, blocks }];
    out.extend(
        rest.chunks(per_part)
            .map(|part| LoadUpdate::MoreBlocks { request_id: request_id.clone(), blocks: part.to_vec() }),
    );
    out
}

fn to_json(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("load updates serialize")
}

/// How a received message fitted the sender's sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Continuity {
    /// The next message of a replica already heard.
    InOrder,
    /// The first message heard from this replica.
    NewReplica,
    /// Messages were lost or the replica restarted: what was held for it was dropped.
    Resynced { dropped_requests: usize },
}

/// Where the receiving side applies updates (the router's active sequences).
pub trait ReplicaLoads {
    fn apply_replica_update(&mut self, replica: &str, update: &LoadUpdate);
    /// Release everything held for `replica`; how many requests that was.
    fn forget_replica(&mut self, replica: &str) -> usize;
}

struct Peer {
    next_seq: u64,
    last_heard_ms: u64,
}

/// The other replicas of the group, as heard on the bus.
#[derive(Default)]
pub struct Peers {
    peers: FxHashMap<String, Peer>,
}

impl Peers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Apply a message another replica sent (at `now_ms`, any monotonic clock in ms).
    pub fn receive(&mut self, loads: &mut impl ReplicaLoads, message: &ReplicaMessage, now_ms: u64) -> Continuity {
        let continuity = match self.peers.get_mut(&message.replica) {
            None => Continuity::NewReplica,
            Some(peer) if peer.next_seq == message.seq => Continuity::InOrder,
            Some(_) => Continuity::Resynced { dropped_requests: loads.forget_replica(&message.replica) },
        };
        self.peers.insert(message.replica.clone(), Peer { next_seq: message.seq + 1, last_heard_ms: now_ms });
        for update in &message.updates {
            loads.apply_replica_update(&message.replica, update);
        }
        continuity
    }

    /// Forget replicas not heard from since `now_ms - expiry_ms`, releasing their requests.
    /// Returns each one gone with the number of requests released.
    pub fn expire(&mut self, loads: &mut impl ReplicaLoads, now_ms: u64, expiry_ms: u64) -> Vec<(String, usize)> {
        let gone: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| now_ms.saturating_sub(p.last_heard_ms) > expiry_ms)
            .map(|(r, _)| r.clone())
            .collect();
        gone.into_iter()
            .map(|replica| {
                self.peers.remove(&replica);
                let released = loads.forget_replica(&replica);
                (replica, released)
            })
            .collect()
    }

    /// Replicas currently heard from.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what the receiver asked of the loads.
    #[derive(Default)]
    struct Log {
        applied: Vec<(String, LoadUpdate)>,
        forgotten: Vec<String>,
    }

    impl ReplicaLoads for Log {
        fn apply_replica_update(&mut self, replica: &str, update: &LoadUpdate) {
            self.applied.push((replica.to_owned(), update.clone()));
        }
        fn forget_replica(&mut self, replica: &str) -> usize {
            self.forgotten.push(replica.to_owned());
            7
        }
    }

    fn message(replica: &str, seq: u64, updates: Vec<LoadUpdate>) -> ReplicaMessage {
        ReplicaMessage { replica: replica.into(), seq, updates, resend: false }
    }

    fn freed(id: &str) -> LoadUpdate {
        LoadUpdate::Freed { request_id: id.into() }
    }

    #[test]
    fn messages_in_order_apply_and_a_gap_drops_what_was_held_first() {
        let (mut peers, mut log) = (Peers::new(), Log::default());
        assert_eq!(peers.receive(&mut log, &message("a", 5, vec![freed("1")]), 0), Continuity::NewReplica);
        assert_eq!(peers.receive(&mut log, &message("a", 6, vec![]), 10), Continuity::InOrder);
        assert!(log.forgotten.is_empty());
        // Message 7 was lost.
        assert_eq!(
            peers.receive(&mut log, &message("a", 8, vec![freed("2")]), 20),
            Continuity::Resynced { dropped_requests: 7 }
        );
        assert_eq!(log.forgotten, vec!["a"]);
        // The message at hand still applies, after the drop.
        assert_eq!(log.applied, vec![("a".into(), freed("1")), ("a".into(), freed("2"))]);
        // A restart (numbering from 0 again) is a discontinuity too.
        assert_eq!(peers.receive(&mut log, &message("a", 0, vec![]), 30), Continuity::Resynced { dropped_requests: 7 });
        assert_eq!(peers.len(), 1);
    }

    #[test]
    fn a_silent_replica_expires_and_its_requests_are_released() {
        let (mut peers, mut log) = (Peers::new(), Log::default());
        peers.receive(&mut log, &message("a", 0, vec![]), 1_000);
        peers.receive(&mut log, &message("b", 0, vec![]), 2_500);
        assert!(peers.expire(&mut log, 4_000, 3_000).is_empty(), "both heard within 3 s");
        assert_eq!(peers.expire(&mut log, 4_001, 3_000), vec![("a".to_owned(), 7)]);
        assert_eq!(log.forgotten, vec!["a"]);
        assert_eq!(peers.len(), 1);
        // Heard again later: a new replica as far as the receiver knows.
        assert_eq!(peers.receive(&mut log, &message("a", 3, vec![]), 5_000), Continuity::NewReplica);
    }

    /// The updates a receiver ends up with: `more_blocks` parts folded into their `routed`.
    fn reassembled(messages: &[ReplicaMessage]) -> Vec<LoadUpdate> {
        let mut out: Vec<LoadUpdate> = Vec::new();
        for update in messages.iter().flat_map(|m| m.updates.iter().cloned()) {
            match update {
                LoadUpdate::MoreBlocks { request_id, blocks } => {
                    let routed = out.iter_mut().rev().find_map(|u| match u {
                        LoadUpdate::Routed { request_id: id, blocks, .. } if *id == request_id => Some(blocks),
                        _ => None,
                    });
                    routed.expect("more_blocks follows its routed").extend(blocks);
                }
                other => out.push(other),
            }
        }
        out
    }

    #[test]
    fn batches_and_long_prompts_are_cut_to_the_payload_limit() {
        let routed = |id: &str, n: u64| LoadUpdate::Routed {
            request_id: id.into(),
            worker_id: u64::MAX,
            dp_rank: 3,
            prefill_tokens: n * 16,
            blocks: (0..n).map(|i| u64::MAX - i).collect(),
        };
        let updates = vec![
            freed("before"),
            routed("long", 5_000), // ≈ 105 KB of hashes
            LoadUpdate::PrefillComplete { request_id: "long".into() },
            routed("short", 10),
            freed("after"),
        ];
        let payloads = pack("replica-7", 41, updates.clone(), true, 4_096);
        assert!(payloads.len() > 25, "{} messages", payloads.len());
        let messages: Vec<ReplicaMessage> = payloads.iter().map(|p| serde_json::from_slice(p).unwrap()).collect();
        for (i, m) in messages.iter().enumerate() {
            let bytes = payloads[i].len();
            assert!(bytes <= 4_096, "message {i} is {bytes} bytes");
            assert_eq!(m.seq, 41 + i as u64);
            assert_eq!(m.resend, i == 0);
            assert!(!m.updates.is_empty());
        }
        assert_eq!(reassembled(&messages), updates);
        // Under a generous limit: one message, as before.
        let one = pack("replica-7", 41, updates.clone(), false, 1 << 20);
        let whole = ReplicaMessage { replica: "replica-7".into(), seq: 41, updates, resend: false };
        assert_eq!(one, vec![serde_json::to_vec(&whole).unwrap()]);
        // Nothing to say: a heartbeat.
        assert_eq!(pack("r", 0, Vec::new(), false, 4_096), vec![serde_json::to_vec(&message("r", 0, vec![])).unwrap()]);
    }

    #[test]
    fn the_wire_form_is_tagged_json() {
        let m = message(
            "r1",
            3,
            vec![
                LoadUpdate::Routed {
                    request_id: "q".into(),
                    worker_id: 9,
                    dp_rank: 1,
                    prefill_tokens: 64,
                    blocks: vec![1, u64::MAX],
                },
                LoadUpdate::PrefillComplete { request_id: "q".into() },
            ],
        );
        let text = serde_json::to_string(&m).unwrap();
        assert!(text.contains(r#""op":"routed""#) && text.contains(r#""op":"prefill_complete""#), "{text}");
        assert_eq!(serde_json::from_str::<ReplicaMessage>(&text).unwrap(), m);
        let heartbeat: ReplicaMessage = serde_json::from_str(r#"{"replica":"r2","seq":0}"#).unwrap();
        assert!(heartbeat.updates.is_empty() && !heartbeat.resend);
        let asking = ReplicaMessage { resend: true, ..heartbeat };
        assert!(serde_json::to_string(&asking).unwrap().contains(r#""resend":true"#));
        assert!(serde_json::from_str::<ReplicaMessage>(r#"{"replica":"r2","seq":0,"updates":[{"op":"teleported"}]}"#)
            .is_err());
    }
}
