//! `kvroute kv-router`: flags, environment and an optional config file → [`ServiceConfig`].
//!
//! Precedence for every setting: flag, `KVROUTE_*` variable, Dynamo's `DYN_*` variable, config
//! file, default.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use kvroute_kv_router::select::{CostModel, KvRouterConfig, RouterMode, StepTimeModel};
use kvroute_kv_router::service::{self, ReplicaSyncConfig, ServiceConfig, WorkerSpec};
use kvroute_tokenizer::{ChatTemplate, Tokenizer};
use serde::Deserialize;

#[derive(Args, Debug, Default)]
pub struct KvRouterArgs {
    /// YAML file with any of the settings below (snake_case keys) and the `workers` list.
    #[arg(long, env = "KVROUTE_CONFIG")]
    config: Option<PathBuf>,
    /// A worker: optionally its id and `=` (default: a hash of the URL; give it when its events
    /// come over NATS, whose subjects name it), its OpenAI base URL, then `@` and its ZMQ
    /// KV-event endpoint(s), one per dp rank, comma-separated. Repeat for each worker.
    /// Examples: --worker http://127.0.0.1:8001@tcp://127.0.0.1:5557, --worker 7=http://10.0.0.7:8000
    #[arg(long = "worker", value_name = "[ID=]URL[@TCP,...]")]
    workers: Vec<String>,
    /// kv (cost over KV overlap and load), round-robin, random or least-loaded. Default: kv.
    /// [env: DYN_ROUTER_MODE]
    #[arg(long, env = "KVROUTE_ROUTER_MODE")]
    router_mode: Option<RouterMode>,
    /// What the kv mode minimises: predicted_ttft (default: each worker's predicted time to
    /// first token, the delay it adds to requests waiting there and a charge for recomputing
    /// blocks another worker holds) or blocks, alias dynamo_classic (Dynamo's cost: prefill blocks minus
    /// credited overlap plus decode blocks).
    #[arg(long, env = "KVROUTE_COST_MODEL")]
    cost_model: Option<CostModel>,
    /// predicted_ttft: charge per prompt token recomputed although another worker holds it,
    /// as a multiple of its prefill time. Default: 3.
    #[arg(long, env = "KVROUTE_DUPLICATE_COST")]
    duplicate_cost: Option<f64>,
    /// predicted_ttft: each worker's KV cache size in blocks (the engines' num_gpu_blocks). The
    /// duplicate charge is scaled by the share of a worker's cache in use, since a copy made
    /// where there is room pushes nothing out. Default: read from each worker's /metrics
    /// (vllm:cache_config_info, as vLLM and the mocker state it); where it says nothing, the
    /// whole charge.
    #[arg(long, env = "KVROUTE_WORKER_KV_BLOCKS")]
    worker_kv_blocks: Option<u64>,
    /// Softmax temperature over worker costs; 0 (default) picks the cheapest.
    /// [env: DYN_ROUTER_TEMPERATURE]
    #[arg(long, env = "KVROUTE_ROUTER_TEMPERATURE")]
    router_temperature: Option<f64>,
    /// Weight of the prefill term in the cost (Dynamo's prefill_load_scale). Default: 1.
    /// [env: DYN_ROUTER_KV_OVERLAP_SCORE_WEIGHT, DYN_KV_OVERLAP_SCORE_WEIGHT]
    #[arg(
        long,
        alias = "router-kv-overlap-score-weight",
        alias = "prefill-load-scale",
        env = "KVROUTE_KV_OVERLAP_SCORE_WEIGHT"
    )]
    kv_overlap_score_weight: Option<f64>,
    /// Prefill blocks credited per cached block. Default: 1. [env: DYN_OVERLAP_SCORE_CREDIT]
    #[arg(long, env = "KVROUTE_OVERLAP_SCORE_CREDIT")]
    overlap_score_credit: Option<f64>,
    /// Tokens per KV block; must equal the workers'. Default: 16. [env: DYN_KV_CACHE_BLOCK_SIZE]
    #[arg(long, alias = "block-size", env = "KVROUTE_KV_CACHE_BLOCK_SIZE")]
    kv_cache_block_size: Option<u32>,
    /// Address to listen on. Default: 127.0.0.1.
    #[arg(long, env = "KVROUTE_HOST")]
    host: Option<IpAddr>,
    /// HTTP port (0: any free port; the chosen one is printed). Default: 9000. [env: DYN_HTTP_PORT]
    #[arg(long, alias = "port", env = "KVROUTE_HTTP_PORT")]
    http_port: Option<u16>,
    /// Milliseconds between worker health checks. Default: 2000.
    #[arg(long, env = "KVROUTE_HEALTH_INTERVAL_MS")]
    health_interval_ms: Option<u64>,
    /// Largest request body accepted, in bytes. Default: 64 MiB.
    #[arg(long, env = "KVROUTE_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
    /// ZMQ topic prefix to subscribe to (empty: all).
    #[arg(long, env = "KVROUTE_KV_EVENTS_TOPIC")]
    kv_events_topic: Option<String>,
    /// HF tokenizer.json (default: kvroute's built-in tokenizer); must match the workers'.
    #[arg(long, env = "KVROUTE_TOKENIZER")]
    tokenizer: Option<PathBuf>,
    /// Chat template file (Jinja) or tokenizer_config.json.
    #[arg(long, env = "KVROUTE_CHAT_TEMPLATE")]
    chat_template: Option<PathBuf>,
    /// Seed for tie-breaking and sampling (default: from the clock).
    #[arg(long, env = "KVROUTE_SEED")]
    seed: Option<u64>,
    /// Share load with the other replicas of this router group through a NATS server
    /// (nats://host:port): each replica counts the requests all of them routed, so they do not
    /// all send to the worker each thinks idle. Default: off (each counts only its own).
    #[arg(long, value_name = "NATS_URL", env = "KVROUTE_REPLICA_SYNC")]
    replica_sync: Option<String>,
    /// The router group's name, the same on all its replicas (replica sync's subject is
    /// kvroute.load.<group>). Default: default.
    #[arg(long, env = "KVROUTE_ROUTER_GROUP")]
    router_group: Option<String>,
    /// This replica's id within the group. Default: random at each start.
    #[arg(long, env = "KVROUTE_REPLICA_ID")]
    replica_id: Option<String>,
    /// Take the KV events of workers listed without a ZMQ endpoint from this NATS server's
    /// JetStream (nats://host:port; subjects kvroute.kv_events.<worker id>.<dp rank>, as
    /// `kvroute mocker --kv-events-nats` publishes them). A router started later replays each
    /// worker's history from the stream. Worker ids must match the publishers' (--worker
    /// ID=URL, or `worker_id` in the --config file's workers).
    #[arg(long, value_name = "NATS_URL", env = "KVROUTE_KV_EVENTS_NATS")]
    kv_events_nats: Option<String>,
    /// Milliseconds between replica sync heartbeats; a replica silent for three is taken to be
    /// gone and its requests stop counting. Default: 1000.
    #[arg(long, env = "KVROUTE_REPLICA_HEARTBEAT_MS")]
    replica_heartbeat_ms: Option<u64>,
}

