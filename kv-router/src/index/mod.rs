//! The KV index: which worker holds which cached block, and how much of a request's prefix each
//! worker already holds.
//!
//! [`KvIndex`] is a compressed radix tree over *local* block hashes (content hashes recomputed
//! from token ids), fed by the engines' KV events. Engine block hashes are treated as opaque
//! per-worker ids: each worker has its own map from engine hash to the tree position it named,
//! which is how parents and removals are resolved. The tree never trusts an engine hash to mean
//! anything across workers, so answers are exact whatever hashing the engines use.
//!
//! # Layout
//!
//! The tree is made of **runs**: a run is a straight path of up to [`RUN_CAPACITY`] blocks stored
//! as one contiguous `Vec<u64>` of local hashes. Branches hang off any position of a run (a child
//! is keyed by `(run, position, first local hash)` in one global map), so runs are never split
//! and a block's address — `(run, offset)` packed in a `u32` — never changes while the block
//! lives. Which workers hold which blocks of a run is a short list of half-open intervals
//! (`worker, start, end`), so a run shared by 64 workers costs 64 intervals, not 64 × its length.
//!
//! `find_matches` walks one run per branch point: a slice comparison of the request's hashes
//! against the run, then one pass over the run's intervals. A run of 128 blocks or more that an
//! earlier request followed to its end is matched by a 64-bit fingerprint of its hashes instead
//! of the hashes themselves, so a cold query reads the run's header but not its hashes (see
//! `fingerprint`: a false match is as likely as two blocks' 64-bit local hashes colliding).
//! Applying a stored event that extends a worker's sequence appends to the run in place.
//!
//! # Reading while events apply
//!
//! [`KvIndex::reader`] hands out an [`IndexReader`]: `find_matches` from any number of threads
//! while the owner of the `KvIndex` applies events. Each run has its own lock; a reader holds
//! one run's read lock at a time and the writer one run's write lock at a time, so a query
//! waits only while the run it is reading is being changed. A query that runs while an event
//! applies sees each run either before or after its part of the event.
//!
//! # Memory
//!
//! Per stored (block, worker) pair: one entry in the worker's engine-hash map (12 bytes plus one
//! control byte: 15–30 bytes at the 44–87% load of a doubling table; a worker's table starts
//! at 13 KB and grows fourfold while under 16,384 buckets, so a small one may sit at 22% load,
//! at most 213 KB of table in all — see `reserve_names`), plus 8 bytes of local hash per
//! distinct block shared by all its holders, plus ~130 bytes per run (runs hold up to 512
//! blocks). On Dynamo's benchmark shape (64 workers × 10,240 blocks) that is ≈ 29 bytes per
//! (block, worker); see `bench/RESULTS.md` for the measured figure.
//!
//! # Limits
//!
//! At most 2^23 live runs (≈ 8.4M) and 2^32 worker slots; exceeding the run limit rejects the
//! event with [`IndexError::Full`] and leaves the index unchanged.

mod dump;
mod find;
mod fingerprint;
pub mod reference;
mod tree;

use std::sync::Arc;

use hashbrown::HashMap;
use kvroute_protocol::events::{EngineBlockHash, KvCacheEventData, RouterEvent, StoredBlock};
use kvroute_protocol::{LocalBlockHash, Worker};
use rustc_hash::{FxBuildHasher, FxHashMap};
use serde::Serialize;
use thiserror::Error;

use tree::{Shared, Slot, Tree, TreeWriter};

/// Longest run (blocks per contiguous path segment). A block address is `run << 9 | offset`.
///
/// 512 blocks (8,192 tokens at block size 16) keep a long prompt's own part in one run: a walk
/// pays a few dependent cache misses per run it enters (the branch, the run, its hashes), so
/// fewer runs make cold queries faster (at 256, Dynamo's 8k-token benchmark query crossed two
/// runs past its shared prefix).
pub const RUN_CAPACITY: usize = 512;

/// How much of a request's prefix one worker holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Overlap {
    pub worker: Worker,
    /// Consecutive blocks from the start of the request the worker holds.
    pub blocks: u32,
}

/// Counters of events a worker sent that could not be applied as sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WorkerEventStats {
    /// Events applied (fully or partly).
    pub applied: u64,
    /// Stored events whose parent the worker never stored (the event is dropped).
    pub unknown_parent: u64,
    /// Removed block hashes the worker never stored (the rest of the batch applies).
    pub unknown_block: u64,
    /// Events whose blocks did not have the router's block size (counted by the event source).
    pub block_size_mismatch: u64,
}

