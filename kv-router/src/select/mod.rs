//! Choosing a worker: Dynamo's cost function and temperature sampling.
//!
//! `cost(w) = overlap_score_weight * max(0, (active_prefill_tokens(w) + isl) / block_size
//!            - overlap_score_credit * overlap(w)) + potential_decode_blocks(w)`
//!
//! With the defaults (weight 1, credit 1) this is Dynamo's classic
//! `potential_prefill_tokens / block_size + potential_decode_blocks`. Temperature 0 picks the
//! cheapest (ties per [`TieBreak`]); above 0, worker `w` is drawn with probability
//! ∝ `exp(-((cost(w) - min) / (max - min)) / T)`, uniformly when all costs are equal.
//! Pure functions over [`Candidate`]s; the caller gathers overlaps and loads and owns the RNG.

mod config;

pub use config::{ConfigError, KvRouterConfig, RouterConfigOverride, RouterMode, TieBreak};

use kvroute_protocol::Worker;
use rand::Rng;
use serde::Serialize;

/// What selection knows about one worker for one request.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Candidate {
    pub worker: Worker,
    /// Consecutive request blocks the worker has cached.
    pub overlap_blocks: u32,
    /// Blocks the worker has cached in all (its tree size).
    pub cached_blocks: u64,
    /// Prefill tokens of requests already routed to it and still in prefill.
    pub active_prefill_tokens: u64,
    /// `new blocks of this request on it + its active blocks`.
    pub potential_decode_blocks: u64,
}

impl Candidate {
    /// Tokens the worker would have to prefill: its queue plus this request's uncached part.
    pub fn potential_prefill_tokens(&self, isl_tokens: u64, block_size: u32) -> u64 {
        let cached = u64::from(self.overlap_blocks) * u64::from(block_size);
        self.active_prefill_tokens + isl_tokens.saturating_sub(cached)
    }
}

/// The cost of sending a request of `isl_tokens` to `c` (lower is better).
pub fn cost(c: &Candidate, isl_tokens: u64, config: &KvRouterConfig) -> f64 {
    let bs = f64::from(config.block_size);
    let raw_prefill_blocks = (c.active_prefill_tokens + isl_tokens) as f64 / bs;
    let prefill = (raw_prefill_blocks - config.overlap_score_credit * f64::from(c.overlap_blocks)).max(0.0);
    config.overlap_score_weight * prefill + c.potential_decode_blocks as f64
}

/// Index of the least loaded candidate: fewest in-flight requests, then fewest prefill tokens
/// queued, ties at random. `requests[i]` is candidate i's in-flight request count.
pub fn least_loaded(candidates: &[Candidate], requests: &[u64], rng: &mut impl Rng) -> Option<usize> {
    let key = |i: usize| (requests[i], candidates[i].active_prefill_tokens);
    let best = (0..candidates.len()).map(key).min()?;
    let tied: Vec<usize> = (0..candidates.len()).filter(|&i| key(i) == best).collect();
    Some(tied[rng.gen_range(0..tied.len())])
}

/// The index of the chosen candidate and every candidate's cost; `None` when there is none.
pub fn choose(
    candidates: &[Candidate],
    isl_tokens: u64,
    config: &KvRouterConfig,
    rng: &mut impl Rng,
) -> Option<(usize, Vec<f64>)> {
    if candidates.is_empty() {
        return None;
    }
    let costs: Vec<f64> = candidates.iter().map(|c| cost(c, isl_tokens, config)).collect();
    let chosen = if config.router_temperature > 0.0 {
        sample(&costs, config.router_temperature, rng)
    } else {
        cheapest(candidates, &costs, config.tie_break, rng)
    };
    Some((chosen, costs))
}

fn cheapest(candidates: &[Candidate], costs: &[f64], tie_break: TieBreak, rng: &mut impl Rng) -> usize {
    let min = costs.iter().copied().fold(f64::INFINITY, f64::min);
    let mut best: Vec<usize> = (0..costs.len()).filter(|&i| costs[i] == min).collect();
    if tie_break == TieBreak::SmallestTree {
        let smallest = best.iter().map(|&i| candidates[i].cached_blocks).min().unwrap_or(0);
        best.retain(|&i| candidates[i].cached_blocks == smallest);
    }
    best[rng.gen_range(0..best.len())]
}

