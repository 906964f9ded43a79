//! `kv_overlap`: the pool whose router group can serve the request most cheaply, where cheap
//! means what it means to the local router: prefill work not covered by the cache, plus decode
//! load.
//!
//! Two ways to cost a pool ([`KvOverlapCost`]):
//! - `router_ms` (default): the probe's own `cost`, which routers with the `predicted_ttft` cost
//!   model (kvroute's default) give in milliseconds of predicted time to first token, plus
//!   `duplicate_token_ms` for every token of the best cached prefix among the pools that this
//!   pool lacks — the same trade-off the local router makes between its workers, one level up.
//!   Every group must run `predicted_ttft` (replayed on the Mooncake trace, 2 × 4 pools: reuse
//!   0.259 / mean TTFT 236 ms with it, 0.217 / 258 ms with `blocks`; `bench/RESULTS.md`);
//! - `blocks`:
//!   `prefill_weight * potential_prefill_tokens / block_size + potential_decode_blocks`, from
//!   the probe's raw figures (the group's chosen worker: its prefill queue plus this request's
//!   uncached tokens, and its blocks after admitting the request) — comparable across groups
//!   whatever router config each runs (the choice for groups running Dynamo's `blocks` cost).
//!
//! Either way a long cached prefix shows as little prefill, so the pool holding it wins unless
//! it is so loaded that an idle pool with a slightly shorter hit is cheaper.
//!
//! Among the first priority tier: probed pools only, unless none answered (then the unprobed
//! ones, by load). Ties: fewest in flight, then at random.

use std::cmp::Ordering;

use kvroute_protocol::api::BestWorkerResponse;
use kvroute_protocol::step_time::PREFILL_PER_TOKEN_MS;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::decision::entry;
use crate::filter::priority::{first_tier, spill_order};
use crate::pick;
use crate::pool::PoolView;
use crate::score::Choice;

/// `kv_overlap` settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KvOverlapConfig {
    /// Tokens per KV block, as in the engines (to turn prefill tokens into blocks).
    pub block_size: u32,
    /// `blocks`: weight of prefill against decode load (Dynamo's `overlap_score_weight`).
    pub prefill_weight: f64,
    pub cost: KvOverlapCost,
    /// `router_ms`: milliseconds charged per token of another pool's longer cached prefix
    /// (default: 3 × the 0.0152 ms a token takes to prefill, as the local router charges).
    pub duplicate_token_ms: f64,
}

/// How [`KvOverlapConfig`] costs a pool from its probe.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvOverlapCost {
    /// Prefill blocks (weighted) plus decode blocks, from the probe's figures.
    Blocks,
    /// The probe's predicted time to first token plus a duplicate charge.
    #[default]
    RouterMs,
}

impl Default for KvOverlapConfig {
    fn default() -> Self {
        KvOverlapConfig {
            block_size: 16,
            prefill_weight: 1.0,
            cost: KvOverlapCost::RouterMs,
            duplicate_token_ms: 3.0 * PREFILL_PER_TOKEN_MS,
        }
    }
}

impl KvOverlapConfig {
    /// `block_size > 0`; `prefill_weight` finite and >= 0.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.block_size == 0 {
            return Err(ConfigError::new("block_size", "must be > 0"));
        }
        if !(self.prefill_weight.is_finite() && self.prefill_weight >= 0.0) {
            return Err(ConfigError::new(
                "prefill_weight",
                format!("must be a finite number >= 0, got {}", self.prefill_weight),
            ));
        }
        if !(self.duplicate_token_ms.is_finite() && self.duplicate_token_ms >= 0.0) {
            return Err(ConfigError::new(
                "duplicate_token_ms",
                format!("must be a finite number >= 0, got {}", self.duplicate_token_ms),
            ));
        }
        Ok(())
    }

    /// The cost of sending the request to the pool that answered `probe` (lower is better);
    /// `best_overlap` is the longest cached prefix any probed pool reported.
    pub fn cost(&self, probe: &BestWorkerResponse, best_overlap: u32) -> f64 {
        match self.cost {
            KvOverlapCost::Blocks => {
                self.prefill_weight * probe.potential_prefill_tokens as f64 / f64::from(self.block_size)
                    + probe.potential_decode_blocks as f64
            }
            KvOverlapCost::RouterMs => {
                let missing = u64::from(best_overlap.saturating_sub(probe.overlap_blocks)) * u64::from(self.block_size);
                probe.cost + self.duplicate_token_ms * missing as f64
            }
        }
    }
}

