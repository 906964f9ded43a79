//! Properties of every policy over random pools, states, probes and requests, through the
//! public API only: determinism with a fixed seed, and the filter guarantees (model, health,
//! saturation, priority tier) whatever the policy.

use kvroute_pool_select::{
    BestWorkerResponse, Decision, Policy, PoolFacts, PoolLimits, PoolState, RequestFeatures, SelectConfig, SelectError,
    Selector, MAX_SUMMARY_LEN,
};
use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::SeedableRng;

const MODELS: [Option<&str>; 3] = [None, Some("m1"), Some("m2")];

/// One request's inputs: live state and optional probe per pool, and the features.
#[derive(Clone, Debug)]
struct Round {
    states: Vec<PoolState>,
    probes: Vec<Option<BestWorkerResponse>>,
    features: RequestFeatures,
}

impl Round {
    fn decide(&self, s: &mut Selector<SmallRng>) -> Result<Decision, SelectError> {
        let probes: Vec<Option<&BestWorkerResponse>> = self.probes.iter().map(Option::as_ref).collect();
        s.decide(&self.features, &self.states, &probes)
    }
}

fn pool(i: usize) -> impl Strategy<Value = PoolFacts> {
    let limits = prop::option::of((prop::option::of(0u64..400), prop::option::of(0u64..40)));
    let context = prop::option::of(1u64..200);
    (0..3usize, 0u32..3, 0.1f64..10.0, limits, context).prop_map(
        move |(m, priority, weight, limits, max_input_tokens)| PoolFacts {
            name: format!("p{i}"),
            model: MODELS[m].map(Into::into),
            priority,
            weight,
            limits: limits.map(|(p, d)| PoolLimits { max_potential_prefill_tokens: p, max_potential_decode_blocks: d }),
            max_input_tokens,
        },
    )
}

fn pools() -> impl Strategy<Value = Vec<PoolFacts>> {
    (1..5usize).prop_flat_map(|n| (0..n).map(pool).collect::<Vec<_>>())
}

fn probe() -> impl Strategy<Value = BestWorkerResponse> {
    // Small ranges so that ties happen.
    (0u32..4, 0u64..4, 0u64..4).prop_map(|(overlap, prefill, decode)| BestWorkerResponse {
        worker_id: 1,
        dp_rank: 0,
        overlap_blocks: overlap,
        request_blocks: 4,
        potential_prefill_tokens: prefill * 100,
        potential_decode_blocks: decode * 10,
        cost: 0.0,
    })
}

fn round(n: usize) -> impl Strategy<Value = Round> {
    let states = prop::collection::vec((prop::bool::weighted(0.8), 0u64..3), n)
        .prop_map(|v| v.into_iter().map(|(healthy, in_flight)| PoolState { healthy, in_flight }).collect());
    let probes = prop::collection::vec(prop::option::weighted(0.7, probe()), n);
    let features = (
        0..3usize,
        0u64..5000,
        prop::option::of(-100.0f64..1200.0),
        prop::option::of(-10.0f64..120.0),
        prop::option::of(-2i64..12),
    )
        .prop_map(|(m, isl_tokens, ttft_target_ms, itl_target_ms, priority)| RequestFeatures {
            model: MODELS[m].map(Into::into),
            isl_tokens,
            ttft_target_ms,
            itl_target_ms,
            priority,
        });
    (states, probes, features).prop_map(|(states, probes, features)| Round { states, probes, features })
}

/// A policy for `n` pools: one of the five, the grid naming random pools.
fn policy(n: usize) -> impl Strategy<Value = Policy> {
    let names = move || prop::collection::vec((0..n).prop_map(|i| format!("p{i}")), 2);
    let grid = (names(), names(), prop::option::of((0i64..5, 0usize..n))).prop_map(|(row0, row1, rule)| {
        let overrides = rule
            .map(|(lo, t)| format!(r#"{{"min_priority": {lo}, "max_priority": {}, "target_pool": "p{t}"}}"#, lo + 3))
            .unwrap_or_default();
        let json = format!(
            r#"{{"type": "grid", "agg": {{"ttft_min_ms": 0, "ttft_max_ms": 1000, "ttft_resolution": 2,
                "itl_min_ms": 0, "itl_max_ms": 100, "itl_resolution": 2,
                "agg_pool_mapping": [{row0:?}, {row1:?}], "priority_overrides": [{overrides}]}}}}"#
        );
        serde_json::from_str::<Policy>(&json).unwrap()
    });
    prop_oneof![
        (0.0f64..3.0).prop_map(|w| serde_json::from_str(&format!(
            r#"{{"type": "kv_overlap", "block_size": 16, "prefill_weight": {w}}}"#
        ))
        .unwrap()),
        Just(Policy::Weighted {}),
        Just(Policy::RoundRobin {}),
        Just(Policy::LeastLoaded {}),
        grid,
    ]
}

