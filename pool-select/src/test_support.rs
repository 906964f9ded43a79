//! Test fixtures: a small builder of pools and probes, so each test states only what matters.

use kvroute_protocol::api::BestWorkerResponse;

use crate::pool::{PoolFacts, PoolLimits, PoolState, PoolView, RequestFeatures};
use crate::score::Policy;
use crate::{SelectConfig, Selector};
use rand::rngs::SmallRng;
use rand::SeedableRng;

/// Pools named as given: any model, priority 0, weight 1, healthy, idle.
#[derive(Clone, Debug)]
pub struct Pools {
    pub facts: Vec<PoolFacts>,
    pub states: Vec<PoolState>,
}

impl Pools {
    pub fn new(names: &[&str]) -> Self {
        Pools { facts: names.iter().map(|n| PoolFacts::new(*n)).collect(), states: vec![PoolState::IDLE; names.len()] }
    }
    pub fn model(mut self, i: usize, model: &str) -> Self {
        self.facts[i].model = Some(model.into());
        self
    }
    pub fn priority(mut self, i: usize, priority: u32) -> Self {
        self.facts[i].priority = priority;
        self
    }
    pub fn weight(mut self, i: usize, weight: f64) -> Self {
        self.facts[i].weight = weight;
        self
    }
    pub fn sick(mut self, i: usize) -> Self {
        self.states[i].healthy = false;
        self
    }
    pub fn in_flight(mut self, i: usize, n: u64) -> Self {
        self.states[i].in_flight = n;
        self
    }
    pub fn limit_prefill(mut self, i: usize, max: u64) -> Self {
        self.facts[i].limits.get_or_insert_with(PoolLimits::default).max_potential_prefill_tokens = Some(max);
        self
    }
    pub fn limit_decode(mut self, i: usize, max: u64) -> Self {
        self.facts[i].limits.get_or_insert_with(PoolLimits::default).max_potential_decode_blocks = Some(max);
        self
    }
    pub fn max_input(mut self, i: usize, max: u64) -> Self {
        self.facts[i].max_input_tokens = Some(max);
        self
    }
    pub fn views<'a>(&'a self, probes: &[Option<&'a BestWorkerResponse>]) -> Vec<PoolView<'a>> {
        (0..self.facts.len())
            .map(|i| PoolView { facts: &self.facts[i], state: self.states[i], probe: probes[i] })
            .collect()
    }
    /// A selector over these pools with `policy`, seeded with `seed`.
    pub fn selector(&self, policy: Policy, seed: u64) -> Selector<SmallRng> {
        let config = SelectConfig { pools: self.facts.clone(), policy };
        Selector::new(config, SmallRng::seed_from_u64(seed)).unwrap()
    }
}

/// A probe answer with the given overlap and potential loads (8 request blocks).
pub fn probe(overlap_blocks: u32, potential_prefill_tokens: u64, potential_decode_blocks: u64) -> BestWorkerResponse {
    BestWorkerResponse {
        worker_id: 1,
        dp_rank: 0,
        overlap_blocks,
        request_blocks: 8,
        potential_prefill_tokens,
        potential_decode_blocks,
        cost: 0.0,
    }
}

/// A request for `model` with no other features.
pub fn features(model: Option<&str>) -> RequestFeatures {
    RequestFeatures { model: model.map(Into::into), ..RequestFeatures::default() }
}
