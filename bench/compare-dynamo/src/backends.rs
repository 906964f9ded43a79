//! The three indexes under test behind one small interface, and the conversion of the shared
//! workload into Dynamo's types.
//!
//! - [`Ours`]: kvroute's `KvIndex`, events applied on the caller's thread, read from others
//!   through its `IndexReader`.
//! - [`Radix`]: Dynamo's `RadixTree`, `apply_event` on the caller's thread (it is `!Sync`).
//! - [`Crtc`]: Dynamo's `ConcurrentRadixTreeCompressed`, fed the only way its events can be
//!   applied — its `SyncIndexer::worker` loop on one dedicated thread, through a flume channel
//!   pre-filled before the timer starts, timed until a trailing `Flush` is acknowledged (the
//!   Dynamo harness' `SyncPar` with one lane).

use std::sync::Arc;
use std::time::{Duration, Instant};

use dynamo_kv_router::indexer::{SyncIndexer, WorkerTask};
use dynamo_kv_router::protocols as dy;
use dynamo_kv_router::{ConcurrentRadixTreeCompressed, RadixTree};
use kvroute_kv_router::KvIndex;
use kvroute_protocol::events as kv;
use kvroute_protocol::LocalBlockHash;

use crate::alloc;

/// One worker's overlap in comparison form: `(worker_id, dp_rank, blocks)`.
pub type Score = (u64, u32, u32);

/// One workload's events, in both type systems.
pub struct Events {
    pub ours: Arc<Vec<kv::RouterEvent>>,
    pub dynamo: Vec<dy::RouterEvent>,
}

impl Events {
    pub fn new(ours: Vec<kv::RouterEvent>) -> Self {
        let dynamo = ours.iter().map(to_dynamo).collect();
        Events { ours: Arc::new(ours), dynamo }
    }
}

/// One query, in both type systems (converted outside any timer).
pub struct Query {
    pub ours: Vec<LocalBlockHash>,
    pub dynamo: Vec<dy::LocalBlockHash>,
}

impl Query {
    pub fn new(ours: Vec<LocalBlockHash>) -> Self {
        let dynamo = ours.iter().map(|h| dy::LocalBlockHash(h.0)).collect();
        Query { ours, dynamo }
    }
}

/// A thread-safe read path: answers a query, returns how many workers matched.
pub type Reader = Arc<dyn Fn(&Query) -> usize + Send + Sync>;

pub trait Backend {
    /// Untimed: take this repetition's events (Dynamo's indexes consume theirs, so they get a
    /// copy; ours borrows).
    fn prepare(&mut self, events: &Events);
    /// Timed: apply everything handed over; return once it is visible to reads.
    fn run(&mut self);
    /// Answer one query: the duration of the index call alone, then the answer, sorted.
    fn find(&self, query: &Query) -> (Duration, Vec<Score>);
    /// A read path other threads can use, if the index is `Sync`.
    fn reader(&self) -> Option<Reader>;
}

/// Our event as Dynamo's (same worker, event id, hashes; no multimodal info, no position).
pub fn to_dynamo(ev: &kv::RouterEvent) -> dy::RouterEvent {
    let data = match &ev.event.data {
        kv::KvCacheEventData::Stored(s) => dy::KvCacheEventData::Stored(dy::KvCacheStoreData {
            parent_hash: s.parent_hash.map(|h| dy::ExternalSequenceBlockHash(h.0)),
            start_position: None,
            blocks: s
                .blocks
                .iter()
                .map(|b| dy::KvCacheStoredBlockData {
                    block_hash: dy::ExternalSequenceBlockHash(b.block_hash.0),
                    tokens_hash: dy::LocalBlockHash(b.tokens_hash.0),
                    mm_extra_info: None,
                })
                .collect(),
        }),
        kv::KvCacheEventData::Removed(r) => dy::KvCacheEventData::Removed(dy::KvCacheRemoveData {
            block_hashes: r.block_hashes.iter().map(|h| dy::ExternalSequenceBlockHash(h.0)).collect(),
        }),
        kv::KvCacheEventData::Cleared => dy::KvCacheEventData::Cleared,
    };
    dy::RouterEvent::new(
        ev.worker_id,
        dy::KvCacheEvent { event_id: ev.event.event_id, data, dp_rank: ev.event.dp_rank },
    )
}

fn sorted_ours(overlaps: Vec<kvroute_kv_router::Overlap>) -> Vec<Score> {
    let mut v: Vec<Score> = overlaps.into_iter().map(|o| (o.worker.worker_id, o.worker.dp_rank, o.blocks)).collect();
    v.sort_unstable();
    v
}

fn sorted_dynamo(scores: dy::OverlapScores) -> Vec<Score> {
    let mut v: Vec<Score> = scores.scores.into_iter().map(|(w, n)| (w.worker_id, w.dp_rank, n)).collect();
    v.sort_unstable();
    v
}

/// kvroute's index.
pub struct Ours {
    /// Applied to on the caller's thread; readers on other threads use `index.reader()`.
    pub index: KvIndex,
    events: Option<Arc<Vec<kv::RouterEvent>>>,
}

