//! The physical floor of TTFT for a trace: each request's time to first token if it ran alone
//! on an idle worker, with no queueing, whose cache already held what the trace reused before it.
//!
//! Owns that bound and the cache model behind it; not the simulation ([`crate::sim`]), whose
//! TTFTs can only be at or above these (given the same cache) since they add queueing, batching
//! with other requests' work, and routing misses.
//!
//! For each request in arrival order (ties in slice order, as the replay orders them):
//! 1. its prompt is cut into full blocks at the engine's block size and hashed with the
//!    project's chained hashing (as the router and the engine hash them);
//! 2. the leading run of those blocks found in the cache is cached, capped as the engine caps it
//!    (`(len - 1) / block_size` blocks: at least one prompt token is always computed), and
//!    nothing when the engine's prefix caching is off;
//! 3. every full prompt block is then inserted into (or refreshed in) the cache;
//! 4. the floor is the time to prefill the uncached tokens alone: passes of at most
//!    `max_num_batched_tokens` tokens, each timed by the engine's timing model with nothing
//!    decoding. The pass that computes the last prompt token emits the first token, as in
//!    [`kvroute_mocker::Engine::step`], so no decode step is added.
//!
//! The cache is either [`FloorCache::Infinite`] (every block ever computed is kept) or one
//! [`FloorCache::SharedLru`] of the cluster's total size. The LRU refreshes a request's blocks
//! leaf first, so its first block is the most recently used and a prefix's root outlives its
//! tail, as the engine's block pool evicts (a request releases its blocks leaf first).
//!
//! Not modelled: the engine's length limit (`max_model_len`; every request is counted) and
//! generated tokens' blocks (only prompt blocks are cached, as the trace's reuse is of prompts).
//!
//! Pure and deterministic: no clock, no I/O, no randomness.

use std::collections::HashSet;
use std::num::NonZeroUsize;

use kvroute_mocker::config::ConfigError;
use kvroute_mocker::EngineConfig;
use kvroute_protocol::{block_hashes, sequence_hashes, HashSeed, SequenceHash};
use lru::LruCache;
use serde::Serialize;
use thiserror::Error;

use crate::summary::Latency;
use crate::trace::ReplayRequest;

/// The cache the floor assumes every request could read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FloorCache {
    /// Every block computed before is still cached.
    Infinite,
    /// One least-recently-used cache of `blocks` blocks shared by the whole cluster.
    SharedLru { blocks: usize },
}

impl FloorCache {
    /// A shared LRU cache as large as `workers` engines with `engine`'s cache each.
    pub fn cluster(workers: usize, engine: &EngineConfig) -> Self {
        FloorCache::SharedLru { blocks: workers * engine.num_gpu_blocks }
    }
}

/// Why the floor could not be computed.
#[derive(Debug, Error, PartialEq)]
pub enum FloorError {
    #[error("engine config: {0}")]
    Engine(#[from] ConfigError),
    #[error("the shared LRU cache must hold at least one block")]
    EmptyCache,
    #[error("request {request} has an empty prompt")]
    EmptyPrompt { request: usize },
    #[error(
        "request {request}: {uncached} uncached prompt tokens exceed max_num_batched_tokens \
         {budget} and chunked prefill is off, so the engine would never admit it"
    )]
    Unschedulable { request: usize, uncached: usize, budget: usize },
}

/// One request's floor.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FloorRecord {
    /// Position in the trace file.
    pub index: usize,
    pub arrival_ms: f64,
    pub input_length: usize,
    /// Prompt tokens served from the cache (whole blocks, capped as the engine caps them).
    pub cached_tokens: usize,
    /// Scheduler passes the uncached tokens take.
    pub prefill_passes: usize,
    /// Time to first token alone on an idle worker, in milliseconds.
    pub ttft_ms: f64,
}

/// The floor of a whole trace under one cache model.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TtftFloor {
    pub cache: FloorCache,
    /// One record per request, in the order of the input slice.
    pub records: Vec<FloorRecord>,
    pub ttft_ms: Latency,
    /// Σ cached tokens / Σ input length (the replay summary's `prefix_reuse_ratio`).
    pub prefix_reuse_ratio: f64,
}

