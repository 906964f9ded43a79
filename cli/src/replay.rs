//! `kvroute replay`: a request trace through simulated workers and routers in virtual time
//! (`--offline`: deterministic for a seed; the Mooncake trace's 12,031 requests in seconds), or
//! live against a running stack (`--target`, in `replay_live`). `--compare` runs the standard
//! routing settings side by side, with the trace's TTFT floors, into a table and charts.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use kvroute_kv_router::select::{CostModel, RouterMode};
use kvroute_replay::compare::standard_settings;
use kvroute_replay::{run, trace, ReplayConfig, Summary, TraceOptions};

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// The trace: Mooncake JSON lines (timestamp ms, input_length, output_length, hash_ids of
    /// 512-token blocks).
    #[arg(long)]
    trace: PathBuf,
    /// Simulate in virtual time in this process (without it: live, against --target).
    #[arg(long)]
    offline: bool,
    /// Simulated workers (each with Dynamo's mocker defaults unless changed below).
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// kv, round-robin, random or least-loaded.
    #[arg(long, default_value = "kv")]
    router_mode: RouterMode,
    /// What the kv mode minimises: predicted_ttft (kvroute's default) or blocks (Dynamo's
    /// cost, set by the two flags below).
    #[arg(long, default_value = "predicted_ttft")]
    cost_model: CostModel,
    /// predicted_ttft: charge per token recomputed although another worker holds it, as a
    /// multiple of its prefill time.
    #[arg(long, default_value_t = 3.0)]
    duplicate_cost: f64,
    /// blocks: weight of the prefill term (Dynamo's prefill_load_scale).
    #[arg(long, alias = "prefill-load-scale", default_value_t = 1.0)]
    kv_overlap_score_weight: f64,
    /// blocks: prefill blocks credited per cached block.
    #[arg(long, default_value_t = 1.0)]
    overlap_score_credit: f64,
    /// Softmax temperature over worker costs; 0 picks the cheapest.
    #[arg(long, default_value_t = 0.0)]
    router_temperature: f64,
    /// Router replicas in front of the workers (a router group), requests dealt to them in
    /// turn; each hears every KV event.
    #[arg(long, default_value_t = 1)]
    router_replicas: usize,
    /// With several replicas: each counts only the requests it routed (no replica sync).
    #[arg(long)]
    no_replica_sync: bool,
    /// Tokens per KV block (engines and router).
    #[arg(long, default_value_t = 64)]
    block_size: usize,
    /// KV cache per worker, in blocks; the router is told it (as `kv-router --worker-kv-blocks`).
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
    /// Run the standard settings on identical fresh clusters (random, round-robin,
    /// least-loaded, Dynamo's cost at its defaults and as tuned by its sweep, kvroute's
    /// default, and with an even worker count two pools chosen at random, by a prompt-length
    /// grid and by KV overlap) and print a Markdown table with the trace's TTFT floors; the
    /// routing flags above are ignored.
    #[arg(long)]
    compare: bool,
    /// With --compare: also write the table (compare.md) and SVG charts (ttft-cdf.svg,
    /// prefix-reuse.svg, ttft-mean.svg) to DIR.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Live mode: --target URL and its flags (cli/src/replay_live.rs).
    #[command(flatten)]
    live: crate::replay_live::LiveArgs,
}

pub fn run_replay(args: ReplayArgs) -> anyhow::Result<()> {
    if !args.offline {
        // Live mode: the same trace over HTTP to --target (replay_live.rs).
        if args.compare {
            bail!("--compare simulates: pass --offline");
        }
        let options = TraceOptions { max_requests: args.max_requests, time_scale: args.time_scale };
        return crate::replay_live::run(&args.trace, &options, &args.live);
    }
    let options = TraceOptions { max_requests: args.max_requests, time_scale: args.time_scale };
    let requests = trace::load(&args.trace, &options).with_context(|| format!("loading {}", args.trace.display()))?;
    if args.compare {
        return compare(&args, &requests);
    }
    let config = config_for(&args);
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

/// The simulated cluster and router for `args`.
fn config_for(args: &ReplayArgs) -> ReplayConfig {
    let mut config = ReplayConfig::dynamo_defaults(args.workers, args.router_mode);
    config.engine.block_size = args.block_size;
    config.engine.num_gpu_blocks = args.num_gpu_blocks;
    config.router.worker_kv_blocks = Some(args.num_gpu_blocks as u64);
    config.router.block_size = args.block_size as u32;
    config.router.cost_model = args.cost_model;
    config.router.duplicate_cost = args.duplicate_cost;
    config.router.overlap_score_weight = args.kv_overlap_score_weight;
    config.router.overlap_score_credit = args.overlap_score_credit;
    config.router.router_temperature = args.router_temperature;
    config.seed = args.seed;
    config.router_replicas = args.router_replicas;
    config.replica_sync = !args.no_replica_sync;
    config
}

/// Every standard setting on the same trace and cluster size, with the floors: a Markdown
/// table on stdout, and with --out the table and SVG charts in that folder.
fn compare(args: &ReplayArgs, requests: &[kvroute_replay::ReplayRequest]) -> anyhow::Result<()> {
    let base = config_for(args);
    let settings = standard_settings(&base);
    let started = std::time::Instant::now();
    let comparison = kvroute_replay::compare::compare(&base, &settings, requests, |name| {
        eprintln!("[{:5.1} s] {name}", started.elapsed().as_secs_f64());
    })?;
    eprintln!("[{:5.1} s] done", started.elapsed().as_secs_f64());
    let table = comparison.markdown();
    print!("{table}");
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut files = vec![("compare.md", table)];
        files.extend(comparison.charts().context("drawing the charts")?);
        for (name, content) in files {
            let path = dir.join(name);
            std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}
