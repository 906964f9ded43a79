//! kvroute's NATS plane, shared by whatever publishes KV events (the mocker, `kvroute
//! kv-relay` in front of a vLLM/SGLang worker) and the routers that consume them:
//! - [`kv_events_stream`]: the JetStream stream that keeps every worker's KV events
//!   ([`NATS_KV_EVENTS_STREAM`], subjects `kvroute.kv_events.<worker_id>.<dp_rank>`, see
//!   [`nats_kv_events_subject`]), created by whichever side comes first;
//! - [`spawn_kv_event_publisher`]: one worker rank's events onto its subject, in order, as
//!   Dynamo-JSON `RouterEvent` arrays with event ids counting from 0 (the rank's earlier
//!   history is purged first: a new engine's cache is empty);
//! - compaction: once a rank has published much more than its cache holds, the publisher
//!   re-states the cache ([`LiveBlocks::snapshot`]: `cleared`, then the live blocks, parents
//!   first) in messages marked with the [`SNAPSHOT_HEADER`] header, and purges the subject's
//!   messages before it. A router that replays the stream from then on starts from the
//!   snapshot; one already following skips it (it already holds the same blocks), so the
//!   stream stays about the size of the caches without routers that start later missing
//!   anything.
//!
//! Plain `nats://` connections (no TLS crypto provider is built in).
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
pub use kvroute_protocol::events::{
    nats_kv_events_subject, NATS_KV_EVENTS_MAX_BYTES, NATS_KV_EVENTS_STREAM, NATS_KV_EVENTS_SUBJECTS,
};
use kvroute_protocol::events::{EngineBlockHash, KvCacheEventData, KvCacheStoreData, RouterEvent, StoredBlock};
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
    let stream = js.get_or_create_stream(config).await.map_err(explain_stream_error)?;
    Ok((js, stream))
}

/// The server's refusal to store the stream, said in words an operator can act on; other
/// errors as they are.
fn explain_stream_error(e: jetstream::context::CreateStreamError) -> Error {
    use jetstream::context::CreateStreamErrorKind;
    use jetstream::ErrorCode;
    match e.kind() {
        CreateStreamErrorKind::JetStream(js)
            if [ErrorCode::STORAGE_RESOURCES_EXCEEDED, ErrorCode::INSUFFICIENT_RESOURCES]
                .contains(&js.error_code()) =>
        {
            format!(
                "the NATS server has no room for the KV-event stream ({NATS_KV_EVENTS_MAX_BYTES} bytes): \
                 is its disk full, or its JetStream max_file_store too small? ({e})"
            )
            .into()
        }
        _ => e.into(),
    }
}

/// The header marking the messages of a snapshot (its value: `1`).
pub const SNAPSHOT_HEADER: &str = "Kvroute-Snapshot";

/// Most events per message (a snapshot of a large cache spans several).
const EVENTS_PER_MESSAGE: usize = 1024;

/// When a publisher compacts its subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublisherOptions {
    /// Re-state the cache once this many blocks were stored, removed or cleared since the
    /// last snapshot, and at least twice as many as the cache holds (None: never).
    pub snapshot_after_blocks: Option<u64>,
}

impl Default for PublisherOptions {
    fn default() -> Self {
        PublisherOptions { snapshot_after_blocks: Some(100_000) }
    }
}

