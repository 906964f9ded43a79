//! Router settings swept on a trace: one offline replay per setting, one line each. What
//! chose kvroute's defaults (`bench/RESULTS.md`, "Choosing the default").
//!
//! ```text
//! CARGO_TARGET_DIR=/var/tmp/kvroute-replay-target cargo run --release -p kvroute-replay \
//!     --example sweep -- TRACE [--records DIR] SETTING...
//! ```
//! `--records DIR` also writes each setting's per-request records to `DIR/SETTING.jsonl` (what
//! `bench/replay/burst_bound.py` reads). `--late N@SECONDS`: the last N workers join at that
//! time of the trace, with empty caches (scaling out).
//! A SETTING is `WORKERS:ttft:DUPLICATE_COST:DELAY_WEIGHT:SEED` (the `predicted_ttft` cost) or
//! `WORKERS:blocks:WEIGHT:CREDIT:SEED` (Dynamo's), e.g. `8:ttft:3:1:0 8:blocks:128:3:0`; a
//! sixth field `unknown` keeps the engines' cache size from the router (`worker_kv_blocks`),
//! e.g. `8:ttft:3:1:0:unknown`.

// The example reports its own run time; the library never reads a clock.
#![allow(clippy::disallowed_methods)]

use std::error::Error;

use kvroute_kv_router::select::{CostModel, RouterMode};
use kvroute_replay::{run, trace, LateWorkers, ReplayConfig, Summary, TraceOptions};

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: sweep TRACE SETTING...")?;
    let requests = trace::load(path.as_ref(), &TraceOptions::default())?;
    let mut records_dir = None;
    let mut late_workers = None;
    let mut specs = Vec::new();
    while let Some(arg) = args.next() {
        if arg == "--records" {
            records_dir = Some(std::path::PathBuf::from(args.next().ok_or("--records needs a folder")?));
        } else if arg == "--late" {
            let value = args.next().ok_or("--late needs N@SECONDS")?;
            let (count, seconds) = value.split_once('@').ok_or("--late needs N@SECONDS")?;
            late_workers = Some(LateWorkers { count: count.parse()?, at_ms: seconds.parse::<f64>()? * 1000.0 });
        } else {
            specs.push(arg);
        }
    }
    for spec in specs {
        let fields: Vec<&str> = spec.split(':').collect();
        let usage = || format!("{spec}: expected WORKERS:MODEL:A:B:SEED[:unknown]");
        let cache_size_unknown = match fields.get(5..) {
            None | Some([]) => false,
            Some(["unknown"]) => true,
            Some(_) => return Err(usage().into()),
        };
        let [workers, model, a, b, seed] = fields[..fields.len().min(5)] else {
            return Err(usage().into());
        };
        let mut config = ReplayConfig::dynamo_defaults(workers.parse()?, RouterMode::Kv);
        config.router.cost_model = model.parse()?;
        if config.router.cost_model == CostModel::PredictedTtft {
            config.router.duplicate_cost = a.parse()?;
            config.router.delay_weight = b.parse()?;
        } else {
            config.router.overlap_score_weight = a.parse()?;
            config.router.overlap_score_credit = b.parse()?;
        }
        config.seed = seed.parse()?;
        config.late_workers = late_workers;
        if cache_size_unknown {
            config.router.worker_kv_blocks = None;
        }
        let started = std::time::Instant::now();
        let outcome = run(&config, &requests)?;
        if let Some(dir) = &records_dir {
            std::fs::create_dir_all(dir)?;
            let lines: Vec<String> = outcome.records.iter().map(serde_json::to_string).collect::<Result<_, _>>()?;
            std::fs::write(dir.join(format!("{spec}.jsonl")), lines.join("\n") + "\n")?;
        }
        let s = Summary::of(&outcome.records);
        let t = &s.ttft_ms;
        println!(
            "{spec:<20} reuse {:.4}  TTFT mean {:6.1}  p50 {:6.1}  p90 {:6.1}  p99 {:7.1}  latency {:7.1}  ({:.1?})",
            s.prefix_reuse_ratio,
            t.mean,
            t.p50,
            t.p90,
            t.p99,
            s.e2e_ms.mean,
            started.elapsed()
        );
    }
    Ok(())
}
