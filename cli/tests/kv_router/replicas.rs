//! Replica sync: two kv-router replicas of one group share their load through a real
//! nats-server, so neither sends new work to the worker the other just loaded; a replica that
//! dies stops counting.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{self, Process};

/// One figure of `worker_id`'s load (`active_prefill_tokens`, `active_blocks`, …) as `router`
/// sees it.
async fn load_on(client: &reqwest::Client, router: &Process, worker_id: u64, figure: &str) -> u64 {
    let w: Value = client.get(format!("{}/workers", router.router_http())).send().await.unwrap().json().await.unwrap();
    let worker = w["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["worker_id"].as_u64() == Some(worker_id))
        .expect("worker listed");
    worker["ranks"][0]["load"][figure].as_u64().unwrap()
}

async fn wait_load_on(
    client: &reqwest::Client,
    router: &Process,
    worker_id: u64,
    figure: &str,
    value: u64,
    what: &str,
) {
    let seen = support::eventually(Duration::from_secs(10), || async {
        (load_on(client, router, worker_id, figure).await == value).then_some(())
    })
    .await;
    assert!(
        seen.is_some(),
        "{what}: worker {worker_id} never showed {figure} {value} (now {})",
        load_on(client, router, worker_id, figure).await
    );
}

async fn wait_prefill_on(client: &reqwest::Client, router: &Process, worker_id: u64, tokens: u64, what: &str) {
    wait_load_on(client, router, worker_id, "active_prefill_tokens", tokens, what).await
}

/// Two replicas of group "chat" on `nats`, heard by each other, over `mockers`.
async fn joined_replicas(
    nats: &support::NatsServer,
    mockers: &[Process],
    client: &reqwest::Client,
) -> (Process, Process) {
    let refs: Vec<&Process> = mockers.iter().collect();
    let replica = |id: &str| {
        support::kv_router(
            &refs,
            &[
                "--block-size",
                "16",
                "--replica-sync",
                &nats.url,
                "--router-group",
                "chat",
                "--replica-id",
                id,
                "--replica-heartbeat-ms",
                "200",
            ],
        )
    };
    let (one, two) = (replica("one"), replica("two"));
    for r in [&one, &two] {
        let joined = support::eventually(Duration::from_secs(10), || async {
            (support::metric(client, &r.router_http(), "kvroute_router_replica_peers").await == 1.0).then_some(())
        })
        .await;
        assert!(joined.is_some(), "the replicas never heard each other");
    }
    (one, two)
}

#[tokio::test]
async fn replicas_share_load_through_nats_and_forget_a_replica_that_died() {
    let Some(nats) = support::nats_server() else { return };
    let mockers: Vec<Process> = (0..2).map(|_| support::mocker(&["--block-size", "16"])).collect();
    let client = reqwest::Client::new();
    let (mut one, two) = joined_replicas(&nats, &mockers, &client).await;

    // Replica one routes a long request (tracked): replica two counts it on the same worker.
    let long: Vec<u32> = (0..2048).map(|i| i % 3000 + 5).collect();
    let routed = support::post_json(
        &client,
        &format!("{}/best_worker", one.router_http()),
        &json!({"token_ids": long, "request_id": "r1"}),
    )
    .await;
    let loaded = routed["worker_id"].as_u64().expect("a worker");
    wait_prefill_on(&client, &two, loaded, 2048, "replica two").await;

    // Asked about other work, replica two keeps away from the worker replica one loaded.
    for salt in 0..10u32 {
        let short: Vec<u32> = (0..64).map(|i| i * 13 + salt * 101 + 7).collect();
        let answer =
            support::post_json(&client, &format!("{}/best_worker", two.router_http()), &json!({"token_ids": short}))
                .await;
        assert_ne!(
            answer["worker_id"].as_u64(),
            Some(loaded),
            "replica two chose the worker replica one loaded: {answer}"
        );
    }

    // Replica two cannot free replica one's request; replica one's free reaches replica two.
    let r = client.post(format!("{}/free", two.router_http())).json(&json!({"request_id": "r1"})).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    support::post_json(&client, &format!("{}/free", one.router_http()), &json!({"request_id": "r1"})).await;
    wait_prefill_on(&client, &two, loaded, 0, "after the free").await;

    // A replica that dies with a request in flight: the others stop counting it after three
    // missed heartbeats.
    let routed = support::post_json(
        &client,
        &format!("{}/best_worker", one.router_http()),
        &json!({"token_ids": long, "request_id": "r2"}),
    )
    .await;
    let loaded = routed["worker_id"].as_u64().expect("a worker");
    wait_prefill_on(&client, &two, loaded, 2048, "replica two, second request").await;
    one.kill();
    wait_prefill_on(&client, &two, loaded, 0, "after replica one died").await;
    assert_eq!(support::metric(&client, &two.router_http(), "kvroute_router_replica_peers").await, 0.0);
}

/// A prompt whose block hashes do not fit in one message the server accepts (8,192 tokens at
/// block 16: 512 hashes, ≈ 10 KB of JSON, against a 4 KB limit) reaches the other replica
/// whole, in parts.
#[tokio::test]
async fn a_prompt_too_long_for_one_nats_message_counts_whole_on_the_other_replica() {
    let Some(nats) = support::nats_server_with_max_payload(4_096) else { return };
    let mockers: Vec<Process> = (0..2).map(|_| support::mocker(&["--block-size", "16"])).collect();
    let client = reqwest::Client::new();
    let (one, two) = joined_replicas(&nats, &mockers, &client).await;
    let long: Vec<u32> = (0..8192).map(|i| i % 3000 + 5).collect();
    let routed = support::post_json(
        &client,
        &format!("{}/best_worker", one.router_http()),
        &json!({"token_ids": long, "request_id": "big"}),
    )
    .await;
    let loaded = routed["worker_id"].as_u64().expect("a worker");
    assert_eq!(load_on(&client, &one, loaded, "active_blocks").await, 512);
    wait_prefill_on(&client, &two, loaded, 8192, "replica two").await;
    wait_load_on(&client, &two, loaded, "active_blocks", 512, "replica two").await;
    assert_eq!(
        support::metric(&client, &two.router_http(), "kvroute_router_replica_resyncs_total").await,
        0.0,
        "nothing was lost"
    );
    support::post_json(&client, &format!("{}/free", one.router_http()), &json!({"request_id": "big"})).await;
    wait_load_on(&client, &two, loaded, "active_blocks", 0, "after the free").await;
}

#[tokio::test]
async fn replicas_route_alone_while_nats_is_down_and_share_once_it_is_up() {
    // Only to learn whether nats-server is installed (the test needs it later, on a port
    // chosen now).
    let Some(probe) = support::nats_server() else { return };
    drop(probe);
    let port = support::free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let mocker = support::mocker(&["--block-size", "16"]);
    let replica =
        |id: &str| support::kv_router(&[&mocker], &["--block-size", "16", "--replica-sync", &url, "--replica-id", id]);
    let (one, two) = (replica("one"), replica("two"));
    let client = reqwest::Client::new();
    // No NATS yet: both serve on their own.
    let answer =
        support::post_json(&client, &format!("{}/best_worker", one.router_http()), &json!({"token_ids": [1, 2, 3]}))
            .await;
    assert!(answer["worker_id"].as_u64().is_some(), "{answer}");
    let _nats = support::nats_server_on(port).expect("nats-server was found above");
    for r in [&one, &two] {
        let joined = support::eventually(Duration::from_secs(15), || async {
            (support::metric(&client, &r.router_http(), "kvroute_router_replica_peers").await == 1.0).then_some(())
        })
        .await;
        assert!(joined.is_some(), "the replicas never found each other once NATS was up");
    }
}

#[tokio::test]
async fn a_replica_that_starts_late_counts_the_requests_already_in_flight() {
    let Some(nats) = support::nats_server() else { return };
    let mocker = support::mocker(&["--block-size", "16"]);
    let replica = |id: &str| {
        support::kv_router(&[&mocker], &["--block-size", "16", "--replica-sync", &nats.url, "--replica-id", id])
    };
    let one = replica("one");
    let client = reqwest::Client::new();
    let long: Vec<u32> = (0..1024).map(|i| i % 3000 + 5).collect();
    let routed = support::post_json(
        &client,
        &format!("{}/best_worker", one.router_http()),
        &json!({"token_ids": long, "request_id": "long-stream"}),
    )
    .await;
    let worker = routed["worker_id"].as_u64().expect("a worker");
    // Replica two starts while the request is in flight: its resend request brings it in.
    let two = replica("two");
    wait_prefill_on(&client, &two, worker, 1024, "the late replica").await;
    support::post_json(&client, &format!("{}/free", one.router_http()), &json!({"request_id": "long-stream"})).await;
    wait_prefill_on(&client, &two, worker, 0, "after the free").await;
}
