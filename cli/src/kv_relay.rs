//! `kvroute kv-relay`: flags → [`RelayConfig`]; relays until stopped.

use anyhow::Context;
use clap::Args;
use kvroute_kv_router::service::relay::{start_relay, RelayConfig};
use kvroute_nats::PublisherOptions;

#[derive(Args, Debug)]
pub struct KvRelayArgs {
    /// The worker's id in the routers' configuration (`worker_id` in their --config file); it
    /// names the subjects, kvroute.kv_events.<worker id>.<dp rank>.
    #[arg(long, env = "KVROUTE_WORKER_ID")]
    worker_id: u64,
    /// The worker's ZMQ KV-event endpoint (tcp://host:port); repeat once per dp rank, in rank
    /// order.
    #[arg(long = "zmq", value_name = "TCP", required = true)]
    kv_events: Vec<String>,
    /// Its replay endpoint, per rank in order (default: each events port + 1, vLLM's
    /// convention).
    #[arg(long = "zmq-replay", value_name = "TCP")]
    kv_replay: Vec<String>,
    /// ZMQ topic prefix to subscribe to (empty: all).
    #[arg(long, env = "KVROUTE_KV_EVENTS_TOPIC", default_value = "")]
    kv_events_topic: String,
    /// Tokens per KV block: the engine's (and the routers').
    #[arg(long, alias = "kv-cache-block-size", env = "KVROUTE_KV_CACHE_BLOCK_SIZE", default_value_t = 16)]
    block_size: u32,
    /// The NATS server with JetStream (nats://host:port).
    #[arg(long, value_name = "NATS_URL", env = "KVROUTE_KV_EVENTS_NATS")]
    nats: String,
    /// Compact each rank's history on the stream into a snapshot of its cache once this many
    /// blocks were stored or removed since the last one (and at least twice as many as the
    /// cache holds); 0: never.
    #[arg(long, env = "KVROUTE_KV_EVENTS_NATS_SNAPSHOT_AFTER", default_value_t = 100_000)]
    snapshot_after: u64,
}

pub async fn run(args: KvRelayArgs) -> anyhow::Result<()> {
    let config = RelayConfig {
        worker_id: args.worker_id,
        kv_events: args.kv_events,
        kv_replay: args.kv_replay,
        topic: args.kv_events_topic,
        block_size: args.block_size,
        nats_url: args.nats,
        publisher: PublisherOptions { snapshot_after_blocks: Some(args.snapshot_after).filter(|&n| n > 0) },
    };
    let subjects = start_relay(config.clone()).context("starting the relay")?;
    println!("{}", serde_json::json!({"kv_relay": {"worker_id": config.worker_id, "subjects": subjects}}));
    tracing::info!(worker_id = config.worker_id, from = ?config.kv_events, subjects = ?subjects, "relaying KV events from ZMQ to NATS JetStream");
    crate::serve_until_stopped("kv-relay").await
}
