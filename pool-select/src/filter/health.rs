//! Health filter: a pool with no healthy router group is never chosen. If every remaining pool
//! is unhealthy the decision fails (naming this filter) rather than send to a dead pool.

use crate::pool::PoolView;

pub const NAME: &str = "health";

/// `Some("unhealthy")` for a pool the caller marked unhealthy.
pub fn rejects(view: &PoolView<'_>) -> Option<&'static str> {
    (!view.state.healthy).then_some("unhealthy")
}
