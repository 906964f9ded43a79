//! The run arena behind [`super::KvIndex`]: runs of local hashes, the branch map, and which
//! worker holds which interval of each run. Knows nothing about engine hashes or events.

use rustc_hash::FxHashMap;

use super::RUN_CAPACITY;

/// A block's address: `run << 8 | offset`. Stable for the block's lifetime (runs never split).
pub(super) type Slot = u32;

/// The root pseudo-run: holds no blocks, top-level runs hang off its position 0.
pub(super) const ROOT: u32 = 0;
const OFFSET_BITS: u32 = 8;
const MAX_RUNS: usize = 1 << (32 - OFFSET_BITS);
const _: () = assert!(RUN_CAPACITY == 1 << OFFSET_BITS);

pub(super) fn slot(run: u32, offset: usize) -> Slot {
    run << OFFSET_BITS | offset as u32
}

pub(super) fn split(slot: Slot) -> (u32, usize) {
    (slot >> OFFSET_BITS, (slot & ((1 << OFFSET_BITS) - 1)) as usize)
}

/// Worker `worker` holds blocks `start..end` of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Member {
    pub worker: u32,
    pub start: u16,
    pub end: u16,
}

/// A straight path of blocks.
#[derive(Default)]
pub(super) struct Run {
    /// Local hashes of the blocks, in path order.
    pub hashes: Vec<u64>,
    /// Disjoint, non-adjacent intervals per worker (merged on insert).
    pub members: Vec<Member>,
    /// Runs hanging off this one (any position), for clean-up and dumps.
    pub children: Vec<u32>,
    pub parent: u32,
    /// This run's first block follows the parent's block `branch_pos - 1` (0: from the root).
    pub branch_pos: u16,
    pub live: bool,
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

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct ChildKey {
    run_pos: u64,
    hash: u64,
}

fn child_key(run: u32, pos: usize, hash: u64) -> ChildKey {
    ChildKey { run_pos: (run as u64) << 32 | pos as u64, hash }
}

pub(super) struct Tree {
    pub runs: Vec<Run>,
    free: Vec<u32>,
    children: FxHashMap<ChildKey, u32>,
    blocks: usize,
}

impl Tree {
    pub fn new() -> Self {
        let root = Run { live: true, ..Run::default() };
        Tree { runs: vec![root], free: Vec::new(), children: FxHashMap::default(), blocks: 0 }
    }

    pub fn block_count(&self) -> usize {
        self.blocks
    }

    pub fn run_count(&self) -> usize {
        self.runs.len() - self.free.len()
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

    /// The run hanging off `run` at `pos` whose first block is `hash`.
    #[inline]
    pub fn child(&self, run: u32, pos: usize, hash: u64) -> Option<u32> {
        if self.runs[run as usize].children.is_empty() {
            return None;
        }
        self.children.get(&child_key(run, pos, hash)).copied()
    }

    /// Move the cursor one block down the path `hash`, creating the block if the tree lacks it.
    /// `ahead` is how many blocks the caller is about to store from this one on (at least 1):
    /// a new or growing run is sized for them, so runs carry little unused capacity.
    pub fn step(&mut self, cursor: &mut Cursor, hash: u64, ahead: usize) -> Slot {
        let run = &self.runs[cursor.run as usize];
        let pos = cursor.pos;
        if pos < run.hashes.len() && run.hashes[pos] == hash {
            cursor.pos += 1;
            return slot(cursor.run, pos);
        }
        if let Some(c) = self.child(cursor.run, pos, hash) {
            *cursor = Cursor { run: c, pos: 1 };
            return slot(c, 0);
        }
        if pos == run.hashes.len() && cursor.run != ROOT && pos < RUN_CAPACITY {
            let hashes = &mut self.runs[cursor.run as usize].hashes;
            if hashes.len() == hashes.capacity() {
                // Grow by what the event still brings, or by half (not Vec's doubling, which
                // leaves a quarter of a typical run's hashes unused), never past a full run.
                let len = hashes.len();
                hashes.reserve_exact(ahead.max(len / 2).max(4).min(RUN_CAPACITY - len));
            }
            hashes.push(hash);
            self.blocks += 1;
            cursor.pos += 1;
            return slot(cursor.run, pos);
        }
        let c = self.new_run(cursor.run, pos, hash, ahead);
        *cursor = Cursor { run: c, pos: 1 };
        slot(c, 0)
    }

    fn new_run(&mut self, parent: u32, pos: usize, hash: u64, ahead: usize) -> u32 {
        let mut hashes = Vec::with_capacity(ahead.clamp(1, RUN_CAPACITY));
        hashes.push(hash);
        let run = Run {
            hashes,
            members: Vec::new(),
            children: Vec::new(),
            parent,
            branch_pos: pos as u16,
            live: true,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.runs[id as usize] = run;
                id
            }
            None => {
                self.runs.push(run);
                (self.runs.len() - 1) as u32
            }
        };
        self.runs[parent as usize].children.push(id);
        self.children.insert(child_key(parent, pos, hash), id);
        self.blocks += 1;
        id
    }