/// The config file's shape.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterFile {
    #[serde(default)]
    pub workers: Vec<WorkerSpec>,
    pub router_mode: Option<RouterMode>,
    pub router_temperature: Option<f64>,
    #[serde(alias = "prefill_load_scale")]
    pub kv_overlap_score_weight: Option<f64>,
    pub overlap_score_credit: Option<f64>,
    pub cost_model: Option<CostModel>,
    pub duplicate_cost: Option<f64>,
    pub worker_kv_blocks: Option<u64>,
    /// predicted_ttft: the engines' step time (default: Dynamo's fit the mocker runs).
    pub step_time: Option<StepTimeModel>,
    #[serde(alias = "block_size")]
    pub kv_cache_block_size: Option<u32>,
    pub host: Option<IpAddr>,
    pub http_port: Option<u16>,
    pub health_interval_ms: Option<u64>,
    pub max_body_bytes: Option<usize>,
    pub kv_events_topic: Option<String>,
    pub tokenizer: Option<PathBuf>,
    pub chat_template: Option<PathBuf>,
    pub seed: Option<u64>,
    /// NATS URL: share load with the group's other replicas.
    pub replica_sync: Option<String>,
    pub router_group: Option<String>,
    pub replica_id: Option<String>,
    pub replica_heartbeat_ms: Option<u64>,
    /// NATS URL: KV events of workers without ZMQ endpoints come from its JetStream.
    pub kv_events_nats: Option<String>,
}

/// A Dynamo environment variable, parsed; an unparsable value is an error naming it.
fn dyn_env<T: FromStr>(names: &[&str]) -> anyhow::Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    for name in names {
        if let Ok(v) = std::env::var(name) {
            return v.parse().map(Some).map_err(|e| anyhow::anyhow!("{name}={v:?}: {e}"));
        }
    }
    Ok(None)
}

