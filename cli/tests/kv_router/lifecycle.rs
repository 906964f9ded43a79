//! Load follows each request's life, whatever ends it; failing workers leave selection.

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;

use crate::routing::{long_prompt, Stack};
use crate::support;

#[tokio::test]
async fn a_finished_stream_and_a_disconnected_client_both_leave_no_load() {
    let stack = Stack::new(1, &[]);
    let prompt = long_prompt(3);
    // Finished stream.
    let r = stack
        .client
        .post(stack.url("/v1/completions"))
        .json(&json!({"prompt": prompt, "max_tokens": 3, "stream": true}))
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"));
    assert_eq!(stack.total_load().await, (0, 0, 0));

    // A client that reads the first chunk of a long stream and hangs up.
    let r = stack
        .client
        .post(stack.url("/v1/completions"))
        .json(&json!({"prompt": prompt, "max_tokens": 5000, "stream": true}))
        .send()
        .await
        .unwrap();
    let mut body = r.bytes_stream();
    body.next().await.expect("a first chunk").unwrap();
    let (requests, blocks, prefill) = stack.total_load().await;
    assert_eq!((requests, prefill), (1, 0), "tracked, prefill complete at the first chunk");
    assert!(blocks > 0);
    drop(body);
    let freed =
        support::eventually(Duration::from_secs(5), || async { (stack.total_load().await == (0, 0, 0)).then_some(()) })
            .await;
    assert!(freed.is_some(), "load left behind: {:?}", stack.total_load().await);
}

#[tokio::test]
async fn a_killed_worker_is_skipped_and_its_blocks_dropped() {
    let mut stack = Stack::new(2, &[]);
    for salt in 20..24 {
        let r = stack
            .client
            .post(stack.url("/v1/completions"))
            .json(&json!({"prompt": long_prompt(salt), "max_tokens": 1}))
            .send()
            .await
            .unwrap();
        r.bytes().await.unwrap();
    }
    stack.wait_indexed(64).await;
    stack.mockers[0].kill();
    // Requests keep succeeding (a failed forward is retried on the other worker).
    for salt in 30..40 {
        let r = stack
            .client
            .post(stack.url("/v1/completions"))
            .json(&json!({"prompt": long_prompt(salt), "max_tokens": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    }
    let dead = stack.mockers[0].http();
    let gone = support::eventually(Duration::from_secs(5), || async {
        let w = stack.workers().await;
        let entry = w["workers"].as_array().unwrap().iter().find(|w| w["url"] == dead.as_str()).cloned().unwrap();
        (entry["healthy"] == false && entry["ranks"][0]["cached_blocks"] == 0).then_some(())
    })
    .await;
    assert!(gone.is_some(), "{}", stack.workers().await);
    assert_eq!(stack.total_load().await, (0, 0, 0));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn a_restarted_worker_is_put_back_and_its_events_followed_again() {
    let (http, kv) = (free_port().to_string(), free_port().to_string());
    let worker_args = ["--port", &http, "--kv-events-port", &kv, "--block-size", "16", "--speedup-ratio", "10"];
    let start_worker = || support::spawn(&[&["mocker"][..], &worker_args[..]].concat());
    let mut worker = start_worker();
    let router = support::kv_router(&[&worker], &["--block-size", "16"]);
    let client = reqwest::Client::new();
    let overlap = |prompt: Vec<u32>| {
        let client = client.clone();
        let url = format!("{}/best_worker", router.router_http());
        async move {
            let v: serde_json::Value =
                client.post(url).json(&json!({"token_ids": prompt})).send().await.ok()?.json().await.ok()?;
            v["overlap_blocks"].as_u64()
        }
    };
    let send = |prompt: Vec<u32>| {
        let client = client.clone();
        let url = format!("{}/v1/completions", router.router_http());
        async move {
            client.post(url).json(&json!({"prompt": prompt, "max_tokens": 1})).send().await.map(|r| r.status().as_u16())
        }
    };
    assert_eq!(send(long_prompt(50)).await.unwrap(), 200);
    let seen = support::eventually(Duration::from_secs(10), || async {
        (overlap(long_prompt(50)).await? == 64).then_some(())
    })
    .await;
    assert!(seen.is_some(), "events followed before the restart");

    worker.kill();
    let gone = support::eventually(Duration::from_secs(10), || async {
        (overlap(long_prompt(50)).await.is_none()).then_some(())
    })
    .await;
    assert!(gone.is_some(), "the dead worker left selection (no worker to answer with)");

    let _worker = start_worker();
    let back = support::eventually(Duration::from_secs(10), || async {
        (send(long_prompt(51)).await.ok()? == 200).then_some(())
    })
    .await;
    assert!(back.is_some(), "the restarted worker serves again");
    // Events published before the router resubscribed are fetched from the replay socket.
    let followed = support::eventually(Duration::from_secs(10), || async {
        (overlap(long_prompt(51)).await? == 64).then_some(())
    })
    .await;
    assert!(followed.is_some(), "the router follows the new process's events");
    assert_eq!(overlap(long_prompt(50)).await, Some(0), "nothing of the old process's cache is left");
}

#[tokio::test]
async fn a_stopped_router_refuses_new_requests_and_finishes_the_streams_in_flight() {
    let mut stack = Stack::new(1, &[]);
    let max_tokens = 1500; // ≈ 1.5 s of decoding at the mocker's speed-up 10
    let body = json!({"prompt": long_prompt(30), "max_tokens": max_tokens, "stream": true});
    let r = stack.client.post(stack.url("/v1/completions")).json(&body).send().await.unwrap();
    let mut stream = r.bytes_stream();
    let mut text = String::from_utf8(stream.next().await.expect("a first chunk").unwrap().to_vec()).unwrap();

    stack.router.signal("TERM");
    let fresh = reqwest::Client::new();
    let refused = support::eventually(Duration::from_secs(5), || async {
        fresh.get(stack.url("/health")).send().await.is_err().then_some(())
    })
    .await;
    assert!(refused.is_some(), "a router told to stop still accepts connections");

    while let Some(chunk) = stream.next().await {
        text.push_str(std::str::from_utf8(&chunk.expect("the stream goes on after SIGTERM")).unwrap());
    }
    assert!(
        text.trim_end().ends_with("data: [DONE]"),
        "the stream was cut: …{}",
        &text[text.len().saturating_sub(200)..]
    );
    let tokens = text.split("\n\n").filter(|e| e.starts_with("data: {")).count();
    assert_eq!(tokens, max_tokens, "every token of the stream in flight arrived");
    let status = stack.router.wait_exit(Duration::from_secs(10)).expect("the router exits once its last stream ends");
    assert!(status.success(), "{status}");
}
