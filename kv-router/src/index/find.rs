//! `find_matches`: how many consecutive blocks of a request each worker holds.
//!
//! Walks one run per branch point. In each run, a slice comparison finds how far the request
//! follows the run (or, for a long run the request covers, the run's recorded fingerprint
//! confirms it follows all of it), then one pass over the run's intervals raises the overlap of
//! each worker still holding every block so far. The answer is made in the first run (one entry
//! per worker holding the first block) and only updated after it, so a worker that stops
//! holding costs nothing in the runs below.
//! Each run is read under its own read lock, one run at a time, so an event being applied
//! elsewhere in the tree does not hold the walk up (see `tree`'s notes on concurrency).

use std::cell::RefCell;

use kvroute_protocol::LocalBlockHash;
use parking_lot::RwLockReadGuard;

use super::fingerprint::{fingerprint, RunHashes};
use super::tree::{Branch, Member, Run, Runs, Shared, ROOT};
use super::Overlap;

/// Read-lock the run a branch leads to, unless it was freed since the branch was read.
fn follow<'a>(runs: &'a Runs, branch: Branch) -> Option<RwLockReadGuard<'a, Run>> {
    let run = runs.get(branch.run as usize)?.read();
    (run.generation == branch.generation).then_some(run)
}

/// Buffers a thread reuses from query to query, so that a query allocates only its answer.
#[derive(Default)]
struct Scratch {
    /// Per worker slot: `base + hop` when the worker holds everything up to the end of that
    /// hop's match and may go on into the next run (see `walk`).
    stamp: Vec<u32>,
    /// Every stamp left by earlier queries is below it.
    base: u32,
    /// Per worker slot: where its entry is in the answer.
    at: Vec<u32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

pub(super) fn find_matches(shared: &Shared, query: &[LocalBlockHash]) -> Vec<Overlap> {
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut scratch) => walk(shared, query, &mut scratch),
        Err(_) => walk(shared, query, &mut Scratch::default()),
    })
}

fn walk(shared: &Shared, query: &[LocalBlockHash], scratch: &mut Scratch) -> Vec<Overlap> {
    let runs = &shared.runs;
    let Some(first) = query.first() else { return Vec::new() };
    let Some(root) = runs.get(ROOT as usize) else { return Vec::new() };
    let branch = root.read().branches.get(0, first.0);
    let Some(mut run) = branch.and_then(|b| follow(runs, b)) else { return Vec::new() };
    // Every worker in the answer holds the first block, so it has an interval starting at 0 of
    // the first run (at most one per worker): the answer is one entry per such interval, made
    // in the first run with what the worker holds there, and raised run by run while the
    // worker keeps holding the whole of each run the request follows. A worker that stops
    // holding keeps the entry it has. Workers registered after the slot count was read are not
    // in the answer.
    let mut out = Vec::with_capacity(run.members.len());
    let Scratch { stamp, base, at } = scratch;
    // A walk has at most query.len() + 1 hops, so the next query's base starts above every
    // stamp this one leaves.
    let span = query.len() as u32 + 2;
    if base.checked_add(span).is_none() {
        stamp.fill(0);
        *base = 0;
    }
    let b = *base;
    *base += span;
    let slots = shared.worker_slots();
    if stamp.len() < slots {
        stamp.resize(slots, 0);
        at.resize(slots, 0);
    }
    let (stamp, at) = (&mut stamp[..slots], &mut at[..slots]);
    let mut depth = 0usize;
    let mut hop = 1u32;
    loop {
        let matched = follow_run(&run.hashes, &query[depth..]);
        let end = depth + matched;
        let here = Hop { depth, matched, more: end < query.len(), mark: b + hop };
        let going_on = if hop == 1 {
            here.enter(&run.members, stamp, at, &mut out)
        } else {
            here.go_on(&run.members, stamp, at, &mut out)
        };
        if going_on == 0 {
            break;
        }
        let branch = run.branches.get(matched, query[end].0);
        drop(run);
        match branch.and_then(|b| follow(runs, b)) {
            Some(child) => {
                run = child;
                depth = end;
                hop += 1;
            }
            None => break,
        }
    }
    out
}

