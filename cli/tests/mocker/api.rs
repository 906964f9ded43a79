//! The OpenAI surface: completions and chat, streaming and not, usage, errors, models, metrics.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support;

async fn post(client: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let response = client.post(url).json(&body).send().await.expect("request sent");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json body"))
}

#[tokio::test]
async fn completion_reports_usage_and_reuse_makes_the_second_prompt_faster() {
    let m = support::mocker(&["--block-size", "16", "--num-gpu-blocks", "1024"]);
    let client = reqwest::Client::new();
    let prompt: Vec<u32> = (0..8000).map(|i| (i * 7 + 3) % 4000).collect();
    let body = json!({"prompt": prompt, "max_tokens": 3});

    let start = Instant::now();
    let (status, cold) = post(&client, format!("{}/v1/completions", m.http()), body.clone()).await;
    let cold_latency = start.elapsed();
    assert_eq!(status, 200, "{cold}");
    assert_eq!(cold["usage"]["prompt_tokens"], 8000);
    assert_eq!(cold["usage"]["completion_tokens"], 3);
    assert_eq!(cold["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(cold["choices"][0]["finish_reason"], "length");

    let start = Instant::now();
    let (_, warm) = post(&client, format!("{}/v1/completions", m.http()), body).await;
    let warm_latency = start.elapsed();
    assert_eq!(warm["usage"]["prompt_tokens_details"]["cached_tokens"], 7984, "all full blocks but the last");
    // Timing model: 8,000 uncached tokens ≈ 165 ms of prefill (in one 8,192-token pass), 16 ≈ 17 ms.
    assert!(warm_latency + Duration::from_millis(40) < cold_latency, "cold {cold_latency:?} warm {warm_latency:?}");
    // Same request, same seed: same output.
    assert_eq!(warm["choices"][0]["text"], cold["choices"][0]["text"]);
    // Each answer has its own id (unique across workers too: a random per-server part).
    let ids = [cold["id"].as_str().unwrap(), warm["id"].as_str().unwrap()];
    assert!(ids.iter().all(|id| id.starts_with("cmpl-") && id.len() == 5 + 32), "{ids:?}");
    assert_ne!(ids[0], ids[1]);
    assert_eq!(ids[0][..21], ids[1][..21], "one server: the same random part, then its counter");
}

#[tokio::test]
async fn chat_streams_sse_chunks_ending_with_done() {
    let m = support::mocker(&[]);
    let client = reqwest::Client::new();
    let body = json!({
        "model": "kvroute-mock",
        "messages": [{"role": "user", "content": "Tell me about KV caches."}],
        "max_tokens": 5, "stream": true, "stream_options": {"include_usage": true},
    });
    let text = client
        .post(format!("{}/v1/chat/completions", m.http()))
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events: Vec<&str> =
        text.split("\n\n").filter(|e| !e.is_empty()).map(|e| e.strip_prefix("data: ").expect("data line")).collect();
    assert_eq!(*events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert_eq!(chunks.len(), 6, "5 tokens and a usage chunk");
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert!(chunks[0]["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(chunks.iter().all(|c| c["id"] == chunks[0]["id"]), "one id per stream");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[4]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[5]["usage"]["completion_tokens"], 5);
    assert!(chunks[5]["usage"]["prompt_tokens"].as_u64().unwrap() > 5);
}

#[tokio::test]
async fn bad_requests_get_openai_errors() {
    let m = support::mocker(&["--max-model-len", "100"]);
    let client = reqwest::Client::new();
    let url = format!("{}/v1/completions", m.http());
    let too_long: Vec<u32> = (0..200).collect();
    let cases = [
        (json!({"prompt": too_long, "max_tokens": 5}), 400, "maximum context length"),
        (json!({"prompt": "", "max_tokens": 5}), 400, "empty"),
        (json!({"max_tokens": 5}), 400, "invalid completion request"),
        (json!({"prompt": "hi", "model": "other"}), 404, "does not exist"),
        (json!({"prompt": "hi", "n": 2}), 400, "n = 1"),
    ];
    for (body, status, needle) in cases {
        let (got, err) = post(&client, url.clone(), body.clone()).await;
        assert_eq!(got, status, "{body} → {err}");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body} → {message}");
        assert_eq!(err["error"]["code"], status);
    }
    let raw = client.post(&url).body("{not json").header("content-type", "application/json").send().await.unwrap();
    assert_eq!(raw.status().as_u16(), 400);
    let bad_rank =
        client.post(&url).header("X-Data-Parallel-Rank", "7").json(&json!({"prompt": "hi"})).send().await.unwrap();
    assert_eq!(bad_rank.status().as_u16(), 400);
}

#[tokio::test]
async fn models_health_and_metrics_answer() {
    let m = support::mocker(&["--model-name", "mock-a", "--block-size", "16"]);
    let client = reqwest::Client::new();
    let models: Value = client.get(format!("{}/v1/models", m.http())).send().await.unwrap().json().await.unwrap();
    assert_eq!(models["data"][0]["id"], "mock-a");
    assert_eq!(client.get(format!("{}/health", m.http())).send().await.unwrap().status().as_u16(), 200);
    let prompt: Vec<u32> = (0..64).collect();
    for _ in 0..2 {
        post(&client, format!("{}/v1/completions", m.http()), json!({"prompt": prompt, "max_tokens": 1})).await;
    }
    let metrics = client.get(format!("{}/metrics", m.http())).send().await.unwrap().text().await.unwrap();
    for name in [
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_prefix_cache_hit_rate",
    ] {
        assert!(metrics.contains(name), "{name} missing from\n{metrics}");
    }
    assert!(metrics.contains(r#"vllm:prefix_cache_hits{engine="0",model_name="mock-a"} 48"#), "{metrics}");
    assert!(
        metrics.contains(r#"vllm:request_success_total{finished_reason="length",model_name="mock-a"} 2"#),
        "{metrics}"
    );
}