fn case() -> impl Strategy<Value = (Vec<PoolFacts>, Policy, Vec<Round>, u64)> {
    pools().prop_flat_map(|pools| {
        let n = pools.len();
        (Just(pools), policy(n), prop::collection::vec(round(n), 1..8), any::<u64>())
    })
}

fn selector(pools: &[PoolFacts], policy: &Policy, seed: u64) -> Selector<SmallRng> {
    let config = SelectConfig { pools: pools.to_vec(), policy: policy.clone() };
    Selector::new(config, SmallRng::seed_from_u64(seed)).unwrap()
}

/// The prompt length the selector goes by: (kv_overlap) the probes', else the request's count.
fn input_tokens(policy: &Policy, r: &Round) -> Option<u64> {
    let probed = match policy {
        Policy::KvOverlap(c) => {
            r.probes.iter().flatten().map(|p| u64::from(p.request_blocks) * u64::from(c.block_size)).max()
        }
        _ => None,
    };
    probed.or((r.features.isl_tokens > 0).then_some(r.features.isl_tokens))
}

fn too_long(facts: &PoolFacts, input_tokens: Option<u64>) -> bool {
    matches!((input_tokens, facts.max_input_tokens), (Some(t), Some(max)) if t > max)
}

fn saturated(facts: &PoolFacts, probe: Option<&BestWorkerResponse>) -> bool {
    matches!((&facts.limits, probe), (Some(l), Some(p)) if l.exceeded_by(p).is_some())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_same_seed_gives_the_same_decisions((pools, policy, rounds, seed) in case()) {
        let (mut a, mut b) = (selector(&pools, &policy, seed), selector(&pools, &policy, seed));
        for r in &rounds {
            prop_assert_eq!(r.decide(&mut a), r.decide(&mut b));
        }
    }

    #[test]
    fn decisions_respect_model_health_context_saturation_and_priority((pools, policy, rounds, seed) in case()) {
        let mut s = selector(&pools, &policy, seed);
        let is_grid = matches!(policy, Policy::Grid(_));
        for r in &rounds {
            let model = r.features.model.as_deref();
            let can_serve: Vec<usize> =
                (0..pools.len()).filter(|&i| pools[i].serves(model) && r.states[i].healthy).collect();
            let input = input_tokens(&policy, r);
            let fit: Vec<usize> = can_serve.iter().copied().filter(|&i| !too_long(&pools[i], input)).collect();
            let fit = if fit.is_empty() { can_serve.clone() } else { fit };
            let fresh: Vec<usize> =
                fit.iter().copied().filter(|&i| !saturated(&pools[i], r.probes[i].as_ref())).collect();
            match r.decide(&mut s) {
                Ok(d) => {
                    prop_assert!(can_serve.contains(&d.pool), "chose a pool that cannot serve: {:?}", d);
                    prop_assert!(fit.contains(&d.pool), "chose a pool the prompt is too long for: {:?}", d);
                    if !fresh.is_empty() {
                        prop_assert!(fresh.contains(&d.pool), "chose a saturated pool: {:?}", d);
                    }
                    if !is_grid {
                        let tier = if fresh.is_empty() { &fit } else { &fresh };
                        let best = tier.iter().map(|&i| pools[i].priority).min().unwrap();
                        prop_assert_eq!(pools[d.pool].priority, best);
                    }
                    prop_assert!(!d.fallbacks.contains(&d.pool));
                    prop_assert!(d.fallbacks.iter().all(|i| can_serve.contains(i)));
                    let summary = &d.reason.summary;
                    prop_assert!(summary.starts_with(d.reason.policy));
                    prop_assert!(summary.len() <= MAX_SUMMARY_LEN);
                    prop_assert!(summary.bytes().all(|c| (0x20..0x7f).contains(&c)), "{}", summary);
                }
                Err(SelectError::NoEligiblePool { removed }) => {
                    prop_assert!(is_grid || can_serve.is_empty(), "failed although {:?} can serve", can_serve);
                    prop_assert!(!removed.is_empty());
                }
                Err(e) => prop_assert!(false, "unexpected error {}", e),
            }
        }
    }
}
