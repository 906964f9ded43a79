//! `kvroute up` refuses a bad stack file with a message naming the field, and starts router
//! replicas that share load.

use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::support;

#[test]
fn a_bad_stack_file_is_rejected_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("kvroute-up-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (text, needle) in [
        ("pools:\n  - {name: a, workers: 0}\n", "pools[0].workers must be > 0"),
        ("pools:\n  - {name: a, workers: 1, mocker: {num_gpu_blockz: 5}}\n", "num_gpu_blockz"),
        ("pools: []\n", "at least one pool"),
        ("pools:\n  - {name: a, workers: 1, router_replicas: 0}\n", "pools[0].router_replicas must be > 0"),
    ] {
        let file = dir.join("stack.yaml");
        std::fs::write(&file, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_kvroute")).arg("up").arg(&file).output().unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    }
}

#[tokio::test]
async fn a_pool_with_two_router_replicas_on_nats_shares_load_and_events_behind_the_global_router() {
    let Some(nats) = support::nats_server() else { return };
    let dir = std::env::temp_dir().join(format!("kvroute-up-replicas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("stack.yaml");
    let stack = format!(
        "block_size: 16\nreplica_sync: {0}\nkv_events_nats: {0}\npools:\n  - {{name: chat, workers: 2, router_replicas: 2, mocker: {{speedup_ratio: 10}}}}\nglobal_router: {{http_port: 0}}\n",
        nats.url
    );
    std::fs::write(&file, stack).unwrap();
    let up = support::spawn(&["up", file.to_str().unwrap()]);
    let pool = &up.ready["up"]["pools"][0];
    let routers: Vec<String> =
        pool["routers"].as_array().expect("routers listed").iter().map(|u| u.as_str().unwrap().to_owned()).collect();
    assert_eq!(routers.len(), 2, "{pool}");
    assert_eq!(pool["router"], routers[0].as_str());
    let client = reqwest::Client::new();
    for r in &routers {
        let joined = support::eventually(Duration::from_secs(10), || async {
            (support::metric(&client, r, "kvroute_router_replica_peers").await == 1.0).then_some(())
        })
        .await;
        assert!(joined.is_some(), "replica {r} never heard the other");
    }
    // A request tracked by one replica weighs on the other.
    let long: Vec<u32> = (0..1024).map(|i| i % 3000 + 5).collect();
    let routed = support::post_json(
        &client,
        &format!("{}/best_worker", routers[0]),
        &json!({"token_ids": long, "request_id": "x"}),
    )
    .await;
    let worker = routed["worker_id"].as_u64().unwrap();
    let counted = support::eventually(Duration::from_secs(10), || async {
        let w: serde_json::Value =
            client.get(format!("{}/workers", routers[1])).send().await.unwrap().json().await.unwrap();
        let load = w["workers"].as_array().unwrap().iter().find(|w| w["worker_id"].as_u64() == Some(worker))?["ranks"]
            [0]["load"]
            .clone();
        (load["active_prefill_tokens"].as_u64() == Some(1024)).then_some(())
    })
    .await;
    assert!(counted.is_some(), "the second replica never counted the first one's request");
    // The stack serves through the global router, which knows both replicas; the workers' KV
    // events reach both replicas through JetStream, so a repeated prompt finds its blocks
    // whichever replica takes it.
    let global = up.ready["up"]["global_router"].as_str().unwrap();
    let body = json!({"prompt": (0..640).collect::<Vec<u32>>(), "max_tokens": 2});
    let first = client.post(format!("{global}/v1/completions")).json(&body).send().await.unwrap();
    assert_eq!(first.status().as_u16(), 200);
    first.bytes().await.unwrap();
    let found = support::eventually(Duration::from_secs(10), || async {
        let r = client.post(format!("{global}/v1/completions")).json(&body).send().await.unwrap();
        let overlap = r
            .headers()
            .get("x-kvroute-overlap-blocks")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok());
        r.bytes().await.unwrap();
        (overlap == Some(40)).then_some(())
    })
    .await;
    assert!(found.is_some(), "a repeated prompt never found its 40 cached blocks");
}
