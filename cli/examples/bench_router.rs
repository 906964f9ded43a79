//! Loopback latency of the kv-router service, against baselines measured in the same run.
//!
//!     cargo run --release -p kvroute-cli --example bench_router [-- --requests 2000]
//!
//! Starts, in this process, 2 mockers (block size 16, speed-up 1000 so engine time is small)
//! and one kv-router in front of them, then measures sequential requests on keep-alive
//! connections:
//! - `best_worker` with 8,192 `token_ids` (512 blocks) against a warm index, vs `GET /health`
//!   on the same router (the HTTP stack's own floor);
//! - `generate` (`/v1/completions`, 64-token prompt, 1 output token) through the router, vs
//!   the same request sent to a mocker directly: the difference is the router's overhead;
//! - the same through a global router in front of that router: the difference is the global
//!   router's overhead. With one pool there is nothing to decide and it only forwards; with two
//!   pools (both served by that router) it probes both in parallel (`kv_overlap`), then forwards.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvroute_global_router::GlobalRouterConfig;
use kvroute_kv_router::select::KvRouterConfig;
use kvroute_kv_router::service::{self, ServiceConfig, WorkerSpec};
use kvroute_mocker::server::{self as mocker, KvEventsConfig, ServerConfig};
use kvroute_mocker::timing::TimingModel;
use kvroute_mocker::EngineConfig;
use kvroute_tokenizer::Tokenizer;
use serde_json::{json, Value};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// One request of a figure: `GET url` or `POST url` with a JSON body.
struct Call {
    url: String,
    body: Option<Vec<u8>>,
}

impl Call {
    fn get(url: String) -> Self {
        Call { url, body: None }
    }
    fn post(url: String, body: &[u8]) -> Self {
        Call { url, body: Some(body.to_vec()) }
    }
    async fn send(&self, client: &reqwest::Client) {
        let request = match &self.body {
            None => client.get(&self.url),
            Some(body) => client.post(&self.url).header("content-type", "application/json").body(body.clone()),
        };
        let response = request.send().await.expect("loopback request");
        assert!(response.status().is_success(), "{} answered {}", self.url, response.status());
        response.bytes().await.expect("loopback body");
    }
}