/// Why an event was not (fully) applied. The index is left consistent in every case.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum IndexError {
    #[error("worker {worker}: stored event chains to unknown parent block {parent}; event dropped")]
    UnknownParent { worker: Worker, parent: u64 },
    #[error("worker {worker}: {count} removed block(s) unknown to the index; ignored")]
    UnknownBlocks { worker: Worker, count: u32 },
    #[error("index is full ({0} runs); event dropped")]
    Full(usize),
}

/// Engine block hash as a 4-byte-aligned key, so a map entry is 12 bytes (not 16).
#[derive(Clone, Copy, PartialEq, Eq)]
struct EngineKey([u32; 2]);

impl EngineKey {
    fn new(h: EngineBlockHash) -> Self {
        EngineKey([h.0 as u32, (h.0 >> 32) as u32])
    }
    fn engine_hash(self) -> EngineBlockHash {
        EngineBlockHash(self.0[0] as u64 | (self.0[1] as u64) << 32)
    }
}

impl std::hash::Hash for EngineKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.engine_hash().0)
    }
}

/// What the index knows about one worker.
struct WorkerEntry {
    worker: Worker,
    /// Engine hash → block address, for every block the worker holds.
    blocks: HashMap<EngineKey, Slot, FxBuildHasher>,
    /// Blocks the worker stored under more than one engine hash: extra names per address, so
    /// removing one name keeps the block until the last name goes. Empty for sane engines.
    aliases: FxHashMap<Slot, u32>,
    /// The last block of the last stored event, by name: the usual parent of the next one (an
    /// engine stores a sequence's blocks in order). Forgotten when a removal or clear could
    /// have changed what the name stands for.
    tail: Option<(EngineBlockHash, Slot)>,
    stats: WorkerEventStats,
}

impl WorkerEntry {
    /// The block the worker stored under `name`, looked up in the map only when it is not the
    /// last one stored.
    fn parent_slot(&self, name: EngineBlockHash) -> Option<Slot> {
        match self.tail {
            Some((last, slot)) if last == name => Some(slot),
            _ => self.blocks.get(&EngineKey::new(name)).copied(),
        }
    }
}

/// The production index. See the module docs for its layout.
pub struct KvIndex {
    tree: Tree,
    workers: Vec<Option<WorkerEntry>>,
    free_workers: Vec<u32>,
    by_worker: FxHashMap<Worker, u32>,
    /// The slot of the worker the last event came from (engines send events in batches per
    /// worker): checked against the slot's name before use, so it needs no invalidation.
    last_slot: u32,
}

impl Default for KvIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl KvIndex {
    pub fn new() -> Self {
        KvIndex {
            tree: Tree::new(),
            workers: Vec::new(),
            free_workers: Vec::new(),
            by_worker: FxHashMap::default(),
            last_slot: u32::MAX,
        }
    }

    /// A handle that answers `find_matches` from other threads while this index applies
    /// events (see the module docs).
    pub fn reader(&self) -> IndexReader {
        IndexReader { shared: self.tree.shared().clone() }
    }

    /// Apply one event (Dynamo JSON form).
    pub fn apply_event(&mut self, event: &RouterEvent) -> Result<(), IndexError> {
        self.apply(event.worker(), &event.event.data)
    }

    /// Apply what a worker's cache did.
    pub fn apply(&mut self, worker: Worker, data: &KvCacheEventData) -> Result<(), IndexError> {
        let w = self.worker_index(worker);
        let result = match data {
            KvCacheEventData::Stored(s) => self.apply_stored(w, s.parent_hash, &s.blocks),
            KvCacheEventData::Removed(r) => self.apply_removed(w, &r.block_hashes),
            KvCacheEventData::Cleared => {
                self.clear_worker(w);
                Ok(())
            }
        };
        let held = self.entry(w).blocks.len();
        self.tree.set_slot_blocks(w, held);
        let stats = &mut self.entry_mut(w).stats;
        match &result {
            Ok(()) => stats.applied += 1,
            Err(IndexError::UnknownParent { .. }) => stats.unknown_parent += 1,
            Err(IndexError::UnknownBlocks { count, .. }) => {
                stats.applied += 1;
                stats.unknown_block += u64::from(*count)
            }
            Err(IndexError::Full(_)) => {}
        }
        result
    }

    /// Count an event the source could not convert because of a block-size mismatch.
    pub fn record_block_size_mismatch(&mut self, worker: Worker) {
        let w = self.worker_index(worker);
        self.entry_mut(w).stats.block_size_mismatch += 1;
    }

