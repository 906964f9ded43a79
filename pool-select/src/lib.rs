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
//! The key trade-off is in `kv_overlap`: each pool's router predicts when it would return the
//! first token (the prefill a cached prefix saves is already in that figure), and a pool that
//! would recompute a prefix another pool holds pays a duplicate charge, so an idle pool beats a
//! slightly better hit on a busy one but a conversation stays where its prefix is. `priority` orders spill-over and failover: policies other than `grid` consider only
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
//! // Pool b's router group reports 6 of the request's 8 blocks cached on its best worker and
//! // predicts the first token in 20 ms; pool a holds none of it and predicts 18 ms, but would
//! // recompute 96 tokens b holds (charged 3 × 0.0152 ms each).
//! let probe = |overlap_blocks: u32, cost: f64| BestWorkerResponse {
//!     worker_id: 1, dp_rank: 0, overlap_blocks, request_blocks: 8,
//!     potential_prefill_tokens: 0, potential_decode_blocks: 8, cost,
//! };
//! let (a, b) = (probe(0, 18.0), probe(6, 20.0));
//! let request = RequestFeatures { isl_tokens: 128, ..RequestFeatures::default() };
//! let decision = selector
//!     .decide(&request, &[PoolState::IDLE; 2], &[Some(&a), Some(&b)])
//!     .unwrap();
//! assert_eq!(decision.pool_name, "b");
//! assert_eq!(decision.reason.summary, "kv_overlap a=22.4 b=20.0*"); // x-kvroute-reason
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
    policy_needs_probes, AggGrid, DecodeGrid, GridConfig, KvOverlapConfig, KvOverlapCost, Policy, PrefillGrid,
    PriorityOverride,
};
pub use selector::Selector;

/// A router group's probe answer (`POST /best_worker`): the protocol type, re-exported.
pub type Probe = BestWorkerResponse;
