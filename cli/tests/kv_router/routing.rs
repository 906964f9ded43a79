//! Routing follows the cache; the probe API answers; dumps rebuild; bad input is refused.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{self, Process};

pub struct Stack {
    pub mockers: Vec<Process>,
    pub router: Process,
    pub client: reqwest::Client,
}

impl Stack {
    pub fn new(workers: usize, router_args: &[&str]) -> Stack {
        let mockers: Vec<Process> =
            (0..workers).map(|_| support::mocker(&["--block-size", "16", "--speedup-ratio", "10"])).collect();
        let refs: Vec<&Process> = mockers.iter().collect();
        let router = support::kv_router(&refs, &[&["--block-size", "16", "--seed", "7"], router_args].concat());
        Stack { mockers, router, client: reqwest::Client::new() }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.router.router_http(), path)
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self.client.post(self.url(path)).json(&body).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn workers(&self) -> Value {
        self.client.get(self.url("/workers")).send().await.unwrap().json().await.unwrap()
    }

    /// Sum of the load figures over all workers.
    pub async fn total_load(&self) -> (u64, u64, u64) {
        let w = self.workers().await;
        let mut t = (0, 0, 0);
        for worker in w["workers"].as_array().unwrap() {
            for rank in worker["ranks"].as_array().unwrap() {
                t.0 += rank["load"]["active_requests"].as_u64().unwrap();
                t.1 += rank["load"]["active_blocks"].as_u64().unwrap();
                t.2 += rank["load"]["active_prefill_tokens"].as_u64().unwrap();
            }
        }
        t
    }

    pub async fn metric(&self, name: &str) -> f64 {
        support::metric(&self.client, &self.router.router_http(), name).await
    }

    /// Wait until the router's index knows `blocks` blocks over all workers (events arrived).
    pub async fn wait_indexed_total(&self, blocks: u64) {
        let found = support::eventually(Duration::from_secs(10), || async {
            let w = self.workers().await;
            let total: u64 =
                w["workers"].as_array().unwrap().iter().map(|w| w["ranks"][0]["cached_blocks"].as_u64().unwrap()).sum();
            (total >= blocks).then_some(())
        })
        .await;
        assert!(found.is_some(), "the router never indexed {blocks} blocks in all: {}", self.workers().await);
    }

