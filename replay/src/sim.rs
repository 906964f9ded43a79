//! The discrete-event simulation: mocker engines behind a KV router — or several pools, each
//! behind its own router, chosen per request by `pool-select` — in virtual time.
//!
//! Owns the clock and the order of events; the engines ([`kvroute_mocker::Engine`]) own
//! scheduling, caching and step time, the routers ([`KvRouter`]) own the choice of worker and
//! the [`Selector`] the choice of pool (from every pool router's query-only answer, as the
//! global router probes its groups).
//! At one timestamp, as Dynamo's offline replay (`drain_current_timestamp`):
//! 1. passes ending now complete, worker by worker: their KV events reach the router first,
//!    then their tokens (first token → `mark_prefill_complete`, last → `free`);
//! 2. requests arriving now are routed, in arrival order, into their worker's waiting queue;
//! 3. every idle worker with work starts a pass. The pass is decided at its start; its tokens
//!    and events take effect at its end, so an arrival during a pass waits for the next one.
//!
//! Nothing here reads a clock or an unseeded RNG: the same inputs and seed give the same
//! records.

use kvroute_kv_router::replicas::ReplicaLoads;
use kvroute_kv_router::router::{BlockedRequest, RouteError, RouteOptions};
use kvroute_kv_router::select::ConfigError as RouterConfigError;
use kvroute_kv_router::{KvRouter, KvRouterConfig};
use kvroute_mocker::block_pool::CacheEvent;
use kvroute_mocker::config::ConfigError as EngineConfigError;
use kvroute_mocker::engine::RejectError;
use kvroute_mocker::server::http_push::to_router_events;
use kvroute_mocker::{Engine, EngineConfig, EngineRequest, OutputIds, Pass};
use kvroute_pool_select::{
    ConfigError as PoolConfigError, PoolFacts, PoolState, RequestFeatures, SelectConfig, SelectError, Selector,
};
use kvroute_protocol::{HashSeed, Worker};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use serde::Serialize;
use thiserror::Error;

use crate::trace::ReplayRequest;

/// Output token ids are drawn below this bound (they only shape generated blocks' hashes).
const VOCAB_SIZE: u32 = 1 << 20;

/// What to simulate.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplayConfig {
    /// Number of workers (engines), each with `engine`.
    pub workers: usize,
    pub engine: EngineConfig,
    /// The router's settings; its `block_size` must equal the engine's.
    pub router: KvRouterConfig,
    /// Seeds the router's tie-breaks and the output tokens.
    pub seed: u64,
    /// Split the workers into pools, each behind its own router, chosen per request by
    /// `pool-select` (as the global router does); `None`: one router over all workers.
    pub pools: Option<PoolSplit>,
    /// Router replicas per pool (a router group), requests dealt to them in turn as the global
    /// router does. Each hears every KV event of its pool.
    pub router_replicas: usize,
    /// Whether a pool's replicas share their load (replica sync, without delay); without it
    /// each counts only the requests it routed.
    pub replica_sync: bool,
    /// Workers that join while the trace runs (scaling out); `None`: all are there from the start.
    pub late_workers: Option<LateWorkers>,
}

/// The last `count` workers (of the last pool) join the routers at the first arrival at or
/// after `at_ms`, with empty caches.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LateWorkers {
    pub count: usize,
    pub at_ms: f64,
}

/// Workers in pools: `sizes` (summing to the worker count), named `pool-0`, `pool-1`, …, and
/// the pool-selection policy over them.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolSplit {
    pub sizes: Vec<usize>,
    pub policy: kvroute_pool_select::Policy,
}

impl ReplayConfig {
    /// `workers` engines with Dynamo's mocker defaults (block 64, 16,384 blocks, 256 sequences,
    /// 8,192 batched tokens) behind a router at Dynamo's defaults (scale 1, credit 1,
    /// temperature 0) in `mode`, told the engines' cache size as `kvroute up` tells it.
    pub fn dynamo_defaults(workers: usize, mode: kvroute_kv_router::select::RouterMode) -> Self {
        let engine = EngineConfig::default();
        let router = KvRouterConfig {
            block_size: engine.block_size as u32,
            router_mode: mode,
            cost_model: kvroute_kv_router::select::CostModel::Blocks,
            worker_kv_blocks: Some(engine.num_gpu_blocks as u64),
            ..KvRouterConfig::default()
        };
        ReplayConfig {
            workers,
            engine,
            router,
            seed: 0,
            pools: None,
            router_replicas: 1,
            replica_sync: true,
            late_workers: None,
        }
    }
}

