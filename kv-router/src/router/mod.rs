//! [`KvRouter`]: the index, the active sequences and selection behind Dynamo's `KvRouter` API
//! (`best_worker`, `get_potential_loads`, `mark_prefill_complete`, `free`, `dump_events`).
//!
//! Pure state, no I/O: the HTTP service and the event sources drive it. Randomness comes from
//! the RNG it is built with, so a seeded router makes the same choices for the same inputs.
//!
//! With [`KvRouter::share_load`], every change to the requests it tracks is also written down
//! as a [`LoadUpdate`] for the caller to send to the group's other replicas
//! ([`crate::replicas`]); what they send comes back in through [`ReplicaLoads`].
//!
//! What is cached where comes from a [`CacheView`]: by default the router owns its
//! [`KvIndex`] and is fed the events itself (one thread does both); built over an
//! [`IndexReader`] it reads an index whose owner applies events elsewhere, concurrently (the
//! service: routing does not wait for event application).

use kvroute_protocol::api::BestWorkerResponse;
use kvroute_protocol::events::RouterEvent;
use kvroute_protocol::{block_hashes, sequence_hashes, HashSeed, LocalBlockHash, SequenceHash, Worker};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rustc_hash::FxHashMap;
use serde::Serialize;
use thiserror::Error;

use crate::index::{IndexError, IndexReader, KvIndex, Overlap};
use crate::load::{ActiveSequences, LoadError, WorkerLoad};
use crate::replicas::{LoadUpdate, ReplicaLoads};
use crate::select::{
    choose, costs, least_loaded, Candidate, ConfigError, CostModel, KvRouterConfig, RouterConfigOverride, RouterMode,
};

/// A request cut into blocks: what every routing call needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockedRequest {
    /// Prompt length in tokens (including a partial trailing block).
    pub isl_tokens: u64,
    /// Local hashes of the full blocks (what the index matches).
    pub local: Vec<LocalBlockHash>,
    /// Sequence hashes of the same blocks (what active-load tracking counts).
    pub sequence: Vec<SequenceHash>,
    /// Full blocks after the hashed ones, not hashed: a query about a long text prompt
    /// tokenizes only as much of its beginning as any worker holds, and estimates the rest
    /// ([`from_beginning`](Self::from_beginning)). They count as cached nowhere. 0 when every
    /// block is hashed.
    pub unhashed_blocks: u32,
}

impl BlockedRequest {
    pub fn from_tokens(tokens: &[u32], block_size: u32, seed: HashSeed) -> Self {
        Self::from_beginning(tokens, tokens.len() as u64, block_size, seed)
    }

    /// A prompt of `isl_tokens` tokens of which only the first, `beginning`, are known.
    pub fn from_beginning(beginning: &[u32], isl_tokens: u64, block_size: u32, seed: HashSeed) -> Self {
        let local = block_hashes(beginning, block_size as usize, seed);
        let sequence = sequence_hashes(&local);
        let all_blocks = isl_tokens.max(beginning.len() as u64) / u64::from(block_size);
        let unhashed_blocks = u32::try_from(all_blocks - local.len() as u64).unwrap_or(u32::MAX);
        BlockedRequest { isl_tokens: isl_tokens.max(beginning.len() as u64), local, sequence, unhashed_blocks }
    }

    /// Full blocks in the prompt, hashed or not.
    pub fn blocks(&self) -> u32 {
        (self.local.len() as u32).saturating_add(self.unhashed_blocks)
    }
}

/// A worker the caller wants (`x-worker-instance-id`, optional `x-dp-rank`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForcedWorker {
    pub worker_id: u64,
    /// None: the cheapest of the worker's ranks.
    pub dp_rank: Option<u32>,
}

/// Options of one routing call.
#[derive(Clone, Copy, Debug, Default)]
pub struct RouteOptions<'a> {
    /// Track the request under this id until `free` (None: query only, no state change).
    pub request_id: Option<&'a str>,
    pub config_override: Option<&'a RouterConfigOverride>,
    pub forced: Option<ForcedWorker>,
}

/// Whether a forced worker was honoured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Forced {
    Honoured,
    /// Unknown worker or rank: routed normally instead (fail open).
    Ignored,
}

