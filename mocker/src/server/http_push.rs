//! KV events in Dynamo's JSON form ([`to_event_data`], shared with the NATS publisher), pushed
//! over HTTP (`POST <url>/events`) — the path for routers that do not subscribe to ZMQ. One
//! task per rank posts batches in order; a failed post is logged and dropped (the router's gap
//! handling is for ZMQ; this path is best effort).

use kvroute_protocol::events::{
    EngineBlockHash, KvCacheEventData, KvCacheRemoveData, KvCacheStoreData, RouterEvent, StoredBlock,
};
use kvroute_protocol::hashing::local_block_hash;
use kvroute_protocol::{HashSeed, Worker};
use tokio::sync::mpsc;

use crate::block_pool::CacheEvent;

/// The JSON form of a pass's events (local hashes computed from the blocks' tokens).
pub fn to_event_data(events: &[CacheEvent]) -> Vec<KvCacheEventData> {
    events
        .iter()
        .map(|e| match e {
            CacheEvent::Stored { parent, blocks } => KvCacheEventData::Stored(KvCacheStoreData {
                parent_hash: parent.map(|p| EngineBlockHash(p.0)),
                blocks: blocks
                    .iter()
                    .map(|(h, tokens)| StoredBlock {
                        block_hash: EngineBlockHash(h.0),
                        tokens_hash: local_block_hash(tokens, HashSeed::default()),
                    })
                    .collect(),
            }),
            CacheEvent::Removed { hashes } => KvCacheEventData::Removed(KvCacheRemoveData {
                block_hashes: hashes.iter().map(|h| EngineBlockHash(h.0)).collect(),
            }),
            CacheEvent::Cleared => KvCacheEventData::Cleared,
        })
        .collect()
}

/// [`to_event_data`] attributed to `worker`, numbered from `*next_id`, which moves past them.
pub fn to_router_events(worker: Worker, next_id: &mut u64, events: &[CacheEvent]) -> Vec<RouterEvent> {
    RouterEvent::numbered(worker, next_id, to_event_data(events))
}

/// Start the pusher for one rank; send it each pass's events.
pub fn spawn(url: String, worker: Worker) -> mpsc::UnboundedSender<Vec<KvCacheEventData>> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<KvCacheEventData>>();
    let endpoint = format!("{}/events", url.trim_end_matches('/'));
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut next_id = 0u64;
        while let Some(events) = rx.recv().await {
            let body = RouterEvent::numbered(worker, &mut next_id, events);
            match client.post(&endpoint).json(&body).send().await {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => tracing::warn!(status = %r.status(), %endpoint, "router refused pushed KV events"),
                Err(e) => tracing::warn!(error = %e, %endpoint, "pushing KV events failed"),
            }
        }
    });
    tx
}