    /// Register a worker with an empty cache (so it is listed before its first event).
    pub fn add_worker(&mut self, worker: Worker) {
        self.worker_index(worker);
    }

    /// Forget every dp rank of `worker_id`: their blocks leave the index.
    pub fn remove_worker(&mut self, worker_id: u64) {
        let ranks: Vec<Worker> = self.by_worker.keys().filter(|w| w.worker_id == worker_id).copied().collect();
        for worker in ranks {
            self.remove_worker_rank(worker);
        }
    }

    /// Forget one (worker, dp rank).
    pub fn remove_worker_rank(&mut self, worker: Worker) {
        if let Some(w) = self.by_worker.remove(&worker) {
            self.clear_worker(w);
            self.tree.retire_slot(w);
            self.workers[w as usize] = None;
            self.free_workers.push(w);
        }
    }

    /// Every worker known to the index, in no particular order.
    pub fn workers(&self) -> impl Iterator<Item = Worker> + '_ {
        self.by_worker.keys().copied()
    }

    /// Blocks the worker holds (its "tree size"); 0 for an unknown worker.
    pub fn cached_blocks(&self, worker: Worker) -> usize {
        self.by_worker.get(&worker).map_or(0, |&w| self.entry(w).blocks.len())
    }

    /// Event counters for a worker.
    pub fn stats(&self, worker: Worker) -> Option<WorkerEventStats> {
        self.by_worker.get(&worker).map(|&w| self.entry(w).stats)
    }

    /// Distinct blocks in the tree (a block held by several workers counts once).
    pub fn distinct_blocks(&self) -> usize {
        self.tree.block_count()
    }

    /// For every worker holding at least the first block of `query`, how many consecutive
    /// blocks from the start it holds. Order is unspecified.
    pub fn find_matches(&self, query: &[LocalBlockHash]) -> Vec<Overlap> {
        find::find_matches(self.tree.shared(), query)
    }

    /// The index as stored events (and, for blocks a worker holds without their parent, a
    /// synthetic parent chain stored then removed), parents before children: applying them to an
    /// empty index rebuilds this one.
    pub fn dump_events(&self) -> Vec<RouterEvent> {
        let live =
            self.workers.iter().enumerate().filter_map(|(w, e)| e.as_ref().map(|e| (w as u32, e.worker, &e.blocks)));
        dump::dump_events(&self.tree, live)
    }

    fn entry(&self, w: u32) -> &WorkerEntry {
        self.workers[w as usize].as_ref().expect("worker index refers to a live worker")
    }

    fn entry_mut(&mut self, w: u32) -> &mut WorkerEntry {
        self.workers[w as usize].as_mut().expect("worker index refers to a live worker")
    }

    fn worker_index(&mut self, worker: Worker) -> u32 {
        let last = self.workers.get(self.last_slot as usize).and_then(Option::as_ref);
        if last.is_some_and(|e| e.worker == worker) {
            return self.last_slot;
        }
        if let Some(&w) = self.by_worker.get(&worker) {
            self.last_slot = w;
            return w;
        }
        let entry = WorkerEntry {
            worker,
            blocks: HashMap::default(),
            aliases: FxHashMap::default(),
            tail: None,
            stats: WorkerEventStats::default(),
        };
        let w = match self.free_workers.pop() {
            Some(w) => {
                self.workers[w as usize] = Some(entry);
                w
            }
            None => {
                self.workers.push(Some(entry));
                (self.workers.len() - 1) as u32
            }
        };
        self.tree.name_slot(w, worker);
        self.by_worker.insert(worker, w);
        w
    }

    fn apply_stored(
        &mut self,
        w: u32,
        parent: Option<EngineBlockHash>,
        blocks: &[StoredBlock],
    ) -> Result<(), IndexError> {
        let worker = self.entry(w).worker;
        let start = match parent {
            None => self.tree.root_cursor(),
            Some(p) => match self.entry(w).parent_slot(p) {
                Some(slot) => self.tree.cursor_after(slot),
                None => return Err(IndexError::UnknownParent { worker, parent: p.0 }),
            },
        };
        if !self.tree.can_grow(blocks.len()) {
            return Err(IndexError::Full(self.tree.run_count()));
        }
        let entry = self.workers[w as usize].as_mut().expect("live worker");
        reserve_names(&mut entry.blocks, blocks.len());
        let mut tree = self.tree.writer();
        let mut cursor = start;
        let mut span = tree::Span::empty();
        let mut last = None;
        for (i, b) in blocks.iter().enumerate() {
            let (slot, created) = tree.step(&mut cursor, b.tokens_hash.0, blocks.len() - i);
            last = Some(slot);
            let previous = entry.blocks.insert(EngineKey::new(b.block_hash), slot);
            if !created && previous != Some(slot) && tree.holds(w, slot) {
                // A second engine name for a block this worker already holds.
                *entry.aliases.entry(slot).or_insert(0) += 1;
            }
            if !span.extend(slot) {
                tree.add_span(w, worker, &mut span);
                span = tree::Span::at(slot);
            }
            if let Some(old) = previous.filter(|&old| old != slot) {
                // The engine reused a name for different content: the old block is gone. Record
                // the new holdings first so clean-up cannot reclaim the block just stored.
                tree.add_span(w, worker, &mut span);
                release(&mut tree, &mut entry.aliases, w, old);
            }
        }
        tree.add_span(w, worker, &mut span);
        entry.tail = blocks.last().zip(last).map(|(b, slot)| (b.block_hash, slot));
        Ok(())
    }

    fn apply_removed(&mut self, w: u32, hashes: &[EngineBlockHash]) -> Result<(), IndexError> {
        let entry = self.workers[w as usize].as_mut().expect("live worker");
        entry.tail = None;
        let mut tree = self.tree.writer();
        let mut unknown = 0u32;
        for h in hashes {
            match entry.blocks.remove(&EngineKey::new(*h)) {
                Some(slot) => release(&mut tree, &mut entry.aliases, w, slot),
                None => unknown += 1,
            }
        }
        if unknown > 0 {
            return Err(IndexError::UnknownBlocks { worker: entry.worker, count: unknown });
        }
        Ok(())
    }

    fn clear_worker(&mut self, w: u32) {
        let entry = self.workers[w as usize].as_mut().expect("live worker");
        let slots: Vec<Slot> = entry.blocks.drain().map(|(_, s)| s).collect();
        entry.aliases.clear();
        entry.tail = None;
        self.tree.writer().remove_worker_from(w, slots);
    }
}