/// `[ID=]URL[@tcp://...,tcp://...]` → a worker.
pub fn parse_worker(s: &str) -> anyhow::Result<WorkerSpec> {
    let (url, events) = match s.split_once('@') {
        Some((url, events)) => {
            (url, events.split(',').map(str::trim).filter(|e| !e.is_empty()).map(String::from).collect())
        }
        None => (s, Vec::new()),
    };
    let (worker_id, url) = match url.split_once('=') {
        Some((id, rest)) if !id.contains(':') => {
            let id: u64 = id
                .parse()
                .map_err(|_| anyhow::anyhow!("--worker {s:?}: the id before '=' must be a u64, got {id:?}"))?;
            (Some(id), rest)
        }
        _ => (None, url),
    };
    if url.is_empty() {
        bail!("--worker {s:?}: missing URL");
    }
    Ok(WorkerSpec { kv_events: events, worker_id, ..WorkerSpec::new(url) })
}

fn load_file(path: &Path) -> anyhow::Result<RouterFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_yaml::from_str(&text).with_context(|| format!("{}: invalid router config", path.display()))
}

impl KvRouterArgs {
    /// Resolve flags, environment, file and defaults into the service's configuration.
    pub fn resolve(&self) -> anyhow::Result<(ServiceConfig, Arc<Tokenizer>)> {
        let file = match &self.config {
            Some(path) => load_file(path)?,
            None => RouterFile::default(),
        };
        let mut workers: Vec<WorkerSpec> =
            self.workers.iter().map(|w| parse_worker(w)).collect::<anyhow::Result<_>>()?;
        if workers.is_empty() {
            workers = file.workers.clone();
        }
        if workers.is_empty() {
            bail!("no workers: give --worker URL[@tcp://host:port] (repeatable) or a `workers:` list in --config");
        }
        let defaults = KvRouterConfig::default();
        let router = KvRouterConfig {
            block_size: self
                .kv_cache_block_size
                .or(dyn_env(&["DYN_KV_CACHE_BLOCK_SIZE"])?)
                .or(file.kv_cache_block_size)
                .unwrap_or(defaults.block_size),
            overlap_score_weight: self
                .kv_overlap_score_weight
                .or(dyn_env(&["DYN_ROUTER_KV_OVERLAP_SCORE_WEIGHT", "DYN_KV_OVERLAP_SCORE_WEIGHT"])?)
                .or(file.kv_overlap_score_weight)
                .unwrap_or(defaults.overlap_score_weight),
            overlap_score_credit: self
                .overlap_score_credit
                .or(dyn_env(&["DYN_OVERLAP_SCORE_CREDIT"])?)
                .or(file.overlap_score_credit)
                .unwrap_or(defaults.overlap_score_credit),
            router_temperature: self
                .router_temperature
                .or(dyn_env(&["DYN_ROUTER_TEMPERATURE"])?)
                .or(file.router_temperature)
                .unwrap_or(defaults.router_temperature),
            router_mode: self.router_mode.or(dyn_env(&["DYN_ROUTER_MODE"])?).or(file.router_mode).unwrap_or_default(),
            cost_model: self.cost_model.or(file.cost_model).unwrap_or(defaults.cost_model),
            duplicate_cost: self.duplicate_cost.or(file.duplicate_cost).unwrap_or(defaults.duplicate_cost),
            worker_kv_blocks: self.worker_kv_blocks.or(file.worker_kv_blocks),
            step_time: file.step_time.unwrap_or(defaults.step_time),
            ..defaults
        };
        router.validate().context("invalid router settings")?;
        let host = self.host.or(file.host).unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let port = self.http_port.or(dyn_env(&["DYN_HTTP_PORT"])?).or(file.http_port).unwrap_or(9000);
        let mut config = ServiceConfig::new(SocketAddr::new(host, port), workers);
        config.router = router;
        config.health_interval =
            Duration::from_millis(self.health_interval_ms.or(file.health_interval_ms).unwrap_or(2000).max(10));
        config.max_body_bytes = self.max_body_bytes.or(file.max_body_bytes).unwrap_or(config.max_body_bytes);
        config.kv_events_topic = self.kv_events_topic.clone().or(file.kv_events_topic.clone()).unwrap_or_default();
        config.seed = self.seed.or(file.seed);
        if let Some(url) = self.replica_sync.clone().or(file.replica_sync.clone()) {
            let group = self.router_group.clone().or(file.router_group.clone()).unwrap_or_else(|| "default".into());
            let mut sync = ReplicaSyncConfig::new(url, group);
            if let Some(id) = self.replica_id.clone().or(file.replica_id.clone()) {
                sync.replica_id = id;
            }
            if let Some(ms) = self.replica_heartbeat_ms.or(file.replica_heartbeat_ms) {
                sync.heartbeat = Duration::from_millis(ms);
            }
            config.replica_sync = Some(sync);
        }
        config.kv_events_nats = self.kv_events_nats.clone().or(file.kv_events_nats.clone());
        config.validate_workers().map_err(|e| anyhow::anyhow!(e))?;
        let tokenizer = load_tokenizer(
            self.tokenizer.as_ref().or(file.tokenizer.as_ref()),
            self.chat_template.as_ref().or(file.chat_template.as_ref()),
        )?;
        Ok((config, Arc::new(tokenizer)))
    }
}