pub(crate) fn choose<R: Rng + ?Sized>(
    config: &KvOverlapConfig,
    views: &[PoolView<'_>],
    eligible: &[usize],
    rng: &mut R,
) -> Option<Choice> {
    let tier = first_tier(views, eligible);
    let best_overlap = tier.iter().filter_map(|&i| views[i].probe).map(|p| p.overlap_blocks).max().unwrap_or(0);
    let cost = |i: usize| views[i].probe.map(|p| config.cost(p, best_overlap));
    let in_flight = |a: usize, b: usize| views[a].state.in_flight.cmp(&views[b].state.in_flight);
    let probed: Vec<usize> = tier.iter().copied().filter(|&i| cost(i).is_some()).collect();
    let pool = if probed.is_empty() {
        pick::lowest(&tier, in_flight, rng)?
    } else {
        let by_cost = |a: usize, b: usize| by(cost(a), cost(b)).then_with(|| in_flight(a, b));
        pick::lowest(&probed, by_cost, rng)?
    };
    let entries: Vec<String> = tier.iter().map(|&i| entry(&views[i].facts.name, cost(i), i == pool)).collect();
    Some(Choice {
        pool,
        disagg: None,
        summary: format!("kv_overlap {}", entries.join(" ")),
        scores: probed.iter().filter_map(|&i| Some((i, cost(i)?))).collect(),
        fallbacks: spill_order(
            views,
            views[pool].facts.priority,
            eligible.iter().copied().filter(|&i| i != pool),
            cost,
        ),
    })
}

fn by(a: Option<f64>, b: Option<f64>) -> Ordering {
    a.unwrap_or(f64::INFINITY).total_cmp(&b.unwrap_or(f64::INFINITY))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::PoolState;
    use crate::test_support::{features, probe, Pools};
    use crate::Policy;

    fn policy() -> Policy {
        Policy::KvOverlap(KvOverlapConfig { cost: KvOverlapCost::Blocks, ..KvOverlapConfig::default() })
    }

    #[test]
    fn the_pool_with_the_cached_prefix_wins() {
        // 128-token request; b holds 6 of its 8 blocks, a none.
        let (a, b) = (probe(0, 128, 8), probe(6, 32, 8));
        let d = Pools::new(&["a", "b"]).selector(policy(), 0).decide(
            &features(None),
            &[PoolState::IDLE; 2],
            &[Some(&a), Some(&b)],
        );
        let d = d.unwrap();
        assert_eq!(d.pool_name, "b");
        assert_eq!(d.reason.summary, "kv_overlap a=16.0 b=10.0*");
        assert_eq!(d.scores, vec![("a".to_string(), 16.0), ("b".to_string(), 10.0)]);
    }

    #[test]
    fn an_idle_pool_beats_a_slightly_better_hit_on_a_saturated_pool() {
        // a: 6 blocks cached but 1000 tokens queued and 200 blocks active; b: 5 cached, idle.
        let (a, b) = (probe(6, 1000 + 32, 200), probe(5, 48, 8));
        let mut s = Pools::new(&["a", "b"]).selector(policy(), 0);
        assert_eq!(s.decide(&features(None), &[PoolState::IDLE; 2], &[Some(&a), Some(&b)]).unwrap().pool_name, "b");
    }

    #[test]
    fn router_ms_compares_predicted_ttft_plus_the_duplicate_charge() {
        let config = KvOverlapConfig { block_size: 64, cost: KvOverlapCost::RouterMs, ..KvOverlapConfig::default() };
        let policy = Policy::KvOverlap(config.clone());
        // a holds 10 blocks and answers in 120 ms; b holds none and answers in 100 ms, but
        // recomputing 640 tokens someone holds costs 640 × 0.0455 ≈ 29 ms more: a.
        let a = BestWorkerResponse { cost: 120.0, ..probe(10, 0, 0) };
        let b = BestWorkerResponse { cost: 100.0, ..probe(0, 0, 0) };
        let mut s = Pools::new(&["a", "b"]).selector(policy.clone(), 0);
        let d = s.decide(&features(None), &[PoolState::IDLE; 2], &[Some(&a), Some(&b)]).unwrap();
        assert_eq!(d.pool_name, "a");
        assert!((config.cost(&b, 10) - (100.0 + 640.0 * config.duplicate_token_ms)).abs() < 1e-9);
        // a's queue makes it 200 ms slower: b.
        let a = BestWorkerResponse { cost: 300.0, ..a };
        let d = s.decide(&features(None), &[PoolState::IDLE; 2], &[Some(&a), Some(&b)]).unwrap();
        assert_eq!(d.pool_name, "b");
        let bad: Result<Policy, _> =
            serde_json::from_str(r#"{"type": "kv_overlap", "cost": "router_ms", "duplicate_token_ms": -1}"#);
        let config = crate::SelectConfig { pools: Pools::new(&["a"]).facts, policy: bad.unwrap() };
        let Err(err) = crate::Selector::new(config, <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(0))
        else {
            panic!("a negative duplicate_token_ms was accepted");
        };
        assert!(err.to_string().contains("duplicate_token_ms"), "{err}");
    }

    #[test]
    fn equal_costs_go_to_the_pool_with_fewer_in_flight() {
        let p = probe(0, 128, 8);
        let pools = Pools::new(&["a", "b"]).in_flight(0, 3).in_flight(1, 1);
        for seed in 0..10 {
            let d = pools.selector(policy(), seed).decide(&features(None), &pools.states, &[Some(&p), Some(&p)]);
            assert_eq!(d.unwrap().pool_name, "b");
        }
    }

    #[test]
    fn full_ties_are_spread_at_random() {
        let p = probe(0, 128, 8);
        let pools = Pools::new(&["a", "b"]);
        let mut s = pools.selector(policy(), 1);
        let bs = (0..200)
            .filter(|_| s.decide(&features(None), &pools.states, &[Some(&p), Some(&p)]).unwrap().pool == 1)
            .count();
        assert!((70..130).contains(&bs), "{bs}");
    }

    #[test]
    fn an_unprobed_pool_is_not_chosen_while_another_answered() {
        let p = probe(0, 10_000, 10_000);
        let pools = Pools::new(&["a", "b"]).in_flight(0, 100);
        let d = pools.selector(policy(), 0).decide(&features(None), &pools.states, &[Some(&p), None]).unwrap();
        assert_eq!(d.pool_name, "a");
        assert_eq!(d.reason.summary, "kv_overlap a=10625.0* b=-");
        assert_eq!(d.fallbacks, vec![1]);
    }

    #[test]
    fn with_no_probe_answers_the_least_busy_pool_is_chosen() {
        let pools = Pools::new(&["a", "b"]).in_flight(0, 2);
        let d = pools.selector(policy(), 0).decide(&features(None), &pools.states, &[None, None]).unwrap();
        assert_eq!(d.pool_name, "b");
        assert!(d.scores.is_empty());
    }

    #[test]
    fn prefill_weight_zero_compares_decode_load_only() {
        let c = KvOverlapConfig { prefill_weight: 0.0, cost: KvOverlapCost::Blocks, ..KvOverlapConfig::default() };
        assert_eq!(c.cost(&probe(0, 1_000_000, 7), 0), 7.0);
    }

    #[test]
    fn fallbacks_follow_cost_within_the_tier() {
        let (a, b, c) = (probe(0, 16, 1), probe(0, 16, 3), probe(0, 16, 2));
        let pools = Pools::new(&["a", "b", "c"]);
        let d = pools
            .selector(policy(), 0)
            .decide(&features(None), &pools.states, &[Some(&a), Some(&b), Some(&c)])
            .unwrap();
        assert_eq!((d.pool, d.fallbacks), (0, vec![2, 1]));
    }

    #[test]
    fn bad_settings_name_the_field() {
        let e = KvOverlapConfig { block_size: 0, ..KvOverlapConfig::default() }.validate().unwrap_err();
        assert_eq!(e.under("policy").to_string(), "policy.block_size must be > 0");
        let e = KvOverlapConfig { prefill_weight: f64::NAN, ..KvOverlapConfig::default() }.validate().unwrap_err();
        assert_eq!(e.path, "prefill_weight");
    }
}