/// Why a replay could not run.
#[derive(Debug, Error)]
pub enum ReplayError {
    #[error("workers must be > 0")]
    NoWorkers,
    #[error("router replicas must be > 0")]
    NoReplicas,
    #[error("engine config: {0}")]
    Engine(#[from] EngineConfigError),
    #[error("router config: {0}")]
    Router(#[from] RouterConfigError),
    #[error("router block_size {router} differs from the engine's {engine}")]
    BlockSizeMismatch { router: u32, engine: usize },
    #[error("routing request {request}: {source}")]
    Route { request: usize, source: RouteError },
    #[error("router bookkeeping for request {request}: {message}")]
    Bookkeeping { request: usize, message: String },
    #[error("worker {worker} has work but its pass did nothing (stuck)")]
    Stuck { worker: usize },
    #[error("pool sizes {sizes:?} must be non-empty and sum to the {workers} workers")]
    PoolSizes { sizes: Vec<usize>, workers: usize },
    #[error("{count} late workers: the last pool ({pool_size} workers) must keep one from the start")]
    LateWorkers { count: usize, pool_size: usize },
    #[error("pool selection config: {0}")]
    PoolConfig(#[from] PoolConfigError),
    #[error("choosing a pool for request {request}: {source}")]
    PoolSelect { request: usize, source: SelectError },
}

/// What happened to one request.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RequestRecord {
    /// Position in the trace file.
    pub index: usize,
    pub arrival_ms: f64,
    pub input_length: usize,
    pub output_length: usize,
    /// The pool chosen (0 without pools).
    pub pool: usize,
    /// The worker the router chose (numbered across pools).
    pub worker: usize,
    /// End of the pass that produced the first token.
    pub first_token_ms: Option<f64>,
    /// End of the pass that produced the last token.
    pub finish_ms: Option<f64>,
    /// Prompt tokens the engine served from its cache at admission (max over re-admissions
    /// after preemption, as Dynamo's report keeps it).
    pub cached_tokens: usize,
    /// The same at the first admission.
    pub first_admission_cached_tokens: Option<usize>,
    /// Blocks the router believed the chosen worker had cached.
    pub router_overlap_blocks: u32,
    pub preemptions: u32,
    /// Set when the engine refused the request (too long for its cache).
    pub rejected: Option<String>,
}

impl RequestRecord {
    pub fn ttft_ms(&self) -> Option<f64> {
        self.first_token_ms.map(|t| t - self.arrival_ms)
    }

    pub fn e2e_ms(&self) -> Option<f64> {
        self.finish_ms.map(|t| t - self.arrival_ms)
    }
}

/// Counters over the whole run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SimStats {
    pub passes: u64,
    pub preemptions: u64,
    pub kv_events: u64,
    /// KV events the router's index refused (e.g. a stored block whose parent it never saw).
    pub kv_events_rejected: u64,
    /// Virtual time when the last pass ended.
    pub end_ms: f64,
}

/// The result of a replay.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReplayOutcome {
    /// One record per request, in the order of the input slice (arrival order).
    pub records: Vec<RequestRecord>,
    pub stats: SimStats,
}

struct WorkerState {
    engine: Engine,
    /// The pass in flight and its end time.
    busy: Option<(f64, Pass)>,
    next_event_id: u64,
}

/// Replay `requests` (sorted by arrival, as [`crate::trace::expand`] returns them).
pub fn run(config: &ReplayConfig, requests: &[ReplayRequest]) -> Result<ReplayOutcome, ReplayError> {
    Simulation::new(config)?.run(requests)
}

/// One pool's router replicas.
struct RouterGroup {
    replicas: Vec<KvRouter>,
    /// The replica the next request goes to.
    next: usize,
    sync: bool,
}

