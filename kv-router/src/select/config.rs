//! Router configuration (Dynamo's names and defaults) and per-request overrides.

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
}

/// A setting out of its range; names the field.
#[derive(Debug, Error, PartialEq)]
pub enum ConfigError {
    #[error("block_size must be > 0")]
    BlockSize,
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
        non_negative("router_temperature", self.router_temperature)
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
        }
        c.validate()?;
        Ok(c)
    }
}