/// The shared tokenizer: a tokenizer.json and chat template, or the built-in one.
pub fn load_tokenizer(path: Option<&PathBuf>, template: Option<&PathBuf>) -> anyhow::Result<Tokenizer> {
    let mut tokenizer = match path {
        None => Tokenizer::builtin(),
        Some(p) => Tokenizer::from_file(p).with_context(|| format!("loading tokenizer {}", p.display()))?,
    };
    if let Some(p) = template {
        let template = ChatTemplate::from_file(p).with_context(|| format!("loading chat template {}", p.display()))?;
        tokenizer = tokenizer.with_chat_template(template);
    }
    Ok(tokenizer)
}

pub async fn run(args: KvRouterArgs) -> anyhow::Result<()> {
    let (config, tokenizer) = args.resolve()?;
    if !tokenizer.resumes() {
        tracing::info!("this tokenizer cannot resume inside a text (a normalizer or a prefix-adding pre-tokenizer): prompts that begin like a recent one are tokenized whole");
    }
    let running = service::start(config.clone(), tokenizer).await.context("starting the kv-router")?;
    println!("{}", serde_json::json!({"kv_router": {"http": format!("http://{}", running.http_addr)}}));
    tracing::info!(
        http = %running.http_addr,
        workers = config.workers.len(),
        mode = ?config.router.router_mode,
        block_size = config.router.block_size,
        weight = config.router.overlap_score_weight,
        temperature = config.router.router_temperature,
        "kv-router listening"
    );
    crate::serve_until_stopped("kv-router").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_flags_parse_url_and_event_endpoints() {
        let w = parse_worker("http://127.0.0.1:8001@tcp://127.0.0.1:5557,tcp://127.0.0.1:5559").unwrap();
        assert_eq!(w.url, "http://127.0.0.1:8001");
        assert_eq!(w.kv_events.len(), 2);
        assert!(parse_worker("@tcp://x:1").is_err());
        assert!(parse_worker("http://a:1").unwrap().kv_events.is_empty());
        let with_id = parse_worker("7=http://10.0.0.7:8000").unwrap();
        assert_eq!((with_id.worker_id, with_id.url.as_str(), with_id.id()), (Some(7), "http://10.0.0.7:8000", 7));
        assert_eq!(parse_worker("http://a:1/x?y=z").unwrap().worker_id, None, "an '=' after the scheme is the URL's");
        assert!(parse_worker("seven=http://a:1").unwrap_err().to_string().contains("must be a u64"));
    }

    #[test]
    fn flags_beat_dynamo_env_which_beats_the_file() {
        let dir = std::env::temp_dir().join(format!("kvroute-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("router.yaml");
        std::fs::write(
            &file,
            "workers: [{url: 'http://a:1'}]\nrouter_temperature: 0.5\nblock_size: 32\nhttp_port: 1234\nworker_kv_blocks: 900\n",
        )
        .unwrap();
        let args = KvRouterArgs { config: Some(file.clone()), kv_cache_block_size: Some(64), ..Default::default() };
        let (config, _) = args.resolve().unwrap();
        assert_eq!(config.router.block_size, 64, "flag wins");
        assert_eq!(config.router.router_temperature, 0.5, "file used when nothing else says");
        assert_eq!(config.router.worker_kv_blocks, Some(900));
        assert_eq!(config.http_addr.port(), 1234);
        let args = KvRouterArgs { config: Some(file.clone()), worker_kv_blocks: Some(0), ..Default::default() };
        let err = format!("{:#}", args.resolve().unwrap_err());
        assert!(err.contains("worker_kv_blocks must be > 0"), "{err}");
        std::fs::write(&file, "workers: [{url: 'http://a:1'}]\nrouter_temprature: 0.5\n").unwrap();
        let err = format!("{:#}", KvRouterArgs { config: Some(file), ..Default::default() }.resolve().unwrap_err());
        assert!(err.contains("router_temprature"), "{err}");
        assert!(KvRouterArgs::default().resolve().unwrap_err().to_string().contains("no workers"));
    }
}
