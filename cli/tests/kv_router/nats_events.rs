//! KV events over NATS JetStream: a mocker publishes them on the stream (or `kvroute kv-relay`
//! forwards its ZMQ events there, as for a vLLM worker), a router with no connection to the
//! worker's ZMQ socket indexes them, and a router started later rebuilds the same index from
//! the stream's history.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{self, Process};

const WORKER_ID: u64 = 11;

/// A kv-router that takes worker 11's events from NATS only (no ZMQ endpoint configured).
fn router(worker: &Process, nats_url: &str, dir: &std::path::Path, name: &str) -> Process {
    let file = dir.join(format!("{name}.yaml"));
    let config = format!(
        "block_size: 16\nkv_events_nats: {nats_url}\nworkers:\n  - {{url: {}, worker_id: {WORKER_ID}}}\n",
        worker.http()
    );
    std::fs::write(&file, config).unwrap();
    support::spawn(&["kv-router", "--http-port", "0", "--config", file.to_str().unwrap()])
}

async fn dump(client: &reqwest::Client, router: &Process) -> Value {
    client.get(format!("{}/dump_events", router.router_http())).send().await.unwrap().json().await.unwrap()
}

/// Send a 1,000-token prompt through `router` and wait until it has indexed the worker's 62
/// blocks of it (from the stream); the request body, to send again.
async fn cache_prompt(client: &reqwest::Client, router: &Process) -> Value {
    let prompt: Vec<u32> = (0..1000).map(|i| i % 2000 + 3).collect();
    let body = json!({"prompt": prompt, "max_tokens": 2});
    let first = client.post(format!("{}/v1/completions", router.router_http())).json(&body).send().await.unwrap();
    assert_eq!(first.status().as_u16(), 200);
    first.bytes().await.unwrap();
    let indexed = support::eventually(Duration::from_secs(10), || async {
        (cached_blocks(client, router).await >= 62).then_some(())
    })
    .await;
    assert!(
        indexed.is_some(),
        "the router never indexed the worker's blocks from NATS ({})",
        cached_blocks(client, router).await
    );
    body
}

async fn cached_blocks(client: &reqwest::Client, router: &Process) -> u64 {
    let w: Value = client.get(format!("{}/workers", router.router_http())).send().await.unwrap().json().await.unwrap();
    w["workers"][0]["ranks"][0]["cached_blocks"].as_u64().unwrap()
}