/// The TTFT floor of `requests` under `cache`, on engines configured as `engine`.
pub fn ttft_floor(
    requests: &[ReplayRequest],
    engine: &EngineConfig,
    cache: FloorCache,
) -> Result<TtftFloor, FloorError> {
    engine.validate()?;
    let mut blocks = match cache {
        FloorCache::Infinite => BlockCache::Infinite(HashSet::new()),
        FloorCache::SharedLru { blocks } => {
            BlockCache::Lru(LruCache::new(NonZeroUsize::new(blocks).ok_or(FloorError::EmptyCache)?))
        }
    };
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by(|&a, &b| requests[a].arrival_ms.total_cmp(&requests[b].arrival_ms));

    let bs = engine.block_size;
    let mut records: Vec<Option<FloorRecord>> = vec![None; requests.len()];
    for i in order {
        let request = &requests[i];
        let len = request.prompt.len();
        if len == 0 {
            return Err(FloorError::EmptyPrompt { request: request.index });
        }
        let hashes = sequence_hashes(&block_hashes(&request.prompt, bs, HashSeed::default()));
        let cached_blocks = if engine.enable_prefix_caching {
            let cap = ((len - 1) / bs).min(hashes.len());
            hashes[..cap].iter().take_while(|h| blocks.contains(**h)).count()
        } else {
            0
        };
        blocks.refresh_leaf_first(&hashes);

        let uncached = len - cached_blocks * bs;
        if !engine.enable_chunked_prefill && uncached > engine.max_num_batched_tokens {
            return Err(FloorError::Unschedulable {
                request: request.index,
                uncached,
                budget: engine.max_num_batched_tokens,
            });
        }
        records[i] = Some(FloorRecord {
            index: request.index,
            arrival_ms: request.arrival_ms,
            input_length: len,
            cached_tokens: cached_blocks * bs,
            prefill_passes: uncached.div_ceil(engine.max_num_batched_tokens),
            ttft_ms: prefill_alone_ms(uncached, engine),
        });
    }
    let records: Vec<FloorRecord> = records.into_iter().map(|r| r.expect("every request is visited once")).collect();

    let input: usize = records.iter().map(|r| r.input_length).sum();
    let cached: usize = records.iter().map(|r| r.cached_tokens).sum();
    Ok(TtftFloor {
        cache,
        ttft_ms: Latency::of(records.iter().map(|r| r.ttft_ms).collect()),
        prefix_reuse_ratio: if input > 0 { cached as f64 / input as f64 } else { 0.0 },
        records,
    })
}

/// Milliseconds to prefill `tokens` prompt tokens alone on an idle engine: full passes of
/// `max_num_batched_tokens` tokens then the remainder, each timed with nothing decoding.
pub fn prefill_alone_ms(tokens: usize, engine: &EngineConfig) -> f64 {
    let budget = engine.max_num_batched_tokens;
    let capacity = engine.capacity_tokens() as u64;
    let pass_ms = |t: usize| engine.timing.pass_ms(t as u64, false, 0, capacity);
    let full_passes = tokens / budget;
    full_passes as f64 * pass_ms(budget) + pass_ms(tokens % budget)
}

/// The set of blocks the floor reads from.
enum BlockCache {
    Infinite(HashSet<SequenceHash>),
    /// A fixed-size LRU set of blocks.
    Lru(LruCache<SequenceHash, ()>),
}

impl BlockCache {
    fn contains(&self, hash: SequenceHash) -> bool {
        match self {
            BlockCache::Infinite(set) => set.contains(&hash),
            BlockCache::Lru(lru) => lru.contains(&hash),
        }
    }

