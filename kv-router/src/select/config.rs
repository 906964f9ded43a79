//! Router configuration (Dynamo's names and defaults) and per-request overrides.

use kvroute_protocol::step_time;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// How equal costs are broken at temperature 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TieBreak {
    /// Uniformly at random among the cheapest (Dynamo 1.6.1).
    #[default]
    Random,
    /// The worker with the fewest cached blocks, then at random.
    SmallestTree,
}

/// What the `kv` mode's cost measures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CostModel {
    /// Dynamo's blend of blocks: `weight × max(0, prefill blocks − credit × overlap) + decode
    /// blocks` (see [`super::cost`]). Also accepted as `dynamo_classic` (decisions.md's name).
    #[serde(alias = "dynamo_classic")]
    Blocks,
    /// The worker's predicted time to first token in milliseconds (its queued prefill plus
    /// this request's uncached prefill under [`StepTimeModel`]), plus a charge for every block
    /// the request would recompute that another worker already holds (see
    /// [`super::predicted_ttft_cost`]).
    #[default]
    PredictedTtft,
}

impl std::str::FromStr for CostModel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.replace('-', "_").as_str() {
            "blocks" | "dynamo_classic" => Ok(CostModel::Blocks),
            "predicted_ttft" | "ttft" => Ok(CostModel::PredictedTtft),
            other => Err(format!("unknown cost model {other:?} (expected predicted_ttft, or blocks / dynamo_classic)")),
        }
    }
}

/// The engines' step time as the router predicts it: a pass that prefills `t` tokens takes
/// `quadratic_ms × t² + per_token_ms × t + pass_ms`, plus `decode_ms` when anything decodes,
/// and prefills at most `max_batched_tokens` tokens. Defaults: Dynamo's fit, which its
/// mocker (and kvroute's) runs on.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StepTimeModel {
    pub quadratic_ms: f64,
    pub per_token_ms: f64,
    pub pass_ms: f64,
    pub decode_ms: f64,
    pub max_batched_tokens: u64,
}

impl Default for StepTimeModel {
    fn default() -> Self {
        StepTimeModel {
            quadratic_ms: step_time::PREFILL_QUADRATIC_MS,
            per_token_ms: step_time::PREFILL_PER_TOKEN_MS,
            pass_ms: step_time::PREFILL_PASS_MS,
            decode_ms: 10.0,
            max_batched_tokens: 8192,
        }
    }
}

impl StepTimeModel {
    /// The token-dependent part of a pass that prefills `tokens` (without `pass_ms`).
    pub fn chunk_ms(&self, tokens: u64) -> f64 {
        let t = tokens as f64;
        self.quadratic_ms * t * t + self.per_token_ms * t
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        non_negative("step_time.quadratic_ms", self.quadratic_ms)?;
        non_negative("step_time.per_token_ms", self.per_token_ms)?;
        non_negative("step_time.pass_ms", self.pass_ms)?;
        non_negative("step_time.decode_ms", self.decode_ms)?;
        if self.max_batched_tokens == 0 {
            return Err(ConfigError::OutOfRange { field: "step_time.max_batched_tokens", value: 0.0 });
        }
        Ok(())
    }
}

/// How a worker is chosen. Every mode tracks load the same way, so baselines are comparable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RouterMode {
    /// Cost function over KV overlap and load (the point of kvroute).
    #[default]
    Kv,
    /// Workers in turn, ignoring cache and load.
    RoundRobin,
    /// Uniformly at random.
    Random,
    /// Fewest in-flight requests (then fewest prefill tokens), ignoring the cache.
    LeastLoaded,
}

impl std::str::FromStr for RouterMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.replace('_', "-").as_str() {
            "kv" => Ok(RouterMode::Kv),
            "round-robin" => Ok(RouterMode::RoundRobin),
            "random" => Ok(RouterMode::Random),
            "least-loaded" => Ok(RouterMode::LeastLoaded),
            other => Err(format!("unknown router mode {other:?} (expected kv, round-robin, random or least-loaded)")),
        }
    }
}

