//! `least_loaded`: the pool of the first priority tier with the fewest requests in flight from
//! this front door; ties by the fewest potential decode blocks when probes are present (an
//! unprobed pool loses that tie-break), then at random. Blind to the cache; does not need
//! probes. Caveat: in-flight counts are per front door, so several front doors do not see
//! each other's load; the probe's decode blocks do.

use rand::Rng;

use crate::decision::header_safe;
use crate::filter::priority::{first_tier, spill_order};
use crate::pick;
use crate::pool::PoolView;
use crate::score::Choice;

pub(crate) fn choose<R: Rng + ?Sized>(views: &[PoolView<'_>], eligible: &[usize], rng: &mut R) -> Option<Choice> {
    let tier = first_tier(views, eligible);
    let key = |i: usize| (views[i].state.in_flight, views[i].probe.map_or(u64::MAX, |p| p.potential_decode_blocks));
    let pool = pick::lowest(&tier, |a, b| key(a).cmp(&key(b)), rng)?;
    let entries: Vec<String> = tier
        .iter()
        .map(|&i| {
            let decode = views[i].probe.map(|p| format!("/{}", p.potential_decode_blocks)).unwrap_or_default();
            let star = if i == pool { "*" } else { "" };
            format!("{}={}{decode}{star}", header_safe(&views[i].facts.name), views[i].state.in_flight)
        })
        .collect();
    let in_flight = |i: usize| Some(views[i].state.in_flight as f64);
    Some(Choice {
        pool,
        disagg: None,
        summary: format!("least_loaded {}", entries.join(" ")),
        scores: tier.iter().map(|&i| (i, views[i].state.in_flight as f64)).collect(),
        fallbacks: spill_order(
            views,
            views[pool].facts.priority,
            eligible.iter().copied().filter(|&i| i != pool),
            in_flight,
        ),
    })
}

#[cfg(test)]
mod tests {
    use crate::test_support::{features, probe, Pools};
    use crate::Policy;

    #[test]
    fn the_pool_with_fewest_in_flight_wins() {
        let pools = Pools::new(&["a", "b", "c"]).in_flight(0, 5).in_flight(1, 2).in_flight(2, 9);
        let d = pools.selector(Policy::LeastLoaded {}, 0).decide(&features(None), &pools.states, &[None; 3]).unwrap();
        assert_eq!(d.pool_name, "b");
        assert_eq!(d.reason.summary, "least_loaded a=5 b=2* c=9");
        assert_eq!(d.fallbacks, vec![0, 2]);
    }

    #[test]
    fn equal_in_flight_is_broken_by_fewer_potential_decode_blocks() {
        let (a, b) = (probe(0, 0, 50), probe(0, 0, 20));
        let pools = Pools::new(&["a", "b"]);
        let d = pools
            .selector(Policy::LeastLoaded {}, 0)
            .decide(&features(None), &pools.states, &[Some(&a), Some(&b)])
            .unwrap();
        assert_eq!(d.reason.summary, "least_loaded a=0/50 b=0/20*");
    }
}