/// The routing decision (Dynamo's `best_worker` answer plus the figures pool selection needs).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Routed {
    pub worker: Worker,
    pub overlap_blocks: u32,
    /// Full blocks in the request (the most `overlap_blocks` can be).
    pub request_blocks: u32,
    pub potential_prefill_tokens: u64,
    pub potential_decode_blocks: u64,
    pub cost: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forced: Option<Forced>,
}

impl Routed {
    /// The `/best_worker` answer on the wire.
    pub fn answer(&self) -> BestWorkerResponse {
        BestWorkerResponse {
            worker_id: self.worker.worker_id,
            dp_rank: self.worker.dp_rank,
            overlap_blocks: self.overlap_blocks,
            request_blocks: self.request_blocks,
            potential_prefill_tokens: self.potential_prefill_tokens,
            potential_decode_blocks: self.potential_decode_blocks,
            cost: self.cost,
        }
    }
}

/// One worker's figures for a request (`get_potential_loads`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PotentialLoad {
    pub worker_id: u64,
    pub dp_rank: u32,
    pub overlap_blocks: u32,
    pub potential_prefill_tokens: u64,
    pub potential_decode_blocks: u64,
}

#[derive(Debug, Error, PartialEq)]
pub enum RouteError {
    #[error("no worker is available")]
    NoWorkers,
    #[error("invalid router_config_override: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// Where the router reads what each worker has cached.
pub trait CacheView {
    /// How many leading blocks of `query` each worker holds.
    fn find_matches(&self, query: &[LocalBlockHash]) -> Vec<Overlap>;
    /// How many blocks each of `workers` holds, in order (0 for a worker it does not know).
    fn cached_blocks(&self, workers: &[Worker]) -> Vec<u64>;
    /// `worker` became selectable. An index the router owns registers it; a view of an index
    /// applied elsewhere leaves that to the index's owner.
    fn worker_added(&mut self, _worker: Worker) {}
    /// Every rank of `worker_id` left; as above, an owned index forgets their blocks.
    fn worker_removed(&mut self, _worker_id: u64) {}
}

impl CacheView for KvIndex {
    fn find_matches(&self, query: &[LocalBlockHash]) -> Vec<Overlap> {
        KvIndex::find_matches(self, query)
    }

    fn cached_blocks(&self, workers: &[Worker]) -> Vec<u64> {
        workers.iter().map(|&w| KvIndex::cached_blocks(self, w) as u64).collect()
    }

    fn worker_added(&mut self, worker: Worker) {
        self.add_worker(worker);
    }

    fn worker_removed(&mut self, worker_id: u64) {
        self.remove_worker(worker_id);
    }
}

impl CacheView for IndexReader {
    fn find_matches(&self, query: &[LocalBlockHash]) -> Vec<Overlap> {
        IndexReader::find_matches(self, query)
    }

    fn cached_blocks(&self, workers: &[Worker]) -> Vec<u64> {
        let held = IndexReader::cached_blocks(self);
        workers.iter().map(|w| held.get(w).copied().unwrap_or(0)).collect()
    }
}

/// The local KV router's state for one pool.
pub struct KvRouter<R = SmallRng, I = KvIndex> {
    config: KvRouterConfig,
    index: I,
    active: ActiveSequences,
    /// Selectable workers, sorted (a deterministic candidate order for seeded runs).
    workers: Vec<Worker>,
    rng: R,
    /// Next turn in round-robin mode.
    turn: usize,
    /// Changes to the tracked requests not yet taken by the caller (None: not sharing).
    outbox: Option<Vec<LoadUpdate>>,
    /// KV cache blocks per rank that workers stated (their metrics), by worker id; the
    /// configured `worker_kv_blocks` takes precedence.
    stated_kv_blocks: FxHashMap<u64, u64>,
}

impl KvRouter<SmallRng> {
    /// A router whose random choices are determined by `seed`.
    pub fn with_seed(config: KvRouterConfig, seed: u64) -> Result<Self, ConfigError> {
        Self::with_rng(config, SmallRng::seed_from_u64(seed))
    }
}

impl KvRouter<SmallRng, IndexReader> {
    /// A router that reads an index applied elsewhere (see the module docs); `seed` as in
    /// [`KvRouter::with_seed`].
    pub fn reading(config: KvRouterConfig, seed: u64, index: IndexReader) -> Result<Self, ConfigError> {
        Self::with_rng_and_view(config, SmallRng::seed_from_u64(seed), index)
    }
}

impl<R: Rng> KvRouter<R> {
    pub fn with_rng(config: KvRouterConfig, rng: R) -> Result<Self, ConfigError> {
        Self::with_rng_and_view(config, rng, KvIndex::new())
    }