/// Publish `worker`'s KV events on its subject: send the publisher each batch (one engine pass,
/// one message). It connects in the background (retrying); batches that arrive while the
/// server cannot be reached are dropped, their ids still counted, so routers see where the
/// history they hold starts. Each message waits for the stream's acknowledgement, keeping order.
pub fn spawn_kv_event_publisher(
    url: String,
    worker: Worker,
    options: PublisherOptions,
) -> mpsc::UnboundedSender<Vec<KvCacheEventData>> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<KvCacheEventData>>();
    tokio::spawn(async move {
        let subject = nats_kv_events_subject(worker);
        let mut next_id = 0u64;
        let mut live = LiveBlocks::default();
        let mut backoff = Duration::from_millis(100);
        let (js, stream) = loop {
            match connect_and_purge(&url, &subject).await {
                Ok(connected) => break connected,
                Err(e) => {
                    tracing::warn!(%subject, error = %e, "cannot open the NATS JetStream stream for KV events yet; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    while let Ok(events) = rx.try_recv() {
                        next_id += events.len() as u64;
                        events.iter().for_each(|e| live.apply(e));
                    }
                }
            }
        };
        tracing::info!(%subject, "publishing KV events on NATS JetStream");
        let mut touched_since_snapshot = 0u64;
        while let Some(events) = rx.recv().await {
            if events.is_empty() {
                continue;
            }
            for e in &events {
                touched_since_snapshot += LiveBlocks::touched(e);
                live.apply(e);
            }
            let body = RouterEvent::numbered(worker, &mut next_id, events);
            if let Err(e) = publish(&js, &subject, &body, false).await {
                // Routers see the hole in the event ids and start this worker's view over.
                tracing::warn!(%subject, error = %e, "publishing KV events to NATS failed");
            }
            let due =
                options.snapshot_after_blocks.is_some_and(|n| touched_since_snapshot >= n.max(2 * live.len() as u64));
            if due {
                touched_since_snapshot = 0;
                match snapshot(&js, &stream, &subject, worker, &mut next_id, &live).await {
                    Ok(purged) => {
                        tracing::debug!(%subject, blocks = live.len(), purged, "KV events compacted into a snapshot")
                    }
                    Err(e) => tracing::warn!(%subject, error = %e, "compacting KV events failed; the history stays"),
                }
            }
        }
    });
    tx
}

/// Publish one message and wait for the stream to keep it; its stream sequence number.
async fn publish(js: &jetstream::Context, subject: &str, body: &[RouterEvent], snapshot: bool) -> Result<u64, Error> {
    let payload = serde_json::to_vec(body)?;
    let ack = if snapshot {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(SNAPSHOT_HEADER, "1");
        js.publish_with_headers(subject.to_owned(), headers, payload.into()).await?
    } else {
        js.publish(subject.to_owned(), payload.into()).await?
    };
    Ok(ack.await?.sequence)
}

/// Re-state `live` on the subject, then purge what came before it; how many messages went.
async fn snapshot(
    js: &jetstream::Context,
    stream: &stream::Stream,
    subject: &str,
    worker: Worker,
    next_id: &mut u64,
    live: &LiveBlocks,
) -> Result<u64, Error> {
    let mut events = vec![KvCacheEventData::Cleared];
    events.extend(live.snapshot());
    let body = RouterEvent::numbered(worker, next_id, events);
    let mut first = None;
    for chunk in body.chunks(EVENTS_PER_MESSAGE) {
        let sequence = publish(js, subject, chunk, true).await?;
        first.get_or_insert(sequence);
    }
    let first = first.expect("a snapshot has at least its `cleared`");
    Ok(stream.purge().filter(subject).sequence(first).await?.purged)
}

/// A worker rank's cached blocks as its events describe them: what a snapshot re-states.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LiveBlocks {
    /// Engine hash → (parent's engine hash, content hash).
    blocks: HashMap<u64, (Option<u64>, u64)>,
}

impl LiveBlocks {
    pub fn apply(&mut self, event: &KvCacheEventData) {
        match event {
            KvCacheEventData::Stored(s) => {
                let mut parent = s.parent_hash.map(|p| p.0);
                for b in &s.blocks {
                    self.blocks.insert(b.block_hash.0, (parent, b.tokens_hash.0));
                    parent = Some(b.block_hash.0);
                }
            }
            KvCacheEventData::Removed(r) => r.block_hashes.iter().for_each(|h| {
                self.blocks.remove(&h.0);
            }),
            KvCacheEventData::Cleared => self.blocks.clear(),
        }
    }

