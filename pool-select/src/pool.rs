//! The inputs of a decision: what is known about each pool and about the request.
//!
//! [`PoolFacts`] are static (from config), [`PoolState`] is live and supplied by the caller,
//! and a probe is the pool's router group's `/best_worker` answer
//! ([`BestWorkerResponse`]) or nothing. [`PoolView`] puts the three together for one pool;
//! filters and policies read only views, never string-keyed bags. This module holds data and
//! its one-line predicates; deciding lives in `filter`, `score` and `pick`.

use kvroute_protocol::api::BestWorkerResponse;
use serde::{Deserialize, Serialize};

/// Static facts about one pool, from config. Validated by [`crate::SelectConfig::validate`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolFacts {
    /// Unique, header-safe (`[A-Za-z0-9._-]+`): it is sent in `x-kvroute-pool`.
    pub name: String,
    /// The model the pool serves; `None` serves any.
    #[serde(default)]
    pub model: Option<String>,
    /// 0 is the first choice; spill-over and failover go to higher numbers.
    #[serde(default)]
    pub priority: u32,
    /// Share of traffic for `weighted` (> 0).
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// When the pool counts as saturated (needs a probe to tell).
    #[serde(default)]
    pub limits: Option<PoolLimits>,
    /// The longest prompt the pool's engines accept (their context window, in tokens): a
    /// longer one goes to another pool while one can take it. `None`: no limit known.
    #[serde(default)]
    pub max_input_tokens: Option<u64>,
}

fn default_weight() -> f64 {
    1.0
}

impl PoolFacts {
    /// A pool serving any model, priority 0, weight 1, no limits, no context limit.
    pub fn new(name: impl Into<String>) -> Self {
        PoolFacts { name: name.into(), model: None, priority: 0, weight: 1.0, limits: None, max_input_tokens: None }
    }

    /// Whether this pool may serve a request for `model` (`None`: the request names none).
    pub fn serves(&self, model: Option<&str>) -> bool {
        match (&self.model, model) {
            (Some(mine), Some(wanted)) => mine == wanted,
            _ => true,
        }
    }
}

/// Saturation thresholds on the probed worker's potential load; a pool is saturated when its
/// probe exceeds any set limit (strictly greater).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolLimits {
    pub max_potential_prefill_tokens: Option<u64>,
    pub max_potential_decode_blocks: Option<u64>,
}

impl PoolLimits {
    /// Whether any limit is set (an empty `limits: {}` saturates nothing).
    pub fn is_set(&self) -> bool {
        self.max_potential_prefill_tokens.is_some() || self.max_potential_decode_blocks.is_some()
    }

    /// The name of the first limit `probe` exceeds, if any.
    pub fn exceeded_by(&self, probe: &BestWorkerResponse) -> Option<&'static str> {
        if self.max_potential_prefill_tokens.is_some_and(|max| probe.potential_prefill_tokens > max) {
            return Some("potential_prefill_tokens over limit");
        }
        if self.max_potential_decode_blocks.is_some_and(|max| probe.potential_decode_blocks > max) {
            return Some("potential_decode_blocks over limit");
        }
        None
    }
}

/// Live state of one pool, supplied by the caller for each decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolState {
    /// The pool has at least one healthy router group.
    pub healthy: bool,
    /// Requests this front door has sent to the pool and not yet seen finish.
    pub in_flight: u64,
}

impl PoolState {
    /// Healthy, nothing in flight.
    pub const IDLE: PoolState = PoolState { healthy: true, in_flight: 0 };
}

/// Everything known about one pool for one decision.
#[derive(Clone, Copy, Debug)]
pub struct PoolView<'a> {
    pub facts: &'a PoolFacts,
    pub state: PoolState,
    /// The group's `/best_worker` answer; `None` when not probed, timed out or unreadable.
    pub probe: Option<&'a BestWorkerResponse>,
}

/// What pool policies know about the request (see decisions.md, "Request features").
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RequestFeatures {
    /// The OpenAI `model` field.
    pub model: Option<String>,
    /// Prompt length in tokens (also the context length the decode grid uses).
    pub isl_tokens: u64,
    /// `x-kvroute-ttft-target-ms`; `None` (or NaN) uses the middle of the grid's range.
    pub ttft_target_ms: Option<f64>,
    /// `x-kvroute-itl-target-ms`; `None` (or NaN) uses the middle of the grid's range.
    pub itl_target_ms: Option<f64>,
    /// `x-kvroute-priority`, matched against the grid's priority overrides.
    pub priority: Option<i64>,
}