#[tokio::test]
async fn events_published_on_jetstream_reach_routers_started_before_and_after() {
    let Some(nats) = support::nats_server() else { return };
    let dir = std::env::temp_dir().join(format!("kvroute-nats-events-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let worker_id = WORKER_ID.to_string();
    let mocker = support::mocker(&[
        "--block-size",
        "16",
        "--speedup-ratio",
        "10",
        "--worker-id",
        &worker_id,
        "--kv-events-nats",
        &nats.url,
    ]);
    let early = router(&mocker, &nats.url, &dir, "early");
    let client = reqwest::Client::new();

    // A 1,000-token prompt through the router: the worker caches 62 blocks, the router hears it
    // from the stream, and the same prompt again finds them.
    let body = cache_prompt(&client, &early).await;
    let again = client.post(format!("{}/v1/completions", early.router_http())).json(&body).send().await.unwrap();
    assert_eq!(again.headers()["x-kvroute-overlap-blocks"], "62");

    // A router started now replays the worker's history from the stream: the same index.
    let late = router(&mocker, &nats.url, &dir, "late");
    let expected = dump(&client, &early).await;
    assert!(!expected.as_array().unwrap().is_empty());
    let rebuilt = support::eventually(Duration::from_secs(10), || async {
        (dump(&client, &late).await == expected).then_some(())
    })
    .await;
    assert!(rebuilt.is_some(), "the late router's index differs: {} vs {}", dump(&client, &late).await, expected);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_relay_forwards_a_workers_zmq_events_to_routers_on_jetstream() {
    let Some(nats) = support::nats_server() else { return };
    let dir = std::env::temp_dir().join(format!("kvroute-nats-relay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A worker that publishes on ZMQ only, as vLLM does; the relay puts its events on NATS.
    let mocker = support::mocker(&["--block-size", "16", "--speedup-ratio", "10"]);
    let worker_id = WORKER_ID.to_string();
    let (events, replay) = (mocker.kv_events(0), mocker.kv_replay(0));
    let relay = support::spawn(&[
        "kv-relay",
        "--worker-id",
        &worker_id,
        "--zmq",
        &events,
        "--zmq-replay",
        &replay,
        "--nats",
        &nats.url,
        "--block-size",
        "16",
    ]);
    assert_eq!(relay.ready["kv_relay"]["subjects"][0], format!("kvroute.kv_events.{WORKER_ID}.0"));
    let router = router(&mocker, &nats.url, &dir, "relayed");
    // And a router subscribed to the worker's ZMQ socket itself (and its replay socket, so
    // nothing published before it subscribed is missed), to compare with.
    let direct = support::kv_router(&[&mocker], &["--block-size", "16"]);
    let client = reqwest::Client::new();
    cache_prompt(&client, &router).await;
    // The relayed index holds what the direct one does (the worker ids differ: 11 here, a hash
    // of the URL there).
    let contents =
        |dump: Value| -> Vec<Value> { dump.as_array().unwrap().iter().map(|e| e["event"]["data"].clone()).collect() };
    let expected = contents(dump(&client, &router).await);
    let same = support::eventually(Duration::from_secs(10), || async {
        (contents(dump(&client, &direct).await) == expected).then_some(())
    })
    .await;
    assert!(
        same.is_some(),
        "relayed and direct indexes differ: {expected:?} vs {:?}",
        contents(dump(&client, &direct).await)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

async fn applied(client: &reqwest::Client, router: &Process) -> f64 {
    support::metric(
        client,
        &router.router_http(),
        &format!("kvroute_router_kv_events_applied_total{{worker=\"{WORKER_ID}\"}}"),
    )
    .await
}

#[tokio::test]
async fn a_compacted_history_rebuilds_the_same_index_from_fewer_events() {
    let Some(nats) = support::nats_server() else { return };
    let dir = std::env::temp_dir().join(format!("kvroute-nats-snapshot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let worker_id = WORKER_ID.to_string();
    // A small cache (160 blocks) that evicts, and a snapshot once 50 blocks have changed (and
    // twice what the cache holds).
    let mocker = support::mocker(&[
        "--block-size",
        "16",
        "--speedup-ratio",
        "10",
        "--num-gpu-blocks",
        "160",
        "--worker-id",
        &worker_id,
        "--kv-events-nats",
        &nats.url,
        "--kv-events-nats-snapshot-after",
        "50",
    ]);
    let early = router(&mocker, &nats.url, &dir, "early");
    let client = reqwest::Client::new();
    for salt in 0..8u32 {
        let prompt: Vec<u32> = (0..1000).map(|i| (i * 7 + salt * 1009) % 3000 + 3).collect();
        let r = client
            .post(format!("{}/v1/completions", early.router_http()))
            .json(&json!({"prompt": prompt, "max_tokens": 2}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.bytes().await.unwrap();
    }
    // The early router followed every event (and skipped the snapshots: it held their blocks).
    let cached: Value =
        client.get(format!("{}/debug/kv_blocks", mocker.http())).send().await.unwrap().json().await.unwrap();
    let on_worker = cached["ranks"][0]["blocks"].as_array().map_or(0, Vec::len) as u64;
    assert!(on_worker > 0, "{cached}");
    let settled = support::eventually(Duration::from_secs(10), || async {
        (cached_blocks(&client, &early).await == on_worker).then_some(())
    })
    .await;
    assert!(settled.is_some(), "early router: {} blocks, worker {on_worker}", cached_blocks(&client, &early).await);
    // A router started now reads the snapshot and what followed: the same index, from fewer
    // events than the whole history.
    let late = router(&mocker, &nats.url, &dir, "late");
    let expected = blocks_of(dump(&client, &early).await);
    assert_eq!(expected.len() as u64, on_worker);
    let same = support::eventually(Duration::from_secs(10), || async {
        (blocks_of(dump(&client, &late).await) == expected).then_some(())
    })
    .await;
    assert!(same.is_some(), "late router's index differs: {:?} vs {expected:?}", blocks_of(dump(&client, &late).await));
    let (all, replayed) = (applied(&client, &early).await, applied(&client, &late).await);
    assert!(
        replayed < all,
        "the late router applied {replayed} events, the whole history is {all}: nothing was compacted"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A dump as (parent, block, content hash) per block, sorted: the same blocks in the same
/// places, however the events that stored them were cut.
fn blocks_of(dump: Value) -> Vec<(Option<u64>, u64, u64)> {
    let mut blocks = Vec::new();
    for event in dump.as_array().unwrap() {
        let stored = &event["event"]["data"]["stored"];
        let mut parent = stored["parent_hash"].as_u64();
        for b in stored["blocks"].as_array().into_iter().flatten() {
            let hash = b["block_hash"].as_u64().unwrap();
            blocks.push((parent, hash, b["tokens_hash"].as_u64().unwrap()));
            parent = Some(hash);
        }
    }
    blocks.sort_unstable();
    blocks
}

/// A server with no room for the stream (a full disk, or a small `max_file_store`): the error
/// says so in words an operator can act on, rather than only JetStream's code.
#[tokio::test]
async fn a_server_without_room_for_the_stream_says_so() {
    let Some(nats) = support::nats_server_with_config("jetstream { max_file_store: 1MB }\n") else { return };
    let refused = kvroute_nats::kv_events_stream(&nats.url).await.expect_err("a 1 GiB stream does not fit in 1 MB");
    let text = refused.to_string();
    assert!(text.contains("no room for the KV-event stream") && text.contains("disk full"), "{text}");
}