/// One run of the walk: the request follows it for `matched` blocks from `depth`, and goes on
/// past it if `more`. A worker holding the whole match goes on, stamped `mark`.
struct Hop {
    depth: usize,
    matched: usize,
    more: bool,
    mark: u32,
}

impl Hop {
    fn holds_on(&self, held: usize) -> bool {
        held == self.matched && self.more
    }

    /// The first run: an entry for every worker holding its first block. How many go on.
    #[inline(never)]
    fn enter(&self, members: &[Member], stamp: &mut [u32], at: &mut [u32], out: &mut Vec<Overlap>) -> usize {
        // This runs once per worker holding the first block (64 on the benchmark). A plain loop,
        // out of line, keeps its counters in registers: as an iterator chain, or inlined into
        // `walk`, they were spilled to the stack and the loop took ~1.5× as long. The hop's
        // fields are copied to locals and `holds_on` is spelled out for the same reason (with
        // `self.holds_on`, warm prefix-then-miss queries ran ≈ 20% slower in 4 of 4 pairs).
        let (matched, mark, more) = (self.matched, self.mark, self.more);
        let mut going_on = 0;
        for m in members {
            let w = m.worker as usize;
            if m.start != 0 || w >= stamp.len() || w >= at.len() {
                continue;
            }
            let held = (m.end as usize).min(matched);
            at[w] = out.len() as u32;
            if held == matched && more {
                stamp[w] = mark;
                going_on += 1;
            }
            out.push(Overlap { worker: m.name, blocks: held as u32 });
        }
        going_on
    }

    /// A later run: raise the entries of the workers that held everything so far (stamped
    /// `mark - 1`) and hold this run from its start. How many go on.
    fn go_on(&self, members: &[Member], stamp: &mut [u32], at: &[u32], out: &mut [Overlap]) -> usize {
        let mut going_on = 0;
        for m in members {
            let w = m.worker as usize;
            if m.start != 0 || stamp.get(w) != Some(&(self.mark - 1)) {
                continue;
            }
            let entry = &mut out[at[w] as usize];
            if entry.worker != m.name {
                continue; // the slot was renamed since the walk read the first run
            }
            let held = (m.end as usize).min(self.matched);
            entry.blocks = (self.depth + held) as u32;
            if self.holds_on(held) {
                stamp[w] = self.mark;
                going_on += 1;
            }
        }
        going_on
    }
}

/// Shorter runs are compared without a fingerprint: their hashes are a few cache lines,
/// fetched together, and computing the request's fingerprint costs more than comparing them
/// once they are in cache (64-block runs: warm queries ≈ 10% slower with it).
const FINGERPRINT_MIN_BLOCKS: usize = 128;

/// How many blocks of a run the rest of the request follows. A request that reaches the run's
/// end is checked against the run's fingerprint, when one is recorded, without reading the
/// run's hashes; the first request found to follow the whole run records it.
#[inline]
fn follow_run(run: &RunHashes, rest: &[LocalBlockHash]) -> usize {
    let len = run.len();
    let Some(covered) = rest.get(..len).filter(|_| len >= FINGERPRINT_MIN_BLOCKS) else {
        return common_prefix(run, rest);
    };
    match run.fingerprint() {
        Some(recorded) if fingerprint(covered) == recorded => len,
        Some(_) => common_prefix(run, rest),
        None => {
            let matched = common_prefix(run, rest);
            if matched == len {
                run.record_fingerprint(fingerprint(covered));
            }
            matched
        }
    }
}

/// Length of the common prefix of a run's hashes and the request's remaining hashes.
#[inline]
fn common_prefix(run: &[u64], query: &[LocalBlockHash]) -> usize {
    let n = run.len().min(query.len());
    let (run, query) = (&run[..n], &query[..n]);
    const LANES: usize = 8;
    let mut i = 0;
    // Compare eight at a time without branching inside the group; find the exact spot after.
    while i + LANES <= n {
        let mut diff = 0u64;
        for k in 0..LANES {
            diff |= run[i + k] ^ query[i + k].0;
        }
        if diff != 0 {
            break;
        }
        i += LANES;
    }
    while i < n && run[i] == query[i].0 {
        i += 1;
    }
    i
}
