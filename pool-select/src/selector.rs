//! [`Selector`]: the phases put together for one request — views, filter, policy, decision —
//! with the state that outlives a request (the round-robin cursor and the injected RNG).
//!
//! The selector owns no clock and does no I/O: the caller probes the router groups, tracks
//! health and in-flight counts, and passes them in. Same seed and same inputs in the same
//! order give the same decisions.

use kvroute_protocol::api::BestWorkerResponse;
use rand::Rng;

use crate::config::{validate_pools, ConfigError, SelectConfig};
use crate::decision::{self, Decision, DisaggChoice, Reason, SelectError};
use crate::filter;
use crate::pool::{PoolFacts, PoolState, PoolView, RequestFeatures};
use crate::score::{self, kv_overlap, least_loaded, round_robin, weighted, Compiled, Policy};

/// Chooses a pool per request. One per front door (Envoy root context, global router).
#[derive(Clone, Debug)]
pub struct Selector<R> {
    pools: Vec<PoolFacts>,
    policy: Policy,
    compiled: Compiled,
    /// The pool index after the last round-robin choice.
    cursor: usize,
    rng: R,
}

impl<R: Rng> Selector<R> {
    /// Validates `config` and builds the selector; `rng` is the only source of randomness
    /// (a seeded `SmallRng` in tests and replays).
    pub fn new(config: SelectConfig, rng: R) -> Result<Self, ConfigError> {
        validate_pools(&config.pools)?;
        let compiled = config.policy.compile(&config.pools)?;
        Ok(Selector { pools: config.pools, policy: config.policy, compiled, cursor: 0, rng })
    }

