//! Active sequences: the load each worker carries from requests routed to it and not yet freed.
//!
//! Per worker (and dp rank): the prefill tokens still to compute (released by
//! `mark_prefill_complete`) and the KV blocks its in-flight requests occupy, reference-counted
//! by sequence hash so a prefix shared by several requests counts once (Dynamo's
//! `ActiveSequences`). These blocks are predictions of what the worker will hold; they never
//! enter the index, which only reflects the engine's own events.
//!
//! Requests routed by *other replicas* of the router group (learnt through replica sync, see
//! [`crate::replicas`]) weigh on the workers exactly like this replica's own, but are kept
//! apart, per replica: this replica's lifecycle calls never touch them, and a replica that
//! leaves takes its requests with it ([`ActiveSequences::forget_replica`]).

use kvroute_protocol::{SequenceHash, Worker};
use rustc_hash::FxHashMap;
use serde::Serialize;
use thiserror::Error;

/// Why a lifecycle call was refused; the state is unchanged.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LoadError {
    #[error("request id {0:?} is already being tracked")]
    DuplicateRequest(String),
    #[error("unknown request id {0:?}")]
    UnknownRequest(String),
}

/// What one worker is busy with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WorkerLoad {
    /// Prompt tokens of tracked requests still in prefill (uncached part only).
    pub active_prefill_tokens: u64,
    /// Distinct KV blocks (by sequence hash) of tracked requests.
    pub active_blocks: u64,
    /// Tracked requests.
    pub active_requests: u64,
    /// Tracked requests whose prefill has not completed (they wait for, or are in, a pass).
    pub prefilling_requests: u64,
}

#[derive(Default)]
struct WorkerState {
    prefill_tokens: u64,
    blocks: FxHashMap<SequenceHash, u32>,
    requests: u64,
    prefilling: u64,
}

/// A tracked request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveRequest {
    pub worker: Worker,
    /// Prefill tokens still counted against the worker (0 once prefill completed).
    pub prefill_tokens: u64,
    /// Prefill not yet completed.
    pub prefilling: bool,
    pub blocks: Vec<SequenceHash>,
}

/// In-flight requests and the load they put on each worker.
#[derive(Default)]
pub struct ActiveSequences {
    workers: FxHashMap<Worker, WorkerState>,
    requests: FxHashMap<String, ActiveRequest>,
    /// Other replicas' requests: replica id → request id → request.
    replicas: FxHashMap<String, FxHashMap<String, ActiveRequest>>,
}

impl ActiveSequences {
    pub fn new() -> Self {
        Self::default()
    }

    /// Track a request routed to `worker`: `prefill_tokens` to compute and the blocks it occupies.
    pub fn add_request(
        &mut self,
        request_id: &str,
        worker: Worker,
        prefill_tokens: u64,
        blocks: &[SequenceHash],
    ) -> Result<(), LoadError> {
        if self.requests.contains_key(request_id) {
            return Err(LoadError::DuplicateRequest(request_id.to_owned()));
        }
        let request = occupy(&mut self.workers, worker, prefill_tokens, blocks);
        self.requests.insert(request_id.to_owned(), request);
        Ok(())
    }

    /// The request's prefill is done: its prompt tokens stop counting as prefill load.
    pub fn mark_prefill_complete(&mut self, request_id: &str) -> Result<(), LoadError> {
        let request =
            self.requests.get_mut(request_id).ok_or_else(|| LoadError::UnknownRequest(request_id.to_owned()))?;
        prefill_done(&mut self.workers, request);
        Ok(())
    }

    /// The request finished (or failed, or its client left): release everything it held.
    pub fn free(&mut self, request_id: &str) -> Result<ActiveRequest, LoadError> {
        let request =
            self.requests.remove(request_id).ok_or_else(|| LoadError::UnknownRequest(request_id.to_owned()))?;
        if let Some(state) = self.workers.get_mut(&request.worker) {
            release(state, &request);
        }
        Ok(request)
    }

    /// Track a request another replica routed (its id is that replica's). A repeated id
    /// replaces the earlier request.
    pub fn add_replica_request(
        &mut self,
        replica: &str,
        request_id: &str,
        worker: Worker,
        prefill_tokens: u64,
        blocks: &[SequenceHash],
    ) {
        self.free_replica_request(replica, request_id);
        let request = occupy(&mut self.workers, worker, prefill_tokens, blocks);
        self.replicas.entry(replica.to_owned()).or_default().insert(request_id.to_owned(), request);
    }