impl Ours {
    pub fn new() -> Self {
        Self::from_index(KvIndex::new())
    }

    pub fn from_index(index: KvIndex) -> Self {
        Ours { index, events: None }
    }
}

impl Backend for Ours {
    fn prepare(&mut self, events: &Events) {
        self.events = Some(events.ours.clone());
    }

    fn run(&mut self) {
        for ev in self.events.take().expect("prepared").iter() {
            self.index.apply_event(ev).expect("workload events apply cleanly");
        }
    }

    fn find(&self, query: &Query) -> (Duration, Vec<Score>) {
        let t = Instant::now();
        let r = self.index.find_matches(&query.ours);
        let d = t.elapsed();
        (d, sorted_ours(r))
    }

    fn reader(&self) -> Option<Reader> {
        let reader = self.index.reader();
        Some(Arc::new(move |q: &Query| reader.find_matches(&q.ours).len()))
    }
}

/// Dynamo's single-threaded `RadixTree`.
pub struct Radix {
    tree: RadixTree,
    events: Vec<dy::RouterEvent>,
}

impl Radix {
    pub fn new() -> Self {
        Radix { tree: RadixTree::new(), events: Vec::new() }
    }
}

impl Backend for Radix {
    fn prepare(&mut self, events: &Events) {
        self.events = events.dynamo.clone();
    }

    fn run(&mut self) {
        // drain, not into_iter: the emptied buffer is freed outside the timed region.
        for ev in self.events.drain(..) {
            self.tree.apply_event(ev).expect("workload events apply cleanly");
        }
        if alloc::is_counting() {
            self.events = Vec::new();
        }
    }

    fn find(&self, query: &Query) -> (Duration, Vec<Score>) {
        let q = query.dynamo.clone(); // its API takes the Vec by value
        let t = Instant::now();
        let r = self.tree.find_matches(q, false);
        let d = t.elapsed();
        (d, sorted_dynamo(r))
    }

    fn reader(&self) -> Option<Reader> {
        None
    }
}

/// Dynamo's `ConcurrentRadixTreeCompressed` behind one `SyncIndexer::worker` lane.
pub struct Crtc {
    pub be: Arc<ConcurrentRadixTreeCompressed>,
    pub tx: flume::Sender<WorkerTask>,
    rx: Option<flume::Receiver<WorkerTask>>,
    flush: Option<tokio::sync::oneshot::Receiver<()>>,
    lane: Option<std::thread::JoinHandle<()>>,
    /// Memory runs: events are sent through a short bounded queue while the lane runs, so no
    /// queue buffer of the whole event list stays allocated (flume's queue never shrinks).
    pending: Vec<dy::RouterEvent>,
}

impl Crtc {
    pub fn new() -> Self {
        let (tx, rx) = if alloc::is_counting() { flume::bounded(1024) } else { flume::unbounded() };
        Crtc {
            be: Arc::new(ConcurrentRadixTreeCompressed::new()),
            tx,
            rx: Some(rx),
            flush: None,
            lane: None,
            pending: Vec::new(),
        }
    }

    fn send_all(&mut self, events: Vec<dy::RouterEvent>) {
        for ev in events {
            self.tx.send(WorkerTask::Event(ev)).expect("lane is alive");
        }
        let (done, wait) = tokio::sync::oneshot::channel();
        self.tx.send(WorkerTask::Flush(done)).expect("lane is alive");
        self.flush = Some(wait);
    }

    /// Send `events` and block until the lane has applied them (used by the churn writer).
    pub fn apply_and_wait(&mut self, events: Vec<dy::RouterEvent>) {
        self.send_all(events);
        self.flush.take().expect("just sent").blocking_recv().expect("lane acknowledges flush");
    }
}

impl Backend for Crtc {
    fn prepare(&mut self, events: &Events) {
        if alloc::is_counting() {
            self.pending = events.dynamo.clone();
        } else {
            self.send_all(events.dynamo.clone());
        }
    }

    fn run(&mut self) {
        let rx = self.rx.take().expect("run once");
        let be = self.be.clone();
        self.lane = Some(std::thread::spawn(move || be.worker(rx, None).expect("lane loop")));
        if alloc::is_counting() {
            let events = std::mem::take(&mut self.pending);
            self.send_all(events);
        }
        self.flush.take().expect("prepared").blocking_recv().expect("lane acknowledges flush");
    }

    fn find(&self, query: &Query) -> (Duration, Vec<Score>) {
        let t = Instant::now();
        let r = self.be.find_matches(&query.dynamo, false);
        let d = t.elapsed();
        (d, sorted_dynamo(r))
    }

    fn reader(&self) -> Option<Reader> {
        let be = self.be.clone();
        Some(Arc::new(move |q: &Query| be.find_matches(&q.dynamo, false).scores.len()))
    }
}

impl Drop for Crtc {
    fn drop(&mut self) {
        let _ = self.tx.send(WorkerTask::Terminate);
        if let Some(lane) = self.lane.take() {
            let _ = lane.join();
        }
    }
}
