//! `kvroute replay --offline`: a request trace through simulated workers and a router, in
//! virtual time (deterministic for a seed; the Mooncake trace's 12,031 requests in seconds).

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use kvroute_kv_router::select::RouterMode;
use kvroute_replay::{run, trace, ReplayConfig, Summary, TraceOptions};

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// The trace: Mooncake JSON lines (timestamp ms, input_length, output_length, hash_ids of
    /// 512-token blocks).
    #[arg(long)]
    trace: PathBuf,
    /// Simulate in virtual time in this process (the only mode so far).
    #[arg(long)]
    offline: bool,
    /// Simulated workers (each with Dynamo's mocker defaults unless changed below).
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// kv, round-robin, random or least-loaded.
    #[arg(long, default_value = "kv")]
    router_mode: RouterMode,
    /// Weight of the prefill term (Dynamo's prefill_load_scale).
    #[arg(long, alias = "prefill-load-scale", default_value_t = 1.0)]
    kv_overlap_score_weight: f64,
    /// Prefill blocks credited per cached block.
    #[arg(long, default_value_t = 1.0)]
    overlap_score_credit: f64,
    #[arg(long, default_value_t = 0.0)]
    router_temperature: f64,
    /// Tokens per KV block (engines and router).
    #[arg(long, default_value_t = 64)]
    block_size: usize,
    /// KV cache per worker, in blocks.
    #[arg(long, default_value_t = 16384)]
    num_gpu_blocks: usize,
    /// Replay only the first N requests.
    #[arg(long)]
    max_requests: Option<usize>,
    /// Arrival speed-up: 2 replays the trace twice as fast.
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// Seed for tie-breaks and output tokens.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run_replay(args: ReplayArgs) -> anyhow::Result<()> {
    if !args.offline {
        bail!("live replay against running services is not implemented yet: pass --offline");
    }
    let options = TraceOptions { max_requests: args.max_requests, time_scale: args.time_scale };
    let requests = trace::load(&args.trace, &options).with_context(|| format!("loading {}", args.trace.display()))?;
    let mut config = ReplayConfig::dynamo_defaults(args.workers, args.router_mode);
    config.engine.block_size = args.block_size;
    config.engine.num_gpu_blocks = args.num_gpu_blocks;
    config.router.block_size = args.block_size as u32;
    config.router.overlap_score_weight = args.kv_overlap_score_weight;
    config.router.overlap_score_credit = args.overlap_score_credit;
    config.router.router_temperature = args.router_temperature;
    config.seed = args.seed;
    let started = std::time::Instant::now();
    let outcome = run(&config, &requests).context("replaying")?;
    eprintln!(
        "replayed {} requests on {} workers ({:?}) in {:.1} s",
        requests.len(),
        args.workers,
        args.router_mode,
        started.elapsed().as_secs_f64()
    );
    println!("{}", Summary::of(&outcome.records));
    Ok(())
}