    /// More blocks of another replica's request (sent apart because of their number); false
    /// if it is not tracked.
    pub fn extend_replica_request(&mut self, replica: &str, request_id: &str, blocks: &[SequenceHash]) -> bool {
        let Some(request) = self.replicas.get_mut(replica).and_then(|r| r.get_mut(request_id)) else { return false };
        hold(self.workers.entry(request.worker).or_default(), blocks);
        request.blocks.extend_from_slice(blocks);
        true
    }

    /// Another replica's request finished its prefill; false if it is not tracked.
    pub fn replica_prefill_complete(&mut self, replica: &str, request_id: &str) -> bool {
        match self.replicas.get_mut(replica).and_then(|r| r.get_mut(request_id)) {
            Some(request) => {
                prefill_done(&mut self.workers, request);
                true
            }
            None => false,
        }
    }

    /// Another replica's request ended; false if it is not tracked.
    pub fn free_replica_request(&mut self, replica: &str, request_id: &str) -> bool {
        let Some(requests) = self.replicas.get_mut(replica) else { return false };
        let Some(request) = requests.remove(request_id) else { return false };
        if requests.is_empty() {
            self.replicas.remove(replica);
        }
        if let Some(state) = self.workers.get_mut(&request.worker) {
            release(state, &request);
        }
        true
    }

    /// Release every request of `replica` (it left, or its updates can no longer be trusted).
    /// Returns how many there were.
    pub fn forget_replica(&mut self, replica: &str) -> usize {
        let Some(requests) = self.replicas.remove(replica) else { return 0 };
        for request in requests.values() {
            if let Some(state) = self.workers.get_mut(&request.worker) {
                release(state, request);
            }
        }
        requests.len()
    }

    /// Requests other replicas routed that are tracked here.
    pub fn replica_request_count(&self) -> usize {
        self.replicas.values().map(FxHashMap::len).sum()
    }

    /// Forget every request on every dp rank of `worker_id` (the worker left). Returns the ids
    /// of this replica's requests that were dropped.
    pub fn remove_worker(&mut self, worker_id: u64) -> Vec<String> {
        self.workers.retain(|w, _| w.worker_id != worker_id);
        let dropped: Vec<String> =
            self.requests.iter().filter(|(_, r)| r.worker.worker_id == worker_id).map(|(id, _)| id.clone()).collect();
        for id in &dropped {
            self.requests.remove(id);
        }
        for requests in self.replicas.values_mut() {
            requests.retain(|_, r| r.worker.worker_id != worker_id);
        }
        self.replicas.retain(|_, requests| !requests.is_empty());
        dropped
    }

    pub fn load(&self, worker: Worker) -> WorkerLoad {
        self.workers.get(&worker).map_or_else(WorkerLoad::default, |s| WorkerLoad {
            active_prefill_tokens: s.prefill_tokens,
            active_blocks: s.blocks.len() as u64,
            active_requests: s.requests,
            prefilling_requests: s.prefilling,
        })
    }

    /// How many of `blocks` (a request's sequence hashes) are not already active on `worker`:
    /// the leading run that is active is shared with an in-flight request and costs nothing.
    pub fn new_blocks(&self, worker: Worker, blocks: &[SequenceHash]) -> usize {
        let Some(state) = self.workers.get(&worker) else { return blocks.len() };
        let shared = blocks.iter().take_while(|b| state.blocks.contains_key(b)).count();
        blocks.len() - shared
    }

    /// This replica's tracked requests, in no particular order.
    pub fn requests(&self) -> impl Iterator<Item = (&str, &ActiveRequest)> {
        self.requests.iter().map(|(id, r)| (id.as_str(), r))
    }

    pub fn request(&self, request_id: &str) -> Option<&ActiveRequest> {
        self.requests.get(request_id)
    }

    pub fn request_count(&self) -> usize {
        self.requests.len()
    }
}

/// Count a new request against `worker`.
fn occupy(
    workers: &mut FxHashMap<Worker, WorkerState>,
    worker: Worker,
    prefill_tokens: u64,
    blocks: &[SequenceHash],
) -> ActiveRequest {
    let state = workers.entry(worker).or_default();
    state.prefill_tokens += prefill_tokens;
    state.requests += 1;
    state.prefilling += 1;
    hold(state, blocks);
    ActiveRequest { worker, prefill_tokens, prefilling: true, blocks: blocks.to_vec() }
}

