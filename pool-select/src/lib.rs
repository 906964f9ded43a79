//! Pool selection: which pool (router group) a request goes to, in front of the local KV
//! routers. The same code decides in the Envoy proxy-wasm filter and in the native global
//! router, so a decision can be replayed and tested without either.
//!
//! Pure logic: no I/O, no clocks, randomness injected; builds for `wasm32-wasip1`. The caller
//! probes the router groups (`/best_worker`), tracks health and in-flight counts and passes
//! them in; the [`Selector`] runs three phases:
//!
//! 1. **filter** (always, in order): model match, health, saturation spill-over. Each removal
//!    is recorded; if nothing survives, [`SelectError::NoEligiblePool`] says what removed what;
//! 2. **score** by the configured [`Policy`] (one serde-tagged enum, one file per policy):
//!    `kv_overlap`, `grid`, `weighted`, `round_robin`, `least_loaded`;
//! 3. **pick**: the lowest cost (ties at random), a weighted draw, a turn or a grid cell.
//!
//! The key trade-off is in `kv_overlap`: a cached prefix is worth exactly the prefill it saves,
//! in the local router's cost currency, so an idle pool beats a slightly better hit on a busy
//! one. `priority` orders spill-over and failover: policies other than `grid` consider only
//! the lowest priority number among the eligible pools.
//!
//! ```
//! use kvroute_pool_select::{BestWorkerResponse, PoolState, RequestFeatures, SelectConfig, Selector};
//! use rand::{rngs::SmallRng, SeedableRng};
//!
//! let config: SelectConfig = serde_json::from_str(r#"{
//!     "pools": [{"name": "a"}, {"name": "b"}],
//!     "policy": {"type": "kv_overlap", "block_size": 16}
//! }"#).unwrap();
//! let mut selector = Selector::new(config, SmallRng::seed_from_u64(7)).unwrap();
//! assert!(selector.needs_probes());
//!
//! // Pool b's router group reports 6 of the request's 8 blocks cached on its best worker.
//! let probe = |overlap_blocks: u32, potential_prefill_tokens: u64| BestWorkerResponse {
//!     worker_id: 1, dp_rank: 0, overlap_blocks, request_blocks: 8,
//!     potential_prefill_tokens, potential_decode_blocks: 8, cost: 0.0,
//! };
//! let (a, b) = (probe(0, 128), probe(6, 32));
//! let request = RequestFeatures { isl_tokens: 128, ..RequestFeatures::default() };
//! let decision = selector
//!     .decide(&request, &[PoolState::IDLE; 2], &[Some(&a), Some(&b)])
//!     .unwrap();
//! assert_eq!(decision.pool_name, "b");
//! assert_eq!(decision.reason.summary, "kv_overlap a=16.0 b=10.0*"); // x-kvroute-reason
//! assert_eq!(decision.fallbacks, vec![0]); // retry here if b fails before the first byte
//! ```
#![forbid(unsafe_code)]

mod config;
mod decision;
mod filter;
mod pick;
mod pool;
mod score;
mod selector;
#[cfg(test)]
mod test_support;

pub use config::{ConfigError, SelectConfig};
pub use decision::{header_safe, Decision, DisaggChoice, Reason, Removal, SelectError, MAX_SUMMARY_LEN};
pub use kvroute_protocol::api::BestWorkerResponse;
pub use pool::{PoolFacts, PoolLimits, PoolState, PoolView, RequestFeatures};
pub use score::{
    policy_needs_probes, AggGrid, DecodeGrid, GridConfig, KvOverlapConfig, KvOverlapCost, Policy, PrefillGrid, PriorityOverride,
};
pub use selector::Selector;

/// A router group's probe answer (`POST /best_worker`): the protocol type, re-exported.
pub type Probe = BestWorkerResponse;
