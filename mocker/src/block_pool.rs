//! The paged KV cache of one engine (one dp rank): a fixed number of blocks of `block_size`
//! tokens, reused across requests by sequence hash, evicted least-recently-released first.
//!
//! Semantics follow vLLM's block pool as Dynamo's mocker models it:
//! - a full, computed block is *registered* under its sequence hash and becomes reusable;
//!   partial blocks are private to their request and never cached;
//! - a block is in use while any request references it; at zero references it stays cached and
//!   joins the tail of the eviction queue (a request releases its blocks leaf first, so leaves
//!   are evicted before their parents);
//! - free capacity is used before anything is evicted; evictable blocks count as free;
//! - if a hash is registered while already cached (two requests computed it at once), the second
//!   copy stays private: it occupies capacity and is freed, not cached, on release;
//! - every change is an event (`Stored` with its parent, `Removed` when the last copy goes,
//!   `Cleared`), grouped like vLLM groups them, for the KV-event publisher.
//!
//! Pure: no clock, no I/O. Callers drain [`BlockPool::take_events`] at the end of each pass.

use std::collections::BTreeMap;

use kvroute_protocol::events::zmq::EngineEvent;
use kvroute_protocol::events::EngineBlockHash;
use kvroute_protocol::SequenceHash;
use rustc_hash::FxHashMap;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("KV cache is full: every block is in use")]
    Full,
}

/// A request's hold on one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockRef {
    /// A registered block, shared by sequence hash.
    Shared(SequenceHash),
    /// A block only this request uses (partial, not yet registered, or a duplicate).
    Private,
}

/// What the cache did, in the order it did it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheEvent {
    /// Blocks registered, each chained to the previous; the first to `parent`.
    Stored {
        parent: Option<SequenceHash>,
        blocks: Vec<(SequenceHash, Vec<u32>)>,
    },
    Removed {
        hashes: Vec<SequenceHash>,
    },
    Cleared,
}

impl CacheEvent {
    /// The vLLM wire form of this event.
    pub fn to_engine_event(&self, block_size: u32) -> EngineEvent {
        match self {
            CacheEvent::Stored { parent, blocks } => EngineEvent::BlockStored {
                block_hashes: blocks.iter().map(|(h, _)| EngineBlockHash(h.0)).collect(),
                parent_block_hash: parent.map(|p| EngineBlockHash(p.0)),
                token_ids: blocks.iter().flat_map(|(_, t)| t.iter().copied()).collect(),
                block_size,
                lora_id: None,
                medium: Some("GPU".to_owned()),
                lora_name: None,
            },
            CacheEvent::Removed { hashes } => EngineEvent::BlockRemoved {
                block_hashes: hashes.iter().map(|h| EngineBlockHash(h.0)).collect(),
                medium: Some("GPU".to_owned()),
            },
            CacheEvent::Cleared => EngineEvent::AllBlocksCleared,
        }
    }
}

struct CachedBlock {
    refs: u32,
    /// Position in the eviction queue while unreferenced.
    released_at: Option<u64>,
}

/// Occupancy figures, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolUsage {
    pub capacity: usize,
    /// Blocks referenced by requests.
    pub active: usize,
    /// Cached blocks nobody references (evictable).
    pub cached_free: usize,
}

pub struct BlockPool {
    capacity: usize,
    /// Physical blocks referenced by requests (a shared block counts once).
    active: usize,
    cached: FxHashMap<SequenceHash, CachedBlock>,
    /// Unreferenced cached blocks, oldest release first.
    eviction: BTreeMap<u64, SequenceHash>,
    clock: u64,
    events: Vec<CacheEvent>,
}

impl BlockPool {
    pub fn new(capacity: usize) -> Self {
        BlockPool {
            capacity,
            active: 0,
            cached: FxHashMap::default(),
            eviction: BTreeMap::new(),
            clock: 0,
            events: Vec::new(),
        }
    }

