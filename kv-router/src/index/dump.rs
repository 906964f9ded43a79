//! `dump_events`: the index as events that rebuild it.
//!
//! A depth-first walk of the runs (parents before children) emits, for every interval a worker
//! holds, one stored event chained to the worker's own name for the preceding block. A worker
//! can hold a block without its parent (an engine removed a middle block); such an interval is
//! emitted behind a synthetic parent chain that is stored and then removed again, which leaves
//! exactly the original holdings.

use hashbrown::HashMap;
use kvroute_protocol::events::{
    EngineBlockHash, KvCacheEventData, KvCacheRemoveData, KvCacheStoreData, RouterEvent, StoredBlock,
};
use kvroute_protocol::{LocalBlockHash, Worker};
use rustc_hash::{FxBuildHasher, FxHashMap};
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::tree::{slot, split, Slot, Tree, ROOT};
use super::EngineKey;

struct WorkerNames<'a> {
    worker: Worker,
    names: &'a HashMap<EngineKey, Slot, FxBuildHasher>,
    /// One engine name per held block.
    primary: FxHashMap<Slot, EngineBlockHash>,
    /// Further names of blocks stored under several names.
    extra: Vec<(Slot, EngineBlockHash)>,
}

pub(super) fn dump_events<'a>(
    tree: &Tree,
    workers: impl Iterator<Item = (u32, Worker, &'a HashMap<EngineKey, Slot, FxBuildHasher>)>,
) -> Vec<RouterEvent> {
    let mut by_index: FxHashMap<u32, WorkerNames<'a>> = FxHashMap::default();
    for (w, worker, names) in workers {
        let mut primary = FxHashMap::default();
        let mut extra = Vec::new();
        for (key, &at) in names {
            match primary.entry(at) {
                std::collections::hash_map::Entry::Occupied(_) => extra.push((at, key.engine_hash())),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(key.engine_hash());
                }
            }
        }
        by_index.insert(w, WorkerNames { worker, names, primary, extra });
    }
    let mut out = Vec::new();
    let mut stack = vec![ROOT];
    while let Some(run) = stack.pop() {
        let r = tree.read(run);
        for m in &r.members {
            let names = &by_index[&m.worker];
            let blocks: Vec<StoredBlock> = (m.start as usize..m.end as usize)
                .map(|off| StoredBlock {
                    block_hash: names.primary[&slot(run, off)],
                    tokens_hash: LocalBlockHash(r.hashes[off]),
                })
                .collect();
            emit_chain(tree, names, slot(run, m.start as usize), blocks, &mut out);
        }
        stack.extend(r.branches.iter().map(|b| b.run));
    }
    let mut workers: Vec<&WorkerNames<'_>> = by_index.values().collect();
    workers.sort_by_key(|n| n.worker);
    for names in workers {
        for &(at, name) in &names.extra {
            let (run, off) = split(at);
            let block = StoredBlock { block_hash: name, tokens_hash: LocalBlockHash(tree.read(run).hashes[off]) };
            emit_chain(tree, names, at, vec![block], &mut out);
        }
    }
    out
}

/// Emit `blocks` (starting at `first`) for one worker, chained to its name for the preceding
/// block, or behind a synthetic chain when it does not hold that block.
fn emit_chain(tree: &Tree, names: &WorkerNames<'_>, first: Slot, blocks: Vec<StoredBlock>, out: &mut Vec<RouterEvent>) {
    let stored = |parent_hash, blocks| {
        RouterEvent::new(names.worker, 0, KvCacheEventData::Stored(KvCacheStoreData { parent_hash, blocks }))
    };
    let Some(before) = preceding(tree, first) else {
        out.push(stored(None, blocks));
        return;
    };
    if let Some(&parent) = names.primary.get(&before) {
        out.push(stored(Some(parent), blocks));
        return;
    }
    let path = tree.path_to(before);
    let synthetic: Vec<StoredBlock> = path
        .iter()
        .enumerate()
        .map(|(i, &h)| StoredBlock { block_hash: synthetic_name(names, first, i), tokens_hash: LocalBlockHash(h) })
        .collect();
    let last = synthetic.last().expect("a preceding block exists").block_hash;
    let removed: Vec<EngineBlockHash> = synthetic.iter().map(|b| b.block_hash).collect();
    out.push(stored(None, synthetic));
    out.push(stored(Some(last), blocks));
    out.push(RouterEvent::new(names.worker, 0, KvCacheEventData::Removed(KvCacheRemoveData { block_hashes: removed })));
}

/// The block before `at` on its path (None at the top of the tree).
fn preceding(tree: &Tree, at: Slot) -> Option<Slot> {
    let (run, off) = split(at);
    if off > 0 {
        return Some(slot(run, off - 1));
    }
    let r = tree.read(run);
    (r.parent != ROOT).then(|| slot(r.parent, r.branch_pos as usize - 1))
}

/// A name the worker does not use, for block `i` of a synthetic chain.
fn synthetic_name(names: &WorkerNames<'_>, first: Slot, i: usize) -> EngineBlockHash {
    let mut salt = 0u64;
    loop {
        let mut bytes = [0u8; 20];
        bytes[..4].copy_from_slice(&first.to_le_bytes());
        bytes[4..12].copy_from_slice(&(i as u64).to_le_bytes());
        bytes[12..].copy_from_slice(&salt.to_le_bytes());
        let h = EngineBlockHash(xxh3_64_with_seed(&bytes, 0x006b_7672_6f75_7465));
        if !names.names.contains_key(&EngineKey::new(h)) {
            return h;
        }
        salt += 1;
    }
}
