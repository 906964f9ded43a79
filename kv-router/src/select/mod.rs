//! Choosing a worker: a cost per candidate, then the cheapest (or a temperature sample).
//!
//! Two cost models ([`CostModel`]):
//! - **`predicted_ttft`** (kvroute's default): the worker's predicted time to first token in
//!   milliseconds — its queued prefill plus this request's uncached tokens, in passes under the
//!   engines' step-time fit ([`StepTimeModel`]), counting as cached what the index says or what
//!   requests in flight there share with it (their blocks are not in the index until their
//!   prefill's events arrive) — plus the delay the request would add to the
//!   requests already waiting there (an engine batches prefills into a pass and all of them see
//!   their first token at its end), plus a charge for recomputing blocks another worker holds
//!   (`duplicate_cost` × their prefill time: a duplicate takes cache from other prefixes),
//!   scaled by the share of the worker's cache in use when its size is known
//!   ([`Candidate::kv_capacity_blocks`]): a copy made where there is room pushes nothing out.
//!   Replays of the Mooncake trace chose the weights; see `bench/RESULTS.md`.
//! - **`blocks`** (Dynamo's):
//!   `cost(w) = overlap_score_weight * max(0, (active_prefill_tokens(w) + isl) / block_size
//!              - overlap_score_credit * overlap(w)) + potential_decode_blocks(w)`;
//!   with weight 1 and credit 1 it is Dynamo's classic
//!   `potential_prefill_tokens / block_size + potential_decode_blocks`.
//!
//! Temperature 0 picks the cheapest (ties per [`TieBreak`]); above 0, worker `w` is drawn with
//! probability ∝ `exp(-((cost(w) - min) / (max - min)) / T)`, uniformly when all costs are
//! equal. Pure functions over [`Candidate`]s; the caller gathers overlaps and loads and owns
//! the RNG.

mod config;

pub use config::{ConfigError, CostModel, KvRouterConfig, RouterConfigOverride, RouterMode, StepTimeModel, TieBreak};

use kvroute_protocol::Worker;
use rand::Rng;
use serde::Serialize;

/// What selection knows about one worker for one request.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Candidate {
    pub worker: Worker,
    /// Consecutive request blocks the worker has cached.
    pub overlap_blocks: u32,
    /// Consecutive request blocks that requests routed to the worker and still in flight also
    /// start with: not cached yet (no event has said so), but they will be by the time this
    /// request is admitted behind them.
    pub in_flight_prefix_blocks: u32,
    /// Blocks the worker has cached in all (its tree size).
    pub cached_blocks: u64,
    /// The worker's KV cache size in blocks, when the router knows it (configured as
    /// `worker_kv_blocks`, or stated in the worker's metrics).
    pub kv_capacity_blocks: Option<u64>,
    /// Prefill tokens of requests already routed to it and still in prefill.
    pub active_prefill_tokens: u64,
    /// `new blocks of this request on it + its active blocks`.
    pub potential_decode_blocks: u64,
    /// Requests routed to it and not yet freed.
    pub active_requests: u64,
    /// Of those, the ones still waiting for their first token.
    pub prefilling_requests: u64,
}

impl Candidate {
    /// Blocks the request should find cached when the worker admits it: what the index says,
    /// or the prefix it shares with requests in flight there, whichever is longer.
    pub fn expected_overlap(&self) -> u32 {
        self.overlap_blocks.max(self.in_flight_prefix_blocks)
    }

