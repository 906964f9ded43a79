//! Calibration against Dynamo's offline replay (mocker defaults, 8 workers, real time):
//! round-robin and the Dynamo-classic cost at its defaults, on the Mooncake trace.
//!
//! CARGO_TARGET_DIR=/var/tmp/kvroute-replay-target \
//!   cargo run --release -p kvroute-replay --example calibrate -- \
//!   [TRACE] [--max-requests N] [--workers N] [--seed N] [--time-scale X] [--records DIR]
//!   [--only round-robin|kv]

// The example reports its own run time; the library never reads a clock.
#![allow(clippy::disallowed_methods)]

use std::path::PathBuf;
use std::time::Instant;

use kvroute_kv_router::select::RouterMode;
use kvroute_replay::{run, trace, ReplayConfig, Summary, TraceOptions};

/// Dynamo 1.6.1's figures (tools/dynamo-replay/README.md): (reuse, mean TTFT, p99 TTFT).
const DYNAMO: [(&str, RouterMode, f64, f64, Option<f64>); 2] = [
    ("round-robin", RouterMode::RoundRobin, 0.082, 321.0, Some(2048.0)),
    ("kv (classic defaults)", RouterMode::Kv, 0.2025, 277.0, None),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut path = PathBuf::from("/work/shared/data/mooncake_conversation_trace.jsonl");
    let mut options = TraceOptions::default();
    let (mut workers, mut seed, mut records_dir, mut only) = (8usize, 0u64, None::<PathBuf>, None::<String>);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--max-requests" => options.max_requests = Some(value()?.parse()?),
            "--time-scale" => options.time_scale = value()?.parse()?,
            "--workers" => workers = value()?.parse()?,
            "--seed" => seed = value()?.parse()?,
            "--records" => records_dir = Some(PathBuf::from(value()?)),
            "--only" => only = Some(value()?),
            _ => path = PathBuf::from(a),
        }
    }
    let t0 = Instant::now();
    let requests = trace::load(&path, &options)?;
    println!("{} requests from {} loaded in {:.2?}\n", requests.len(), path.display(), t0.elapsed());
    println!("| setting | reuse (ours / Dynamo / diff) | mean TTFT ms (ours / Dynamo / diff) | p99 TTFT ms (ours / Dynamo / diff) | run time |");
    println!("|---|---|---|---|---|");
    let mut tables = Vec::new();
    for (name, mode, reuse, mean, p99) in DYNAMO {
        if only.as_deref().is_some_and(|o| !name.starts_with(o)) {
            continue;
        }
        let config = ReplayConfig { seed, ..ReplayConfig::dynamo_defaults(workers, mode) };
        let t = Instant::now();
        let outcome = run(&config, &requests)?;
        let elapsed = t.elapsed();
        let s = Summary::of(&outcome.records);
        let diff = |ours: f64, theirs: f64| format!("{ours:.4} / {theirs} / {:+.1}%", (ours / theirs - 1.0) * 100.0);
        let p99 = p99.map_or(format!("{:.1} / – / –", s.ttft_ms.p99), |d| diff(s.ttft_ms.p99, d));
        println!(
            "| {name} | {} | {} | {p99} | {elapsed:.2?} |",
            diff(s.prefix_reuse_ratio, reuse),
            diff(s.ttft_ms.mean, mean)
        );
        if let Some(dir) = &records_dir {
            std::fs::create_dir_all(dir)?;
            let file = dir.join(format!("{}.jsonl", name.split(' ').next().unwrap_or(name)));
            let lines: Vec<String> = outcome.records.iter().map(serde_json::to_string).collect::<Result<_, _>>()?;
            std::fs::write(file, lines.join("\n") + "\n")?;
        }
        tables.push((name, s, outcome.stats));
    }
    for (name, s, stats) in tables {
        println!(
            "\n## {name}\n{s}\npasses {} preemptions {} kv events {} (rejected {})",
            stats.passes, stats.preemptions, stats.kv_events, stats.kv_events_rejected
        );
    }
    Ok(())
}
