//! Priority: the first-choice tier and the spill-over / failover order.
//!
//! Priority 0 is the first choice. Policies that do not name pools themselves (all but `grid`)
//! consider only the eligible pools with the lowest priority number ([`first_tier`]), so a
//! higher-numbered pool takes traffic only when every lower one was filtered out (unhealthy or
//! saturated). [`spill_order`] ranks the other pools for retries and for a grid target that
//! was filtered out.

use std::cmp::Ordering;

use crate::pool::PoolView;

/// The pools among `eligible` with the lowest priority number, in config order.
pub fn first_tier(views: &[PoolView<'_>], eligible: &[usize]) -> Vec<usize> {
    let Some(best) = eligible.iter().map(|&i| views[i].facts.priority).min() else {
        return Vec::new();
    };
    eligible.iter().copied().filter(|&i| views[i].facts.priority == best).collect()
}

/// `candidates` ordered as spill-over targets from a pool of priority `from`: the same
/// priority first, then higher numbers (nearest first), then lower numbers (nearest first);
/// within one priority by `score` (lower first, unscored last), then config order.
pub fn spill_order(
    views: &[PoolView<'_>],
    from: u32,
    candidates: impl IntoIterator<Item = usize>,
    score: impl Fn(usize) -> Option<f64>,
) -> Vec<usize> {
    let mut order: Vec<usize> = candidates.into_iter().collect();
    let rank = |i: usize| {
        let p = views[i].facts.priority;
        (p < from, p.abs_diff(from))
    };
    order.sort_by(|&a, &b| rank(a).cmp(&rank(b)).then_with(|| by_score(score(a), score(b))).then(a.cmp(&b)));
    order
}

fn by_score(a: Option<f64>, b: Option<f64>) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => a.total_cmp(&b),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::Pools;

    #[test]
    fn the_first_tier_is_the_lowest_priority_number_present() {
        let pools = Pools::new(&["a", "b", "c"]).priority(0, 1).priority(1, 2).priority(2, 1);
        let views = pools.views(&[None, None, None]);
        assert_eq!(first_tier(&views, &[0, 1, 2]), vec![0, 2]);
        assert_eq!(first_tier(&views, &[1]), vec![1]);
    }

    #[test]
    fn spill_goes_to_the_same_priority_then_higher_numbers_then_lower() {
        let pools =
            Pools::new(&["p0", "p1", "p1b", "p2", "p3"]).priority(1, 1).priority(2, 1).priority(3, 2).priority(4, 3);
        let views = pools.views(&[None; 5]);
        assert_eq!(spill_order(&views, 1, [0, 2, 3, 4], |_| None), vec![2, 3, 4, 0]);
    }

    #[test]
    fn within_a_priority_lower_scores_come_first_and_unscored_last() {
        let pools = Pools::new(&["a", "b", "c"]);
        let views = pools.views(&[None; 3]);
        let score = |i: usize| [None, Some(5.0), Some(1.0)][i];
        assert_eq!(spill_order(&views, 0, [0, 1, 2], score), vec![2, 1, 0]);
    }
}