    pub fn usage(&self) -> PoolUsage {
        PoolUsage { capacity: self.capacity, active: self.active, cached_free: self.eviction.len() }
    }

    /// Blocks that can still be given out (free or evictable).
    pub fn available(&self) -> usize {
        self.capacity - self.active
    }

    /// Whether the block with this hash is cached (in use or not).
    pub fn contains(&self, hash: SequenceHash) -> bool {
        self.cached.contains_key(&hash)
    }

    /// Every cached block's sequence hash (in use or not), unordered.
    pub fn cached_hashes(&self) -> Vec<SequenceHash> {
        self.cached.keys().copied().collect()
    }

    /// How many leading blocks of a request are cached.
    pub fn cached_prefix(&self, hashes: &[SequenceHash]) -> usize {
        hashes.iter().take_while(|h| self.cached.contains_key(h)).count()
    }

    /// Of a request's leading cached blocks, how many are already in use (cost no capacity).
    pub fn active_prefix(&self, hashes: &[SequenceHash]) -> usize {
        hashes.iter().take_while(|h| self.cached.get(h).is_some_and(|b| b.refs > 0)).count()
    }

    /// Reference a cached block. False if it is not cached.
    pub fn acquire(&mut self, hash: SequenceHash) -> bool {
        let Some(block) = self.cached.get_mut(&hash) else { return false };
        if block.refs == 0 {
            if let Some(at) = block.released_at.take() {
                self.eviction.remove(&at);
            }
            self.active += 1;
        }
        block.refs += 1;
        true
    }

    /// Take a block for private use, evicting the least recently released cached block if no
    /// free block is left.
    pub fn allocate(&mut self) -> Result<BlockRef, PoolError> {
        if self.active + self.eviction.len() >= self.capacity {
            let (_, victim) = self.eviction.pop_first().ok_or(PoolError::Full)?;
            self.cached.remove(&victim);
            self.push_removed(victim);
        }
        self.active += 1;
        Ok(BlockRef::Private)
    }

    /// A private block now holds a full, computed block: register it under `hash` (chained to
    /// `parent`) so other requests can reuse it. Returns the caller's new reference: shared
    /// if registered, still private if that hash was already cached by another copy.
    pub fn register(&mut self, hash: SequenceHash, parent: Option<SequenceHash>, tokens: &[u32]) -> BlockRef {
        if self.cached.contains_key(&hash) {
            return BlockRef::Private;
        }
        self.cached.insert(hash, CachedBlock { refs: 1, released_at: None });
        match self.events.last_mut() {
            Some(CacheEvent::Stored { blocks, .. }) if parent.is_some() && blocks.last().map(|b| b.0) == parent => {
                blocks.push((hash, tokens.to_vec()))
            }
            _ => self.events.push(CacheEvent::Stored { parent, blocks: vec![(hash, tokens.to_vec())] }),
        }
        BlockRef::Shared(hash)
    }

    /// Drop one reference. Release a request's blocks leaf first so leaves are evicted first.
    pub fn release(&mut self, block: BlockRef) {
        match block {
            BlockRef::Private => self.active -= 1,
            BlockRef::Shared(hash) => {
                let Some(b) = self.cached.get_mut(&hash) else { return };
                b.refs -= 1;
                if b.refs == 0 {
                    self.clock += 1;
                    b.released_at = Some(self.clock);
                    self.eviction.insert(self.clock, hash);
                    self.active -= 1;
                }
            }
        }
    }

    /// Forget every unreferenced cached block (an engine's cache reset). Blocks in use stay.
    pub fn clear_cached(&mut self) {
        let evictable: Vec<SequenceHash> = std::mem::take(&mut self.eviction).into_values().collect();
        for h in &evictable {
            self.cached.remove(h);
        }
        if self.cached.is_empty() {
            self.events.push(CacheEvent::Cleared);
        } else {
            for h in evictable {
                self.push_removed(h);
            }
        }
    }

