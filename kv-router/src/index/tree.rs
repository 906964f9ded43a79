//! The run arena behind [`super::KvIndex`]: runs of local hashes, the branches between them,
//! and which worker holds which interval of each run. Knows nothing about engine hashes or
//! events.
//!
//! # Concurrency
//!
//! One writer (whoever holds `&mut Tree`) and any number of readers (`find_matches` through a
//! [`super::IndexReader`]) work at once. Every run sits behind its own `RwLock` in an
//! append-only arena whose entries never move (`boxcar::Vec`), so a reader locks only the run it
//! is reading, one at a time, and the writer blocks only the readers of the run it is changing.
//! The writer changes runs through a [`TreeWriter`], which keeps the write lock of the last run
//! it touched until it moves to another run or is dropped: an event that extends one run takes
//! one lock.
//!
//! Runs are freed and their slots reused. A branch records the generation of the run it leads
//! to, and freeing a run bumps its generation, so a reader that follows a branch to a run freed
//! meanwhile sees another generation and stops there. Runs never move or split, so a run that
//! still has the generation its branch recorded is still that node of the tree.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use kvroute_protocol::Worker;
use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use super::fingerprint::RunHashes;
use super::RUN_CAPACITY;

/// A block's address: `run << 9 | offset`. Stable for the block's lifetime (runs never split).
pub(super) type Slot = u32;

/// The arena: every run ever allocated, each behind its own lock.
pub(super) type Runs = boxcar::Vec<RwLock<Run>>;

/// What readers know about a worker slot besides the runs: whom it stands for, and how many
/// blocks that worker holds.
#[derive(Default)]
pub(super) struct SlotInfo {
    worker_id: AtomicU64,
    dp_rank: AtomicU32,
    live: AtomicBool,
    blocks: AtomicU64,
}

/// What readers share with the writer.
pub(super) struct Shared {
    pub runs: Runs,
    slots: boxcar::Vec<SlotInfo>,
}

impl Shared {
    /// How many worker slots exist (slot numbers are below it).
    pub fn worker_slots(&self) -> usize {
        self.slots.count()
    }

    /// Blocks held by each registered worker (a slot renamed at that very moment may be read
    /// half-renamed and then not match any worker asked about).
    pub fn cached_blocks(&self) -> FxHashMap<Worker, u64> {
        self.slots
            .iter()
            .filter(|(_, s)| s.live.load(Ordering::Acquire))
            .map(|(_, s)| {
                let worker = Worker::new(s.worker_id.load(Ordering::Relaxed), s.dp_rank.load(Ordering::Relaxed));
                (worker, s.blocks.load(Ordering::Relaxed))
            })
            .collect()
    }
}

/// The root pseudo-run: holds no blocks, top-level runs hang off its position 0.
pub(super) const ROOT: u32 = 0;
const OFFSET_BITS: u32 = 9;
const MAX_RUNS: usize = 1 << (32 - OFFSET_BITS);
const _: () = assert!(RUN_CAPACITY == 1 << OFFSET_BITS);

pub(super) fn slot(run: u32, offset: usize) -> Slot {
    run << OFFSET_BITS | offset as u32
}

pub(super) fn split(slot: Slot) -> (u32, usize) {
    (slot >> OFFSET_BITS, (slot & ((1 << OFFSET_BITS) - 1)) as usize)
}

/// Worker slot `worker` (named `name`) holds blocks `start..end` of a run. The name travels
/// with the interval so a reader has it under the run's lock: a slot is renamed only after its
/// worker has left every run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Member {
    pub worker: u32,
    pub start: u16,
    pub end: u16,
    pub name: Worker,
}

/// A branch: run `run` (generation `generation`) hangs off position `pos` of its parent and
/// starts with the block `hash`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Branch {
    pub hash: u64,
    pub run: u32,
    pub generation: u32,
    pub pos: u16,
}

/// Above this many branches a run keeps them in a hash map instead of a list.
const BRANCH_SCAN_LIMIT: usize = 8;

/// The branches hanging off one run: a list scanned while short, a map once long.
#[derive(Default)]
pub(super) struct Branches {
    /// Most runs have at most one branch: kept inline, a walk reads it with the run.
    list: SmallVec<[Branch; 1]>,
    /// Keyed by `(hash, pos)`; when present, `list` is empty.
    map: Option<Box<FxHashMap<(u64, u16), Branch>>>,
}

