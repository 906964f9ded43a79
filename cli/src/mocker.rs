//! `kvroute mocker`: flags → [`ServerConfig`], start, report where it listens, run until killed.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use kvroute_mocker::server::{self, EventPushConfig, KvEventsConfig, NatsPushConfig, ServerConfig};
use kvroute_mocker::timing::TimingModel;
use kvroute_mocker::EngineConfig;
use kvroute_nats::PublisherOptions;
use kvroute_tokenizer::{ChatTemplate, Tokenizer};

#[derive(Args, Debug)]
pub struct MockerArgs {
    /// Model name served by /v1/models and accepted in requests' "model" field.
    #[arg(long, env = "KVROUTE_MODEL_NAME", default_value = "kvroute-mock")]
    model_name: String,
    /// Address to listen on.
    #[arg(long, env = "KVROUTE_HOST", default_value = "127.0.0.1")]
    host: IpAddr,
    /// HTTP port (0: any free port; the chosen one is printed).
    #[arg(long, alias = "http-port", env = "KVROUTE_PORT", default_value_t = 8000)]
    port: u16,
    /// KV cache size per dp rank, in blocks.
    #[arg(long, env = "KVROUTE_NUM_GPU_BLOCKS", default_value_t = 16384)]
    num_gpu_blocks: usize,
    /// Tokens per KV block (must match the router's --block-size).
    #[arg(long, alias = "kv-cache-block-size", env = "KVROUTE_BLOCK_SIZE", default_value_t = 16)]
    block_size: usize,
    /// Most sequences in the running batch.
    #[arg(long, env = "KVROUTE_MAX_NUM_SEQS", default_value_t = 256)]
    max_num_seqs: usize,
    /// Most tokens computed per scheduler pass (prefill chunks plus decodes).
    #[arg(long, env = "KVROUTE_MAX_NUM_BATCHED_TOKENS", default_value_t = 8192)]
    max_num_batched_tokens: usize,
    /// Longest prompt + output accepted (default: the KV cache size); longer requests get a 400.
    #[arg(long, env = "KVROUTE_MAX_MODEL_LEN")]
    max_model_len: Option<usize>,
    /// Disable prefix caching (no reuse, no KV events).
    #[arg(long, env = "KVROUTE_NO_PREFIX_CACHING")]
    no_prefix_caching: bool,
    /// Disable chunked prefill (a prompt longer than the batch budget waits).
    #[arg(long, env = "KVROUTE_NO_CHUNKED_PREFILL")]
    no_chunked_prefill: bool,
    /// Run this many times faster than the timing model's real time.
    #[arg(long, env = "KVROUTE_SPEEDUP_RATIO", default_value_t = 1.0)]
    speedup_ratio: f64,
    /// Further speed-up of decode steps only.
    #[arg(long, env = "KVROUTE_DECODE_SPEEDUP_RATIO", default_value_t = 1.0)]
    decode_speedup_ratio: f64,
    /// Data-parallel ranks, each with its own KV cache and KV-event socket.
    #[arg(long, env = "KVROUTE_DATA_PARALLEL_SIZE", default_value_t = 1)]
    data_parallel_size: u32,
    /// Port of rank 0's ZMQ PUB socket for KV events (rank r: port + 2r, its replay socket the
    /// next port). 0: any free ports (printed).
    #[arg(long, env = "KVROUTE_KV_EVENTS_PORT", default_value_t = 5557)]
    kv_events_port: u16,
    /// ZMQ topic of KV-event messages.
    #[arg(long, env = "KVROUTE_KV_EVENTS_TOPIC", default_value = "kv-events")]
    kv_events_topic: String,
    /// Messages kept for the replay socket (for subscribers that missed some).
    #[arg(long, env = "KVROUTE_KV_EVENTS_REPLAY_BUFFER", default_value_t = 10000)]
    kv_events_replay_buffer: usize,
    /// Do not publish KV events.
    #[arg(long, env = "KVROUTE_NO_KV_EVENTS")]
    no_kv_events: bool,
    /// Also push KV events as Dynamo JSON to this kv-router (POST <URL>/events).
    #[arg(long, env = "KVROUTE_KV_EVENTS_HTTP_URL", requires = "worker_id")]
    kv_events_http_url: Option<String>,
    /// Also publish KV events as Dynamo JSON on NATS JetStream (nats://host:port), subject
    /// kvroute.kv_events.<worker id>.<dp rank>, kept in the KVROUTE_KV_EVENTS stream: routers
    /// started with --kv-events-nats need no connection to this worker.
    #[arg(long, value_name = "NATS_URL", env = "KVROUTE_KV_EVENTS_NATS", requires = "worker_id")]
    kv_events_nats: Option<String>,
    /// --kv-events-nats: compact this worker's history on the stream into a snapshot of its
    /// cache once this many blocks were stored or removed since the last one (and at least
    /// twice as many as the cache holds); 0: never (the stream then drops the oldest events
    /// at its size limit, and routers that start later miss those blocks).
    #[arg(long, env = "KVROUTE_KV_EVENTS_NATS_SNAPSHOT_AFTER", default_value_t = 100_000)]
    kv_events_nats_snapshot_after: u64,
    /// This worker's id in the routers' configuration (for --kv-events-http-url and
    /// --kv-events-nats).
    #[arg(long, env = "KVROUTE_WORKER_ID")]
    worker_id: Option<u64>,
    /// HF tokenizer.json to use (default: the small BPE tokenizer built into kvroute).
    #[arg(long, env = "KVROUTE_TOKENIZER")]
    tokenizer: Option<PathBuf>,
    /// Chat template (Jinja) file, or a tokenizer_config.json holding one.
    #[arg(long, env = "KVROUTE_CHAT_TEMPLATE")]
    chat_template: Option<PathBuf>,
    /// max_tokens for requests that give none.
    #[arg(long, env = "KVROUTE_DEFAULT_MAX_TOKENS", default_value_t = 16)]
    default_max_tokens: u32,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "KVROUTE_MAX_BODY_BYTES", default_value_t = 64 << 20)]
    max_body_bytes: usize,
}