/// One more reference to each of `blocks` on the worker.
fn hold(state: &mut WorkerState, blocks: &[SequenceHash]) {
    for &b in blocks {
        *state.blocks.entry(b).or_insert(0) += 1;
    }
}

/// Stop counting a request's prompt as prefill load (idempotent).
fn prefill_done(workers: &mut FxHashMap<Worker, WorkerState>, request: &mut ActiveRequest) {
    let state = workers.entry(request.worker).or_default();
    state.prefill_tokens -= request.prefill_tokens;
    state.prefilling -= u64::from(request.prefilling);
    request.prefill_tokens = 0;
    request.prefilling = false;
}

fn release(state: &mut WorkerState, request: &ActiveRequest) {
    state.prefill_tokens -= request.prefill_tokens;
    state.requests -= 1;
    state.prefilling -= u64::from(request.prefilling);
    for b in &request.blocks {
        if let Some(n) = state.blocks.get_mut(b) {
            *n -= 1;
            if *n == 0 {
                state.blocks.remove(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const W: Worker = Worker::new(1, 0);

    fn hashes(v: &[u64]) -> Vec<SequenceHash> {
        v.iter().map(|&h| SequenceHash(h)).collect()
    }

    #[test]
    fn a_replica_request_sent_in_parts_weighs_like_one_sent_whole() {
        let (mut whole, mut parts) = (ActiveSequences::new(), ActiveSequences::new());
        whole.add_replica_request("b", "q", W, 64, &hashes(&[1, 2, 3, 4, 5]));
        parts.add_replica_request("b", "q", W, 64, &hashes(&[1, 2]));
        assert!(parts.extend_replica_request("b", "q", &hashes(&[3, 4, 5])));
        assert_eq!(parts.load(W), whole.load(W));
        assert!(!parts.extend_replica_request("b", "unknown", &hashes(&[9])), "a request never routed is ignored");
        assert!(parts.free_replica_request("b", "q"));
        assert_eq!(parts.load(W), WorkerLoad::default(), "freeing releases the parts too");
    }

    #[test]
    fn add_counts_prefill_and_blocks_until_freed() {
        let mut a = ActiveSequences::new();
        a.add_request("r1", W, 100, &hashes(&[1, 2, 3])).unwrap();
        assert_eq!(
            a.load(W),
            WorkerLoad { active_prefill_tokens: 100, active_blocks: 3, active_requests: 1, prefilling_requests: 1 }
        );
        a.mark_prefill_complete("r1").unwrap();
        assert_eq!(a.load(W).active_prefill_tokens, 0);
        assert_eq!(a.load(W).prefilling_requests, 0);
        assert_eq!(a.load(W).active_blocks, 3);
        a.free("r1").unwrap();
        assert_eq!(a.load(W), WorkerLoad::default());
    }

    #[test]
    fn shared_prefix_blocks_count_once_and_survive_the_first_free() {
        let mut a = ActiveSequences::new();
        a.add_request("r1", W, 10, &hashes(&[1, 2, 3])).unwrap();
        a.add_request("r2", W, 10, &hashes(&[1, 2, 9])).unwrap();
        assert_eq!(a.load(W).active_blocks, 4);
        a.free("r1").unwrap();
        assert_eq!(a.load(W).active_blocks, 3);
        assert_eq!(a.new_blocks(W, &hashes(&[1, 2, 3])), 1);
    }

    #[test]
    fn new_blocks_counts_only_past_the_active_prefix() {
        let mut a = ActiveSequences::new();
        a.add_request("r1", W, 0, &hashes(&[1, 2])).unwrap();
        assert_eq!(a.new_blocks(W, &hashes(&[1, 2, 3, 4])), 2);
        assert_eq!(a.new_blocks(W, &hashes(&[7, 1, 2])), 3);
        assert_eq!(a.new_blocks(Worker::new(9, 0), &hashes(&[1])), 1);
    }

    #[test]
    fn bad_lifecycle_calls_are_refused_without_change() {
        let mut a = ActiveSequences::new();
        a.add_request("r1", W, 5, &hashes(&[1])).unwrap();
        assert_eq!(a.add_request("r1", W, 7, &hashes(&[2])), Err(LoadError::DuplicateRequest("r1".into())));
        assert_eq!(a.free("nope"), Err(LoadError::UnknownRequest("nope".into())));
        assert_eq!(a.mark_prefill_complete("nope"), Err(LoadError::UnknownRequest("nope".into())));
        assert_eq!(
            a.load(W),
            WorkerLoad { active_prefill_tokens: 5, active_blocks: 1, active_requests: 1, prefilling_requests: 1 }
        );
        // Completing prefill twice does not subtract twice.
        a.mark_prefill_complete("r1").unwrap();
        a.mark_prefill_complete("r1").unwrap();
        assert_eq!(a.load(W).active_prefill_tokens, 0);
        assert_eq!(a.load(W).prefilling_requests, 0);
    }

    #[test]
    fn removing_a_worker_drops_its_requests() {
        let mut a = ActiveSequences::new();
        a.add_request("r1", W, 5, &hashes(&[1])).unwrap();
        a.add_request("r2", Worker::new(1, 1), 5, &hashes(&[1])).unwrap();
        a.add_request("r3", Worker::new(2, 0), 5, &hashes(&[1])).unwrap();
        let mut dropped = a.remove_worker(1);
        dropped.sort();
        assert_eq!(dropped, vec!["r1", "r2"]);
        assert_eq!(a.request_count(), 1);
        assert!(a.free("r1").is_err());
        assert_eq!(a.load(W), WorkerLoad::default());
    }

    #[test]
    fn other_replicas_requests_weigh_alike_but_stay_theirs() {
        let mut a = ActiveSequences::new();
        a.add_request("r1", W, 100, &hashes(&[1, 2])).unwrap();
        a.add_replica_request("B", "r1", W, 50, &hashes(&[1, 3]));
        assert_eq!(
            a.load(W),
            WorkerLoad { active_prefill_tokens: 150, active_blocks: 3, active_requests: 2, prefilling_requests: 2 }
        );
        // Same id, other owner: this replica's calls reach only its own request.
        a.free("r1").unwrap();
        assert_eq!(
            a.load(W),
            WorkerLoad { active_prefill_tokens: 50, active_blocks: 2, active_requests: 1, prefilling_requests: 1 }
        );
        assert!(a.replica_prefill_complete("B", "r1"));
        assert_eq!(a.load(W).active_prefill_tokens, 0);
        assert!(!a.replica_prefill_complete("C", "r1"));
        assert!(a.free_replica_request("B", "r1"));
        assert!(!a.free_replica_request("B", "r1"));
        assert_eq!(a.load(W), WorkerLoad::default());
        assert_eq!(a.replica_request_count(), 0);
    }

    #[test]
    fn forgetting_a_replica_releases_all_it_routed() {
        let mut a = ActiveSequences::new();
        a.add_replica_request("B", "x", W, 10, &hashes(&[1]));
        a.add_replica_request("B", "y", Worker::new(2, 0), 20, &hashes(&[2]));
        a.add_replica_request("B", "y", Worker::new(2, 0), 30, &hashes(&[2])); // repeated: replaces
        a.add_replica_request("C", "z", W, 5, &hashes(&[1]));
        assert_eq!(a.load(Worker::new(2, 0)).active_prefill_tokens, 30);
        assert_eq!(a.forget_replica("B"), 2);
        assert_eq!(a.load(Worker::new(2, 0)), WorkerLoad::default());
        assert_eq!(
            a.load(W),
            WorkerLoad { active_prefill_tokens: 5, active_blocks: 1, active_requests: 1, prefilling_requests: 1 }
        );
        a.remove_worker(1);
        assert_eq!(a.replica_request_count(), 0);
        assert_eq!(a.forget_replica("C"), 0);
    }

    proptest! {
        #[test]
        fn free_after_add_leaves_every_load_at_zero(
            requests in prop::collection::vec((0u64..3, 0u64..500, prop::collection::vec(0u64..6, 0..8), any::<bool>()), 1..30)
        ) {
            let mut a = ActiveSequences::new();
            for (i, (w, prefill, blocks, complete)) in requests.iter().enumerate() {
                a.add_request(&i.to_string(), Worker::new(*w, 0), *prefill, &hashes(blocks)).unwrap();
                if *complete {
                    a.mark_prefill_complete(&i.to_string()).unwrap();
                }
            }
            for i in (0..requests.len()).rev() {
                a.free(&i.to_string()).unwrap();
            }
            for w in 0..3 {
                prop_assert_eq!(a.load(Worker::new(w, 0)), WorkerLoad::default());
            }
            prop_assert_eq!(a.request_count(), 0);
        }
    }
}