/// Make room for `more` engine names: fourfold while the table is small, doubling after.
///
/// Growing rehashes every name into fresh memory at random places. With doubling from
/// hashbrown's smallest table (its own growth) each name is moved ≈ 1.4 times on the way to
/// 10k names. Here a table starts at 1,024 buckets (13 KB) and grows fourfold up to 16,384
/// buckets (14,336 names, 213 KB): ≈ 0.44 moves per name. Past that size a table doubles, so
/// the slack this adds is at most that one small table's worth per worker. Starting at 4,096
/// buckets moves fewer names (≈ 0.35) but applied events 5–10% slower in alternating
/// `compare-dynamo` runs: inserting into a small table is cheaper than the moves it saves.
/// Figures in `bench/RESULTS.md`.
fn reserve_names(names: &mut HashMap<EngineKey, Slot, FxBuildHasher>, more: usize) {
    const FIRST: usize = 896; // 1,024 buckets at hashbrown's 7/8 load
    const FOURFOLD_UP_TO: usize = 14_336; // 16,384 buckets
    let len = names.len();
    if len + more > names.capacity() {
        let grown = if len < FOURFOLD_UP_TO { (4 * len).min(FOURFOLD_UP_TO) } else { 2 * len };
        names.reserve(grown.max(len + more).max(FIRST) - len);
    }
}

/// Drop one engine name of a block; the worker stops holding it when no name is left.
fn release(tree: &mut TreeWriter<'_>, aliases: &mut FxHashMap<Slot, u32>, w: u32, slot: Slot) {
    if let Some(n) = aliases.get_mut(&slot) {
        *n -= 1;
        if *n == 0 {
            aliases.remove(&slot);
        }
        return;
    }
    tree.remove_block(w, slot);
}

/// `find_matches` for other threads, while the [`KvIndex`] it came from applies events.
#[derive(Clone)]
pub struct IndexReader {
    shared: Arc<Shared>,
}

impl IndexReader {
    /// The same answer as [`KvIndex::find_matches`], against the index as it is while the
    /// query runs.
    pub fn find_matches(&self, query: &[LocalBlockHash]) -> Vec<Overlap> {
        find::find_matches(&self.shared, query)
    }

    /// Blocks each registered worker holds, as [`KvIndex::cached_blocks`] counts them (as of
    /// the last event applied to it).
    pub fn cached_blocks(&self) -> FxHashMap<Worker, u64> {
        self.shared.cached_blocks()
    }
}

#[cfg(test)]
mod tests;
