//! `kvroute`: one binary, one subcommand per component.
//!
//! Flags are parsed by clap (each also readable from a `KVROUTE_*` environment variable), then
//! turned into the component's typed configuration, which the component validates.

mod envoy;
mod global_router;
mod kv_relay;
mod kv_router;
mod mocker;
mod replay;
mod replay_live;
mod up;

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Allocation-heavy paths (tokenizing long prompts, JSON, the replay's simulation) spend a third
/// of their time in glibc's malloc; mimalloc is markedly faster there (see Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long a service told to stop (Ctrl-C, SIGTERM) keeps serving the requests in flight: within
/// Kubernetes' default 30 s termination grace. A second signal stops it at once.
const STOP_GRACE: Duration = Duration::from_secs(25);

/// Serve until Ctrl-C or SIGTERM, then finish the requests in flight (see [`STOP_GRACE`]).
async fn serve_until_stopped(service: &str) -> anyhow::Result<()> {
    kvroute_serve::run_until_stopped(service, STOP_GRACE).await.context("listening for Ctrl-C and SIGTERM")
}

#[derive(Parser)]
#[command(name = "kvroute", version, about = "KV-cache-aware request routing for LLM inference")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a simulated inference engine: OpenAI-compatible HTTP API, a paged KV cache with
    /// prefix reuse, Dynamo's timing model, and vLLM-format KV events on ZMQ.
    Mocker(mocker::MockerArgs),
    /// Run a local KV router for one pool of workers: Dynamo's KvRouter API over HTTP
    /// (best_worker, potential_loads, lifecycle, events), proxying OpenAI requests to the
    /// worker holding the most of their prefix, fed by the workers' ZMQ KV events.
    KvRouter(kv_router::KvRouterArgs),
    /// Relay one worker's ZMQ KV events (vLLM, SGLang, the mocker) onto NATS JetStream, for
    /// routers started with --kv-events-nats.
    KvRelay(kv_relay::KvRelayArgs),
    /// Run the global router: picks the pool (router group) for each request by a pool-select
    /// policy (KV overlap probed from every group, grid, weights, least loaded), forwards it,
    /// streams the answer back, and retries on the next pool when one fails before answering.
    GlobalRouter(global_router::GlobalRouterArgs),
    /// Replay a request trace (e.g. the Mooncake conversation trace) through simulated workers
    /// and a router offline in virtual time, or live against a running stack (--target), and
    /// print TTFT, latency and prefix-reuse figures.
    Replay(replay::ReplayArgs),
    /// Start a whole stack from one YAML file, in this process: per pool, N mocker workers and
    /// their kv-router, and optionally a global router and an Envoy with the kvroute filter in
    /// front (a child process). Prints where each part listens.
    Up(up::UpArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            // kvroute's own logs say when NATS connects or fails; the client's say it again.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,async_nats=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = || tokio::runtime::Builder::new_multi_thread().enable_all().build();
    match cli.command {
        // Offline is a pure simulation (no async runtime); live mode builds its own.
        Command::Replay(args) => replay::run_replay(args),
        Command::Mocker(args) => runtime()?.block_on(mocker::run(args)),
        Command::KvRouter(args) => runtime()?.block_on(kv_router::run(args)),
        Command::KvRelay(args) => runtime()?.block_on(kv_relay::run(args)),
        Command::Up(args) => runtime()?.block_on(up::run(args)),
        Command::GlobalRouter(args) => runtime()?.block_on(global_router::run(args)),
    }
}