impl RouterGroup {
    /// Make `worker` selectable on every replica.
    fn add_worker(&mut self, worker: Worker) {
        for router in &mut self.replicas {
            router.add_worker(worker);
        }
    }

    /// Hand what replica `r` just changed to the others (replica sync without delay).
    fn share(&mut self, r: usize) {
        if !self.sync || self.replicas.len() == 1 {
            return;
        }
        let updates = self.replicas[r].take_load_updates();
        let name = r.to_string();
        for (o, other) in self.replicas.iter_mut().enumerate() {
            if o != r {
                for u in &updates {
                    other.apply_replica_update(&name, u);
                }
            }
        }
    }
}

struct Simulation {
    workers: Vec<WorkerState>,
    /// One router group per pool (one in all without pools).
    groups: Vec<RouterGroup>,
    /// The replica of its pool's group that routed each request.
    replica_of: Vec<usize>,
    /// `pool_of[w]`: the pool worker `w` is in.
    pool_of: Vec<usize>,
    /// Chooses the pool when there are several.
    selector: Option<Selector<SmallRng>>,
    /// Requests routed to each pool and not finished.
    in_flight: Vec<u64>,
    router_block_size: u32,
    seed: u64,
    stats: SimStats,
    /// Workers still to join the routers, and when.
    late: Option<(f64, std::ops::Range<usize>)>,
}

impl Simulation {
    fn new(config: &ReplayConfig) -> Result<Self, ReplayError> {
        if config.workers == 0 {
            return Err(ReplayError::NoWorkers);
        }
        config.engine.validate()?;
        if config.router.block_size as usize != config.engine.block_size {
            return Err(ReplayError::BlockSizeMismatch {
                router: config.router.block_size,
                engine: config.engine.block_size,
            });
        }
        let sizes = match &config.pools {
            Some(split) => split.sizes.clone(),
            None => vec![config.workers],
        };
        if sizes.is_empty() || sizes.contains(&0) || sizes.iter().sum::<usize>() != config.workers {
            return Err(ReplayError::PoolSizes { sizes, workers: config.workers });
        }
        let pool_of: Vec<usize> = sizes.iter().enumerate().flat_map(|(p, &n)| std::iter::repeat_n(p, n)).collect();
        if config.router_replicas == 0 {
            return Err(ReplayError::NoReplicas);
        }
        let late = match config.late_workers {
            Some(LateWorkers { count, at_ms }) if count > 0 => {
                let pool_size = *sizes.last().expect("sizes checked non-empty");
                if count >= pool_size {
                    return Err(ReplayError::LateWorkers { count, pool_size });
                }
                Some((at_ms, config.workers - count..config.workers))
            }
            _ => None,
        };
        let mut groups = (0..sizes.len())
            .map(|p| {
                let replicas = (0..config.router_replicas)
                    .map(|r| {
                        let seed = config.seed.wrapping_add(p as u64).wrapping_add((r as u64) << 32);
                        let mut router = KvRouter::with_seed(config.router.clone(), seed)?;
                        if config.replica_sync && config.router_replicas > 1 {
                            router.share_load();
                        }
                        Ok(router)
                    })
                    .collect::<Result<Vec<_>, RouterConfigError>>()?;
                Ok(RouterGroup { replicas, next: 0, sync: config.replica_sync })
            })
            .collect::<Result<Vec<_>, RouterConfigError>>()?;
        let selector = match &config.pools {
            Some(split) if sizes.len() > 1 => {
                let pools = (0..sizes.len()).map(|p| PoolFacts::new(format!("pool-{p}"))).collect();
                let select = SelectConfig { pools, policy: split.policy.clone() };
                Some(Selector::new(select, SmallRng::seed_from_u64(config.seed))?)
            }
            _ => None,
        };
        let workers = (0..config.workers)
            .map(|w| {
                if !late.as_ref().is_some_and(|(_, range)| range.contains(&w)) {
                    groups[pool_of[w]].add_worker(worker_of(w));
                }
                WorkerState { engine: Engine::new(config.engine.clone()), busy: None, next_event_id: 0 }
            })
            .collect();
        Ok(Simulation {
            workers,
            in_flight: vec![0; groups.len()],
            groups,
            replica_of: Vec::new(),
            pool_of,
            selector,
            router_block_size: config.router.block_size,
            seed: config.seed,
            stats: SimStats::default(),
            late,
        })
    }