    pub fn index(&self) -> &KvIndex {
        &self.index
    }

    pub fn apply_event(&mut self, event: &RouterEvent) -> Result<(), IndexError> {
        self.index.apply_event(event)
    }

    /// Record an event the source could not convert because of a block-size mismatch.
    pub fn record_block_size_mismatch(&mut self, worker: Worker) {
        self.index.record_block_size_mismatch(worker);
    }

    pub fn dump_events(&self) -> Vec<RouterEvent> {
        self.index.dump_events()
    }
}

impl<R: Rng, I: CacheView> KvRouter<R, I> {
    pub fn with_rng_and_view(config: KvRouterConfig, rng: R, index: I) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(KvRouter {
            config,
            index,
            active: ActiveSequences::new(),
            workers: Vec::new(),
            rng,
            turn: 0,
            outbox: None,
            stated_kv_blocks: FxHashMap::default(),
        })
    }

    /// Record the KV cache size (blocks per rank) worker `worker_id` states, e.g. in its
    /// metrics; used unless `worker_kv_blocks` is configured. 0 is ignored.
    pub fn set_worker_kv_blocks(&mut self, worker_id: u64, blocks: u64) {
        if blocks > 0 {
            self.stated_kv_blocks.insert(worker_id, blocks);
        }
    }

    /// The KV cache size (blocks per rank) the router uses for `worker_id`: configured, or
    /// stated by the worker; `None` when unknown.
    pub fn worker_kv_blocks(&self, worker_id: u64) -> Option<u64> {
        self.config.worker_kv_blocks.or_else(|| self.stated_kv_blocks.get(&worker_id).copied())
    }

    pub fn config(&self) -> &KvRouterConfig {
        &self.config
    }

    /// Make a worker selectable.
    pub fn add_worker(&mut self, worker: Worker) {
        if let Err(i) = self.workers.binary_search(&worker) {
            self.workers.insert(i, worker);
            self.index.worker_added(worker);
        }
    }

    /// Take every rank of a worker out: not selectable, its cache, load and stated cache size
    /// forgotten (a worker that comes back may have been restarted with another size).
    pub fn remove_worker(&mut self, worker_id: u64) {
        self.workers.retain(|w| w.worker_id != worker_id);
        self.stated_kv_blocks.remove(&worker_id);
        self.index.worker_removed(worker_id);
        for request_id in self.active.remove_worker(worker_id) {
            self.record(|| LoadUpdate::Freed { request_id });
        }
    }

    /// From now on, write down every change to the tracked requests for the group's other
    /// replicas ([`take_load_updates`](Self::take_load_updates)).
    pub fn share_load(&mut self) {
        self.outbox.get_or_insert_with(Vec::new);
    }