    /// Insert or refresh a request's blocks, last block first (its first ends most recent),
    /// evicting the least recently used over capacity.
    fn refresh_leaf_first(&mut self, hashes: &[SequenceHash]) {
        match self {
            BlockCache::Infinite(set) => set.extend(hashes.iter().copied()),
            BlockCache::Lru(lru) => hashes.iter().rev().for_each(|&h| {
                lru.push(h, ());
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Block size 4 and at most 8 tokens per pass: small enough to compute by hand.
    fn tiny_engine() -> EngineConfig {
        EngineConfig { block_size: 4, max_num_batched_tokens: 8, ..EngineConfig::default() }
    }

    fn request(index: usize, arrival_ms: f64, prompt: Vec<u32>) -> ReplayRequest {
        ReplayRequest { index, arrival_ms, prompt, output_length: 1 }
    }

    /// Prefill time of one pass of `t` tokens, evaluated by hand from the polynomial
    /// `4.209989e-7 t² + 1.518344e-2 t + 16.50142`.
    const PASS_1: f64 = 16.5166038609989;
    const PASS_4: f64 = 16.5621604959824;
    const PASS_5: f64 = 16.5773477249725;
    const PASS_8: f64 = 16.6229144639296;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    /// A: two full blocks a0 a1 and one token; X: two other blocks; B: A's blocks and another
    /// token; C: exactly A's two blocks.
    fn tiny_trace() -> Vec<ReplayRequest> {
        let a: Vec<u32> = (1..=8).collect();
        let with = |prefix: &[u32], tail: &[u32]| [prefix, tail].concat();
        vec![
            request(0, 0.0, with(&a, &[9])),
            request(1, 10.0, (100..=108).collect()),
            request(2, 20.0, with(&a, &[20])),
            request(3, 30.0, a.clone()),
        ]
    }

    fn cached(floor: &TtftFloor) -> Vec<usize> {
        floor.records.iter().map(|r| r.cached_tokens).collect()
    }

    #[test]
    fn infinite_cache_reuses_every_earlier_block() {
        let floor = ttft_floor(&tiny_trace(), &tiny_engine(), FloorCache::Infinite).unwrap();
        // C is exactly two blocks: the cap (8 - 1) / 4 = 1 block leaves its last block to compute.
        assert_eq!(cached(&floor), [0, 0, 8, 4]);
        let ttft: Vec<f64> = floor.records.iter().map(|r| r.ttft_ms).collect();
        // 9 uncached tokens: a pass of 8 then a pass of 1.
        let expected = [PASS_8 + PASS_1, PASS_8 + PASS_1, PASS_1, PASS_4];
        for (got, want) in ttft.iter().zip(expected) {
            assert!(close(*got, want), "{got} != {want}");
        }
        assert_eq!(floor.records[0].prefill_passes, 2);
        assert!(close(floor.prefix_reuse_ratio, 12.0 / 35.0));
        assert!(close(floor.ttft_ms.mean, (2.0 * (PASS_8 + PASS_1) + PASS_1 + PASS_4) / 4.0));
        assert_eq!(floor.ttft_ms.max, PASS_8 + PASS_1);
    }

    #[test]
    fn lru_of_two_blocks_forgets_a_prefix_another_request_pushed_out() {
        let lru = FloorCache::SharedLru { blocks: 2 };
        let floor = ttft_floor(&tiny_trace(), &tiny_engine(), lru).unwrap();
        // X evicts a0 a1, so B recomputes them; C then finds them again.
        assert_eq!(cached(&floor), [0, 0, 0, 4]);
        assert!(close(floor.records[2].ttft_ms, PASS_8 + PASS_1));
        assert!(close(floor.prefix_reuse_ratio, 4.0 / 35.0));
    }

    #[test]
    fn lru_evicts_a_prefix_tail_before_its_root() {
        // Room for three blocks: X's two push out one of A's, and it is a1 (the leaf), so B
        // still finds a0.
        let lru = FloorCache::SharedLru { blocks: 3 };
        let floor = ttft_floor(&tiny_trace(), &tiny_engine(), lru).unwrap();
        assert_eq!(cached(&floor), [0, 0, 4, 4]);
        // B computes its last 5 tokens in one pass.
        assert!(close(floor.records[2].ttft_ms, PASS_5));
    }

    #[test]
    fn large_lru_matches_the_infinite_cache() {
        let trace = tiny_trace();
        let infinite = ttft_floor(&trace, &tiny_engine(), FloorCache::Infinite).unwrap();
        let lru = ttft_floor(&trace, &tiny_engine(), FloorCache::SharedLru { blocks: 100 }).unwrap();
        assert_eq!(infinite.records, lru.records);
    }

    #[test]
    fn prefix_caching_off_caches_nothing() {
        let engine = EngineConfig { enable_prefix_caching: false, ..tiny_engine() };
        let floor = ttft_floor(&tiny_trace(), &engine, FloorCache::Infinite).unwrap();
        assert_eq!(cached(&floor), [0, 0, 0, 0]);
        assert_eq!(floor.prefix_reuse_ratio, 0.0);
    }

    #[test]
    fn prefill_is_cut_into_passes_of_the_batch_budget() {
        let engine = EngineConfig::default();
        let pass = kvroute_mocker::timing::prefill_ms;
        assert_eq!(prefill_alone_ms(0, &engine), 0.0);
        assert!(close(prefill_alone_ms(8192, &engine), pass(8192)));
        assert!(close(prefill_alone_ms(8193, &engine), pass(8192) + pass(1)));
        assert!(close(prefill_alone_ms(20_000, &engine), 2.0 * pass(8192) + pass(3616)));
        // By hand: 9 tokens at 8 a pass are a pass of 8 and a pass of 1.
        assert!(close(prefill_alone_ms(9, &tiny_engine()), PASS_8 + PASS_1));
    }

    #[test]
    fn speedup_divides_the_floor() {
        let mut engine = tiny_engine();
        engine.timing.speedup_ratio = 4.0;
        assert!(close(prefill_alone_ms(9, &engine), (PASS_8 + PASS_1) / 4.0));
    }

    #[test]
    fn requests_are_taken_in_arrival_order_and_reported_in_slice_order() {
        let mut trace = tiny_trace();
        trace.swap(0, 2); // B (arrives at 20) now comes first in the slice.
        let floor = ttft_floor(&trace, &tiny_engine(), FloorCache::Infinite).unwrap();
        let indices: Vec<usize> = floor.records.iter().map(|r| r.index).collect();
        assert_eq!(indices, [2, 1, 0, 3]);
        assert_eq!(cached(&floor), [8, 0, 0, 4]);
    }

    #[test]
    fn the_same_trace_gives_the_same_floor() {
        let trace: Vec<ReplayRequest> = (0..50u32)
            .map(|i| {
                let prompt = (0..(i % 7 + 1) * 5).map(|t| t % (i % 3 + 2)).collect();
                request(i as usize, f64::from(i), prompt)
            })
            .collect();
        for cache in [FloorCache::Infinite, FloorCache::SharedLru { blocks: 5 }] {
            let first = ttft_floor(&trace, &tiny_engine(), cache).unwrap();
            let second = ttft_floor(&trace, &tiny_engine(), cache).unwrap();
            assert_eq!(first, second);
        }
    }

    #[test]
    fn bad_settings_are_refused() {
        let trace = tiny_trace();
        let zero_block = EngineConfig { block_size: 0, ..tiny_engine() };
        assert!(matches!(ttft_floor(&trace, &zero_block, FloorCache::Infinite), Err(FloorError::Engine(_))));
        assert_eq!(
            ttft_floor(&trace, &tiny_engine(), FloorCache::SharedLru { blocks: 0 }),
            Err(FloorError::EmptyCache)
        );
        let unchunked = EngineConfig { enable_chunked_prefill: false, ..tiny_engine() };
        assert_eq!(
            ttft_floor(&trace, &unchunked, FloorCache::Infinite),
            Err(FloorError::Unschedulable { request: 0, uncached: 9, budget: 8 })
        );
    }

    #[test]
    fn cluster_cache_is_workers_times_engine_blocks() {
        assert_eq!(FloorCache::cluster(8, &EngineConfig::default()), FloorCache::SharedLru { blocks: 131_072 });
    }
}
