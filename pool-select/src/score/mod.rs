//! The score phase: the policies, one file each, chosen by config through one serde-tagged
//! enum ([`Policy`], the only list of policy names).
//!
//! A policy sees the filter survivors and returns a `Choice`: the pool, a short summary for
//! the reason header, per-pool scores for logs and the retry order. Policies that do not name
//! pools themselves (all but `grid`) first narrow the survivors to the first priority tier
//! (`filter::priority`). Picking is shared (`pick`). Adding a policy = a file here, a variant
//! in [`Policy`], an arm in `compile` and in the selector's dispatch.

pub mod grid;
pub mod kv_overlap;
pub mod least_loaded;
pub mod round_robin;
pub mod weighted;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::pool::PoolFacts;

pub use grid::{AggGrid, DecodeGrid, GridConfig, PrefillGrid, PriorityOverride};
pub use kv_overlap::{KvOverlapConfig, KvOverlapCost};

/// How the pool is chosen among the eligible ones, e.g. `{"type": "kv_overlap", "block_size": 16}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Policy {
    /// Cheapest pool by the probes' potential loads, in the local router's cost currency.
    KvOverlap(KvOverlapConfig),
    /// Dynamo's ISL/TTFT/ITL grids (aggregated or disaggregated) with priority overrides.
    Grid(Box<GridConfig>),
    /// At random, with probability ∝ each pool's `weight`.
    Weighted {},
    /// The pools in turn.
    RoundRobin {},
    /// Fewest in-flight requests, then (with probes) fewest potential decode blocks.
    LeastLoaded {},
}

impl Default for Policy {
    fn default() -> Self {
        Policy::KvOverlap(KvOverlapConfig::default())
    }
}

impl Policy {
    /// The policy's config name (`kv_overlap`, `grid`, ...), also the first word of a reason.
    pub fn name(&self) -> &'static str {
        match self {
            Policy::KvOverlap(_) => "kv_overlap",
            Policy::Grid(_) => "grid",
            Policy::Weighted {} => "weighted",
            Policy::RoundRobin {} => "round_robin",
            Policy::LeastLoaded {} => "least_loaded",
        }
    }

    /// Validates the policy against the pools and resolves pool names to indices.
    pub(crate) fn compile(&self, pools: &[PoolFacts]) -> Result<Compiled, ConfigError> {
        let compiled = match self {
            Policy::KvOverlap(c) => c.validate().map(|()| Compiled::KvOverlap(c.clone())),
            Policy::Grid(c) => c.compile(pools).map(|g| Compiled::Grid(Box::new(g))),
            Policy::Weighted {} => Ok(Compiled::Weighted),
            Policy::RoundRobin {} => Ok(Compiled::RoundRobin),
            Policy::LeastLoaded {} => Ok(Compiled::LeastLoaded),
        };
        compiled.map_err(|e| e.under("policy"))
    }
}

/// Whether a front door must probe the router groups before deciding with `policy`. Only
/// `kv_overlap` needs probes; `least_loaded` uses them when present. Pools with saturation
/// limits need probes too: see [`crate::Selector::needs_probes`].
pub fn policy_needs_probes(policy: &Policy) -> bool {
    matches!(policy, Policy::KvOverlap(_))
}

/// A policy ready to decide: validated, pool names resolved.
#[derive(Clone, Debug)]
pub(crate) enum Compiled {
    KvOverlap(KvOverlapConfig),
    Grid(Box<grid::Grid>),
    Weighted,
    RoundRobin,
    LeastLoaded,
}

/// What a policy chose, before the selector adds names and filter removals.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Choice {
    pub pool: usize,
    /// `(prefill pool, decode pool)` for a disaggregated grid.
    pub disagg: Option<(usize, usize)>,
    /// Starts with the policy name.
    pub summary: String,
    pub scores: Vec<(usize, f64)>,
    pub fallbacks: Vec<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_parses_from_its_type_tag_with_defaults() {
        let p: Policy = serde_json::from_str(r#"{"type": "kv_overlap", "block_size": 16}"#).unwrap();
        assert_eq!(
            p,
            Policy::KvOverlap(KvOverlapConfig { block_size: 16, prefill_weight: 1.0, ..KvOverlapConfig::default() })
        );
        let p: Policy = serde_json::from_str(r#"{"type": "round_robin"}"#).unwrap();
        assert_eq!(p, Policy::RoundRobin {});
    }

    #[test]
    fn every_policy_round_trips_through_json() {
        let grid = r#"{"type": "grid", "agg": {"ttft_min_ms": 0, "ttft_max_ms": 100, "ttft_resolution": 1,
            "itl_min_ms": 0, "itl_max_ms": 10, "itl_resolution": 1, "agg_pool_mapping": [["a"]]}}"#;
        let policies = [
            Policy::default(),
            serde_json::from_str(grid).unwrap(),
            Policy::Weighted {},
            Policy::RoundRobin {},
            Policy::LeastLoaded {},
        ];
        for p in policies {
            let json = serde_json::to_string(&p).unwrap();
            assert!(json.contains(&format!(r#""type":"{}""#, p.name())), "{json}");
            assert_eq!(serde_json::from_str::<Policy>(&json).unwrap(), p, "{json}");
        }
    }

    #[test]
    fn unknown_fields_and_types_are_rejected() {
        for bad in [
            r#"{"type": "kv_overlap", "blocksize": 16}"#,
            r#"{"type": "weighted", "weights": [1, 2]}"#,
            r#"{"type": "least_loaded", "x": 1}"#,
            r#"{"type": "random"}"#,
            r#"{"block_size": 16}"#,
        ] {
            assert!(serde_json::from_str::<Policy>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_kv_overlap_needs_probes() {
        assert!(policy_needs_probes(&Policy::default()));
        assert!(!policy_needs_probes(&Policy::LeastLoaded {}));
        assert!(!policy_needs_probes(&Policy::Weighted {}));
    }
}