    /// The changes written down since the last call (empty when not sharing).
    pub fn take_load_updates(&mut self) -> Vec<LoadUpdate> {
        self.outbox.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Write down every request this replica tracks, as if it had just been routed (and, past
    /// its prefill, completed it): what a replica that asked for a resend needs. Nothing when
    /// not sharing.
    pub fn announce_tracked(&mut self) {
        let Some(outbox) = &mut self.outbox else { return };
        for (id, r) in self.active.requests() {
            outbox.push(LoadUpdate::Routed {
                request_id: id.to_owned(),
                worker_id: r.worker.worker_id,
                dp_rank: r.worker.dp_rank,
                // Past prefill the remaining count is 0; the prompt's size no longer matters.
                prefill_tokens: r.prefill_tokens,
                blocks: r.blocks.iter().map(|h| h.0).collect(),
            });
            if !r.prefilling {
                outbox.push(LoadUpdate::PrefillComplete { request_id: id.to_owned() });
            }
        }
    }

    /// Requests other replicas routed that count here.
    pub fn replica_request_count(&self) -> usize {
        self.active.replica_request_count()
    }

    fn record(&mut self, update: impl FnOnce() -> LoadUpdate) {
        if let Some(outbox) = &mut self.outbox {
            outbox.push(update());
        }
    }

    /// Selectable workers, sorted.
    pub fn workers(&self) -> &[Worker] {
        &self.workers
    }

    pub fn load(&self, worker: Worker) -> WorkerLoad {
        self.active.load(worker)
    }

    /// Every selectable worker's figures for `request`.
    pub fn candidates(&self, request: &BlockedRequest) -> Vec<Candidate> {
        let overlaps: FxHashMap<Worker, u32> =
            self.index.find_matches(&request.local).into_iter().map(|o| (o.worker, o.blocks)).collect();
        let cached_blocks = self.index.cached_blocks(&self.workers);
        self.workers
            .iter()
            .zip(cached_blocks)
            .map(|(&worker, cached_blocks)| {
                let load = self.active.load(worker);
                let new_blocks = self.active.new_blocks(worker, &request.sequence) + request.unhashed_blocks as usize;
                Candidate {
                    worker,
                    overlap_blocks: overlaps.get(&worker).copied().unwrap_or(0),
                    in_flight_prefix_blocks: (request.blocks() as usize - new_blocks) as u32,
                    cached_blocks,
                    kv_capacity_blocks: self.worker_kv_blocks(worker.worker_id),
                    active_prefill_tokens: load.active_prefill_tokens,
                    potential_decode_blocks: new_blocks as u64 + load.active_blocks,
                    active_requests: load.active_requests,
                    prefilling_requests: load.prefilling_requests,
                }
            })
            .collect()
    }

    /// The most of `request`'s leading blocks any worker has cached or is computing: a query
    /// that tokenized only a prompt's beginning needs more of it while this reaches its end.
    pub fn known_prefix_blocks(&self, request: &BlockedRequest) -> u32 {
        self.candidates(request).iter().map(Candidate::expected_overlap).max().unwrap_or(0)
    }

    pub fn potential_loads(&self, request: &BlockedRequest) -> Vec<PotentialLoad> {
        self.candidates(request)
            .into_iter()
            .map(|c| PotentialLoad {
                worker_id: c.worker.worker_id,
                dp_rank: c.worker.dp_rank,
                overlap_blocks: c.overlap_blocks,
                potential_prefill_tokens: c.potential_prefill_tokens(request.isl_tokens, self.config.block_size),
                potential_decode_blocks: c.potential_decode_blocks,
            })
            .collect()
    }

    /// Choose a worker for `request`. With a `request_id` the request is tracked (its load
    /// counts until [`free`](Self::free)); without one nothing changes but the RNG.
    pub fn best_worker(&mut self, request: &BlockedRequest, options: RouteOptions<'_>) -> Result<Routed, RouteError> {
        let config = self.config.with_override(options.config_override)?;
        if let Some(id) = options.request_id {
            if self.active.request(id).is_some() {
                return Err(LoadError::DuplicateRequest(id.to_owned()).into());
            }
        }
        let all = self.candidates(request);
        let mut forced = None;
        let mut pool: Vec<Candidate> = all.clone();
        if let Some(f) = options.forced {
            let wanted: Vec<Candidate> = all
                .iter()
                .filter(|c| c.worker.worker_id == f.worker_id && f.dp_rank.is_none_or(|r| r == c.worker.dp_rank))
                .copied()
                .collect();
            if wanted.is_empty() {
                forced = Some(Forced::Ignored);
            } else {
                forced = Some(Forced::Honoured);
                pool = wanted;
            }
        }
        if pool.is_empty() {
            return Err(RouteError::NoWorkers);
        }
        let mut cost_of_choice = None;
        let i = match config.router_mode {
            RouterMode::Kv => {
                let (i, costs) =
                    choose(&pool, request.isl_tokens, &config, &mut self.rng).ok_or(RouteError::NoWorkers)?;
                cost_of_choice = Some(costs[i]);
                i
            }
            RouterMode::RoundRobin => {
                self.turn = self.turn.wrapping_add(1);
                (self.turn - 1) % pool.len()
            }
            RouterMode::Random => self.rng.gen_range(0..pool.len()),
            RouterMode::LeastLoaded => {
                let requests: Vec<u64> = pool.iter().map(|c| self.active.load(c.worker).active_requests).collect();
                least_loaded(&pool, &requests, &mut self.rng).ok_or(RouteError::NoWorkers)?
            }
        };
        let c = pool[i];
        let routed = Routed {
            worker: c.worker,
            overlap_blocks: c.overlap_blocks,
            request_blocks: request.blocks(),
            potential_prefill_tokens: c.potential_prefill_tokens(request.isl_tokens, config.block_size),
            potential_decode_blocks: c.potential_decode_blocks,
            cost: cost_of_choice.unwrap_or_else(|| costs(&pool, request.isl_tokens, &config)[i]),
            forced,
        };
        if let Some(id) = options.request_id {
            // The prefill the worker is expected to do: with predicted_ttft, the part shared
            // with requests in flight there is not computed again.
            let cached = match config.cost_model {
                CostModel::PredictedTtft => c.expected_overlap(),
                CostModel::Blocks => c.overlap_blocks,
            };
            self.add_request(id, c.worker, request, cached)?;
        }
        Ok(routed)
    }

    /// Track a request routed elsewhere (e.g. by a custom router): its uncached prefill and
    /// its blocks count against `worker` until freed.
    pub fn add_request(
        &mut self,
        request_id: &str,
        worker: Worker,
        request: &BlockedRequest,
        overlap_blocks: u32,
    ) -> Result<(), LoadError> {
        let cached = u64::from(overlap_blocks) * u64::from(self.config.block_size);
        let prefill_tokens = request.isl_tokens.saturating_sub(cached);
        self.active.add_request(request_id, worker, prefill_tokens, &request.sequence)?;
        self.record(|| LoadUpdate::Routed {
            request_id: request_id.to_owned(),
            worker_id: worker.worker_id,
            dp_rank: worker.dp_rank,
            prefill_tokens,
            blocks: request.sequence.iter().map(|h| h.0).collect(),
        });
        Ok(())
    }

    pub fn mark_prefill_complete(&mut self, request_id: &str) -> Result<(), LoadError> {
        self.active.mark_prefill_complete(request_id)?;
        self.record(|| LoadUpdate::PrefillComplete { request_id: request_id.to_owned() });
        Ok(())
    }

    pub fn free(&mut self, request_id: &str) -> Result<(), LoadError> {
        self.active.free(request_id)?;
        self.record(|| LoadUpdate::Freed { request_id: request_id.to_owned() });
        Ok(())
    }
}

/// Other replicas' requests count against the workers like this replica's own.
impl<R, I> ReplicaLoads for KvRouter<R, I> {
    fn apply_replica_update(&mut self, replica: &str, update: &LoadUpdate) {
        match update {
            LoadUpdate::Routed { request_id, worker_id, dp_rank, prefill_tokens, blocks } => {
                let blocks: Vec<SequenceHash> = blocks.iter().map(|&h| SequenceHash(h)).collect();
                self.active.add_replica_request(
                    replica,
                    request_id,
                    Worker::new(*worker_id, *dp_rank),
                    *prefill_tokens,
                    &blocks,
                );
            }
            LoadUpdate::MoreBlocks { request_id, blocks } => {
                let blocks: Vec<SequenceHash> = blocks.iter().map(|&h| SequenceHash(h)).collect();
                self.active.extend_replica_request(replica, request_id, &blocks);
            }
            LoadUpdate::PrefillComplete { request_id } => {
                self.active.replica_prefill_complete(replica, request_id);
            }
            LoadUpdate::Freed { request_id } => {
                self.active.free_replica_request(replica, request_id);
            }
        }
    }

    fn forget_replica(&mut self, replica: &str) -> usize {
        self.active.forget_replica(replica)
    }
}

#[cfg(test)]
mod tests;