/// Selection settings. Field names follow Dynamo's `KvRouterConfig`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KvRouterConfig {
    /// Tokens per KV block; must equal the engines' block size.
    pub block_size: u32,
    /// Weight of the prefill term (Dynamo's `prefill_load_scale`; `overlap_score_weight` is its
    /// older name and is accepted as an alias).
    #[serde(alias = "prefill_load_scale")]
    pub overlap_score_weight: f64,
    /// Blocks of prefill credited per cached block (1: a cached block costs no prefill).
    pub overlap_score_credit: f64,
    /// Softmax temperature over normalised costs; 0 picks the cheapest.
    pub router_temperature: f64,
    pub tie_break: TieBreak,
    pub router_mode: RouterMode,
    /// What the `kv` mode minimises.
    pub cost_model: CostModel,
    /// With `predicted_ttft`: the engines' step time.
    pub step_time: StepTimeModel,
    /// With `predicted_ttft`: the charge for every prompt token the request would recompute
    /// although another worker holds it, as a multiple of the token's prefill time (a
    /// duplicate takes cache from other prefixes and splits a conversation's future turns).
    pub duplicate_cost: f64,
    /// With `predicted_ttft`: weight of the delay the request inflicts on requests already
    /// waiting for their first token on the worker (0: purely greedy).
    pub delay_weight: f64,
    /// With `predicted_ttft`: each worker's KV cache size in blocks (the engines'
    /// `num_gpu_blocks`). The duplicate charge is scaled by the share of the worker's cache in
    /// use: a copy made where there is room pushes nothing out. `None`: whatever size a worker
    /// states (the service reads its metrics), else the whole charge.
    pub worker_kv_blocks: Option<u64>,
}

impl Default for KvRouterConfig {
    fn default() -> Self {
        KvRouterConfig {
            block_size: 16,
            overlap_score_weight: 1.0,
            overlap_score_credit: 1.0,
            router_temperature: 0.0,
            tie_break: TieBreak::Random,
            router_mode: RouterMode::Kv,
            cost_model: CostModel::default(),
            step_time: StepTimeModel::default(),
            duplicate_cost: 3.0,
            delay_weight: 1.0,
            worker_kv_blocks: None,
        }
    }
}

/// Per-request changes to the selection settings (`router_config_override` in a request body).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfigOverride {
    #[serde(default, alias = "prefill_load_scale")]
    pub overlap_score_weight: Option<f64>,
    #[serde(default)]
    pub overlap_score_credit: Option<f64>,
    #[serde(default)]
    pub router_temperature: Option<f64>,
    #[serde(default)]
    pub cost_model: Option<CostModel>,
    #[serde(default)]
    pub duplicate_cost: Option<f64>,
}

/// A setting out of its range; names the field.
#[derive(Debug, Error, PartialEq)]
pub enum ConfigError {
    #[error("block_size must be > 0")]
    BlockSize,
    #[error("worker_kv_blocks must be > 0 when given")]
    WorkerKvBlocks,
    #[error("{field} must be a finite number >= 0, got {value}")]
    OutOfRange { field: &'static str, value: f64 },
}

fn non_negative(field: &'static str, value: f64) -> Result<(), ConfigError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange { field, value })
    }
}

impl KvRouterConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.block_size == 0 {
            return Err(ConfigError::BlockSize);
        }
        non_negative("overlap_score_weight", self.overlap_score_weight)?;
        non_negative("overlap_score_credit", self.overlap_score_credit)?;
        non_negative("router_temperature", self.router_temperature)?;
        non_negative("duplicate_cost", self.duplicate_cost)?;
        non_negative("delay_weight", self.delay_weight)?;
        if self.worker_kv_blocks == Some(0) {
            return Err(ConfigError::WorkerKvBlocks);
        }
        self.step_time.validate()
    }

    /// These settings with a request's overrides applied; invalid overrides are rejected.
    pub fn with_override(&self, o: Option<&RouterConfigOverride>) -> Result<KvRouterConfig, ConfigError> {
        let mut c = self.clone();
        if let Some(o) = o {
            if let Some(v) = o.overlap_score_weight {
                c.overlap_score_weight = v;
            }
            if let Some(v) = o.overlap_score_credit {
                c.overlap_score_credit = v;
            }
            if let Some(v) = o.router_temperature {
                c.router_temperature = v;
            }
            if let Some(v) = o.cost_model {
                c.cost_model = v;
            }
            if let Some(v) = o.duplicate_cost {
                c.duplicate_cost = v;
            }
        }
        c.validate()?;
        Ok(c)
    }
}
