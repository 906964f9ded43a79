//! Routing settings side by side: the standard rows of `kvroute replay --compare`, each run on
//! an identical fresh cluster, with the trace's TTFT floors beside them, as a Markdown table
//! and SVG charts.
//!
//! Rows: random, round-robin, least-loaded, Dynamo's cost at its defaults and as tuned for
//! this trace by Dynamo's sweep, kvroute's default (`predicted_ttft`), and with an even worker
//! count the same workers split into two pools behind pool selection (random, a prompt-length
//! grid, and by KV overlap as the global router does).

use kvroute_kv_router::select::{CostModel, RouterMode};
use kvroute_pool_select::{GridConfig, KvOverlapConfig, KvOverlapCost, Policy};
use serde::Serialize;

use crate::floor::{ttft_floor, FloorCache, FloorError, TtftFloor};
use crate::plot::{bars_svg, ttft_cdf_svg, PlotError, Series};
use crate::sim::{run, PoolSplit, ReplayConfig, ReplayError};
use crate::summary::Summary;
use crate::trace::ReplayRequest;

/// One row: a name and how it changes the base cluster's routing.
#[derive(Clone, Debug, PartialEq)]
pub struct Setting {
    pub name: String,
    pub config: ReplayConfig,
}

/// Prompts of at least this many tokens go to the second pool in the grid row.
pub const GRID_SPLIT_TOKENS: u64 = 8192;

/// The standard rows for `base` (its engines, worker count and seed; its routing is replaced).
pub fn standard_settings(base: &ReplayConfig) -> Vec<Setting> {
    let mode = |mode: RouterMode| {
        let mut c = base.clone();
        c.router.router_mode = mode;
        c.router.cost_model = CostModel::Blocks;
        c.pools = None;
        c
    };
    let dynamo = |weight: f64, credit: f64| {
        let mut c = mode(RouterMode::Kv);
        c.router.overlap_score_weight = weight;
        c.router.overlap_score_credit = credit;
        c
    };
    let kvroute = {
        let mut c = mode(RouterMode::Kv);
        c.router.cost_model = CostModel::PredictedTtft;
        c
    };
    let mut settings = vec![
        Setting { name: "random".into(), config: mode(RouterMode::Random) },
        Setting { name: "round-robin".into(), config: mode(RouterMode::RoundRobin) },
        Setting { name: "least-loaded".into(), config: mode(RouterMode::LeastLoaded) },
        Setting { name: "kv: Dynamo classic (scale 1, credit 1)".into(), config: dynamo(1.0, 1.0) },
        Setting { name: "kv: Dynamo tuned (scale 128, credit 3)".into(), config: dynamo(128.0, 3.0) },
        Setting { name: "kv: kvroute default (predicted TTFT)".into(), config: kvroute.clone() },
    ];
    if base.workers >= 2 && base.workers.is_multiple_of(2) {
        let half = base.workers / 2;
        let pools = |policy: Policy| {
            let mut c = kvroute.clone();
            c.pools = Some(PoolSplit { sizes: vec![half, half], policy });
            c
        };
        let block_size = base.router.block_size;
        let overlap = KvOverlapConfig { block_size, cost: KvOverlapCost::RouterMs, ..KvOverlapConfig::default() };
        settings.extend([
            Setting { name: format!("2×{half} pools: random pool"), config: pools(Policy::Weighted {}) },
            Setting {
                name: format!("2×{half} pools: grid by prompt length (≥ {GRID_SPLIT_TOKENS} → pool 1)"),
                config: pools(Policy::Grid(Box::new(length_grid()))),
            },
            Setting {
                name: format!("2×{half} pools: by KV overlap (global router)"),
                config: pools(Policy::KvOverlap(overlap)),
            },
        ]);
    }
    settings
}

/// A disaggregated grid whose prefill and decode tables both split at [`GRID_SPLIT_TOKENS`]:
/// with no TTFT/ITL targets in the trace, prompt length is the only axis a grid can use.
fn length_grid() -> GridConfig {
    let json = serde_json::json!({
        "prefill": {"isl_min": 0, "isl_max": 2 * GRID_SPLIT_TOKENS, "isl_resolution": 2,
                    "ttft_min_ms": 0, "ttft_max_ms": 1000, "ttft_resolution": 1,
                    "prefill_pool_mapping": [["pool-0"], ["pool-1"]]},
        "decode": {"context_length_min": 0, "context_length_max": 2 * GRID_SPLIT_TOKENS,
                   "context_length_resolution": 2, "itl_min_ms": 0, "itl_max_ms": 100,
                   "itl_resolution": 1, "decode_pool_mapping": [["pool-0"], ["pool-1"]]}
    });
    serde_json::from_value(json).expect("the length grid is well-formed")
}

/// One row's result.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub name: String,
    pub summary: Summary,
    /// Every completed request's TTFT, in arrival order.
    pub ttft_ms: Vec<f64>,
}

/// Every row and the floors.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub requests: usize,
    pub base: String,
    pub rows: Vec<Row>,
    pub floors: Vec<(String, TtftFloor)>,
}

