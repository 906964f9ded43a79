//! `find_matches`: how many consecutive blocks of a request each worker holds.
//!
//! Walks one run per branch point. In each run, a slice comparison finds how far the request
//! follows the run, then one pass over the run's intervals decides, for each worker still
//! holding every block so far, whether it keeps up to the end of the match or drops out inside.

use kvroute_protocol::{LocalBlockHash, Worker};

use super::tree::{Tree, ROOT};
use super::Overlap;

pub(super) fn find_matches(
    tree: &Tree,
    worker_slots: usize,
    query: &[LocalBlockHash],
    worker_of: impl Fn(u32) -> Worker,
) -> Vec<Overlap> {
    let Some(first) = query.first() else { return Vec::new() };
    let Some(mut run) = tree.child(ROOT, 0, first.0) else { return Vec::new() };
    // Every worker in the answer holds the first block, so it has an interval starting at 0 of
    // the first run (at most one per worker): that run's interval count bounds every list
    // below, and sizing them once saves the reallocations that were a third of a call.
    let bound = tree.runs[run as usize].members.len();
    let mut out = Vec::with_capacity(bound);
    // stamp[w] == 2 * hop: w holds everything up to this hop's end and continues;
    // stamp[w] == 2 * hop + 1: w's overlap has been emitted during this hop.
    let mut stamp = vec![0u32; worker_slots];
    let mut continuing: Vec<u32> = Vec::with_capacity(bound);
    let mut next: Vec<u32> = Vec::with_capacity(bound);
    let mut depth = 0usize;
    let mut hop = 1u32;
    loop {
        let r = &tree.runs[run as usize];
        let matched = common_prefix(&r.hashes, &query[depth..]);
        let end = depth + matched;
        let more = end < query.len();
        next.clear();
        for m in &r.members {
            if m.start != 0 || (hop > 1 && stamp[m.worker as usize] != 2 * (hop - 1)) {
                continue;
            }
            let held = (m.end as usize).min(matched);
            if held == matched && more {
                stamp[m.worker as usize] = 2 * hop;
                next.push(m.worker);
            } else {
                stamp[m.worker as usize] = 2 * hop + 1;
                out.push(Overlap { worker: worker_of(m.worker), blocks: (depth + held) as u32 });
            }
        }
        // Workers that held everything before this run but none of it stop at `depth`.
        for &w in &continuing {
            if stamp[w as usize] < 2 * hop {
                out.push(Overlap { worker: worker_of(w), blocks: depth as u32 });
            }
        }
        std::mem::swap(&mut continuing, &mut next);
        if continuing.is_empty() {
            break;
        }
        match tree.child(run, matched, query[end].0) {
            Some(c) => {
                run = c;
                depth = end;
                hop += 1;
            }
            None => {
                for &w in &continuing {
                    out.push(Overlap { worker: worker_of(w), blocks: end as u32 });
                }
                break;
            }
        }
    }
    out
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
