//! `round_robin`: the pools of the first priority tier in turn. The selector keeps a cursor
//! (the index after the last pool chosen); the next choice is the first eligible pool at or
//! after it in config order, wrapping. An ineligible pool is skipped without losing the
//! rotation of the others. Blind to cache and load; no RNG.

use crate::filter::priority::{first_tier, spill_order};
use crate::pool::PoolView;
use crate::score::Choice;

pub(crate) fn choose(views: &[PoolView<'_>], eligible: &[usize], cursor: &mut usize) -> Option<Choice> {
    let tier = first_tier(views, eligible);
    let pool = tier.iter().copied().find(|&i| i >= *cursor).or_else(|| tier.first().copied())?;
    *cursor = pool + 1;
    Some(Choice {
        pool,
        disagg: None,
        summary: format!("round_robin -> {}", crate::decision::header_safe(&views[pool].facts.name)),
        scores: Vec::new(),
        fallbacks: spill_order(
            views,
            views[pool].facts.priority,
            eligible.iter().copied().filter(|&i| i != pool),
            |_| None,
        ),
    })
}

#[cfg(test)]
mod tests {
    use crate::test_support::{features, Pools};
    use crate::{Policy, PoolState};

    #[test]
    fn pools_are_chosen_in_turn() {
        let pools = Pools::new(&["a", "b", "c"]);
        let mut s = pools.selector(Policy::RoundRobin {}, 0);
        let picks: Vec<usize> =
            (0..7).map(|_| s.decide(&features(None), &pools.states, &[None; 3]).unwrap().pool).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn an_unhealthy_pool_is_skipped_without_breaking_the_cycle() {
        let pools = Pools::new(&["a", "b", "c"]);
        let mut s = pools.selector(Policy::RoundRobin {}, 0);
        let mut states = pools.states.clone();
        let mut pick = |states: &[PoolState]| s.decide(&features(None), states, &[None; 3]).unwrap().pool;
        assert_eq!(pick(&states), 0);
        states[1].healthy = false;
        assert_eq!(pick(&states), 2);
        states[1].healthy = true;
        assert_eq!((pick(&states), pick(&states)), (0, 1));
    }

    #[test]
    fn the_reason_names_the_pool() {
        let pools = Pools::new(&["a"]);
        let d = pools.selector(Policy::RoundRobin {}, 0).decide(&features(None), &pools.states, &[None]).unwrap();
        assert_eq!(d.reason.summary, "round_robin -> a");
    }
}