/// Why a comparison could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("{setting}: {source}")]
    Replay { setting: String, source: ReplayError },
    #[error("floor: {0}")]
    Floor(#[from] FloorError),
    #[error("plot: {0}")]
    Plot(#[from] PlotError),
}

/// Run every setting on `requests`; `progress` hears each row's name before it runs.
pub fn compare(
    base: &ReplayConfig,
    settings: &[Setting],
    requests: &[ReplayRequest],
    mut progress: impl FnMut(&str),
) -> Result<Comparison, CompareError> {
    let mut rows = Vec::new();
    for s in settings {
        progress(&s.name);
        let outcome =
            run(&s.config, requests).map_err(|source| CompareError::Replay { setting: s.name.clone(), source })?;
        rows.push(Row {
            name: s.name.clone(),
            summary: Summary::of(&outcome.records),
            ttft_ms: outcome.records.iter().filter_map(|r| r.ttft_ms()).collect(),
        });
    }
    progress("floors");
    let floors = vec![
        ("floor: infinite cache".to_string(), ttft_floor(requests, &base.engine, FloorCache::Infinite)?),
        (
            "floor: one shared LRU of the cluster's size".to_string(),
            ttft_floor(requests, &base.engine, FloorCache::cluster(base.workers, &base.engine))?,
        ),
    ];
    let base = format!(
        "{} workers, block {}, {} blocks per worker, {} batched tokens, seed {}",
        base.workers, base.engine.block_size, base.engine.num_gpu_blocks, base.engine.max_num_batched_tokens, base.seed
    );
    Ok(Comparison { requests: requests.len(), base, rows, floors })
}

impl Comparison {
    /// The Markdown table (floors last: no queueing, so no latency).
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "{} requests, {}\n\n\
             | setting | prefix reuse | TTFT mean ms | TTFT p50 | TTFT p90 | TTFT p99 | latency mean ms | preempted |\n\
             |---|---|---|---|---|---|---|---|\n",
            self.requests, self.base
        );
        for r in &self.rows {
            let (m, t) = (&r.summary, &r.summary.ttft_ms);
            out.push_str(&format!(
                "| {} | {:.4} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} |\n",
                r.name, m.prefix_reuse_ratio, t.mean, t.p50, t.p90, t.p99, m.e2e_ms.mean, m.preempted_requests
            ));
        }
        for (name, f) in &self.floors {
            let t = &f.ttft_ms;
            out.push_str(&format!(
                "| {name} | {:.4} | {:.1} | {:.1} | {:.1} | {:.1} | – | – |\n",
                f.prefix_reuse_ratio, t.mean, t.p50, t.p90, t.p99
            ));
        }
        out
    }

    /// `(file name, SVG)`: the TTFT CDFs with the shared-LRU floor, prefix reuse and mean TTFT
    /// per setting.
    pub fn charts(&self) -> Result<Vec<(&'static str, String)>, PlotError> {
        let series: Vec<Series<'_>> = self.rows.iter().map(|r| Series { name: &r.name, values: &r.ttft_ms }).collect();
        let floor_ttfts: Vec<f64> =
            self.floors.last().map(|(_, f)| f.records.iter().map(|r| r.ttft_ms).collect()).unwrap_or_default();
        let floor = self.floors.last().map(|(name, _)| Series { name, values: &floor_ttfts });
        let reuse: Vec<(&str, f64)> =
            self.rows.iter().map(|r| (r.name.as_str(), r.summary.prefix_reuse_ratio)).collect();
        let mean: Vec<(&str, f64)> = self.rows.iter().map(|r| (r.name.as_str(), r.summary.ttft_ms.mean)).collect();
        Ok(vec![
            ("ttft-cdf.svg", ttft_cdf_svg(&series, floor)?),
            ("prefix-reuse.svg", bars_svg("Prefix reuse", "fraction of prompt tokens", &reuse)?),
            ("ttft-mean.svg", bars_svg("Mean TTFT", "ms", &mean)?),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{expand, TraceOptions, TraceRecord};

    fn small_trace() -> Vec<ReplayRequest> {
        let records: Vec<TraceRecord> = (0..24u64)
            .map(|i| {
                let ids: Vec<u64> = (0..=(i / 4) + 1).map(|k| (i % 4) * 100 + k).collect();
                TraceRecord { timestamp: i * 700, input_length: ids.len() * 512, output_length: 3, hash_ids: ids }
            })
            .collect();
        expand(&records, &TraceOptions::default()).unwrap()
    }

    #[test]
    fn every_standard_row_runs_and_the_table_and_charts_name_them() {
        let base = ReplayConfig::dynamo_defaults(4, RouterMode::Kv);
        let settings = standard_settings(&base);
        assert_eq!(settings.len(), 9, "six flat rows and three pooled ones");
        let mut heard = Vec::new();
        let c = compare(&base, &settings, &small_trace(), |name| heard.push(name.to_string())).unwrap();
        assert_eq!(heard.len(), 10);
        let table = c.markdown();
        for s in &settings {
            assert!(table.contains(&format!("| {} |", s.name)), "{table}");
        }
        assert!(table.contains("| floor: infinite cache |"));
        assert_eq!(table.lines().filter(|l| l.starts_with("| ")).count(), 1 + 9 + 2);
        for row in &c.rows {
            assert_eq!(row.summary.completed, 24, "{}", row.name);
            assert_eq!(row.ttft_ms.len(), 24);
        }
        // Nothing beats the floor with an infinite cache.
        let floor = c.floors[0].1.ttft_ms.mean;
        assert!(c.rows.iter().all(|r| r.summary.ttft_ms.mean >= floor - 1e-9));
        let charts = c.charts().unwrap();
        assert_eq!(charts.len(), 3);
        assert!(charts.iter().all(|(_, svg)| svg.starts_with("<svg") || svg.contains("<svg")));
    }

    #[test]
    fn an_odd_worker_count_has_no_pooled_rows() {
        let names: Vec<String> =
            standard_settings(&ReplayConfig::dynamo_defaults(3, RouterMode::Kv)).into_iter().map(|s| s.name).collect();
        assert_eq!(names.len(), 6);
        assert!(names.iter().all(|n| !n.contains("pools")));
    }
}