    fn run(mut self, requests: &[ReplayRequest]) -> Result<ReplayOutcome, ReplayError> {
        let mut order: Vec<usize> = (0..requests.len()).collect();
        order.sort_by(|&a, &b| requests[a].arrival_ms.total_cmp(&requests[b].arrival_ms));
        let mut records: Vec<Option<RequestRecord>> = vec![None; requests.len()];
        self.replica_of = vec![0; requests.len()];
        let mut next = 0;
        loop {
            let next_pass = self.workers.iter().filter_map(|w| w.busy.as_ref().map(|b| b.0)).min_by(f64::total_cmp);
            let next_arrival = order.get(next).map(|&i| requests[i].arrival_ms);
            let now = match (next_pass, next_arrival) {
                (None, None) => break,
                (Some(p), None) => p,
                (None, Some(a)) => a,
                (Some(p), Some(a)) => p.min(a),
            };
            // 1. Passes ending now.
            for w in 0..self.workers.len() {
                if self.workers[w].busy.as_ref().is_some_and(|b| b.0 == now) {
                    let (_, pass) = self.workers[w].busy.take().expect("checked busy");
                    self.complete(w, now, pass, &mut records)?;
                }
            }
            // 2. Requests arriving now (late workers joining first when it is their time).
            if order.get(next).is_some_and(|&i| requests[i].arrival_ms <= now) {
                self.join_late_workers(now);
            }
            while let Some(&i) = order.get(next) {
                if requests[i].arrival_ms > now {
                    break;
                }
                records[i] = Some(self.route(i, &requests[i])?);
                next += 1;
            }
            // 3. Idle workers with work start a pass.
            for w in 0..self.workers.len() {
                let state = &mut self.workers[w];
                if state.busy.is_some() || !state.engine.has_work() {
                    continue;
                }
                let pass = state.engine.step();
                self.stats.passes += 1;
                self.stats.preemptions += pass.preempted.len() as u64;
                if pass.duration_ms == 0.0
                    && pass.tokens.is_empty()
                    && pass.admitted.is_empty()
                    && pass.events.is_empty()
                {
                    return Err(ReplayError::Stuck { worker: w });
                }
                for a in &pass.admitted {
                    let r = records[a.request as usize].as_mut().expect("admitted requests were routed");
                    r.cached_tokens = r.cached_tokens.max(a.cached_tokens);
                    r.first_admission_cached_tokens.get_or_insert(a.cached_tokens);
                }
                for &p in &pass.preempted {
                    if let Some(r) = records[p as usize].as_mut() {
                        r.preemptions += 1;
                    }
                }
                state.busy = Some((now + pass.duration_ms, pass));
            }
        }
        let records = records.into_iter().map(|r| r.expect("every request arrived")).collect();
        Ok(ReplayOutcome { records, stats: self.stats })
    }

    /// Make the late workers selectable once `now` reaches their time.
    fn join_late_workers(&mut self, now: f64) {
        let Some((_, range)) = self.late.take_if(|(at_ms, _)| now >= *at_ms) else { return };
        for w in range {
            self.groups[self.pool_of[w]].add_worker(worker_of(w));
        }
    }

    /// A pass ended: its KV events reach the router, then its tokens count.
    fn complete(
        &mut self,
        w: usize,
        now: f64,
        pass: Pass,
        records: &mut [Option<RequestRecord>],
    ) -> Result<(), ReplayError> {
        self.apply_events(w, &pass.events);
        for t in &pass.tokens {
            let id = t.request as usize;
            let key = id.to_string();
            let r = records[id].as_mut().expect("a request with tokens was routed");
            let bookkeeping = |e: kvroute_kv_router::load::LoadError| ReplayError::Bookkeeping {
                request: id,
                message: e.to_string(),
            };
            let pool = r.pool;
            let replica = self.replica_of[id];
            let group = &mut self.groups[pool];
            if t.first {
                r.first_token_ms = Some(now);
                group.replicas[replica].mark_prefill_complete(&key).map_err(bookkeeping)?;
            }
            if t.finish.is_some() {
                r.finish_ms = Some(now);
                group.replicas[replica].free(&key).map_err(bookkeeping)?;
                self.in_flight[pool] -= 1;
            }
            group.share(replica);
        }
        self.stats.end_ms = self.stats.end_ms.max(now);
        Ok(())
    }

