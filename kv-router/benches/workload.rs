//! Benchmark workloads for the KV index, written once and shared by `benches/index.rs` and
//! `bench/compare-dynamo` (which includes this file with `#[path]`).
//!
//! - [`events`] / [`queries`]: Dynamo's synthetic indexer workload, exactly as the harness in
//!   `shared/tools/dynamo-indexers-bench` builds it (same hashes, same event chaining, same
//!   xorshift query draw), so figures are comparable with the Dynamo anchors.
//! - [`load_mooncake`] / [`replay_mooncake`]: the Mooncake conversation trace turned into block
//!   sequences and replayed through an index (match, then store on a round-robin worker).
//!
//! Owns no timing and no output: callers decide what to measure.

// Each includer uses a different subset of this file.
#![allow(dead_code)]

use std::io::{self, BufRead};
use std::path::Path;

use kvroute_kv_router::{KvIndex, Overlap};
use kvroute_protocol::events::{EngineBlockHash, KvCacheEventData, KvCacheStoreData, RouterEvent, StoredBlock};
use kvroute_protocol::hashing::{block_hashes, sequence_hashes, HashSeed};
use kvroute_protocol::{LocalBlockHash, Worker};

/// Blocks per synthetic sequence.
pub const SEQ_BLOCKS: usize = 512;
/// Leading blocks (local hashes `1..=64`) shared by every sequence of every worker.
pub const SHARED_PREFIX: usize = 64;
/// Queries per query set.
pub const QUERIES: usize = 200;

/// How many workers and how many blocks each holds (a multiple of [`SEQ_BLOCKS`]).
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub workers: u64,
    pub blocks_per_worker: u64,
}

impl Shape {
    /// The shape of the Dynamo anchor figures: 64 workers × 10,240 blocks.
    pub const DYNAMO: Shape = Shape { workers: 64, blocks_per_worker: 10_240 };

    pub fn sequences_per_worker(self) -> u64 {
        self.blocks_per_worker / SEQ_BLOCKS as u64
    }

    /// Stored (block, worker) pairs once every event is applied.
    pub fn total_blocks(self) -> u64 {
        self.workers * self.sequences_per_worker() * SEQ_BLOCKS as u64
    }
}

/// The three query sets of the synthetic workload, [`QUERIES`] queries of 512 blocks each.
pub struct Queries {
    /// A whole sequence of one random (worker, sequence): that worker matches all 512 blocks.
    pub full_hit: Vec<Vec<LocalBlockHash>>,
    /// The shared 64-block prefix, then blocks nobody holds: every worker matches 64.
    pub prefix_then_miss: Vec<Vec<LocalBlockHash>>,
    /// Blocks nobody holds.
    pub miss: Vec<Vec<LocalBlockHash>>,
}

/// Local hashes of sequence `seq` of worker `worker`: `1..=64`, then
/// `((worker * 1000 + seq) << 20) + i` for `i` in `0..448`.
pub fn sequence_locals(worker: u64, seq: u64) -> Vec<LocalBlockHash> {
    let shared = (1..=SHARED_PREFIX as u64).map(LocalBlockHash);
    let own = (0..(SEQ_BLOCKS - SHARED_PREFIX) as u64).map(|i| LocalBlockHash(((worker * 1000 + seq) << 20) + i));
    shared.chain(own).collect()
}

/// Every stored event of the workload, workers in order, each sequence cut into events of
/// `event_blocks` blocks chained by parent. Engine hashes are the Dynamo-compatible chained
/// sequence hashes of the local hashes; event ids count up from 0 across all workers.
pub fn events(shape: Shape, event_blocks: usize) -> Vec<RouterEvent> {
    assert!(event_blocks > 0, "events need at least one block");
    let mut out = Vec::with_capacity((shape.total_blocks() as usize).div_ceil(event_blocks));
    let mut event_id = 0u64;
    for worker in 0..shape.workers {
        for seq in 0..shape.sequences_per_worker() {
            let locals = sequence_locals(worker, seq);
            let engine = sequence_hashes(&locals);
            for start in (0..SEQ_BLOCKS).step_by(event_blocks) {
                let end = (start + event_blocks).min(SEQ_BLOCKS);
                let blocks = (start..end)
                    .map(|i| StoredBlock { block_hash: EngineBlockHash(engine[i].0), tokens_hash: locals[i] })
                    .collect();
                let parent_hash = start.checked_sub(1).map(|p| EngineBlockHash(engine[p].0));
                let data = KvCacheEventData::Stored(KvCacheStoreData { parent_hash, blocks });
                out.push(RouterEvent::new(Worker::new(worker, 0), event_id, data));
                event_id += 1;
            }
        }
    }
    out
}

/// The Dynamo harness' query sets (xorshift64 seeded 12345; the worker is drawn before the
/// sequence).
pub fn queries(shape: Shape) -> Queries {
    let mut state = 12345u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let full_hit = (0..QUERIES)
        .map(|_| {
            let worker = next() % shape.workers;
            let seq = next() % shape.sequences_per_worker();
            sequence_locals(worker, seq)
        })
        .collect();
    let prefix_then_miss = (0..QUERIES as u64)
        .map(|k| {
            let shared = (1..=SHARED_PREFIX as u64).map(LocalBlockHash);
            let fresh =
                (0..(SEQ_BLOCKS - SHARED_PREFIX) as u64).map(|i| LocalBlockHash((999_999u64 << 20) + i + k * 1000));
            shared.chain(fresh).collect()
        })
        .collect();
    let miss = (0..QUERIES as u64)
        .map(|k| (0..SEQ_BLOCKS as u64).map(|i| LocalBlockHash((777_777u64 << 20) + i + k * 1000)).collect())
        .collect();
    Queries { full_hit, prefix_then_miss, miss }
}