    /// The configured pools; a [`Decision`]'s indices refer to this slice.
    pub fn pools(&self) -> &[PoolFacts] {
        &self.pools
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The index of the pool called `name`.
    pub fn pool_index(&self, name: &str) -> Option<usize> {
        self.pools.iter().position(|p| p.name == name)
    }

    /// Whether the caller should probe the router groups before [`Selector::decide`]: the
    /// policy needs probes, or some pool has saturation limits (which only a probe can show).
    pub fn needs_probes(&self) -> bool {
        score::policy_needs_probes(&self.policy)
            || self.pools.iter().any(|p| p.limits.as_ref().is_some_and(|l| l.is_set()))
    }

    /// Whether probing can change this request's decision: the policy uses probes (or a pool
    /// has saturation limits) and more than one pool serves the request's model and is healthy.
    /// With a single candidate the answer is that pool whatever the probes say, so the front
    /// door can skip the probe round trip.
    pub fn needs_probes_for(&self, features: &RequestFeatures, states: &[PoolState]) -> bool {
        let candidates =
            self.pools.iter().zip(states).filter(|(p, s)| s.healthy && p.serves(features.model.as_deref())).count();
        self.needs_probes() && candidates > 1
    }

    /// The prompt's length in tokens, if known: with `kv_overlap` (which knows the routers'
    /// block size), the longest `request_blocks` a probe reports — the routers count with the
    /// engines' tokenizer; else the request's `isl_tokens` when the caller counted them (a
    /// front door without that tokenizer only estimates).
    fn input_tokens(&self, features: &RequestFeatures, probes: &[Option<&BestWorkerResponse>]) -> Option<u64> {
        let probed = match &self.compiled {
            Compiled::KvOverlap(c) => {
                probes.iter().flatten().map(|p| u64::from(p.request_blocks) * u64::from(c.block_size)).max()
            }
            _ => None,
        };
        probed.or((features.isl_tokens > 0).then_some(features.isl_tokens))
    }

    /// Chooses the pool for one request. `states[i]` and `probes[i]` describe pool `i`
    /// (`None`: not probed, timed out or unreadable).
    pub fn decide(
        &mut self,
        features: &RequestFeatures,
        states: &[PoolState],
        probes: &[Option<&BestWorkerResponse>],
    ) -> Result<Decision, SelectError> {
        let n = self.pools.len();
        if states.len() != n || probes.len() != n {
            return Err(SelectError::InputMismatch { pools: n, states: states.len(), probes: probes.len() });
        }
        let views: Vec<PoolView<'_>> =
            (0..n).map(|i| PoolView { facts: &self.pools[i], state: states[i], probe: probes[i] }).collect();
        let filter::Filtered { eligible, mut removed } =
            filter::apply(features, self.input_tokens(features, probes), &views)?;
        let choice = match &self.compiled {
            Compiled::KvOverlap(c) => kv_overlap::choose(c, &views, &eligible, &mut self.rng).ok_or_else(Vec::new),
            Compiled::Grid(g) => g.choose(features, &views, &eligible),
            Compiled::Weighted => weighted::choose(&views, &eligible, &mut self.rng).ok_or_else(Vec::new),
            Compiled::RoundRobin => round_robin::choose(&views, &eligible, &mut self.cursor).ok_or_else(Vec::new),
            Compiled::LeastLoaded => least_loaded::choose(&views, &eligible, &mut self.rng).ok_or_else(Vec::new),
        };
        let choice = match choice {
            Ok(c) => c,
            Err(outsiders) => {
                removed.extend(outsiders);
                return Err(SelectError::NoEligiblePool { removed });
            }
        };
        let name = |i: usize| self.pools[i].name.clone();
        Ok(Decision {
            pool: choice.pool,
            pool_name: name(choice.pool),
            disaggregated: choice.disagg.map(|(p, d)| DisaggChoice {
                prefill_pool: p,
                prefill_pool_name: name(p),
                decode_pool: d,
                decode_pool_name: name(d),
            }),
            reason: Reason { policy: self.policy.name(), summary: decision::summary(choice.summary, &removed) },
            scores: choice.scores.into_iter().map(|(i, s)| (name(i), s)).collect(),
            removed,
            fallbacks: choice.fallbacks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{features, probe, Pools};

    /// `kv_overlap` costed in blocks: these tests are about filters, with hand-checkable scores.
    fn kv() -> Policy {
        Policy::KvOverlap(crate::KvOverlapConfig { cost: crate::KvOverlapCost::Blocks, ..Default::default() })
    }

    #[test]
    fn a_model_mismatch_removes_the_pool() {
        let pools = Pools::new(&["a", "b"]).model(0, "llama").model(1, "qwen");
        let d = pools.selector(kv(), 0).decide(&features(Some("qwen")), &pools.states, &[None; 2]).unwrap();
        assert_eq!(d.pool_name, "b");
        assert_eq!(d.removed[0].filter, "model");
    }

    #[test]
    fn a_prompt_longer_than_a_pools_context_goes_to_one_that_can_take_it() {
        // The short-context pool holds the prompt's prefix, but cannot take the whole prompt.
        let pools = Pools::new(&["chat", "long"]).max_input(0, 4096);
        let long = BestWorkerResponse { request_blocks: 300, ..probe(0, 4800, 300) }; // 4,800 tokens at 16
        let cached = BestWorkerResponse { request_blocks: 300, ..probe(250, 800, 300) };
        let mut s = pools.selector(kv(), 0);
        let d = s.decide(&features(None), &pools.states, &[Some(&cached), Some(&long)]).unwrap();
        assert_eq!(d.pool_name, "long");
        assert_eq!((d.removed[0].name.as_str(), d.removed[0].filter), ("chat", "context"));
        // The probes' count goes before the caller's estimate; without probes, the caller's.
        let estimate = RequestFeatures { isl_tokens: 4000, ..features(None) };
        assert_eq!(s.decide(&estimate, &pools.states, &[Some(&cached), Some(&long)]).unwrap().pool_name, "long");
        let over = RequestFeatures { isl_tokens: 5000, ..features(None) };
        assert_eq!(s.decide(&over, &pools.states, &[None, None]).unwrap().removed[0].filter, "context");
        assert!(s.decide(&estimate, &pools.states, &[None, None]).unwrap().removed.is_empty());
        // No probe and no count: the length is unknown and nothing is removed.
        assert!(s.decide(&features(None), &pools.states, &[None, None]).unwrap().removed.is_empty());
    }

    #[test]
    fn probes_are_skipped_when_only_one_pool_can_take_the_request() {
        let pools = Pools::new(&["a", "b"]).model(1, "qwen");
        let s = pools.selector(kv(), 0);
        assert!(s.needs_probes_for(&features(None), &pools.states), "both serve an unnamed model");
        assert!(!s.needs_probes_for(&features(Some("llama")), &pools.states), "only a serves llama");
        let one_sick = Pools::new(&["a", "b"]).sick(0);
        assert!(!one_sick.selector(kv(), 0).needs_probes_for(&features(None), &one_sick.states));
        let rr = Pools::new(&["a", "b"]).selector(Policy::RoundRobin {}, 0);
        assert!(!rr.needs_probes_for(&features(None), &Pools::new(&["a", "b"]).states), "the policy needs none");
        // The decision without probes is the same single pool.
        let d = pools.selector(kv(), 0).decide(&features(Some("llama")), &pools.states, &[None, None]).unwrap();
        assert_eq!(d.pool_name, "a");
    }

    #[test]
    fn no_pool_for_the_model_is_an_error_naming_the_model_filter() {
        let pools = Pools::new(&["a"]).model(0, "llama");
        let e = pools.selector(kv(), 0).decide(&features(Some("qwen")), &pools.states, &[None]).unwrap_err();
        assert_eq!(e.to_string(), "no eligible pool: a removed by model (serves another model)");
    }

    #[test]
    fn an_unhealthy_pool_is_never_chosen_while_another_can_serve() {
        // The unhealthy pool has by far the best probe.
        let (great, poor) = (probe(8, 0, 0), probe(0, 100_000, 5_000));
        let pools = Pools::new(&["a", "b"]).sick(0);
        let mut s = pools.selector(kv(), 0);
        for _ in 0..20 {
            let d = s.decide(&features(None), &pools.states, &[Some(&great), Some(&poor)]).unwrap();
            assert_eq!(d.pool_name, "b");
            assert_eq!(d.reason.summary, "kv_overlap b=11250.0* skip=a:unhealthy");
        }
    }

    #[test]
    fn all_unhealthy_is_an_error_naming_the_health_filter() {
        let pools = Pools::new(&["a", "b"]).sick(0).sick(1);
        let e = pools.selector(kv(), 0).decide(&features(None), &pools.states, &[None; 2]).unwrap_err();
        let SelectError::NoEligiblePool { removed } = &e else { panic!("{e:?}") };
        assert!(removed.iter().all(|r| r.filter == "health"));
        assert_eq!(e.to_string(), "no eligible pool: a removed by health (unhealthy), b removed by health (unhealthy)");
    }

    #[test]
    fn a_saturated_pool_spills_over_to_the_next_by_priority() {
        let pools = Pools::new(&["primary", "spill", "last"]).priority(1, 1).priority(2, 2).limit_prefill(0, 1000);
        let (busy, ok) = (probe(8, 5000, 10), probe(0, 100, 10));
        let probes = [Some(&busy), Some(&ok), Some(&ok)];
        let d = pools.selector(kv(), 0).decide(&features(None), &pools.states, &probes).unwrap();
        assert_eq!(d.pool_name, "spill");
        assert_eq!(d.fallbacks, vec![2]);
        assert_eq!(d.reason.summary, "kv_overlap spill=16.2* skip=primary:saturated");
    }

    #[test]
    fn when_all_are_saturated_the_lowest_priority_number_serves() {
        let pools = Pools::new(&["a", "b"]).priority(0, 1).limit_prefill(0, 0).limit_prefill(1, 0);
        let busy = probe(0, 10, 1);
        let d = pools.selector(kv(), 0).decide(&features(None), &pools.states, &[Some(&busy), Some(&busy)]).unwrap();
        assert_eq!(d.pool_name, "b");
        assert_eq!(d.removed.len(), 1);
    }

    #[test]
    fn the_first_priority_tier_takes_traffic_while_it_can_serve() {
        let pools = Pools::new(&["backup", "primary"]).priority(0, 1);
        let (cached, cold) = (probe(8, 0, 8), probe(0, 128, 8));
        let d = pools.selector(kv(), 0).decide(&features(None), &pools.states, &[Some(&cached), Some(&cold)]).unwrap();
        assert_eq!((d.pool_name.as_str(), d.fallbacks.as_slice()), ("primary", &[0][..]));
    }

    #[test]
    fn mismatched_inputs_are_an_error_not_a_panic() {
        let pools = Pools::new(&["a", "b"]);
        let e = pools.selector(kv(), 0).decide(&features(None), &pools.states[..1], &[None; 2]).unwrap_err();
        assert_eq!(e, SelectError::InputMismatch { pools: 2, states: 1, probes: 2 });
    }

    #[test]
    fn probes_are_needed_for_kv_overlap_or_saturation_limits_only() {
        let plain = Pools::new(&["a"]);
        assert!(plain.selector(kv(), 0).needs_probes());
        assert!(!plain.selector(Policy::RoundRobin {}, 0).needs_probes());
        assert!(plain.clone().limit_decode(0, 10).selector(Policy::RoundRobin {}, 0).needs_probes());
    }

    #[test]
    fn an_invalid_config_is_rejected_at_construction() {
        let pools = Pools::new(&["a"]).weight(0, -1.0);
        let config = SelectConfig { pools: pools.facts, policy: kv() };
        let e = Selector::new(config, rand::rngs::mock::StepRng::new(0, 1)).unwrap_err();
        assert_eq!(e.to_string(), "pools[0].weight must be > 0, got -1");
    }
}
