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
//!   pools (both served by that router) it probes both in parallel (`kv_overlap`), then forwards;
//! - `best_worker` and `GET /health` again while another connection floods the router with KV
//!   events (`POST /events`: a worker stores 32,768 blocks in 32 events, then removes them, over
//!   and over — what long-context prefills and evictions send), against the same pair measured
//!   quiet just before: how much routing waits for event application.

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

/// Blocks per event, and events per body, of the flood.
const FLOOD_EVENT_BLOCKS: u64 = 1024;
const FLOOD_EVENTS: u64 = 32;

/// Bodies for `POST /events`: `worker_id` stores a chain of FLOOD_EVENTS × FLOOD_EVENT_BLOCKS
/// blocks that nothing else holds, then removes it.
fn flood_bodies(worker_id: u64) -> [Vec<u8>; 2] {
    let name = |i: u64| (1u64 << 40) + i;
    let per = FLOOD_EVENT_BLOCKS;
    let stored: Vec<Value> = (0..FLOOD_EVENTS)
        .map(|e| {
            let blocks: Vec<Value> = (e * per..(e + 1) * per).map(|i| json!({"block_hash": name(i), "tokens_hash": (7u64 << 50) + i})).collect();
            let parent = (e > 0).then(|| name(e * per - 1));
            json!({"worker_id": worker_id, "event": {"event_id": e, "data": {"stored": {"parent_hash": parent, "blocks": blocks}}}})
        })
        .collect();
    let all = (0..FLOOD_EVENTS * per).map(name).collect::<Vec<_>>();
    let removed = json!([{"worker_id": worker_id, "event": {"event_id": FLOOD_EVENTS, "data": {"removed": {"block_hashes": all}}}}]);
    [serde_json::to_vec(&stored).expect("json"), serde_json::to_vec(&removed).expect("json")]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args
        .iter()
        .position(|a| a == "--requests")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let tokenizer = Arc::new(Tokenizer::builtin());
    let mut workers = Vec::new();
    for _ in 0..2 {
        let config = ServerConfig {
            engine: EngineConfig {
                block_size: 16,
                timing: TimingModel { speedup_ratio: 1000.0, decode_speedup_ratio: 1.0 },
                ..EngineConfig::default()
            },
            model_name: "kvroute-mock".into(),
            http_addr: "127.0.0.1:0".parse()?,
            data_parallel_size: 1,
            kv_events: Some(KvEventsConfig {
                host: "127.0.0.1".into(),
                port: 0,
                topic: "kv-events".into(),
                replay_buffer: 1000,
            }),
            default_max_tokens: 1,
            max_body_bytes: 64 << 20,
            kv_events_http: None,
            kv_events_nats: None,
        };
        let running = mocker::start(config, tokenizer.clone()).await?;
        workers.push(WorkerSpec {
            kv_events: vec![running.kv_events[0].events.clone()],
            ..WorkerSpec::new(format!("http://{}", running.http_addr))
        });
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
    client
        .post(format!("{router}/v1/completions"))
        .json(&json!({"prompt": long, "max_tokens": 1}))
        .send()
        .await?
        .bytes()
        .await?;
    let indexed = async {
        loop {
            let v: Value = client
                .post(format!("{router}/best_worker"))
                .json(&json!({"token_ids": long}))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            if v["overlap_blocks"] == 512 {
                return Some(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), indexed)
        .await?
        .ok_or_else(|| anyhow::anyhow!("index never warmed"))?;

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
    println!(
        "global router overhead (global − router), p50: 1 pool {:.1} µs, 2 pools {:.1} µs",
        us(gg50) - us(g50),
        us(gp50) - us(g50)
    );
    println!(
        "generate overhead (router − direct), p50: {:.1} µs = {:.2}× direct",
        us(g50) - us(m50),
        us(g50) / us(m50)
    );

    // Routing while events flood in, against the same calls quiet just before.
    let routing = [Call::get(format!("{router}/health")), Call::post(format!("{router}/best_worker"), &probe)];
    let quiet = measure(&client, n, &routing).await;
    let listed: Value = client.get(format!("{router}/workers")).send().await?.json().await?;
    let flooded =
        listed["workers"][1]["worker_id"].as_u64().ok_or_else(|| anyhow::anyhow!("no second worker listed"))?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = tokio::spawn({
        let (stop, url, bodies, client) =
            (stop.clone(), format!("{router}/events"), flood_bodies(flooded), reqwest::Client::new());
        async move {
            let mut posted = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for body in &bodies {
                    let r =
                        client.post(&url).header("content-type", "application/json").body(body.clone()).send().await;
                    let applied: Value = r.expect("loopback events").json().await.expect("events answer");
                    assert_eq!(applied["rejected"], json!([]), "flood events apply");
                    posted += 1;
                }
            }
            posted
        }
    });
    let started = Instant::now();
    let busy = measure(&client, n, &routing).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let posts = flood.await?;
    let rate = (posts * FLOOD_EVENTS * FLOOD_EVENT_BLOCKS) as f64 / started.elapsed().as_secs_f64();
    let [(qh50, qh99), (qb50, qb99)] = quiet[..] else { unreachable!("one figure per call") };
    let [(fh50, fh99), (fb50, fb99)] = busy[..] else { unreachable!("one figure per call") };
    println!();
    println!("while another connection floods POST /events ({:.0} k blocks stored or removed per s):", rate / 1e3);
    println!("{:<52} {:>10} {:>10}", "", "p50 µs", "p99 µs");
    println!("{:<52} {:>10.1} {:>10.1}", "router GET /health, quiet", us(qh50), us(qh99));
    println!("{:<52} {:>10.1} {:>10.1}", "router GET /health, flooded", us(fh50), us(fh99));
    println!("{:<52} {:>10.1} {:>10.1}", "router POST /best_worker, quiet", us(qb50), us(qb99));
    println!("{:<52} {:>10.1} {:>10.1}", "router POST /best_worker, flooded", us(fb50), us(fb99));
    println!(
        "best_worker above /health: quiet {:.1} / {:.1} µs, flooded {:.1} / {:.1} µs (p50 / p99)",
        us(qb50) - us(qh50),
        us(qb99) - us(qh99),
        us(fb50) - us(fh50),
        us(fb99) - us(fh99)
    );
    Ok(())
}