impl MockerArgs {
    fn server_config(&self) -> ServerConfig {
        ServerConfig {
            engine: EngineConfig {
                num_gpu_blocks: self.num_gpu_blocks,
                block_size: self.block_size,
                max_num_seqs: self.max_num_seqs,
                max_num_batched_tokens: self.max_num_batched_tokens,
                enable_prefix_caching: !self.no_prefix_caching,
                enable_chunked_prefill: !self.no_chunked_prefill,
                max_model_len: self.max_model_len,
                timing: TimingModel {
                    speedup_ratio: self.speedup_ratio,
                    decode_speedup_ratio: self.decode_speedup_ratio,
                },
            },
            model_name: self.model_name.clone(),
            http_addr: SocketAddr::new(self.host, self.port),
            data_parallel_size: self.data_parallel_size,
            kv_events: (!self.no_kv_events && !self.no_prefix_caching).then(|| KvEventsConfig {
                host: self.host.to_string(),
                port: self.kv_events_port,
                topic: self.kv_events_topic.clone(),
                replay_buffer: self.kv_events_replay_buffer,
            }),
            default_max_tokens: self.default_max_tokens,
            max_body_bytes: self.max_body_bytes,
            kv_events_http: self
                .kv_events_http_url
                .clone()
                .map(|url| EventPushConfig { url, worker_id: self.worker_id.unwrap_or(0) }),
            kv_events_nats: self.kv_events_nats.clone().map(|url| NatsPushConfig {
                url,
                worker_id: self.worker_id.unwrap_or(0),
                options: PublisherOptions {
                    snapshot_after_blocks: Some(self.kv_events_nats_snapshot_after).filter(|&n| n > 0),
                },
            }),
        }
    }

    fn tokenizer(&self) -> anyhow::Result<Tokenizer> {
        let mut tokenizer = match &self.tokenizer {
            None => Tokenizer::builtin(),
            Some(path) => {
                Tokenizer::from_file(path).with_context(|| format!("loading tokenizer {}", path.display()))?
            }
        };
        if let Some(path) = &self.chat_template {
            let template =
                ChatTemplate::from_file(path).with_context(|| format!("loading chat template {}", path.display()))?;
            tokenizer = tokenizer.with_chat_template(template);
        }
        Ok(tokenizer)
    }
}

pub async fn run(args: MockerArgs) -> anyhow::Result<()> {
    let tokenizer = Arc::new(args.tokenizer()?);
    let config = args.server_config();
    let running = server::start(config.clone(), tokenizer).await.context("starting the mocker")?;
    let kv: Vec<_> =
        running.kv_events.iter().map(|e| serde_json::json!({"events": e.events, "replay": e.replay})).collect();
    // One machine-readable line on stdout (tests and `kvroute up` read it), details on stderr.
    println!("{}", serde_json::json!({"mocker": {"http": format!("http://{}", running.http_addr), "kv_events": kv}}));
    tracing::info!(
        http = %running.http_addr,
        model = %config.model_name,
        ranks = config.data_parallel_size,
        block_size = config.engine.block_size,
        blocks = config.engine.num_gpu_blocks,
        speedup = config.engine.timing.speedup_ratio,
        "mocker listening"
    );
    for (rank, e) in running.kv_events.iter().enumerate() {
        tracing::info!(rank, events = %e.events, replay = %e.replay, "KV events");
    }
    crate::serve_until_stopped("mocker").await
}