    fn apply_events(&mut self, w: usize, events: &[CacheEvent]) {
        if events.is_empty() {
            return;
        }
        let state = &mut self.workers[w];
        let converted = to_router_events(worker_of(w), &mut state.next_event_id, events);
        for e in &converted {
            self.stats.kv_events += 1;
            for (r, router) in self.groups[self.pool_of[w]].replicas.iter_mut().enumerate() {
                if router.apply_event(e).is_err() && r == 0 {
                    self.stats.kv_events_rejected += 1;
                }
            }
        }
    }

    /// The pool for a request: the only one, or `pool-select`'s choice from every pool
    /// router's query-only answer (as the global router probes its groups; here, the replica
    /// whose turn it is).
    fn choose_pool(&mut self, i: usize, blocked: &BlockedRequest) -> Result<usize, ReplayError> {
        let Some(selector) = self.selector.as_mut() else { return Ok(0) };
        let probes = self
            .groups
            .iter_mut()
            .map(|g| g.replicas[g.next].best_worker(blocked, RouteOptions::default()).map(|routed| routed.answer()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| ReplayError::Route { request: i, source })?;
        let probes: Vec<_> = probes.iter().map(Some).collect();
        let states: Vec<PoolState> =
            self.in_flight.iter().map(|&in_flight| PoolState { healthy: true, in_flight }).collect();
        let features = RequestFeatures { isl_tokens: blocked.isl_tokens, ..RequestFeatures::default() };
        let decision = selector
            .decide(&features, &states, &probes)
            .map_err(|source| ReplayError::PoolSelect { request: i, source })?;
        Ok(decision.pool)
    }

    /// Route an arriving request and queue it on the chosen engine.
    fn route(&mut self, i: usize, request: &ReplayRequest) -> Result<RequestRecord, ReplayError> {
        let blocked = BlockedRequest::from_tokens(&request.prompt, self.router_block_size, HashSeed::default());
        let pool = self.choose_pool(i, &blocked)?;
        let key = i.to_string();
        let options = RouteOptions { request_id: Some(&key), ..RouteOptions::default() };
        let group = &mut self.groups[pool];
        let replica = group.next;
        group.next = (replica + 1) % group.replicas.len();
        self.replica_of[i] = replica;
        let routed = group.replicas[replica]
            .best_worker(&blocked, options)
            .map_err(|source| ReplayError::Route { request: i, source })?;
        group.share(replica);
        let w = routed.worker.worker_id as usize;
        self.in_flight[pool] += 1;
        let mut record = RequestRecord {
            index: request.index,
            arrival_ms: request.arrival_ms,
            input_length: request.prompt.len(),
            output_length: request.output_length,
            pool,
            worker: w,
            first_token_ms: None,
            finish_ms: None,
            cached_tokens: 0,
            first_admission_cached_tokens: None,
            router_overlap_blocks: routed.overlap_blocks,
            preemptions: 0,
            rejected: None,
        };
        let engine_request = EngineRequest {
            id: i as u64,
            prompt: request.prompt.clone(),
            max_tokens: request.output_length,
            seed: self.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            eos_token_id: None,
            output_ids: OutputIds::Below(VOCAB_SIZE),
        };
        if let Err(e) = self.workers[w].engine.add(engine_request) {
            record.rejected = Some(e.to_string());
            let _ = self.groups[pool].replicas[replica].free(&key);
            self.groups[pool].share(replica);
            self.in_flight[pool] -= 1;
            if matches!(e, RejectError::Duplicate(_)) {
                return Err(ReplayError::Bookkeeping { request: i, message: e.to_string() });
            }
        }
        Ok(record)
    }
}

fn worker_of(index: usize) -> Worker {
    Worker::new(index as u64, 0)
}