/// p50 and p99 of each call over `n` rounds. A round sends every call once, in an order that
/// rotates from round to round, so the machine's speed drift (up to ~1.6× within seconds here)
/// hits every figure alike and their differences mean something.
async fn measure(client: &reqwest::Client, n: usize, calls: &[Call]) -> Vec<(Duration, Duration)> {
    for call in calls.iter().cycle().take(calls.len() * (n / 10).max(1)) {
        call.send(client).await;
    }
    let mut samples = vec![Vec::with_capacity(n); calls.len()];
    for round in 0..n {
        for k in 0..calls.len() {
            let i = (round + k) % calls.len();
            let t = Instant::now();
            calls[i].send(client).await;
            samples[i].push(t.elapsed());
        }
    }
    samples
        .into_iter()
        .map(|mut s| {
            s.sort();
            (percentile(&s, 0.5), percentile(&s, 0.99))
        })
        .collect()
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.iter().position(|a| a == "--requests").and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(2000);
    let tokenizer = Arc::new(Tokenizer::builtin());
    let mut workers = Vec::new();
    for _ in 0..2 {
        let config = ServerConfig {
            engine: EngineConfig { block_size: 16, timing: TimingModel { speedup_ratio: 1000.0, decode_speedup_ratio: 1.0 }, ..EngineConfig::default() },
            model_name: "kvroute-mock".into(),
            http_addr: "127.0.0.1:0".parse()?,
            data_parallel_size: 1,
            kv_events: Some(KvEventsConfig { host: "127.0.0.1".into(), port: 0, topic: "kv-events".into(), replay_buffer: 1000 }),
            default_max_tokens: 1,
            max_body_bytes: 64 << 20,
            kv_events_http: None,
            kv_events_nats: None,
        };
        let running = mocker::start(config, tokenizer.clone()).await?;
        workers.push(WorkerSpec { kv_events: vec![running.kv_events[0].events.clone()], ..WorkerSpec::new(format!("http://{}", running.http_addr)) });
    }
    let direct = workers[0].url.clone();
    let mut config = ServiceConfig::new("127.0.0.1:0".parse::<SocketAddr>()?, workers);
    config.router = KvRouterConfig { block_size: 16, ..KvRouterConfig::default() };
    config.seed = Some(1);
    let router = format!("http://{}", service::start(config, tokenizer.clone()).await?.http_addr);
    let global_config: GlobalRouterConfig = serde_json::from_value(json!({
        "http_port": 0,
        "pools": [{"name": "a", "routers": [router]}],
        "policy": {"type": "kv_overlap", "block_size": 16},
        "seed": 1,
    }))?;
    let global = format!("http://{}", kvroute_global_router::start(global_config, tokenizer.clone()).await?.http_addr);
    let two_pools: GlobalRouterConfig = serde_json::from_value(json!({
        "http_port": 0,
        "pools": [{"name": "a", "routers": [router]}, {"name": "b", "routers": [router]}],
        "policy": {"type": "kv_overlap", "block_size": 16},
        "seed": 1,
    }))?;
    let global2 = format!("http://{}", kvroute_global_router::start(two_pools, tokenizer).await?.http_addr);
    let client = reqwest::Client::builder().pool_max_idle_per_host(4).build()?;

    // Warm the index: the 8k prompt cached on one worker.
    let long: Vec<u32> = (0..8192).map(|i| (i * 7 + 1) % 4000).collect();
    client.post(format!("{router}/v1/completions")).json(&json!({"prompt": long, "max_tokens": 1})).send().await?.bytes().await?;
    let indexed = async {
        loop {
            let v: Value = client.post(format!("{router}/best_worker")).json(&json!({"token_ids": long})).send().await.ok()?.json().await.ok()?;
            if v["overlap_blocks"] == 512 {
                return Some(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), indexed).await?.ok_or_else(|| anyhow::anyhow!("index never warmed"))?;

    let probe = serde_json::to_vec(&json!({"token_ids": long}))?;
    let short: Vec<u32> = (0..64).collect();
    let body = serde_json::to_vec(&json!({"prompt": short, "max_tokens": 1}))?;
    let calls = [
        Call::get(format!("{router}/health")),
        Call::post(format!("{router}/best_worker"), &probe),
        Call::post(format!("{direct}/v1/completions"), &body),
        Call::post(format!("{router}/v1/completions"), &body),
        Call::post(format!("{global}/v1/completions"), &body),
        Call::post(format!("{global2}/v1/completions"), &body),
    ];
    let figures = measure(&client, n, &calls).await;
    let [(h50, h99), (bw50, bw99), (m50, m99), (g50, g99), (gg50, gg99), (gp50, gp99)] = figures[..] else {
        unreachable!("one figure per call")
    };
    println!("requests per figure: {n} (sequential, keep-alive, loopback, figures interleaved)");
    println!("{:<52} {:>10} {:>10}", "", "p50 µs", "p99 µs");
    println!("{:<52} {:>10.1} {:>10.1}", "router GET /health (HTTP floor)", us(h50), us(h99));
    println!("{:<52} {:>10.1} {:>10.1}", "router POST /best_worker, 8,192 token_ids", us(bw50), us(bw99));
    println!("{:<52} {:>10.1} {:>10.1}", "mocker /v1/completions direct (64 tokens, 1 out)", us(m50), us(m99));
    println!("{:<52} {:>10.1} {:>10.1}", "same through the kv-router", us(g50), us(g99));
    println!("{:<52} {:>10.1} {:>10.1}", "same through global router (1 pool) → kv-router", us(gg50), us(gg99));
    println!("{:<52} {:>10.1} {:>10.1}", "same through global router (2 pools, probes)", us(gp50), us(gp99));
    println!("best_worker above the HTTP floor, p50: {:.1} µs", us(bw50) - us(h50));
    println!("global router overhead (global − router), p50: 1 pool {:.1} µs, 2 pools {:.1} µs", us(gg50) - us(g50), us(gp50) - us(g50));
    println!("generate overhead (router − direct), p50: {:.1} µs = {:.2}× direct", us(g50) - us(m50), us(g50) / us(m50));
    Ok(())
}
