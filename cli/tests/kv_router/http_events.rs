//! A worker that pushes Dynamo-JSON KV events over HTTP (no ZMQ) feeds the router's index.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support;

#[tokio::test]
async fn events_pushed_as_json_reach_the_index() {
    // The router must know the worker's URL up front: reserve a port for the mocker.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("kvroute-http-events-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("router.yaml");
    std::fs::write(
        &config,
        format!("block_size: 16\nworkers:\n  - {{url: 'http://127.0.0.1:{port}', worker_id: 7}}\n"),
    )
    .unwrap();
    let router = support::spawn(&[
        "kv-router",
        "--http-port",
        "0",
        "--health-interval-ms",
        "200",
        "--config",
        config.to_str().unwrap(),
    ]);
    let port_arg = port.to_string();
    let mocker = support::spawn(&[
        "mocker",
        "--port",
        &port_arg,
        "--no-kv-events",
        "--block-size",
        "16",
        "--kv-events-http-url",
        &router.router_http(),
        "--worker-id",
        "7",
    ]);
    let client = reqwest::Client::new();
    let prompt: Vec<u32> = (0..320).collect();
    let r = client
        .post(format!("{}/v1/completions", mocker.http()))
        .json(&json!({"prompt": prompt, "max_tokens": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let overlap = support::eventually(Duration::from_secs(5), || async {
        let v: Value = client
            .post(format!("{}/best_worker", router.router_http()))
            .json(&json!({"token_ids": prompt}))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (v["overlap_blocks"] == 20).then_some(v)
    })
    .await;
    let v = overlap.expect("the pushed events made the prompt's 20 blocks known");
    assert_eq!(v["worker_id"], 7);
}