    /// Blocks the event stores or removes (1 for a `cleared`): what it adds to the history.
    pub fn touched(event: &KvCacheEventData) -> u64 {
        match event {
            KvCacheEventData::Stored(s) => s.blocks.len() as u64,
            KvCacheEventData::Removed(r) => r.block_hashes.len() as u64,
            KvCacheEventData::Cleared => 1,
        }
    }

    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Stored events that rebuild these blocks from nothing, parents before children, one
    /// event per unbranched chain. A block whose parent is gone (an engine evicting a parent
    /// before its child) cannot be placed by an index and is left out.
    pub fn snapshot(&self) -> Vec<KvCacheEventData> {
        let mut children: HashMap<Option<u64>, Vec<u64>> = HashMap::new();
        for (&hash, &(parent, _)) in &self.blocks {
            match parent {
                None => children.entry(None).or_default().push(hash),
                Some(p) if self.blocks.contains_key(&p) => children.entry(Some(p)).or_default().push(hash),
                Some(_) => {} // orphan
            }
        }
        for list in children.values_mut() {
            list.sort_unstable(); // deterministic output
        }
        let mut events = Vec::new();
        let mut starts: Vec<(Option<u64>, u64)> =
            children.get(&None).into_iter().flatten().rev().map(|&h| (None, h)).collect();
        while let Some((parent, start)) = starts.pop() {
            let mut chain = vec![start];
            let mut at = start;
            while let Some(&[only]) = children.get(&Some(at)).map(Vec::as_slice) {
                chain.push(only);
                at = only;
            }
            if let Some(branches) = children.get(&Some(at)) {
                starts.extend(branches.iter().rev().map(|&h| (Some(at), h))); // two or more
            }
            let blocks = chain
                .iter()
                .map(|h| StoredBlock {
                    block_hash: EngineBlockHash(*h),
                    tokens_hash: kvroute_protocol::LocalBlockHash(self.blocks[h].1),
                })
                .collect();
            events
                .push(KvCacheEventData::Stored(KvCacheStoreData { parent_hash: parent.map(EngineBlockHash), blocks }));
        }
        events
    }
}

async fn connect_and_purge(url: &str, subject: &str) -> Result<(jetstream::Context, stream::Stream), Error> {
    let (js, stream) = kv_events_stream(url).await?;
    stream.purge().filter(subject).await?;
    Ok((js, stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(parent: Option<u64>, blocks: &[u64]) -> KvCacheEventData {
        KvCacheEventData::Stored(KvCacheStoreData {
            parent_hash: parent.map(EngineBlockHash),
            blocks: blocks
                .iter()
                .map(|&h| StoredBlock {
                    block_hash: EngineBlockHash(h),
                    tokens_hash: kvroute_protocol::LocalBlockHash(h * 10),
                })
                .collect(),
        })
    }

    fn removed(hashes: &[u64]) -> KvCacheEventData {
        KvCacheEventData::Removed(kvroute_protocol::events::KvCacheRemoveData {
            block_hashes: hashes.iter().map(|&h| EngineBlockHash(h)).collect(),
        })
    }

    #[test]
    fn a_snapshot_restates_the_live_blocks_parents_first_in_chains() {
        let mut live = LiveBlocks::default();
        // 1-2-3-4 with a branch 2-5-6, a second root 7-8, then 4 and 8 evicted.
        for e in [stored(None, &[1, 2, 3, 4]), stored(Some(2), &[5, 6]), stored(None, &[7, 8]), removed(&[4, 8])] {
            live.apply(&e);
        }
        let snapshot = live.snapshot();
        // Chains: 1-2, then its branches 3 and 5-6; 7.
        assert_eq!(
            snapshot,
            vec![stored(None, &[1, 2]), stored(Some(2), &[3]), stored(Some(2), &[5, 6]), stored(None, &[7])]
        );
        let mut rebuilt = LiveBlocks::default();
        snapshot.iter().for_each(|e| rebuilt.apply(e));
        assert_eq!(rebuilt, live);
        // A cleared history is empty; touched counts what each event adds.
        live.apply(&KvCacheEventData::Cleared);
        assert!(live.is_empty() && live.snapshot().is_empty());
        assert_eq!(
            [stored(None, &[1, 2]), removed(&[1]), KvCacheEventData::Cleared].map(|e| LiveBlocks::touched(&e)),
            [2, 1, 1]
        );
    }

    #[test]
    fn blocks_whose_parent_is_gone_are_left_out() {
        let mut live = LiveBlocks::default();
        live.apply(&stored(None, &[1, 2, 3]));
        live.apply(&removed(&[2]));
        assert_eq!(live.len(), 2);
        assert_eq!(live.snapshot(), vec![stored(None, &[1])]);
    }
}
