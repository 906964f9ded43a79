//! The mocker's KV events, received on the real ZMQ wire and decoded with kvroute's own decoder,
//! add up to exactly the blocks the mocker holds, and rebuild an index that matches its prompts.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use kvroute_kv_router::KvIndex;
use kvroute_protocol::events::zmq::{decode_multipart, decode_payload, EngineEvent, EventBatch};
use kvroute_protocol::events::RouterEvent;
use kvroute_protocol::{block_hashes, HashSeed, Worker};
use serde_json::{json, Value};
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, SubSocket, ZmqMessage};

use crate::support;

const BS: usize = 16;

/// Every batch published so far, in sequence order: live ones from the SUB socket, and the ones
/// published before the subscription took effect fetched from the replay socket.
struct EventLog {
    sub: SubSocket,
    replay_endpoint: String,
    batches: Vec<(u64, EventBatch)>,
}

impl EventLog {
    async fn connect(endpoint: &str, replay_endpoint: &str) -> EventLog {
        let mut sub = SubSocket::new();
        sub.connect(endpoint).await.expect("SUB connects");
        sub.subscribe("").await.expect("subscribes");
        EventLog { sub, replay_endpoint: replay_endpoint.to_owned(), batches: Vec::new() }
    }

    /// Receive for up to `wait`; fill any gap (including before the first message) by replay.
    async fn pump(&mut self, wait: Duration) {
        while let Ok(Ok(msg)) = tokio::time::timeout(wait, self.sub.recv()).await {
            let frames: Vec<Bytes> = msg.into_vec();
            let decoded = decode_multipart(&frames).expect("our decoder reads the mocker's frames");
            assert_eq!(decoded.topic, b"kv-events");
            let expected = self.batches.last().map_or(0, |(s, _)| s + 1);
            if decoded.seq > expected {
                self.replay(expected, decoded.seq).await;
            }
            self.batches.push((decoded.seq, decoded.batch));
        }
    }

    async fn replay(&mut self, from: u64, to: u64) {
        let mut dealer = DealerSocket::new();
        dealer.connect(&self.replay_endpoint).await.expect("replay socket connects");
        let mut request = ZmqMessage::from(Bytes::new());
        request.push_back(Bytes::copy_from_slice(&from.to_be_bytes()));
        dealer.send(request).await.expect("replay request sent");
        loop {
            let frames = tokio::time::timeout(Duration::from_secs(5), dealer.recv())
                .await
                .expect("replay answers")
                .unwrap()
                .into_vec();
            let (seq, payload) = (&frames[frames.len() - 2], &frames[frames.len() - 1]);
            if payload.is_empty() {
                break;
            }
            let seq = u64::from_be_bytes(seq.as_ref().try_into().unwrap());
            if seq < to {
                self.batches.push((seq, decode_payload(payload).expect("replayed payload decodes")));
            }
        }
        self.batches.sort_by_key(|(s, _)| *s);
        let seqs: Vec<u64> = self.batches.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (0..to).collect::<Vec<_>>(), "replay filled the gap");
    }

    /// The set of blocks the events say are cached.
    fn mirror(&self) -> BTreeSet<u64> {
        let mut held = BTreeSet::new();
        for (_, batch) in &self.batches {
            assert_eq!(batch.dp_rank, Some(0));
            for ev in &batch.events {
                match ev {
                    EngineEvent::BlockStored { block_hashes, block_size, token_ids, .. } => {
                        assert_eq!(*block_size as usize, BS);
                        assert_eq!(token_ids.len(), block_hashes.len() * BS);
                        for h in block_hashes {
                            assert!(held.insert(h.0), "block {} stored twice", h.0);
                        }
                    }
                    EngineEvent::BlockRemoved { block_hashes, .. } => {
                        for h in block_hashes {
                            assert!(held.remove(&h.0), "removed block {} was never stored", h.0);
                        }
                    }
                    EngineEvent::AllBlocksCleared => held.clear(),
                }
            }
        }
        held
    }
}

async fn cached_blocks(client: &reqwest::Client, http: &str) -> BTreeSet<u64> {
    let v: Value = client.get(format!("{http}/debug/kv_blocks")).send().await.unwrap().json().await.unwrap();
    v["ranks"][0]["blocks"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap()).collect()
}