    /// Does worker `w` hold the block at `slot`?
    pub fn holds(&self, w: u32, at: Slot) -> bool {
        let (run, off) = split(at);
        self.runs[run as usize]
            .members
            .iter()
            .any(|m| m.worker == w && (m.start as usize) <= off && off < m.end as usize)
    }

    /// Record that `w` holds the span's blocks, and empty the span.
    pub fn add_span(&mut self, w: u32, span: &mut Span) {
        if span.start == span.end {
            return;
        }
        let members = &mut self.runs[span.run as usize].members;
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
            None => {
                if members.is_empty() {
                    members.reserve_exact(1); // most runs are held by one worker
                }
                members.push(Member { worker: w, start, end })
            }
        }
        *span = Span::empty();
    }

    /// `w` no longer holds the block at `slot`.
    pub fn remove_block(&mut self, w: u32, at: Slot) {
        let (run, off) = split(at);
        let members = &mut self.runs[run as usize].members;
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
                    members.push(Member { worker: w, start: off16 + 1, end: m.end });
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
            self.runs[run as usize].members.retain(|m| m.worker != w);
        }
        for &run in &runs {
            if self.runs[run as usize].live {
                self.collect(run);
            }
        }
    }

    /// Drop the unheld tail of `run`, and the run itself (then its ancestors) once nothing
    /// is held in it or below it.
    fn collect(&mut self, mut run: u32) {
        while run != ROOT {
            let r = &self.runs[run as usize];
            let len = r.hashes.len();
            let held_to = r.members.iter().map(|m| m.end as usize).max().unwrap_or(0);
            if held_to == len {
                return;
            }
            let mut live_end = held_to;
            for &c in &r.children {
                live_end = live_end.max(self.runs[c as usize].branch_pos as usize);
            }
            let r = &mut self.runs[run as usize];
            if live_end == len {
                return;
            }
            let first = r.hashes[0];
            self.blocks -= len - live_end;
            r.hashes.truncate(live_end);
            if live_end > 0 || !r.children.is_empty() {
                return;
            }
            let (parent, pos) = (r.parent, r.branch_pos as usize);
            *r = Run::default();
            self.free.push(run);
            self.children.remove(&child_key(parent, pos, first));
            let siblings = &mut self.runs[parent as usize].children;
            if let Some(i) = siblings.iter().position(|&c| c == run) {
                siblings.swap_remove(i);
            }
            run = parent;
        }
    }

    /// The local hashes from the root down to and including the block at `slot`.
    pub fn path_to(&self, at: Slot) -> Vec<u64> {
        let (mut run, off) = split(at);
        let mut reversed: Vec<u64> = self.runs[run as usize].hashes[..=off].iter().rev().copied().collect();
        loop {
            let r = &self.runs[run as usize];
            if r.parent == ROOT {
                break;
            }
            let parent = &self.runs[r.parent as usize];
            reversed.extend(parent.hashes[..r.branch_pos as usize].iter().rev());
            run = r.parent;
        }
        reversed.reverse();
        reversed
    }
}