/// Softmax over costs normalised to [0, 1], lower cost more likely.
fn sample(costs: &[f64], temperature: f64, rng: &mut impl Rng) -> usize {
    let min = costs.iter().copied().fold(f64::INFINITY, f64::min);
    let max = costs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max == min {
        return rng.gen_range(0..costs.len());
    }
    let weights: Vec<f64> = costs.iter().map(|c| (-((c - min) / (max - min)) / temperature).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut draw = rng.gen::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if draw < *w {
            return i;
        }
        draw -= w;
    }
    costs.len() - 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn candidate(id: u64, overlap: u32, active_blocks: u64, request_blocks: u64) -> Candidate {
        Candidate {
            worker: Worker::new(id, 0),
            overlap_blocks: overlap,
            cached_blocks: 0,
            active_prefill_tokens: 0,
            potential_decode_blocks: request_blocks + active_blocks,
        }
    }

    #[test]
    fn dynamo_worked_example_picks_the_second_worker() {
        // Block size 16, weight 1, a request of 128 tokens (8 blocks).
        // A: no overlap, 2 active blocks; B: overlap 6; C: overlap 5.
        let config = KvRouterConfig::default();
        let cs = [candidate(1, 0, 2, 8), candidate(2, 6, 0, 8), candidate(3, 5, 0, 8)];
        let (chosen, costs) = choose(&cs, 128, &config, &mut SmallRng::seed_from_u64(0)).unwrap();
        assert_eq!(costs, vec![18.0, 10.0, 11.0]);
        assert_eq!(cs[chosen].worker, Worker::new(2, 0));
    }

    #[test]
    fn potential_prefill_counts_queue_plus_uncached_tokens() {
        let c = Candidate { active_prefill_tokens: 40, ..candidate(1, 3, 0, 0) };
        assert_eq!(c.potential_prefill_tokens(100, 16), 40 + 52);
        assert_eq!(c.potential_prefill_tokens(10, 16), 40);
    }

    #[test]
    fn weight_zero_ignores_prefill_and_credit_caps_at_zero() {
        let mut config = KvRouterConfig { overlap_score_weight: 0.0, ..KvRouterConfig::default() };
        assert_eq!(cost(&candidate(1, 0, 5, 8), 128, &config), 13.0);
        config = KvRouterConfig { overlap_score_credit: 4.0, ..KvRouterConfig::default() };
        assert_eq!(cost(&candidate(1, 8, 0, 8), 128, &config), 8.0);
    }

    #[test]
    fn ties_break_randomly_but_reproducibly_with_a_seed() {
        let cs = [candidate(1, 0, 0, 4), candidate(2, 0, 0, 4), candidate(3, 0, 0, 4)];
        let config = KvRouterConfig::default();
        let picks = |seed| {
            let mut rng = SmallRng::seed_from_u64(seed);
            (0..30).map(|_| choose(&cs, 64, &config, &mut rng).unwrap().0).collect::<Vec<_>>()
        };
        assert_eq!(picks(7), picks(7));
        let seen: std::collections::BTreeSet<usize> = picks(7).into_iter().collect();
        assert_eq!(seen.len(), 3, "all tied workers get picked");
    }

    #[test]
    fn smallest_tree_tie_break_prefers_the_emptier_cache() {
        let mut cs = [candidate(1, 0, 0, 4), candidate(2, 0, 0, 4)];
        cs[0].cached_blocks = 100;
        cs[1].cached_blocks = 10;
        let config = KvRouterConfig { tie_break: TieBreak::SmallestTree, ..KvRouterConfig::default() };
        let mut rng = SmallRng::seed_from_u64(1);
        for _ in 0..10 {
            assert_eq!(choose(&cs, 64, &config, &mut rng).unwrap().0, 1);
        }
    }

    #[test]
    fn temperature_spreads_picks_in_cost_order() {
        let cs = [candidate(1, 0, 0, 4), candidate(2, 0, 20, 4), candidate(3, 0, 40, 4)];
        let config = KvRouterConfig { router_temperature: 0.5, ..KvRouterConfig::default() };
        let mut rng = SmallRng::seed_from_u64(3);
        let mut counts = [0usize; 3];
        for _ in 0..3000 {
            counts[choose(&cs, 64, &config, &mut rng).unwrap().0] += 1;
        }
        // p ∝ exp(-x/0.5) for x = 0, 0.5, 1 → 0.665, 0.245, 0.090.
        assert!(counts[0] > counts[1] && counts[1] > counts[2], "{counts:?}");
        assert!((1800..2200).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn equal_costs_at_temperature_are_uniform_and_no_candidates_is_none() {
        let cs = [candidate(1, 0, 0, 4), candidate(2, 0, 0, 4)];
        let config = KvRouterConfig { router_temperature: 1.0, ..KvRouterConfig::default() };
        let mut rng = SmallRng::seed_from_u64(3);
        let ones = (0..2000).filter(|_| choose(&cs, 64, &config, &mut rng).unwrap().0 == 1).count();
        assert!((850..1150).contains(&ones), "{ones}");
        assert!(choose(&[], 64, &config, &mut rng).is_none());
    }

    #[test]
    fn overrides_apply_and_bad_values_are_rejected() {
        let base = KvRouterConfig::default();
        let o = RouterConfigOverride { router_temperature: Some(0.7), ..Default::default() };
        assert_eq!(base.with_override(Some(&o)).unwrap().router_temperature, 0.7);
        let bad = RouterConfigOverride { overlap_score_weight: Some(-1.0), ..Default::default() };
        assert!(matches!(base.with_override(Some(&bad)), Err(ConfigError::OutOfRange { field: "overlap_score_weight", .. })));
        let nan = RouterConfigOverride { router_temperature: Some(f64::NAN), ..Default::default() };
        assert!(base.with_override(Some(&nan)).is_err());
        assert_eq!(KvRouterConfig { block_size: 0, ..base }.validate(), Err(ConfigError::BlockSize));
        let parsed: RouterConfigOverride = serde_json::from_str(r#"{"prefill_load_scale": 2.0}"#).unwrap();
        assert_eq!(parsed.overlap_score_weight, Some(2.0));
        assert!(serde_json::from_str::<RouterConfigOverride>(r#"{"temperature": 2.0}"#).is_err());
    }
}
