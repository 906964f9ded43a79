//! Saturation filter: spill-over. A pool whose probe shows it over one of its
//! [`PoolLimits`](crate::PoolLimits) is removed, so the request goes to the next eligible pool
//! by priority. If every remaining pool is saturated, the saturated pools with the lowest
//! priority number are kept (and the policy chooses among them) rather than fail: overload is
//! better answered by the engines' queues than by a 503 here. A pool without a probe or
//! without limits is never known to be saturated.

use crate::pool::PoolView;

pub const NAME: &str = "saturation";

/// Which limit `view`'s probe exceeds, if any.
pub fn rejects(view: &PoolView<'_>) -> Option<&'static str> {
    view.facts.limits.as_ref()?.exceeded_by(view.probe?)
}

/// The pools among `eligible` that the filter keeps: the unsaturated ones, or, when all are
/// saturated, those with the lowest priority number.
pub(crate) fn survivors(views: &[PoolView<'_>], eligible: &[usize]) -> Vec<usize> {
    let fresh: Vec<usize> = eligible.iter().copied().filter(|&i| rejects(&views[i]).is_none()).collect();
    if !fresh.is_empty() {
        return fresh;
    }
    let Some(best) = eligible.iter().map(|&i| views[i].facts.priority).min() else {
        return Vec::new();
    };
    eligible.iter().copied().filter(|&i| views[i].facts.priority == best).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{probe, Pools};

    #[test]
    fn a_probe_over_either_limit_is_saturated_and_at_the_limit_is_not() {
        let pools = Pools::new(&["a"]).limit_prefill(0, 100).limit_decode(0, 10);
        let at = probe(0, 100, 10);
        assert_eq!(rejects(&pools.views(&[Some(&at)])[0]), None);
        let prefill = probe(0, 101, 0);
        assert_eq!(rejects(&pools.views(&[Some(&prefill)])[0]), Some("potential_prefill_tokens over limit"));
        let decode = probe(0, 0, 11);
        assert_eq!(rejects(&pools.views(&[Some(&decode)])[0]), Some("potential_decode_blocks over limit"));
    }

    #[test]
    fn an_unprobed_pool_is_never_saturated() {
        let pools = Pools::new(&["a"]).limit_prefill(0, 0);
        assert_eq!(rejects(&pools.views(&[None])[0]), None);
    }

    #[test]
    fn when_all_are_saturated_the_lowest_priority_numbers_survive() {
        let pools = Pools::new(&["a", "b", "c"]).priority(0, 2).priority(1, 1).priority(2, 1);
        let pools = pools.limit_prefill(0, 0).limit_prefill(1, 0).limit_prefill(2, 0);
        let busy = probe(0, 5, 0);
        let views = pools.views(&[Some(&busy), Some(&busy), Some(&busy)]);
        assert_eq!(survivors(&views, &[0, 1, 2]), vec![1, 2]);
    }
}
