//! Worker identity: a configured `worker_id` plus the engine's data-parallel rank.

use serde::{Deserialize, Serialize};
use std::fmt;

/// One schedulable unit: an engine instance (`worker_id`, configured and stable across router
/// replicas) and one of its data-parallel ranks. Dynamo calls this `WorkerWithDpRank`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Worker {
    pub worker_id: u64,
    #[serde(default)]
    pub dp_rank: u32,
}

impl Worker {
    pub const fn new(worker_id: u64, dp_rank: u32) -> Self {
        Self { worker_id, dp_rank }
    }
}

impl fmt::Display for Worker {
    /// `<worker_id>` for rank 0, `<worker_id>/<dp_rank>` otherwise (the `x-kvroute-worker` form).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.dp_rank == 0 {
            write!(f, "{}", self.worker_id)
        } else {
            write!(f, "{}/{}", self.worker_id, self.dp_rank)
        }
    }
}