#[tokio::test]
async fn events_rebuild_exactly_the_cached_blocks_and_an_index_that_matches() {
    // A small cache (48 blocks) so that the prompts below force evictions too.
    let m = support::mocker(&["--block-size", "16", "--num-gpu-blocks", "48"]);
    let client = reqwest::Client::new();
    let mut log = EventLog::connect(&m.kv_events(0), &m.kv_replay(0)).await;

    let shared: Vec<u32> = (0..160).map(|i| i * 3 + 1).collect();
    let mut prompts = Vec::new();
    for k in 0..6u32 {
        let mut p = shared.clone();
        p.extend((0..200).map(|i| 100_000 + k * 1000 + i));
        prompts.push(p);
    }
    for p in &prompts {
        let r = client
            .post(format!("{}/v1/completions", m.http()))
            .json(&json!({"prompt": p, "max_tokens": 2}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    let expected = cached_blocks(&client, &m.http()).await;
    assert!(!expected.is_empty());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while log.mirror() != expected && std::time::Instant::now() < deadline {
        log.pump(Duration::from_millis(100)).await;
    }
    assert_eq!(log.mirror(), expected, "the events add up to the blocks the mocker holds");
    let removed =
        log.batches.iter().flat_map(|(_, b)| &b.events).any(|e| matches!(e, EngineEvent::BlockRemoved { .. }));
    assert!(removed, "the small cache evicted, and said so");

    // An index fed with the decoded events finds the last prompt's cached prefix on the worker.
    let worker = Worker::new(1, 0);
    let mut index = KvIndex::new();
    for (_, batch) in &log.batches {
        for ev in &batch.events {
            let data = ev.to_kv_event(BS, HashSeed::default()).expect("block size matches");
            let _ = index.apply_event(&RouterEvent::new(worker, 0, data));
        }
    }
    let last = prompts.last().unwrap();
    let local = block_hashes(last, BS, HashSeed::default());
    let overlap = index.find_matches(&local).iter().find(|o| o.worker == worker).map_or(0, |o| o.blocks);
    let engine_cached =
        support::post_json(&client, &format!("{}/v1/completions", m.http()), &json!({"prompt": last, "max_tokens": 1}))
            .await;
    let cached_tokens = engine_cached["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap() as usize;
    assert_eq!(overlap as usize, last.len() / BS, "the last prompt's full blocks are all cached");
    // The engine always recomputes at least one token, so it serves all but the last full block.
    assert_eq!(cached_tokens, (overlap as usize * BS).min((last.len() - 1) / BS * BS));
}

#[tokio::test]
async fn each_dp_rank_has_its_own_cache_and_tags_its_events() {
    let m = support::mocker(&["--block-size", "16", "--data-parallel-size", "2"]);
    let client = reqwest::Client::new();
    let mut sub = SubSocket::new();
    sub.connect(&m.kv_events(1)).await.unwrap();
    sub.subscribe("").await.unwrap();
    let prompt: Vec<u32> = (0..64).map(|i| i + 500).collect();
    let send = |rank: &'static str, prompt: Vec<u32>| {
        let client = client.clone();
        let url = format!("{}/v1/completions", m.http());
        async move {
            let v: Value = client
                .post(url)
                .header("X-Data-Parallel-Rank", rank)
                .json(&json!({"prompt": prompt, "max_tokens": 1}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap()
        }
    };
    // Until the subscription is live, warm rank 1 up with distinct prompts.
    let mut got = None;
    for k in 0..50u32 {
        send("1", (0..16).map(|i| 90_000 + k * 16 + i).collect()).await;
        if let Ok(Ok(msg)) = tokio::time::timeout(Duration::from_millis(200), sub.recv()).await {
            got = Some(msg);
            break;
        }
    }
    let msg = got.expect("rank 1 publishes");
    let batch = decode_multipart(&msg.into_vec()).unwrap().batch;
    assert_eq!(batch.dp_rank, Some(1));

    assert_eq!(send("1", prompt.clone()).await, 0);
    assert_eq!(send("1", prompt.clone()).await, 48, "rank 1 reuses its own cache");
    assert_eq!(send("0", prompt.clone()).await, 0, "rank 0 has a cache of its own");
    let v: Value = client.get(format!("{}/debug/kv_blocks", m.http())).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["ranks"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn resetting_the_prefix_cache_is_published_as_cleared() {
    let m = support::mocker(&["--block-size", "16"]);
    let client = reqwest::Client::new();
    let mut log = EventLog::connect(&m.kv_events(0), &m.kv_replay(0)).await;
    let prompt: Vec<u32> = (0..100).collect();
    client
        .post(format!("{}/v1/completions", m.http()))
        .json(&json!({"prompt": prompt, "max_tokens": 1}))
        .send()
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while log.mirror().len() < 6 && std::time::Instant::now() < deadline {
        log.pump(Duration::from_millis(100)).await;
    }
    assert_eq!(log.mirror().len(), 6);
    let r = client.post(format!("{}/reset_prefix_cache", m.http())).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !log.mirror().is_empty() && std::time::Instant::now() < deadline {
        log.pump(Duration::from_millis(100)).await;
    }
    assert!(log.mirror().is_empty());
    let cleared = log.batches.iter().flat_map(|(_, b)| &b.events).any(|e| matches!(e, EngineEvent::AllBlocksCleared));
    assert!(cleared, "an idle engine's reset is one AllBlocksCleared");
    assert!(cached_blocks(&client, &m.http()).await.is_empty());
}