impl Branches {
    #[inline]
    pub fn get(&self, pos: usize, hash: u64) -> Option<Branch> {
        match &self.map {
            Some(map) => map.get(&(hash, pos as u16)).copied(),
            None => self.list.iter().find(|b| b.hash == hash && b.pos as usize == pos).copied(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty() && self.map.as_ref().is_none_or(|m| m.is_empty())
    }

    pub fn iter(&self) -> impl Iterator<Item = &Branch> {
        self.list.iter().chain(self.map.iter().flat_map(|m| m.values()))
    }

    fn insert(&mut self, branch: Branch) {
        if let Some(map) = &mut self.map {
            map.insert((branch.hash, branch.pos), branch);
            return;
        }
        self.list.push(branch);
        if self.list.len() > BRANCH_SCAN_LIMIT {
            let map = self.list.drain(..).map(|b| ((b.hash, b.pos), b)).collect();
            self.list = SmallVec::new();
            self.map = Some(Box::new(map));
        }
    }

    fn remove(&mut self, pos: u16, hash: u64) {
        match &mut self.map {
            Some(map) => {
                map.remove(&(hash, pos));
            }
            None => {
                if let Some(i) = self.list.iter().position(|b| b.hash == hash && b.pos == pos) {
                    self.list.swap_remove(i);
                }
            }
        }
    }
}

/// A straight path of blocks.
#[derive(Default)]
pub(super) struct Run {
    /// Local hashes of the blocks, in path order.
    pub hashes: RunHashes,
    /// Disjoint, non-adjacent intervals per worker (merged on insert). Most runs are held by
    /// one worker: that interval is kept inline, so a walk reads it with the run.
    pub members: SmallVec<[Member; 1]>,
    /// Runs hanging off this one (any position).
    pub branches: Branches,
    pub parent: u32,
    /// This run's first block follows the parent's block `branch_pos - 1` (0: from the root).
    pub branch_pos: u16,
    pub live: bool,
    /// Bumped each time the slot is freed; see the module docs.
    pub generation: u32,
}

/// Where the next stored block goes: position `pos` of `run`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Cursor {
    run: u32,
    pos: usize,
}

/// Consecutive slots of one run collected while applying an event, added as one interval.
#[derive(Clone, Copy, Debug)]
pub(super) struct Span {
    run: u32,
    start: usize,
    end: usize,
}

impl Span {
    pub fn empty() -> Self {
        Span { run: u32::MAX, start: 0, end: 0 }
    }

    pub fn at(slot: Slot) -> Self {
        let (run, off) = split(slot);
        Span { run, start: off, end: off + 1 }
    }

    /// Add `slot` if it continues the span (or the span is empty); false otherwise.
    pub fn extend(&mut self, slot: Slot) -> bool {
        let (run, off) = split(slot);
        if self.start == self.end {
            *self = Span::at(slot);
            true
        } else if run == self.run && off == self.end {
            self.end += 1;
            true
        } else {
            false
        }
    }
}

/// The writer's side of the arena (readers only need [`Tree::shared`]).
pub(super) struct Tree {
    shared: Arc<Shared>,
    free: Vec<u32>,
    blocks: usize,
}

impl Tree {
    pub fn new() -> Self {
        let runs = Runs::new();
        runs.push(RwLock::new(Run { live: true, ..Run::default() }));
        let shared = Shared { runs, slots: boxcar::Vec::new() };
        Tree { shared: Arc::new(shared), free: Vec::new(), blocks: 0 }
    }

    /// What readers need.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Slot `w` (a new one, or one retired before) stands for `worker` from now on.
    pub fn name_slot(&mut self, w: u32, worker: Worker) {
        let slots = &self.shared.slots;
        let info = match slots.get(w as usize) {
            Some(info) => info,
            None => &slots[slots.push(SlotInfo::default())],
        };
        info.worker_id.store(worker.worker_id, Ordering::Relaxed);
        info.dp_rank.store(worker.dp_rank, Ordering::Relaxed);
        info.blocks.store(0, Ordering::Relaxed);
        info.live.store(true, Ordering::Release);
    }

    /// Slot `w`'s worker left.
    pub fn retire_slot(&mut self, w: u32) {
        if let Some(info) = self.shared.slots.get(w as usize) {
            info.live.store(false, Ordering::Release);
            info.blocks.store(0, Ordering::Relaxed);
        }
    }

    /// Slot `w`'s worker holds `blocks` blocks now.
    pub fn set_slot_blocks(&mut self, w: u32, blocks: usize) {
        if let Some(info) = self.shared.slots.get(w as usize) {
            info.blocks.store(blocks as u64, Ordering::Relaxed);
        }
    }

    pub fn block_count(&self) -> usize {
        self.blocks
    }

    pub fn run_count(&self) -> usize {
        self.shared.runs.count() - self.free.len()
    }

    /// Whether `blocks` more blocks can be stored even if each needs a new run.
    pub fn can_grow(&self, blocks: usize) -> bool {
        self.run_count() + blocks <= MAX_RUNS
    }