    /// Prompt tokens the worker would compute for a request of `isl_tokens`: all but its
    /// [`expected_overlap`](Self::expected_overlap), and at least one (an engine always computes
    /// the last token, even of a fully cached prompt).
    pub fn expected_uncached_tokens(&self, isl_tokens: u64, block_size: u32) -> u64 {
        let cached = u64::from(self.expected_overlap()) * u64::from(block_size);
        isl_tokens - cached.min(isl_tokens.saturating_sub(1))
    }

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

/// Milliseconds until `c` would return the first token of a request of `isl_tokens`: its
/// queued prefill and this request's uncached tokens, in passes of at most
/// `max_batched_tokens`, each with the decode step while it has requests decoding. The
/// engine computes at least one prompt token even when all are cached.
pub fn predicted_ttft_ms(c: &Candidate, isl_tokens: u64, config: &KvRouterConfig) -> f64 {
    let uncached = c.expected_uncached_tokens(isl_tokens, config.block_size);
    prefill_in_passes_ms(c.active_prefill_tokens + uncached, c.active_requests > 0, &config.step_time)
}

/// Milliseconds to prefill `tokens` in full passes, with a decode step in each when `decoding`.
fn prefill_in_passes_ms(tokens: u64, decoding: bool, m: &StepTimeModel) -> f64 {
    if tokens == 0 {
        return 0.0;
    }
    let batch = m.max_batched_tokens.max(1);
    let (full, rest) = (tokens / batch, tokens % batch);
    let passes = (full + u64::from(rest > 0)).max(1);
    let prefill = full as f64 * m.chunk_ms(batch) + m.chunk_ms(rest) + m.pass_ms * passes as f64;
    let decode = if decoding { m.decode_ms * passes as f64 } else { 0.0 };
    prefill + decode
}

/// Milliseconds the request would add to the first token of the requests already waiting on
/// `c`: an engine fills each pass with every prefill it can, and all of them see their first
/// token at its end, so the request's uncached tokens that fit in the room left in the last
/// pass of the queue delay everyone waiting.
pub fn delay_inflicted_ms(c: &Candidate, isl_tokens: u64, config: &KvRouterConfig) -> f64 {
    let m = &config.step_time;
    let batch = m.max_batched_tokens.max(1);
    let last_pass = c.active_prefill_tokens % batch;
    if c.prefilling_requests == 0 || last_pass == 0 {
        return 0.0;
    }
    let joining = c.expected_uncached_tokens(isl_tokens, config.block_size).min(batch - last_pass);
    c.prefilling_requests as f64 * (m.chunk_ms(last_pass + joining) - m.chunk_ms(last_pass))
}

/// The `predicted_ttft` cost in milliseconds: [`predicted_ttft_ms`], plus `delay_weight` ×
/// [`delay_inflicted_ms`], plus `duplicate_cost` × [`cache_pressure`] × the prefill time of
/// every token of the best cached prefix among the candidates (`best_overlap` blocks) that `c`
/// lacks.
pub fn predicted_ttft_cost(c: &Candidate, isl_tokens: u64, best_overlap: u32, config: &KvRouterConfig) -> f64 {
    let duplicate_tokens = u64::from(best_overlap.saturating_sub(c.expected_overlap())) * u64::from(config.block_size);
    predicted_ttft_ms(c, isl_tokens, config)
        + config.delay_weight * delay_inflicted_ms(c, isl_tokens, config)
        + config.duplicate_cost * cache_pressure(c) * config.step_time.per_token_ms * duplicate_tokens as f64
}

/// The share of the duplicate charge that applies on `c`: the fraction of its KV cache in use
/// when the cache size is known (a copy made where there is room pushes nothing out), else 1.
pub fn cache_pressure(c: &Candidate) -> f64 {
    match c.kv_capacity_blocks {
        Some(capacity) => (c.cached_blocks as f64 / capacity.max(1) as f64).min(1.0),
        None => 1.0,
    }
}

/// Every candidate's cost under `config.cost_model`, in candidate order.
pub fn costs(candidates: &[Candidate], isl_tokens: u64, config: &KvRouterConfig) -> Vec<f64> {
    match config.cost_model {
        CostModel::Blocks => candidates.iter().map(|c| cost(c, isl_tokens, config)).collect(),
        CostModel::PredictedTtft => {
            let best = candidates.iter().map(Candidate::expected_overlap).max().unwrap_or(0);
            candidates.iter().map(|c| predicted_ttft_cost(c, isl_tokens, best, config)).collect()
        }
    }
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
    let costs = costs(candidates, isl_tokens, config);
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
    use kvroute_protocol::step_time::{prefill_ms, PREFILL_PASS_MS};
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn candidate(id: u64, overlap: u32, active_blocks: u64, request_blocks: u64) -> Candidate {
        Candidate {
            worker: Worker::new(id, 0),
            overlap_blocks: overlap,
            in_flight_prefix_blocks: 0,
            cached_blocks: 0,
            kv_capacity_blocks: None,
            active_prefill_tokens: 0,
            potential_decode_blocks: request_blocks + active_blocks,
            active_requests: 0,
            prefilling_requests: 0,
        }
    }

    fn blocks_config() -> KvRouterConfig {
        KvRouterConfig { cost_model: CostModel::Blocks, ..KvRouterConfig::default() }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn predicted_ttft_is_the_queue_and_the_uncached_tokens_in_passes() {
        let config = KvRouterConfig { block_size: 64, ..KvRouterConfig::default() };
        // Idle worker, 1,000 tokens of which 5 blocks (320) cached: one pass of 680 tokens.
        let idle = Candidate { overlap_blocks: 5, ..candidate(1, 0, 0, 0) };
        assert!(close(predicted_ttft_ms(&idle, 1000, &config), prefill_ms(680)));
        // Fully cached: the engine still computes one token.
        let all = Candidate { overlap_blocks: 2, ..candidate(1, 0, 0, 0) };
        assert!(close(predicted_ttft_ms(&all, 128, &config), prefill_ms(1)));
        // 10,000 queued + 1,000 new tokens while others decode: a full pass and 2,808 more, each
        // with a decode step.
        let busy = Candidate { active_prefill_tokens: 10_000, active_requests: 3, ..candidate(1, 0, 0, 0) };
        let expected = prefill_ms(8192) + prefill_ms(2808) + 2.0 * config.step_time.decode_ms;
        assert!(close(predicted_ttft_ms(&busy, 1000, &config), expected));
    }

    #[test]
    fn a_prefix_still_being_computed_counts_as_cached_for_the_next_request() {
        let config = KvRouterConfig { block_size: 64, ..KvRouterConfig::default() };
        let rng = &mut SmallRng::seed_from_u64(0);
        // A is prefilling a 6,400-token request this one extends; B is idle; the index knows
        // nothing yet. Queued behind A's prefill, only 640 new tokens: A.
        let a = Candidate {
            in_flight_prefix_blocks: 100,
            active_prefill_tokens: 6400,
            prefilling_requests: 1,
            active_requests: 1,
            ..candidate(1, 0, 0, 0)
        };
        let b = candidate(2, 0, 0, 0);
        assert_eq!(a.expected_overlap(), 100);
        assert_eq!(choose(&[a, b], 7040, &config, rng).unwrap().0, 0);
        // Without the in-flight prefix, B (idle) would win.
        let blind = Candidate { in_flight_prefix_blocks: 0, ..a };
        assert_eq!(choose(&[blind, b], 7040, &config, rng).unwrap().0, 1);
    }

    #[test]
    fn joining_a_pass_delays_everyone_waiting_in_it() {
        let config = KvRouterConfig { block_size: 64, ..KvRouterConfig::default() };
        // A pass's token-dependent part (the overhead is paid anyway).
        let chunk = |t: u64| prefill_ms(t) - PREFILL_PASS_MS;
        // Two requests wait with 1,000 tokens; 500 more join their pass.
        let waiting = Candidate {
            active_prefill_tokens: 1000,
            prefilling_requests: 2,
            active_requests: 2,
            ..candidate(1, 0, 0, 0)
        };
        let delay = delay_inflicted_ms(&waiting, 500, &config);
        assert!(close(delay, 2.0 * (chunk(1500) - chunk(1000))), "{delay}");
        // Only the room left in the queue's last pass counts.
        let full = Candidate { active_prefill_tokens: 8192, ..waiting };
        assert_eq!(delay_inflicted_ms(&full, 500, &config), 0.0);
        let almost = Candidate { active_prefill_tokens: 8000, prefilling_requests: 1, ..waiting };
        assert!(close(delay_inflicted_ms(&almost, 5000, &config), chunk(8192) - chunk(8000)));
        // Nobody waiting, nobody delayed.
        assert_eq!(delay_inflicted_ms(&candidate(1, 0, 0, 0), 500, &config), 0.0);
    }

    #[test]
    fn predicted_ttft_trades_the_cache_against_the_queue() {
        let config = KvRouterConfig { block_size: 64, ..KvRouterConfig::default() };
        let rng = &mut SmallRng::seed_from_u64(0);
        // 6,400 tokens, 90 blocks cached on A. A short queue on A: A wins.
        let a = Candidate {
            overlap_blocks: 90,
            active_prefill_tokens: 500,
            prefilling_requests: 1,
            active_requests: 1,
            ..candidate(1, 0, 0, 0)
        };
        let b = candidate(2, 0, 0, 0);
        assert_eq!(choose(&[a, b], 6400, &config, rng).unwrap().0, 0);
        // A long queue on A (a 60k-token prefill ahead): B, despite recomputing.
        let a = Candidate { active_prefill_tokens: 60_000, ..a };
        assert_eq!(choose(&[a, b], 6400, &config, rng).unwrap().0, 1);
        // Equal caches: the idle worker, and no duplicate charge on either.
        let a = Candidate { overlap_blocks: 0, active_prefill_tokens: 500, ..a };
        let (i, costs) = choose(&[a, b], 6400, &config, rng).unwrap();
        assert_eq!(i, 1);
        assert!(close(costs[1], prefill_ms(6400)));
    }

    #[test]
    fn the_duplicate_charge_keeps_a_prefix_where_it_is_when_the_wait_is_short() {
        let config = KvRouterConfig { block_size: 64, ..KvRouterConfig::default() };
        // A holds 20 blocks (1,280 tokens) and has a short queue that makes it slower than idle
        // B by less than the duplicate charge but more than the recompute time alone.
        let a =
            Candidate { overlap_blocks: 20, active_prefill_tokens: 2000, active_requests: 1, ..candidate(1, 0, 0, 0) };
        let b = candidate(2, 0, 0, 0);
        let ttft = |c: &Candidate| predicted_ttft_ms(c, 2000, &config);
        assert!(ttft(&a) > ttft(&b), "B would answer first");
        let rng = &mut SmallRng::seed_from_u64(0);
        assert_eq!(choose(&[a, b], 2000, &config, rng).unwrap().0, 0, "but A keeps the prefix");
        let greedy = KvRouterConfig { duplicate_cost: 0.0, ..config };
        assert_eq!(choose(&[a, b], 2000, &greedy, rng).unwrap().0, 1);
    }

    #[test]
    fn the_duplicate_charge_scales_with_how_full_the_worker_cache_is() {
        let config = KvRouterConfig { block_size: 64, ..KvRouterConfig::default() };
        // As in the test above: A holds the prefix behind a short queue, B is idle but lacks it.
        let a =
            Candidate { overlap_blocks: 20, active_prefill_tokens: 2000, active_requests: 1, ..candidate(1, 0, 0, 0) };
        let b_with = |cached_blocks, kv_capacity_blocks| Candidate {
            cached_blocks,
            kv_capacity_blocks,
            ..candidate(2, 0, 0, 0)
        };
        let charge = |b: &Candidate| predicted_ttft_cost(b, 2000, 20, &config) - predicted_ttft_ms(b, 2000, &config);
        let whole = charge(&b_with(0, None));
        assert!(whole > 0.0, "size unknown: the whole charge");
        assert_eq!(charge(&b_with(0, Some(1000))), 0.0, "an empty cache loses nothing to a copy");
        assert!(close(charge(&b_with(250, Some(1000))), whole / 4.0));
        assert!(close(charge(&b_with(1000, Some(1000))), whole));
        assert!(close(charge(&b_with(5000, Some(1000))), whole), "no more than the whole charge");
        // So the prefix stays on A only while B's cache is full enough for a copy to cost.
        let rng = &mut SmallRng::seed_from_u64(0);
        assert_eq!(choose(&[a, b_with(0, Some(1000))], 2000, &config, rng).unwrap().0, 1);
        assert_eq!(choose(&[a, b_with(1000, Some(1000))], 2000, &config, rng).unwrap().0, 0);
        // A configured cache size of 0 is refused rather than read as "always full".
        let zero = KvRouterConfig { worker_kv_blocks: Some(0), ..config };
        assert_eq!(zero.validate(), Err(ConfigError::WorkerKvBlocks));
    }

    #[test]
    fn dynamo_worked_example_picks_the_second_worker() {
        // Block size 16, weight 1, a request of 128 tokens (8 blocks).
        // A: no overlap, 2 active blocks; B: overlap 6; C: overlap 5.
        let config = blocks_config();
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
        let mut config = KvRouterConfig { overlap_score_weight: 0.0, ..blocks_config() };
        assert_eq!(cost(&candidate(1, 0, 5, 8), 128, &config), 13.0);
        config = KvRouterConfig { overlap_score_credit: 4.0, ..blocks_config() };
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
        let config = KvRouterConfig { router_temperature: 0.5, ..blocks_config() };
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
        assert!(matches!(
            base.with_override(Some(&bad)),
            Err(ConfigError::OutOfRange { field: "overlap_score_weight", .. })
        ));
        let nan = RouterConfigOverride { router_temperature: Some(f64::NAN), ..Default::default() };
        assert!(base.with_override(Some(&nan)).is_err());
        assert_eq!(KvRouterConfig { block_size: 0, ..base }.validate(), Err(ConfigError::BlockSize));
        let dynamo: RouterConfigOverride = serde_json::from_str(r#"{"cost_model": "dynamo_classic"}"#).unwrap();
        assert_eq!(dynamo.cost_model, Some(CostModel::Blocks));
        assert_eq!("dynamo-classic".parse::<CostModel>(), Ok(CostModel::Blocks));
        assert_eq!("predicted_ttft".parse::<CostModel>(), Ok(CostModel::PredictedTtft));
        assert!("fastest".parse::<CostModel>().is_err());
        let parsed: RouterConfigOverride = serde_json::from_str(r#"{"prefill_load_scale": 2.0}"#).unwrap();
        assert_eq!(parsed.overlap_score_weight, Some(2.0));
        assert!(serde_json::from_str::<RouterConfigOverride>(r#"{"temperature": 2.0}"#).is_err());
    }
}
