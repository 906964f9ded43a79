//! A naive reference index: the test oracle for [`super::KvIndex`].
//!
//! Every worker's holdings are a map from the full path of local hashes (root to block) to the
//! number of engine names the block is held under. Obviously right, slow, memory-hungry: used by
//! property tests and the benchmark harness to check exact answers, never in production.

use std::collections::HashMap;

use kvroute_protocol::events::{EngineBlockHash, KvCacheEventData, RouterEvent};
use kvroute_protocol::{LocalBlockHash, Worker};

use super::{IndexError, Overlap};

#[derive(Default)]
struct Holdings {
    names: HashMap<EngineBlockHash, Vec<u64>>,
    paths: HashMap<Vec<u64>, u32>,
}

impl Holdings {
    fn release(&mut self, path: &[u64]) {
        let n = self.paths.get_mut(path).expect("every name points at a held path");
        *n -= 1;
        if *n == 0 {
            self.paths.remove(path);
        }
    }
}

/// The oracle. Same semantics as [`super::KvIndex`], none of its structure.
#[derive(Default)]
pub struct ReferenceIndex {
    workers: HashMap<Worker, Holdings>,
}

impl ReferenceIndex {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn apply_event(&mut self, event: &RouterEvent) -> Result<(), IndexError> {
        let worker = event.worker();
        let h = self.workers.entry(worker).or_default();
        match &event.event.data {
            KvCacheEventData::Stored(s) => {
                let mut path = match s.parent_hash {
                    None => Vec::new(),
                    Some(p) => match h.names.get(&p) {
                        Some(path) => path.clone(),
                        None => return Err(IndexError::UnknownParent { worker, parent: p.0 }),
                    },
                };
                for b in &s.blocks {
                    path.push(b.tokens_hash.0);
                    match h.names.insert(b.block_hash, path.clone()) {
                        Some(old) if old == path => {}
                        Some(old) => {
                            *h.paths.entry(path.clone()).or_insert(0) += 1;
                            h.release(&old);
                        }
                        None => *h.paths.entry(path.clone()).or_insert(0) += 1,
                    }
                }
                Ok(())
            }
            KvCacheEventData::Removed(r) => {
                let mut unknown = 0;
                for name in &r.block_hashes {
                    match h.names.remove(name) {
                        Some(path) => h.release(&path),
                        None => unknown += 1,
                    }
                }
                if unknown > 0 {
                    return Err(IndexError::UnknownBlocks { worker, count: unknown });
                }
                Ok(())
            }
            KvCacheEventData::Cleared => {
                *h = Holdings::default();
                Ok(())
            }
        }
    }

    pub fn remove_worker(&mut self, worker_id: u64) {
        self.workers.retain(|w, _| w.worker_id != worker_id);
    }

    /// Overlaps of workers holding at least one block, sorted by worker.
    pub fn find_matches(&self, query: &[LocalBlockHash]) -> Vec<Overlap> {
        let mut out = Vec::new();
        for (&worker, h) in &self.workers {
            let mut path = Vec::new();
            for q in query {
                path.push(q.0);
                if !h.paths.contains_key(&path) {
                    path.pop();
                    break;
                }
            }
            if !path.is_empty() {
                out.push(Overlap { worker, blocks: path.len() as u32 });
            }
        }
        out.sort_by_key(|o| o.worker);
        out
    }

    /// Engine names the worker holds blocks under (the production index's `cached_blocks`).
    pub fn cached_blocks(&self, worker: Worker) -> usize {
        self.workers.get(&worker).map_or(0, |h| h.names.len())
    }

    /// Distinct paths the worker holds.
    pub fn held_paths(&self, worker: Worker) -> usize {
        self.workers.get(&worker).map_or(0, |h| h.paths.len())
    }
}