    pub fn root_cursor(&self) -> Cursor {
        Cursor { run: ROOT, pos: 0 }
    }

    pub fn cursor_after(&self, slot: Slot) -> Cursor {
        let (run, off) = split(slot);
        Cursor { run, pos: off + 1 }
    }

    /// Read one run (for dumps). Recursive, so a dump can read a run it is already reading:
    /// no writer can be waiting while `&self` is borrowed.
    pub fn read(&self, run: u32) -> RwLockReadGuard<'_, Run> {
        self.shared.runs[run as usize].read_recursive()
    }

    /// Start changing the tree. Dropping the writer releases the lock it holds.
    pub fn writer(&mut self) -> TreeWriter<'_> {
        TreeWriter { runs: &self.shared.runs, free: &mut self.free, blocks: &mut self.blocks, held: None }
    }

    /// The local hashes from the root down to and including the block at `slot`.
    pub fn path_to(&self, at: Slot) -> Vec<u64> {
        let (mut run, off) = split(at);
        let mut end = off + 1;
        let mut reversed = Vec::new();
        while run != ROOT {
            let r = self.read(run);
            reversed.extend(r.hashes[..end].iter().rev());
            (run, end) = (r.parent, r.branch_pos as usize);
        }
        reversed.reverse();
        reversed
    }
}

/// Changes to the tree, holding the write lock of one run at a time.
pub(super) struct TreeWriter<'a> {
    runs: &'a Runs,
    free: &'a mut Vec<u32>,
    blocks: &'a mut usize,
    held: Option<(u32, RwLockWriteGuard<'a, Run>)>,
}

