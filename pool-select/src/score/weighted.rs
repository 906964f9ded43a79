//! `weighted`: a random pool among the first priority tier, with probability ∝ its `weight`.
//! Blind to cache and load: a static traffic split (canaries, capacity ratios). Scores are the
//! weights; the retry order is by priority, then higher weight first.

use rand::Rng;

use crate::decision::entry;
use crate::filter::priority::{first_tier, spill_order};
use crate::pick;
use crate::pool::PoolView;
use crate::score::Choice;

pub(crate) fn choose<R: Rng + ?Sized>(views: &[PoolView<'_>], eligible: &[usize], rng: &mut R) -> Option<Choice> {
    let tier = first_tier(views, eligible);
    let weight = |i: usize| views[i].facts.weight;
    let pool = pick::proportional(&tier, weight, rng)?;
    let entries: Vec<String> = tier.iter().map(|&i| entry(&views[i].facts.name, Some(weight(i)), i == pool)).collect();
    Some(Choice {
        pool,
        disagg: None,
        summary: format!("weighted {}", entries.join(" ")),
        scores: tier.iter().map(|&i| (i, weight(i))).collect(),
        fallbacks: spill_order(
            views,
            views[pool].facts.priority,
            eligible.iter().copied().filter(|&i| i != pool),
            |i| Some(-weight(i)),
        ),
    })
}

#[cfg(test)]
mod tests {
    use crate::test_support::{features, Pools};
    use crate::Policy;

    #[test]
    fn picks_are_roughly_proportional_to_weight() {
        let pools = Pools::new(&["a", "b", "c"]).weight(0, 1.0).weight(1, 2.0).weight(2, 5.0);
        let mut s = pools.selector(Policy::Weighted {}, 42);
        let mut counts = [0usize; 3];
        for _ in 0..8000 {
            counts[s.decide(&features(None), &pools.states, &[None; 3]).unwrap().pool] += 1;
        }
        // Expected 1000 / 2000 / 5000.
        assert!((850..1150).contains(&counts[0]), "{counts:?}");
        assert!((1800..2200).contains(&counts[1]), "{counts:?}");
        assert!((4750..5250).contains(&counts[2]), "{counts:?}");
    }

    #[test]
    fn a_higher_priority_number_gets_nothing_while_the_first_tier_can_serve() {
        let pools = Pools::new(&["a", "b"]).weight(1, 100.0).priority(1, 1);
        let mut s = pools.selector(Policy::Weighted {}, 0);
        assert!((0..50).all(|_| s.decide(&features(None), &pools.states, &[None; 2]).unwrap().pool == 0));
    }

    #[test]
    fn the_reason_lists_the_weights_and_marks_the_choice() {
        let pools = Pools::new(&["a"]).weight(0, 2.5);
        let d = pools.selector(Policy::Weighted {}, 0).decide(&features(None), &pools.states, &[None]).unwrap();
        assert_eq!(d.reason.summary, "weighted a=2.5*");
    }
}
