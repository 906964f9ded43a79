//! KV cache events: what a worker's cache did (blocks stored, removed, everything cleared).
//!
//! Two forms exist on the wire:
//! - Dynamo's JSON form ([`RouterEvent`]), used by `POST /events`, NATS
//!   ([`nats_kv_events_subject`]) and `dump_events`;
//!   blocks carry both the engine's opaque `block_hash` and the content `tokens_hash` (local
//!   hash), so the index never needs token ids;
//! - the vLLM/SGLang ZMQ msgpack form ([`zmq`]), which carries token ids; [`zmq::EngineEvent`]
//!   converts into the JSON form once the router's block size and hash seed are known.

pub mod zmq;

use serde::{Deserialize, Serialize};

use crate::hashing::LocalBlockHash;
use crate::Worker;

/// The JetStream stream that keeps KV events published on NATS (subjects
/// `kvroute.kv_events.>`), so a router that starts later replays each worker's history.
pub const NATS_KV_EVENTS_STREAM: &str = "KVROUTE_KV_EVENTS";

/// The subjects that stream keeps.
pub const NATS_KV_EVENTS_SUBJECTS: &str = "kvroute.kv_events.>";

/// The stream's size limit (oldest messages go first). A worker's history older than what
/// fits is lost to routers that start later: they miss blocks stored before it until the cache
/// turns over (each worker's history starts over whenever it restarts).
pub const NATS_KV_EVENTS_MAX_BYTES: i64 = 1 << 30;

/// The NATS subject of one worker rank's KV events: `kvroute.kv_events.<worker_id>.<dp_rank>`.
/// Each message is a JSON array of [`RouterEvent`]s (a single object is accepted too), with
/// `event_id` counting from 0 since the worker started.
pub fn nats_kv_events_subject(worker: Worker) -> String {
    format!("kvroute.kv_events.{}.{}", worker.worker_id, worker.dp_rank)
}

/// An engine's identifier for a cached block: opaque, only meaningful for the worker that sent
/// it (parents are referenced by it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EngineBlockHash(pub u64);

/// A KV event attributed to a worker: Dynamo's `RouterEvent`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterEvent {
    pub worker_id: u64,
    pub event: KvCacheEvent,
}

impl RouterEvent {
    pub fn new(worker: Worker, event_id: u64, data: KvCacheEventData) -> Self {
        RouterEvent { worker_id: worker.worker_id, event: KvCacheEvent { event_id, dp_rank: worker.dp_rank, data } }
    }

    /// The worker (id and dp rank) this event is about.
    pub fn worker(&self) -> Worker {
        Worker::new(self.worker_id, self.event.dp_rank)
    }

    /// `worker`'s events in order, numbered from `*next_id`, which moves past them (how a
    /// publisher keeps its event ids consecutive).
    pub fn numbered(worker: Worker, next_id: &mut u64, events: Vec<KvCacheEventData>) -> Vec<RouterEvent> {
        let first = *next_id;
        *next_id += events.len() as u64;
        events.into_iter().enumerate().map(|(i, data)| RouterEvent::new(worker, first + i as u64, data)).collect()
    }
}

/// One event of one worker's cache.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvCacheEvent {
    #[serde(default)]
    pub event_id: u64,
    #[serde(default)]
    pub dp_rank: u32,
    pub data: KvCacheEventData,
}

/// What happened: `{"stored": {..}}`, `{"removed": {..}}` or `"cleared"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvCacheEventData {
    Stored(KvCacheStoreData),
    Removed(KvCacheRemoveData),
    Cleared,
}

/// Blocks stored in order, each chained to the previous; the first chains to `parent_hash`
/// (absent: from the root).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvCacheStoreData {
    #[serde(default)]
    pub parent_hash: Option<EngineBlockHash>,
    pub blocks: Vec<StoredBlock>,
}

/// One stored block: the engine's id for it and the content hash the index navigates by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBlock {
    pub block_hash: EngineBlockHash,
    pub tokens_hash: LocalBlockHash,
}

/// Blocks the worker no longer holds, by the engine's ids.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvCacheRemoveData {
    pub block_hashes: Vec<EngineBlockHash>,
}

/// Parse `POST /events` bodies: a JSON array of events, or a single event object.
pub fn parse_router_events(body: &[u8]) -> Result<Vec<RouterEvent>, serde_json::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<RouterEvent>),
        One(RouterEvent),
    }
    Ok(match serde_json::from_slice::<OneOrMany>(body)? {
        OneOrMany::Many(v) => v,
        OneOrMany::One(e) => vec![e],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_events_continue_where_the_last_batch_stopped() {
        let w = Worker::new(3, 1);
        let mut next = 5;
        let first = RouterEvent::numbered(w, &mut next, vec![KvCacheEventData::Cleared, KvCacheEventData::Cleared]);
        let second = RouterEvent::numbered(w, &mut next, vec![KvCacheEventData::Cleared]);
        let ids: Vec<u64> = first.iter().chain(&second).map(|e| e.event.event_id).collect();
        assert_eq!((ids, next), (vec![5, 6, 7], 8));
        assert!(first.iter().all(|e| e.worker() == w));
    }

    #[test]
    fn json_form_matches_wire_formats_doc() {
        let text = r#"{"worker_id": 7, "event": {"event_id": 42, "dp_rank": 0,
          "data": {"stored": {"parent_hash": 123,
             "blocks": [{"block_hash": 456, "tokens_hash": 14643705804678351452}]}}}}"#;
        let ev: RouterEvent = serde_json::from_str(text).unwrap();
        let KvCacheEventData::Stored(s) = &ev.event.data else { panic!("not stored") };
        assert_eq!(s.parent_hash, Some(EngineBlockHash(123)));
        assert_eq!(s.blocks[0].tokens_hash, LocalBlockHash(14643705804678351452));
        // u64 above i64::MAX survives as a JSON number.
        let out = serde_json::to_string(&ev).unwrap();
        assert!(out.contains("14643705804678351452"), "{out}");
        assert_eq!(serde_json::from_str::<RouterEvent>(&out).unwrap(), ev);
    }

    #[test]
    fn removed_and_cleared_round_trip() {
        for data in [
            KvCacheEventData::Removed(KvCacheRemoveData { block_hashes: vec![EngineBlockHash(u64::MAX)] }),
            KvCacheEventData::Cleared,
        ] {
            let ev = RouterEvent::new(Worker::new(3, 2), 9, data);
            let text = serde_json::to_string(&ev).unwrap();
            assert_eq!(serde_json::from_str::<RouterEvent>(&text).unwrap(), ev);
        }
        let cleared = serde_json::to_value(RouterEvent::new(Worker::new(1, 0), 0, KvCacheEventData::Cleared)).unwrap();
        assert_eq!(cleared["event"]["data"], "cleared");
    }

    #[test]
    fn events_body_accepts_one_or_many_and_rejects_garbage() {
        let one = r#"{"worker_id": 1, "event": {"data": "cleared"}}"#;
        assert_eq!(parse_router_events(one.as_bytes()).unwrap().len(), 1);
        let many = format!("[{one},{one}]");
        assert_eq!(parse_router_events(many.as_bytes()).unwrap().len(), 2);
        assert!(parse_router_events(b"{\"worker_id\": \"x\"}").is_err());
        assert!(parse_router_events(b"\xff").is_err());
    }
}