/// Where the Mooncake conversation trace lives unless `KVROUTE_MOONCAKE_TRACE` says otherwise.
pub const MOONCAKE_TRACE: &str = "/work/shared/data/mooncake_conversation_trace.jsonl";
/// Tokens per Mooncake hash id.
pub const MOONCAKE_ID_TOKENS: usize = 512;
/// Workers the replay spreads requests over, round-robin.
pub const REPLAY_WORKERS: u64 = 8;

/// The trace path: `KVROUTE_MOONCAKE_TRACE`, else [`MOONCAKE_TRACE`].
pub fn mooncake_path() -> String {
    std::env::var("KVROUTE_MOONCAKE_TRACE").unwrap_or_else(|_| MOONCAKE_TRACE.to_string())
}

/// One trace request as the router and an engine see it.
pub struct TraceRequest {
    /// Local hashes of the request's full blocks.
    pub blocks: Vec<LocalBlockHash>,
    /// The engine's names for them: chained sequence hashes (what a Dynamo-hashing engine sends).
    pub engine: Vec<EngineBlockHash>,
}

/// The first `limit` requests of a Mooncake trace as blocks of `block_size` tokens (a divisor
/// of 512).
///
/// Each hash id stands for 512 synthetic tokens that are a pure function of the id, so equal
/// ids give equal blocks; a request is its ids' tokens cut to `input_length`, hashed into full
/// blocks with the router's hashing (a partial last block is not hashed).
pub fn load_mooncake(path: &Path, limit: usize, block_size: usize) -> io::Result<Vec<TraceRequest>> {
    // 512 is a power of two, so its divisors are the powers of two up to it.
    assert!(block_size.is_power_of_two() && block_size <= MOONCAKE_ID_TOKENS, "block size must divide 512");
    let file = io::BufReader::new(std::fs::File::open(path)?);
    let mut out = Vec::new();
    for (n, line) in file.lines().enumerate().take(limit) {
        let line = line?;
        let bad =
            |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{}:{}: {what}", path.display(), n + 1));
        let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| bad(&e.to_string()))?;
        let input_length = v["input_length"].as_u64().ok_or_else(|| bad("no input_length"))? as usize;
        let ids = v["hash_ids"].as_array().ok_or_else(|| bad("no hash_ids"))?;
        let mut tokens = Vec::with_capacity(ids.len() * MOONCAKE_ID_TOKENS);
        for id in ids {
            let id = id.as_u64().ok_or_else(|| bad("hash id is not a u64"))?;
            tokens.extend((0..MOONCAKE_ID_TOKENS as u64).map(|k| synthetic_token(id, k)));
        }
        tokens.truncate(input_length);
        let blocks = block_hashes(&tokens, block_size, HashSeed::default());
        let engine = sequence_hashes(&blocks).into_iter().map(|h| EngineBlockHash(h.0)).collect();
        out.push(TraceRequest { blocks, engine });
    }
    Ok(out)
}

/// Token `k` of hash id `id`: a splitmix64 mix of the pair, folded into a 32k vocabulary.
fn synthetic_token(id: u64, k: u64) -> u32 {
    let mut z = (id * MOONCAKE_ID_TOKENS as u64 + k).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) % 32_000) as u32
}

/// What a replay did, so callers can check two runs agree and keep the work observable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayTotals {
    pub requests: u64,
    /// Sum over requests of the longest overlap any worker had.
    pub best_overlap_blocks: u64,
    /// Blocks sent in stored events.
    pub stored_blocks: u64,
}

/// Replay requests in order: `find_matches` on each request's blocks, then store the request on
/// worker `i % 8` the way an engine reports it — one stored event with only the blocks that
/// worker lacked, chained to the last block it already held. Nothing is ever evicted.
pub fn replay_mooncake(index: &mut KvIndex, requests: &[TraceRequest]) -> ReplayTotals {
    let mut totals = ReplayTotals::default();
    for (i, request) in requests.iter().enumerate() {
        let overlaps: Vec<Overlap> = index.find_matches(&request.blocks);
        let worker = Worker::new(i as u64 % REPLAY_WORKERS, 0);
        let held = overlaps.iter().find(|o| o.worker == worker).map_or(0, |o| o.blocks as usize);
        totals.requests += 1;
        totals.best_overlap_blocks += overlaps.iter().map(|o| u64::from(o.blocks)).max().unwrap_or(0);
        if held == request.blocks.len() {
            continue;
        }
        let blocks = (held..request.blocks.len())
            .map(|k| StoredBlock { block_hash: request.engine[k], tokens_hash: request.blocks[k] })
            .collect();
        let parent_hash = held.checked_sub(1).map(|p| request.engine[p]);
        let data = KvCacheEventData::Stored(KvCacheStoreData { parent_hash, blocks });
        totals.stored_blocks += (request.blocks.len() - held) as u64;
        index
            .apply_event(&RouterEvent::new(worker, i as u64, data))
            .expect("replay events chain to blocks the worker holds");
    }
    totals
}