    /// Events since the last call, grouped as the engine publishes them.
    pub fn take_events(&mut self) -> Vec<CacheEvent> {
        std::mem::take(&mut self.events)
    }

    fn push_removed(&mut self, hash: SequenceHash) {
        match self.events.last_mut() {
            Some(CacheEvent::Removed { hashes }) => hashes.push(hash),
            _ => self.events.push(CacheEvent::Removed { hashes: vec![hash] }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(v: u64) -> SequenceHash {
        SequenceHash(v)
    }

    /// Allocate and register a chain of blocks as one request would; returns its refs.
    fn store_chain(pool: &mut BlockPool, hashes: &[u64]) -> Vec<BlockRef> {
        let mut refs = Vec::new();
        let mut parent = None;
        for &x in hashes {
            if pool.acquire(h(x)) {
                refs.push(BlockRef::Shared(h(x)));
            } else {
                pool.allocate().unwrap();
                refs.push(pool.register(h(x), parent, &[x as u32]));
            }
            parent = Some(h(x));
        }
        refs
    }

    fn release_all(pool: &mut BlockPool, refs: Vec<BlockRef>) {
        for r in refs.into_iter().rev() {
            pool.release(r);
        }
    }

    #[test]
    fn registered_blocks_are_reused_by_hash() {
        let mut pool = BlockPool::new(8);
        let refs = store_chain(&mut pool, &[1, 2, 3]);
        release_all(&mut pool, refs);
        assert_eq!(pool.cached_prefix(&[h(1), h(2), h(9)]), 2);
        assert_eq!(pool.usage(), PoolUsage { capacity: 8, active: 0, cached_free: 3 });
        assert!(pool.acquire(h(1)));
        assert_eq!(pool.usage().active, 1);
        assert_eq!(pool.active_prefix(&[h(1), h(2)]), 1);
    }

    #[test]
    fn eviction_takes_the_least_recently_released_leaf_first() {
        let mut pool = BlockPool::new(4);
        let a = store_chain(&mut pool, &[1, 2]);
        let b = store_chain(&mut pool, &[3, 4]);
        release_all(&mut pool, a); // releases 2 then 1
        release_all(&mut pool, b); // releases 4 then 3
        pool.take_events();
        pool.allocate().unwrap();
        pool.allocate().unwrap();
        pool.allocate().unwrap();
        assert_eq!(pool.take_events(), vec![CacheEvent::Removed { hashes: vec![h(2), h(1), h(4)] }]);
        assert!(pool.contains(h(3)));
    }

    #[test]
    fn blocks_in_use_are_never_evicted() {
        let mut pool = BlockPool::new(2);
        let held = store_chain(&mut pool, &[1, 2]);
        assert_eq!(pool.allocate(), Err(PoolError::Full));
        assert!(pool.contains(h(1)) && pool.contains(h(2)));
        release_all(&mut pool, held);
        assert!(pool.allocate().is_ok());
    }

    #[test]
    fn shared_block_survives_until_its_last_reference_goes() {
        let mut pool = BlockPool::new(2);
        let first = store_chain(&mut pool, &[1]);
        let second = store_chain(&mut pool, &[1]);
        assert_eq!(pool.usage().active, 1, "one physical block for two requests");
        release_all(&mut pool, first);
        pool.allocate().unwrap();
        assert_eq!(pool.allocate(), Err(PoolError::Full), "block 1 is still referenced");
        release_all(&mut pool, second);
        assert_eq!(pool.usage().cached_free, 1);
    }

    #[test]
    fn a_duplicate_registration_stays_private() {
        let mut pool = BlockPool::new(4);
        pool.allocate().unwrap();
        assert_eq!(pool.register(h(1), None, &[1]), BlockRef::Shared(h(1)));
        pool.allocate().unwrap();
        assert_eq!(pool.register(h(1), None, &[1]), BlockRef::Private);
        assert_eq!(pool.usage().active, 2);
        pool.release(BlockRef::Private);
        pool.release(BlockRef::Shared(h(1)));
        assert_eq!(pool.usage(), PoolUsage { capacity: 4, active: 0, cached_free: 1 });
    }

    #[test]
    fn stored_events_chain_and_group_like_vllm() {
        let mut pool = BlockPool::new(8);
        store_chain(&mut pool, &[1, 2, 3]);
        let events = pool.take_events();
        assert_eq!(
            events,
            vec![CacheEvent::Stored { parent: None, blocks: vec![(h(1), vec![1]), (h(2), vec![2]), (h(3), vec![3])] }]
        );
        let EngineEvent::BlockStored { block_hashes, token_ids, parent_block_hash, .. } = events[0].to_engine_event(1)
        else {
            panic!()
        };
        assert_eq!(block_hashes.len(), 3);
        assert_eq!(token_ids, vec![1, 2, 3]);
        assert_eq!(parent_block_hash, None);
    }

    #[test]
    fn clearing_drops_unreferenced_blocks_only() {
        let mut pool = BlockPool::new(8);
        let a = store_chain(&mut pool, &[1]);
        let b = store_chain(&mut pool, &[2]);
        release_all(&mut pool, a);
        pool.take_events();
        pool.clear_cached();
        assert_eq!(pool.take_events(), vec![CacheEvent::Removed { hashes: vec![h(1)] }]);
        release_all(&mut pool, b);
        pool.clear_cached();
        assert_eq!(pool.take_events(), vec![CacheEvent::Cleared]);
        assert_eq!(pool.usage(), PoolUsage { capacity: 8, active: 0, cached_free: 0 });
    }

    proptest! {
        /// Whatever requests come and go, the cache never over-commits, never evicts a block in
        /// use, and its events rebuild exactly the set of cached blocks.
        #[test]
        fn events_mirror_the_cache_and_capacity_holds(
            requests in prop::collection::vec((prop::collection::vec(0u64..12, 1..6), any::<bool>()), 1..40)
        ) {
            let mut pool = BlockPool::new(10);
            let mut live: Vec<Vec<BlockRef>> = Vec::new();
            let mut mirror = std::collections::BTreeSet::new();
            for (chain, finish_oldest) in requests {
                // Hash chains: parent-dependent, so equal prefixes share blocks.
                let mut hashes = Vec::new();
                let mut acc = 0u64;
                for x in chain {
                    acc = acc.wrapping_mul(31).wrapping_add(x + 1);
                    hashes.push(acc);
                }
                let mut refs = Vec::new();
                let mut parent = None;
                let mut ok = true;
                for &x in &hashes {
                    if pool.acquire(h(x)) {
                        refs.push(BlockRef::Shared(h(x)));
                    } else if pool.allocate().is_ok() {
                        refs.push(pool.register(h(x), parent, &[]));
                    } else {
                        ok = false;
                        break;
                    }
                    parent = Some(h(x));
                }
                if ok { live.push(refs) } else { release_all(&mut pool, refs) }
                if finish_oldest && !live.is_empty() {
                    let oldest = live.remove(0);
                    release_all(&mut pool, oldest);
                }
                let u = pool.usage();
                prop_assert!(u.active + u.cached_free <= u.capacity);
                for refs in &live {
                    for r in refs {
                        if let BlockRef::Shared(x) = r { prop_assert!(pool.contains(*x)); }
                    }
                }
                for ev in pool.take_events() {
                    match ev {
                        CacheEvent::Stored { blocks, .. } => for (x, _) in blocks { prop_assert!(mirror.insert(x)); },
                        CacheEvent::Removed { hashes } => for x in hashes { prop_assert!(mirror.remove(&x)); },
                        CacheEvent::Cleared => mirror.clear(),
                    }
                }
                let cached: std::collections::BTreeSet<SequenceHash> = pool.cached.keys().copied().collect();
                prop_assert_eq!(&mirror, &cached);
            }
        }
    }
}