impl TreeWriter<'_> {
    /// Run `id`, write-locked (releasing the run held before).
    #[inline]
    fn run(&mut self, id: u32) -> &mut Run {
        let held = matches!(&self.held, Some((h, _)) if *h == id);
        if !held {
            self.held = None;
            let guard = self.runs[id as usize].write();
            return &mut self.held.insert((id, guard)).1;
        }
        let (_, guard) = self.held.as_mut().expect("the held run was just checked");
        guard
    }

    /// The branch of `run` at `pos` starting with `hash`. The root is only read-locked for
    /// this (every reader passes through it).
    fn branch(&mut self, run: u32, pos: usize, hash: u64) -> Option<Branch> {
        if run == ROOT && !matches!(&self.held, Some((ROOT, _))) {
            return self.runs[ROOT as usize].read().branches.get(pos, hash);
        }
        self.run(run).branches.get(pos, hash)
    }

    /// Move the cursor one block down the path `hash`, creating the block if the tree lacks it.
    /// `ahead` is how many blocks the caller is about to store from this one on (at least 1):
    /// a new or growing run is sized for them, so runs carry little unused capacity.
    /// The block's address, and whether this step created it (nobody holds it yet).
    #[inline]
    pub fn step(&mut self, cursor: &mut Cursor, hash: u64, ahead: usize) -> (Slot, bool) {
        let pos = cursor.pos;
        if cursor.run != ROOT {
            let run = self.run(cursor.run);
            if pos < run.hashes.len() {
                if run.hashes[pos] == hash {
                    cursor.pos += 1;
                    return (slot(cursor.run, pos), false);
                }
            } else if run.branches.is_empty() && self.extend(cursor, hash, ahead) {
                // The usual way a path grows: at the end of a run nothing branches from.
                return (slot(cursor.run, pos), true);
            }
        }
        if let Some(b) = self.branch(cursor.run, pos, hash) {
            *cursor = Cursor { run: b.run, pos: 1 };
            return (slot(b.run, 0), false);
        }
        if cursor.run != ROOT && self.extend(cursor, hash, ahead) {
            return (slot(cursor.run, pos), true);
        }
        let c = self.new_run(cursor.run, pos, hash, ahead);
        *cursor = Cursor { run: c, pos: 1 };
        (slot(c, 0), true)
    }

    /// Append `hash` to the cursor's run if the cursor is at its end and it has room (the
    /// caller has checked that no branch there starts with `hash`); whether it did.
    #[inline]
    fn extend(&mut self, cursor: &mut Cursor, hash: u64, ahead: usize) -> bool {
        let hashes = &mut self.run(cursor.run).hashes;
        let pos = cursor.pos;
        if pos != hashes.len() || pos >= RUN_CAPACITY {
            return false;
        }
        if hashes.len() == hashes.capacity() {
            // Grow by what the event still brings, or double, never past a full run. (Growing
            // by half left less unused — 0.2 bytes per (block, worker) on Dynamo's benchmark —
            // but reallocated a run's hashes seven times on its way to 256 blocks in events of
            // 16, not four; allocation and copying were ≈ 9% of applying such events.)
            hashes.reserve_exact(ahead.max(pos).max(4).min(RUN_CAPACITY - pos));
        }
        hashes.push(hash);
        *self.blocks += 1;
        cursor.pos += 1;
        true
    }

    fn new_run(&mut self, parent: u32, pos: usize, hash: u64, ahead: usize) -> u32 {
        let mut hashes = RunHashes::with_capacity(ahead.clamp(1, RUN_CAPACITY));
        hashes.push(hash);
        let fresh = |generation| Run {
            hashes,
            members: SmallVec::new(),
            branches: Branches::default(),
            parent,
            branch_pos: pos as u16,
            live: true,
            generation,
        };
        // The run is complete before the branch to it is published.
        let (id, generation) = match self.free.pop() {
            Some(id) => {
                let run = self.run(id);
                let generation = run.generation;
                *run = fresh(generation);
                (id, generation)
            }
            None => (self.runs.push(RwLock::new(fresh(0))) as u32, 0),
        };
        self.run(parent).branches.insert(Branch { hash, run: id, generation, pos: pos as u16 });
        *self.blocks += 1;
        id
    }

    /// Does worker `w` hold the block at `slot`?
    #[inline]
    pub fn holds(&mut self, w: u32, at: Slot) -> bool {
        let (run, off) = split(at);
        self.run(run).members.iter().any(|m| m.worker == w && (m.start as usize) <= off && off < m.end as usize)
    }

    /// Record that `w` (named `name`) holds the span's blocks, and empty the span.
    #[inline]
    pub fn add_span(&mut self, w: u32, name: Worker, span: &mut Span) {
        if span.start == span.end {
            return;
        }
        let members = &mut self.run(span.run).members;
        let (mut start, mut end) = (span.start as u16, span.end as u16);
        let mut merged: Option<usize> = None;
        let mut i = 0;
        while i < members.len() {
            let m = members[i];
            if m.worker == w && m.start <= end && m.end >= start {
                start = start.min(m.start);
                end = end.max(m.end);
                if merged.is_none() {
                    merged = Some(i);
                    i += 1;
                } else {
                    members.swap_remove(i);
                }
            } else {
                i += 1;
            }
        }
        match merged {
            Some(j) => {
                members[j].start = start;
                members[j].end = end;
            }
            None => members.push(Member { worker: w, start, end, name }),
        }
        *span = Span::empty();
    }

    /// `w` no longer holds the block at `slot`.
    pub fn remove_block(&mut self, w: u32, at: Slot) {
        let (run, off) = split(at);
        let members = &mut self.run(run).members;
        let off16 = off as u16;
        if let Some(i) = members.iter().position(|m| m.worker == w && m.start <= off16 && off16 < m.end) {
            let m = members[i];
            match (m.start < off16, off16 + 1 < m.end) {
                (false, false) => {
                    members.swap_remove(i);
                }
                (true, false) => members[i].end = off16,
                (false, true) => members[i].start = off16 + 1,
                (true, true) => {
                    members[i].end = off16;
                    members.push(Member { start: off16 + 1, ..m });
                }
            }
        }
        self.collect(run);
    }

    /// `w` no longer holds any block of the runs containing `slots`.
    pub fn remove_worker_from(&mut self, w: u32, slots: Vec<Slot>) {
        let mut runs: Vec<u32> = slots.into_iter().map(|s| split(s).0).collect();
        runs.sort_unstable();
        runs.dedup();
        for &run in &runs {
            self.run(run).members.retain(|m| m.worker != w);
        }
        for &run in &runs {
            if self.run(run).live {
                self.collect(run);
            }
        }
    }

    /// Drop the unheld tail of `run`, and the run itself (then its ancestors) once nothing
    /// is held in it or below it.
    fn collect(&mut self, mut run: u32) {
        while run != ROOT {
            let r = self.run(run);
            let len = r.hashes.len();
            let held_to = r.members.iter().map(|m| m.end as usize).max().unwrap_or(0);
            if held_to == len {
                return;
            }
            let live_end = r.branches.iter().map(|b| b.pos as usize).fold(held_to, usize::max);
            if live_end == len {
                return;
            }
            let first = r.hashes[0];
            r.hashes.truncate(live_end);
            let emptied = live_end == 0 && r.branches.is_empty();
            let (parent, pos) = (r.parent, r.branch_pos);
            if emptied {
                // Freed before it is unlinked: a reader that already took the branch sees the
                // new generation and stops.
                *r = Run { generation: r.generation.wrapping_add(1), ..Run::default() };
            }
            *self.blocks -= len - live_end;
            if !emptied {
                return;
            }
            self.free.push(run);
            self.run(parent).branches.remove(pos, first);
            run = parent;
        }
    }
}