    /// Wait until the router's index knows `blocks` blocks for some worker (events arrived).
    pub async fn wait_indexed(&self, blocks: u64) {
        let found = support::eventually(Duration::from_secs(10), || async {
            let w = self.workers().await;
            w["workers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w["ranks"][0]["cached_blocks"].as_u64().unwrap() >= blocks)
                .then_some(())
        })
        .await;
        assert!(found.is_some(), "the router never indexed {blocks} blocks: {}", self.workers().await);
    }
}

pub fn long_prompt(salt: u32) -> Vec<u32> {
    (0..1024).map(|i| (i * 31 + salt * 7919) % 4000 + 3).collect()
}

/// A router told no cache size reads each worker's from its metrics (`vllm:cache_config_info`,
/// as vLLM states it); a configured size wins.
#[tokio::test]
async fn the_router_reads_each_worker_cache_size_from_its_metrics_unless_configured() {
    let mocker = support::mocker(&["--block-size", "16", "--num-gpu-blocks", "500"]);
    let client = reqwest::Client::new();
    let metrics = client.get(format!("{}/metrics", mocker.http())).send().await.unwrap().text().await.unwrap();
    let gauge = metrics.lines().find(|l| l.starts_with("vllm:cache_config_info{")).unwrap_or_default();
    assert!(gauge.contains(r#"block_size="16""#) && gauge.contains(r#"num_gpu_blocks="500""#), "{metrics}");
    let stated_size = |router: &Process| {
        let (client, url) = (client.clone(), format!("{}/workers", router.router_http()));
        async move {
            let w: Value = client.get(url).send().await.unwrap().json().await.unwrap();
            w["workers"][0]["kv_cache_blocks"].as_u64()
        }
    };
    let reading = support::kv_router(&[&mocker], &["--block-size", "16"]);
    let read = support::eventually(Duration::from_secs(10), || stated_size(&reading)).await;
    assert_eq!(read, Some(500), "the router never read the worker's cache size");
    let configured = support::kv_router(&[&mocker], &["--block-size", "16", "--worker-kv-blocks", "64"]);
    assert_eq!(stated_size(&configured).await, Some(64));
}

#[tokio::test]
async fn a_repeated_prompt_goes_to_the_worker_that_cached_it() {
    let stack = Stack::new(2, &[]);
    let prompt = long_prompt(1);
    let first = stack
        .client
        .post(stack.url("/v1/completions"))
        .json(&json!({"prompt": prompt, "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status().as_u16(), 200);
    let first_worker = first.headers()["x-kvroute-worker"].to_str().unwrap().to_owned();
    assert_eq!(first.headers()["x-kvroute-overlap-blocks"], "0");
    first.bytes().await.unwrap();
    stack.wait_indexed(64).await;

    let (status, probe) = stack.post("/best_worker", json!({"token_ids": prompt})).await;
    assert_eq!(status, 200, "{probe}");
    assert_eq!(probe["worker_id"].to_string(), first_worker);
    assert_eq!(probe["overlap_blocks"], 64);
    assert_eq!(probe["request_blocks"], 64);

    for _ in 0..3 {
        let again = stack
            .client
            .post(stack.url("/v1/completions"))
            .json(&json!({"prompt": prompt, "max_tokens": 2}))
            .send()
            .await
            .unwrap();
        assert_eq!(again.headers()["x-kvroute-worker"].to_str().unwrap(), first_worker);
        assert_eq!(again.headers()["x-kvroute-overlap-blocks"], "64");
        let body: Value = again.json().await.unwrap();
        assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 1008, "the worker really had it");
    }
}

#[tokio::test]
async fn query_only_probes_change_no_load_tracked_ones_do_until_freed() {
    let stack = Stack::new(2, &[]);
    let prompt = long_prompt(2);
    for _ in 0..3 {
        let (status, _) = stack.post("/best_worker", json!({"token_ids": prompt})).await;
        assert_eq!(status, 200);
    }
    assert_eq!(stack.total_load().await, (0, 0, 0));
    let (status, tracked) = stack.post("/best_worker", json!({"token_ids": prompt, "request_id": "r-1"})).await;
    assert_eq!(status, 200, "{tracked}");
    assert_eq!(stack.total_load().await, (1, 64, 1024));
    assert_eq!(stack.post("/mark_prefill_complete", json!({"request_id": "r-1"})).await.0, 200);
    assert_eq!(stack.total_load().await, (1, 64, 0));
    let (status, loads) = stack.post("/potential_loads", json!({"token_ids": prompt})).await;
    assert_eq!(status, 200);
    assert_eq!(loads.as_array().unwrap().len(), 2);
    assert_eq!(stack.post("/free", json!({"request_id": "r-1"})).await.0, 200);
    assert_eq!(stack.total_load().await, (0, 0, 0));
    let (status, err) = stack.post("/free", json!({"request_id": "r-1"})).await;
    assert_eq!(status, 404, "{err}");
    assert_eq!(stack.post("/best_worker", json!({"token_ids": prompt, "request_id": "r-2"})).await.0, 200);
    assert_eq!(stack.post("/best_worker", json!({"token_ids": prompt, "request_id": "r-2"})).await.0, 409);
}

#[tokio::test]
async fn a_dump_replayed_into_a_fresh_router_gives_the_same_answers() {
    let stack = Stack::new(2, &[]);
    let prompts: Vec<Vec<u32>> = (10..14).map(long_prompt).collect();
    for p in &prompts {
        let r = stack
            .client
            .post(stack.url("/v1/completions"))
            .json(&json!({"prompt": p, "max_tokens": 1}))
            .send()
            .await
            .unwrap();
        r.bytes().await.unwrap();
    }
    stack.wait_indexed_total(4 * 64).await;
    let dump: Value = stack.client.get(stack.url("/dump_events")).send().await.unwrap().json().await.unwrap();
    assert!(!dump.as_array().unwrap().is_empty());

    // A second router over the same workers (same worker ids), without event subscriptions.
    let urls: Vec<String> = stack.mockers.iter().map(|m| m.http()).collect();
    let fresh = support::spawn(&[
        "kv-router",
        "--http-port",
        "0",
        "--block-size",
        "16",
        "--worker",
        &urls[0],
        "--worker",
        &urls[1],
    ]);
    let client = reqwest::Client::new();
    let posted = client.post(format!("{}/events", fresh.router_http())).json(&dump).send().await.unwrap();
    assert_eq!(posted.status().as_u16(), 200);
    let posted: Value = posted.json().await.unwrap();
    assert_eq!(posted["rejected"], json!([]));
    for p in &prompts {
        let (_, a) = stack.post("/best_worker", json!({"token_ids": p})).await;
        let b = support::post_json(&client, &format!("{}/best_worker", fresh.router_http()), &json!({"token_ids": p}))
            .await;
        assert_eq!((&a["worker_id"], &a["overlap_blocks"]), (&b["worker_id"], &b["overlap_blocks"]));
        assert!(a["overlap_blocks"].as_u64().unwrap() > 0);
    }
}

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let stack = Stack::new(1, &["--max-body-bytes", "100000"]);
    let cases = [
        ("/best_worker", json!({"model": "m"}), 400),
        ("/best_worker", json!({"token_ids": []}), 400),
        ("/best_worker", json!({"token_ids": [1], "router_config_override": {"router_temperature": -1}}), 400),
        ("/best_worker", json!({"token_ids": [1], "router_config_override": {"nonsense": 1}}), 400),
        ("/free", json!({"request_id": "never"}), 404),
        ("/mark_prefill_complete", json!({"request_id": "never"}), 404),
        ("/v1/completions", json!({"max_tokens": 1}), 400),
        ("/v1/chat/completions", json!({"messages": []}), 400),
        ("/events", json!([{"worker_id": 999, "event": {"data": "cleared"}}]), 400),
    ];
    for (path, body, status) in cases {
        let (got, err) = stack.post(path, body.clone()).await;
        assert_eq!(got, status, "{path} {body} → {err}");
        assert!(err["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{err}");
    }
    let raw = stack
        .client
        .post(stack.url("/best_worker"))
        .body("{")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 400);
    // Its own connection: the server closes it after refusing the unread body.
    let huge = reqwest::Client::new().post(stack.url("/best_worker")).body(vec![b' '; 200_000]).send().await.unwrap();
    assert_eq!(huge.status().as_u16(), 413);
    let forced = stack
        .client
        .post(stack.url("/v1/completions"))
        .header("x-worker-instance-id", "abc")
        .json(&json!({"prompt": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(forced.status().as_u16(), 400);
    assert_eq!(stack.total_load().await, (0, 0, 0));
}

#[tokio::test]
async fn a_long_text_prompt_is_routed_like_its_token_ids() {
    // 40 KB of text: tokenized off the router's async runtime, and once for probe + request.
    let stack = Stack::new(2, &[]);
    let text: String = (0..5000).map(|i| format!("w{} ", i % 613)).collect();
    assert!(text.len() > 16 * 1024);
    let ids = kvroute_tokenizer::Tokenizer::builtin().encode(&text).unwrap();
    let served = stack
        .client
        .post(stack.url("/v1/completions"))
        .json(&json!({"prompt": text, "max_tokens": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status().as_u16(), 200);
    let worker = served.headers()["x-kvroute-worker"].to_str().unwrap().to_owned();
    served.bytes().await.unwrap();
    let blocks = (ids.len() / 16) as u64;
    stack.wait_indexed(blocks).await;

    let (status, by_text) = stack.post("/best_worker", json!({"prompt": text})).await;
    assert_eq!(status, 200, "{by_text}");
    let (_, by_ids) = stack.post("/best_worker", json!({"token_ids": ids})).await;
    assert_eq!(by_text["request_blocks"], blocks);
    assert_eq!(by_text["overlap_blocks"], by_ids["overlap_blocks"]);
    assert_eq!(by_text["worker_id"].to_string(), worker);
    assert_eq!(by_text["overlap_blocks"], blocks, "the text's blocks are where it was served");
}

#[tokio::test]
async fn the_next_turn_of_a_long_conversation_is_tokenized_from_where_it_changes() {
    // Turn 1 is served; turn 2 repeats it and adds a question. The router tokenizes turn 2 from a
    // checkpoint inside turn 1 and must get exactly the ids of tokenizing it whole: the whole of
    // turn 1's blocks match on the worker that served it.
    let stack = Stack::new(2, &[]);
    let tokenizer = kvroute_tokenizer::Tokenizer::builtin();
    let turn1: String = (0..900).map(|i| format!("Line {i}: the router keeps {} blocks.\n", i * 37 % 1000)).collect();
    let served = stack
        .client
        .post(stack.url("/v1/completions"))
        .json(&json!({"prompt": turn1, "max_tokens": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status().as_u16(), 200);
    let worker = served.headers()["x-kvroute-worker"].to_str().unwrap().to_owned();
    served.bytes().await.unwrap();
    stack.wait_indexed((tokenizer.encode(&turn1).unwrap().len() / 16) as u64).await;

    let turn2 = format!("{turn1}And which worker holds the most?");
    let ids = tokenizer.encode(&turn2).unwrap();
    let (status, answer) = stack.post("/best_worker", json!({"prompt": turn2})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["request_blocks"], (ids.len() / 16) as u64);
    assert_eq!(answer["worker_id"].to_string(), worker);
    let (_, by_ids) = stack.post("/best_worker", json!({"token_ids": ids})).await;
    assert_eq!(answer["overlap_blocks"], by_ids["overlap_blocks"]);
    assert_eq!(stack.metric(r#"kvroute_router_prompt_tokenizations_total{how="resumed"}"#).await, 1.0);
}

#[tokio::test]
async fn a_query_about_a_long_text_tokenizes_only_a_little_past_what_a_worker_holds() {
    // A 38 KB document is served. A query about it followed by 60 KB of new text, and one
    // about 60 KB nobody has seen, each tokenize only a few KB past the cached blocks, answer
    // the overlaps of their whole token ids and estimate their length; the request that
    // follows the first query carries on from where it stopped.
    let stack = Stack::new(2, &[]);
    let tokenizer = kvroute_tokenizer::Tokenizer::builtin();
    let tokenized = || stack.metric(r#"kvroute_router_prompt_tokens_total{source="tokenized"}"#);
    let doc: String = (0..1000).map(|i| format!("Line {i}: the router keeps {} blocks.\n", i * 37 % 1000)).collect();
    let served = stack
        .client
        .post(stack.url("/v1/completions"))
        .json(&json!({"prompt": doc, "max_tokens": 1}))
        .send()
        .await
        .unwrap();
    let worker = served.headers()["x-kvroute-worker"].to_str().unwrap().to_owned();
    served.bytes().await.unwrap();
    stack.wait_indexed((tokenizer.encode(&doc).unwrap().len() / 16) as u64).await;
    let fresh =
        |salt: u32| -> String { (0..2000).map(|i| format!("Row {salt}-{i}: {} cells. ", i * 13 % 997)).collect() };

    for (text, cached) in [(format!("{doc}{}", fresh(1)), true), (fresh(2), false)] {
        let ids = tokenizer.encode(&text).unwrap();
        let before = tokenized().await;
        let (status, by_text) = stack.post("/best_worker", json!({"prompt": text})).await;
        assert_eq!(status, 200, "{by_text}");
        let spent = tokenized().await - before;
        assert!(spent < ids.len() as f64 / 4.0, "tokenized {spent} of {} ids", ids.len());
        let (_, by_ids) = stack.post("/best_worker", json!({"token_ids": ids})).await;
        assert_eq!(by_text["overlap_blocks"], by_ids["overlap_blocks"], "cached: {cached}");
        let (estimate, blocks) = (by_text["request_blocks"].as_f64().unwrap(), (ids.len() / 16) as f64);
        assert!((estimate - blocks).abs() < blocks * 0.1, "{estimate} blocks estimated, {blocks} in fact");
        if cached {
            assert_eq!(
                (by_text["worker_id"].to_string(), by_ids["worker_id"].to_string()),
                (worker.clone(), worker.clone())
            );
            assert!(by_ids["overlap_blocks"].as_u64().unwrap() > 100, "{by_ids}");
        } else {
            assert_eq!(by_ids["overlap_blocks"], 0);
        }
    }
    assert_eq!(stack.metric(r#"kvroute_router_prompt_tokenizations_total{how="beginning"}"#).await, 2.0);

    // The request after the first query tokenizes from where the query stopped, not again.
    let text = format!("{doc}{}", fresh(1));
    let resumed = stack.metric(r#"kvroute_router_prompt_tokenizations_total{how="resumed"}"#).await;
    let served = stack
        .client
        .post(stack.url("/v1/completions"))
        .json(&json!({"prompt": text, "max_tokens": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status().as_u16(), 200);
    assert_eq!(served.headers()["x-kvroute-worker"].to_str().unwrap(), worker);
    served.bytes().await.unwrap();
    assert_eq!(stack.metric(r#"kvroute_router_prompt_tokenizations_total{how="resumed"}"#).await, resumed + 1.0);
}

/// A stand-in worker that records every completion body it is sent and answers a fixed one.
async fn recording_worker() -> (String, std::sync::Arc<std::sync::Mutex<Vec<bytes::Bytes>>>) {
    use axum::routing::{get, post};
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = axum::Router::new().route("/health", get(|| async { "ok" })).route(
        "/v1/completions",
        post(move |body: bytes::Bytes| async move {
            record.lock().unwrap().push(body);
            axum::Json(
                json!({"object": "text_completion", "choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}]}),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

#[tokio::test]
async fn the_worker_gets_the_body_as_sent_without_the_routers_own_fields() {
    let (worker, seen) = recording_worker().await;
    let router = support::spawn(&["kv-router", "--http-port", "0", "--block-size", "16", "--worker", &worker]);
    let url = format!("{}/v1/completions", router.router_http());
    let client = reqwest::Client::new();
    // Without the router's fields: forwarded byte for byte.
    let plain = r#"{"prompt": "route me", "max_tokens": 2, "extra": [1, {"x": "\u00e9"}]}"#;
    let r = client.post(&url).header("content-type", "application/json").body(plain).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    r.bytes().await.unwrap();
    // With them (one of them null): taken out, the rest kept.
    let own = json!({"prompt": "route me", "max_tokens": 2, "router_config_override": {"router_temperature": 0.5}, "kvroute": null, "extra": [1]});
    let r = client.post(&url).json(&own).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.bytes().await.unwrap();
    // A bad override is refused before anything is sent.
    let bad = json!({"prompt": "x", "router_config_override": {"router_temperature": -1}});
    assert_eq!(client.post(&url).json(&bad).send().await.unwrap().status().as_u16(), 400);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(&seen[0][..], plain.as_bytes());
    let second: Value = serde_json::from_slice(&seen[1]).unwrap();
    assert_eq!(second, json!({"prompt": "route me", "max_tokens": 2, "extra": [1]}));
}
