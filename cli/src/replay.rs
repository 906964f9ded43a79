//! `kvroute replay --offline`: a request trace through simulated workers and a router, in
//! virtual time (deterministic for a seed; the Mooncake trace's 12,031 requests in seconds);
//! `--compare` runs the standard routing settings side by side into a Markdown table.

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
    /// Run the standard settings on identical fresh clusters (random, round-robin,
    /// least-loaded, Dynamo-classic cost at Dynamo's defaults, the same cost tuned as Dynamo's
    /// sweep found best) and print a Markdown table; the routing flags above are ignored.
    #[arg(long)]
    compare: bool,
    /// With --compare: also write the table to DIR/compare.md.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// One `--compare` row: a name and how the router is set.
struct Setting {
    name: &'static str,
    mode: RouterMode,
    weight: f64,
    credit: f64,
}

const SETTINGS: [Setting; 5] = [
    Setting { name: "random", mode: RouterMode::Random, weight: 1.0, credit: 1.0 },
    Setting { name: "round-robin", mode: RouterMode::RoundRobin, weight: 1.0, credit: 1.0 },
    Setting { name: "least-loaded", mode: RouterMode::LeastLoaded, weight: 1.0, credit: 1.0 },
    Setting { name: "kv: Dynamo classic (scale 1, credit 1)", mode: RouterMode::Kv, weight: 1.0, credit: 1.0 },
    Setting { name: "kv: Dynamo tuned (scale 128, credit 3)", mode: RouterMode::Kv, weight: 128.0, credit: 3.0 },
];

pub fn run_replay(args: ReplayArgs) -> anyhow::Result<()> {
    if !args.offline {
        bail!("live replay against running services is not implemented yet: pass --offline");
    }
    let options = TraceOptions { max_requests: args.max_requests, time_scale: args.time_scale };
    let requests = trace::load(&args.trace, &options).with_context(|| format!("loading {}", args.trace.display()))?;
    if args.compare {
        return compare(&args, &requests);
    }
    let config = config_for(&args, args.router_mode, args.kv_overlap_score_weight, args.overlap_score_credit);
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

/// The simulated cluster for `args`, with the router set as given.
fn config_for(args: &ReplayArgs, mode: RouterMode, weight: f64, credit: f64) -> ReplayConfig {
    let mut config = ReplayConfig::dynamo_defaults(args.workers, mode);
    config.engine.block_size = args.block_size;
    config.engine.num_gpu_blocks = args.num_gpu_blocks;
    config.router.block_size = args.block_size as u32;
    config.router.overlap_score_weight = weight;
    config.router.overlap_score_credit = credit;
    config.router.router_temperature = args.router_temperature;
    config.seed = args.seed;
    config
}

/// Every standard setting on the same trace and cluster size; a Markdown table.
fn compare(args: &ReplayArgs, requests: &[kvroute_replay::ReplayRequest]) -> anyhow::Result<()> {
    let mut table = format!(
        "{} requests, {} workers, block {}, {} blocks per worker, seed {}\n\n\
         | setting | prefix reuse | TTFT mean ms | TTFT p50 | TTFT p90 | TTFT p99 | latency mean ms | preempted |\n\
         |---|---|---|---|---|---|---|---|\n",
        requests.len(),
        args.workers,
        args.block_size,
        args.num_gpu_blocks,
        args.seed
    );
    for s in &SETTINGS {
        let started = std::time::Instant::now();
        let outcome = run(&config_for(args, s.mode, s.weight, s.credit), requests).with_context(|| format!("replaying {}", s.name))?;
        let m = Summary::of(&outcome.records);
        eprintln!("{}: {:.1} s", s.name, started.elapsed().as_secs_f64());
        table.push_str(&format!(
            "| {} | {:.4} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} |\n",
            s.name, m.prefix_reuse_ratio, m.ttft_ms.mean, m.ttft_ms.p50, m.ttft_ms.p90, m.ttft_ms.p99, m.e2e_ms.mean, m.preempted_requests
        ));
    }
    print!("{table}");
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("compare.md");
        std::fs::write(&path, &table).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
