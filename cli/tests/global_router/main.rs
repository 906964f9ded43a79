//! End-to-end tests of `kvroute global-router`: 2 pools × 2 mockers behind kv-routers behind
//! the global router, all real processes on loopback.

#[path = "../support/mod.rs"]
mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::Process;

struct Stack {
    _mockers: Vec<Process>,
    routers: Vec<Process>,
    global: Process,
    client: reqwest::Client,
    _dir: std::path::PathBuf,
}

impl Stack {
    fn new(policy: &str) -> Stack {
        Stack::with_pool_a(policy, "", &[])
    }

    /// Pool a's entry gets `a_facts` (YAML fields, e.g. `max_input_tokens: 512`) and its
    /// mockers `a_mocker_args`.
    fn with_pool_a(policy: &str, a_facts: &str, a_mocker_args: &[&str]) -> Stack {
        let mut mockers = Vec::new();
        let mut routers = Vec::new();
        for pool in 0..2 {
            let extra = if pool == 0 { a_mocker_args } else { &[] };
            let args = [&["--block-size", "16", "--speedup-ratio", "10"][..], extra].concat();
            let pair: Vec<Process> = (0..2).map(|_| support::mocker(&args)).collect();
            let refs: Vec<&Process> = pair.iter().collect();
            routers.push(support::kv_router(&refs, &["--block-size", "16"]));
            mockers.extend(pair);
        }
        let dir = std::env::temp_dir().join(format!("kvroute-global-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("global.yaml");
        std::fs::write(
            &config,
            format!(
                "http_port: 0\nhealth_interval_ms: 200\nprobe_timeout_ms: 200\nseed: 3\npools:\n  - {{name: a, routers: ['{}'], {a_facts}}}\n  - {{name: b, routers: ['{}']}}\npolicy: {policy}\n",
                routers[0].router_http(),
                routers[1].router_http()
            ),
        )
        .unwrap();
        let global = support::spawn(&["global-router", "--config", config.to_str().unwrap()]);
        Stack { _mockers: mockers, routers, global, client: reqwest::Client::new(), _dir: dir }
    }

    /// Serve `prompt` on pool `pool`'s router directly and wait until that router has indexed
    /// all its blocks (of 16).
    async fn cache_in_pool(&self, pool: usize, prompt: &[u32]) {
        let router = self.routers[pool].router_http();
        let r = self
            .client
            .post(format!("{router}/v1/completions"))
            .json(&json!({"prompt": prompt, "max_tokens": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.bytes().await.unwrap();
        let blocks = prompt.len() / 16;
        let indexed = support::eventually(Duration::from_secs(10), || async {
            let v: Value = self
                .client
                .post(format!("{router}/best_worker"))
                .json(&json!({"token_ids": prompt}))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (v["overlap_blocks"] == blocks).then_some(())
        })
        .await;
        assert!(indexed.is_some(), "pool {pool}'s router indexed the prompt's {blocks} blocks");
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.global.ready["global_router"]["http"].as_str().unwrap(), path)
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64
}

fn prompt(salt: u32) -> Vec<u32> {
    (0..1024).map(|i| (i * 17 + salt * 7919) % 4000 + 3).collect()
}

#[tokio::test]
async fn a_prefix_served_by_pool_b_goes_to_pool_b_again() {
    let stack = Stack::new("{type: kv_overlap, block_size: 16}");
    let p = prompt(1);
    // Served by pool b directly, so b's workers cache it; wait until b's router knows it.
    stack.cache_in_pool(1, &p).await;
    // One request through the global router: pool a has nothing cached, so b is cheaper.
    let r = stack
        .client
        .post(stack.url("/v1/completions"))
        .json(&json!({"prompt": p, "max_tokens": 1}))
        .send()
        .await
        .unwrap();
    let pool = r.headers()["x-kvroute-pool"].to_str().unwrap().to_owned();
    let reason = r.headers()["x-kvroute-reason"].to_str().unwrap().to_owned();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 1008, "served from b's cache");
    assert_eq!(pool, "b");
    assert!(reason.starts_with("kv_overlap"), "{reason}");
    let metrics = stack.client.get(stack.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"kvroute_global_decisions_total{policy="kv_overlap",pool="b"}"#), "{metrics}");
}

#[tokio::test]
async fn a_prompt_too_long_for_pool_a_goes_to_pool_b_though_a_holds_its_prefix() {
    // Pool a's engines take 1,024 tokens at most, output included (its entry says prompts of
    // up to 1,023); b's take any.
    let stack = Stack::with_pool_a(
        "{type: kv_overlap, block_size: 16}",
        "max_input_tokens: 1023",
        &["--max-model-len", "1024"],
    );
    let long: Vec<u32> = prompt(9).into_iter().chain(prompt(10).into_iter().take(64)).collect(); // 1,088 tokens
    let head = &long[..512];
    stack.cache_in_pool(0, head).await;
    // The head alone still goes to a (its cache); the long prompt starting with it, to b.
    let r = stack
        .client
        .post(stack.url("/v1/completions"))
        .json(&json!({"prompt": head, "max_tokens": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["x-kvroute-pool"].to_str().unwrap()), (200, "a"));
    r.bytes().await.unwrap();
    for _ in 0..3 {
        let r = stack
            .client
            .post(stack.url("/v1/completions"))
            .json(&json!({"prompt": long, "max_tokens": 1}))
            .send()
            .await
            .unwrap();
        let pool = r.headers().get("x-kvroute-pool").map(|v| v.to_str().unwrap().to_owned());
        let reason = r.headers().get("x-kvroute-reason").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        assert_eq!((r.status().as_u16(), pool.as_deref()), (200, Some("b")), "{reason}: {}", r.text().await.unwrap());
        assert!(reason.ends_with("skip=a:too_long"), "{reason}");
        r.bytes().await.unwrap();
    }
}

#[tokio::test]
async fn with_pool_b_down_every_request_still_succeeds_on_pool_a() {
    let mut stack = Stack::new("{type: round_robin}");
    stack.routers[1].kill();
    let mut pools = Vec::new();
    for salt in 0..30 {
        let r = stack
            .client
            .post(stack.url("/v1/completions"))
            .json(&json!({"prompt": prompt(100 + salt), "max_tokens": 2}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "request {salt}: {}", r.text().await.unwrap());
        pools.push(r.headers()["x-kvroute-pool"].to_str().unwrap().to_owned());
        r.bytes().await.unwrap();
    }
    assert!(pools.iter().all(|p| p == "a"), "{pools:?}");
    let state: Value = stack.client.get(stack.url("/pools")).send().await.unwrap().json().await.unwrap();
    assert_eq!(state["pools"][1]["healthy"], false, "{state}");
}

#[tokio::test]
async fn a_streamed_answer_counts_against_its_pool_until_it_ends() {
    let stack = Stack::new("{type: round_robin}");
    let in_flight = || async {
        let v: Value = stack.client.get(stack.url("/pools")).send().await.unwrap().json().await.unwrap();
        v["pools"].as_array().unwrap().iter().map(|p| p["in_flight"].as_u64().unwrap()).sum::<u64>()
    };
    let body = json!({"prompt": prompt(40), "max_tokens": 300, "stream": true, "ignore_eos": true});
    let r = stack.client.post(stack.url("/v1/completions")).json(&body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(in_flight().await, 1, "the answer is still streaming");
    let text = r.text().await.unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{}", &text[text.len().saturating_sub(200)..]);
    let idle = support::eventually(Duration::from_secs(5), || async { (in_flight().await == 0).then_some(()) }).await;
    assert!(idle.is_some(), "still counted after the stream ended");
}

#[tokio::test]
async fn models_are_merged_and_bad_requests_are_refused() {
    let stack = Stack::new("{type: least_loaded}");
    let models: Value = stack.client.get(stack.url("/v1/models")).send().await.unwrap().json().await.unwrap();
    assert_eq!(models["data"].as_array().unwrap().len(), 1, "{models}");
    let bad = stack
        .client
        .post(stack.url("/v1/completions"))
        .body("{oops")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    let bad_header = stack
        .client
        .post(stack.url("/v1/completions"))
        .header("x-kvroute-priority", "high")
        .json(&json!({"prompt": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_header.status().as_u16(), 400);
    let err: Value = bad_header.json().await.unwrap();
    assert!(err["error"]["message"].as_str().unwrap().contains("x-kvroute-priority"));
}

/// A disaggregated grid picks the prefill pool by input length, which the global router counts
/// with the tokenizer: short text to pool a, long text (parsed off the runtime) to pool b, and a
/// long text that begins like the previous one (tokenized from where they part) to b again; a
/// priority hint overrides the length.
#[tokio::test]
async fn a_length_grid_counts_text_prompts_with_the_tokenizer() {
    let stack = Stack::new(
        r#"{"type": "grid",
            "prefill": {"isl_min": 0, "isl_max": 4000, "isl_resolution": 2, "ttft_min_ms": 0, "ttft_max_ms": 1000,
                        "ttft_resolution": 1, "prefill_pool_mapping": [["a"], ["b"]],
                        "priority_overrides": [{"min_priority": 5, "max_priority": 9, "target_pool": "b"}]},
            "decode": {"context_length_min": 0, "context_length_max": 100000, "context_length_resolution": 1,
                       "itl_min_ms": 0, "itl_max_ms": 100, "itl_resolution": 1, "decode_pool_mapping": [["a"]]}}"#,
    );
    let document: String = (0..800).map(|i| format!("Line {i}: the cache holds {} blocks.\n", i * 37 % 1000)).collect();
    assert!(document.len() > 16 << 10);
    for (text, want) in [
        ("A short question?".to_owned(), "a"),
        (format!("{document}First question?"), "b"),
        (format!("{document}Second, different question?"), "b"),
    ] {
        let r = stack
            .client
            .post(stack.url("/v1/completions"))
            .json(&json!({"prompt": text, "max_tokens": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.headers()["x-kvroute-prefill-pool"].to_str().unwrap(), want, "{} bytes", text.len());
        r.bytes().await.unwrap();
    }
    // A priority in the body's `kvroute` object (taken out before forwarding) or in the header
    // overrides the length: short text to b.
    let hinted = json!({"prompt": "A short question?", "max_tokens": 1, "kvroute": {"priority": 7}});
    let r = stack.client.post(stack.url("/v1/completions")).json(&hinted).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["x-kvroute-prefill-pool"].to_str().unwrap(), "b");
    r.bytes().await.unwrap();
    let r = stack
        .client
        .post(stack.url("/v1/completions"))
        .header("x-kvroute-priority", "6")
        .json(&json!({"prompt": "A short question?", "max_tokens": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-kvroute-prefill-pool"].to_str().unwrap(), "b");
    r.bytes().await.unwrap();
}

#[test]
fn a_bad_config_is_rejected_at_start_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("kvroute-global-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("global.yaml");
    std::fs::write(&config, "pools:\n  - {name: a, routers: ['http://x:1'], weight: -1}\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvroute"))
        .args(["global-router", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pools[0].weight"), "{stderr}");
}
