//! The filter phase: which pools may serve this request at all.
//!
//! Always applied, in this order, each recording what it removed and why:
//! [`model`] (the pool serves the request's model), [`health`] (never an unhealthy pool while
//! another can serve), [`context`] (a pool that cannot take a prompt this long), [`saturation`]
//! (spill over a pool whose probe is over its limits). If model or health leaves nothing, the
//! decision fails with every removal listed; context and saturation never empty the set.
//! [`priority`] is not part of the chain: it holds the tiering and spill-over order that
//! policies apply to the survivors.

pub mod context;
pub mod health;
pub mod model;
pub mod priority;
pub mod saturation;

use crate::decision::{Removal, SelectError};
use crate::pool::{PoolView, RequestFeatures};

/// The pools left after the filters, in config order, and what was removed.
#[derive(Debug)]
pub(crate) struct Filtered {
    pub eligible: Vec<usize>,
    pub removed: Vec<Removal>,
}

/// Runs model → health → context → saturation over all pools; `input_tokens` is the prompt's
/// length when known.
pub(crate) fn apply(
    features: &RequestFeatures,
    input_tokens: Option<u64>,
    views: &[PoolView<'_>],
) -> Result<Filtered, SelectError> {
    let mut eligible: Vec<usize> = (0..views.len()).collect();
    let mut removed = Vec::new();
    remove(&mut eligible, &mut removed, views, model::NAME, |v| model::rejects(features, v));
    if eligible.is_empty() {
        return Err(SelectError::NoEligiblePool { removed });
    }
    remove(&mut eligible, &mut removed, views, health::NAME, health::rejects);
    if eligible.is_empty() {
        return Err(SelectError::NoEligiblePool { removed });
    }
    let fit = context::survivors(input_tokens, views, &eligible);
    narrow(&mut eligible, fit, &mut removed, views, context::NAME, |v| context::rejects(input_tokens, v));
    let fresh = saturation::survivors(views, &eligible);
    narrow(&mut eligible, fresh, &mut removed, views, saturation::NAME, saturation::rejects);
    Ok(Filtered { eligible, removed })
}

/// Narrows `eligible` to `kept` (what a filter that never empties the set keeps), recording
/// every other pool with the reason `rejects` gives.
fn narrow(
    eligible: &mut Vec<usize>,
    kept: Vec<usize>,
    removed: &mut Vec<Removal>,
    views: &[PoolView<'_>],
    filter: &'static str,
    rejects: impl Fn(&PoolView<'_>) -> Option<&'static str>,
) {
    for &i in eligible.iter().filter(|i| !kept.contains(i)) {
        let why = rejects(&views[i]).unwrap_or(filter);
        removed.push(Removal { pool: i, name: views[i].facts.name.clone(), filter, why });
    }
    *eligible = kept;
}

/// Drops from `eligible` every pool `rejects` names a reason for, recording it.
fn remove(
    eligible: &mut Vec<usize>,
    removed: &mut Vec<Removal>,
    views: &[PoolView<'_>],
    filter: &'static str,
    rejects: impl Fn(&PoolView<'_>) -> Option<&'static str>,
) {
    eligible.retain(|&i| match rejects(&views[i]) {
        Some(why) => {
            removed.push(Removal { pool: i, name: views[i].facts.name.clone(), filter, why });
            false
        }
        None => true,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{features, probe, Pools};

    #[test]
    fn filters_run_in_order_and_record_each_removal() {
        let pools = Pools::new(&["a", "b", "c", "d"]).model(0, "other").sick(1).limit_prefill(2, 10);
        let busy = probe(0, 100, 0);
        let probes = [None, None, Some(&busy), None];
        let f = apply(&features(Some("m")), None, &pools.views(&probes)).unwrap();
        assert_eq!(f.eligible, vec![3]);
        let by: Vec<(&str, &str)> = f.removed.iter().map(|r| (r.name.as_str(), r.filter)).collect();
        assert_eq!(by, vec![("a", "model"), ("b", "health"), ("c", "saturation")]);
        // d cannot take 500 tokens: c, saturated, is all that is left, and stays.
        let pools = pools.max_input(3, 100);
        let f = apply(&features(Some("m")), Some(500), &pools.views(&probes)).unwrap();
        assert_eq!(f.eligible, vec![2]);
        assert_eq!(f.removed.last().map(|r| (r.name.as_str(), r.filter)), Some(("d", "context")));
        let pools = Pools::new(&["a", "b", "c"]).max_input(0, 100).limit_prefill(1, 10);
        let f = apply(&features(None), Some(500), &pools.views(&[None, Some(&busy), None])).unwrap();
        assert_eq!(f.eligible, vec![2]);
        let by: Vec<(&str, &str)> = f.removed.iter().map(|r| (r.name.as_str(), r.filter)).collect();
        assert_eq!(by, vec![("a", "context"), ("b", "saturation")]);
    }
}
