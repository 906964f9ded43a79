//! The pick phase: turning per-pool keys or weights into one pool, with the injected RNG.
//!
//! Two pickers serve every policy: [`lowest`] (the best under an ordering, ties uniformly at
//! random) and [`proportional`] (drawn with probability ∝ weight). Draws use `u64` ranges and
//! `f64` samples, never `usize`, so one RNG algorithm gives the same picks on 32-bit wasm and
//! 64-bit native targets.

use std::cmp::Ordering;

use rand::Rng;

/// The candidate that is least under `cmp`; among equals, one uniformly at random. The RNG is
/// drawn only when there is a tie. `None` when `candidates` is empty.
pub fn lowest<R: Rng + ?Sized>(
    candidates: &[usize],
    cmp: impl Fn(usize, usize) -> Ordering,
    rng: &mut R,
) -> Option<usize> {
    let mut best: Vec<usize> = Vec::new();
    for &c in candidates {
        match best.first().map(|&b| cmp(c, b)) {
            None | Some(Ordering::Equal) => best.push(c),
            Some(Ordering::Less) => {
                best.clear();
                best.push(c);
            }
            Some(Ordering::Greater) => {}
        }
    }
    match best.len() {
        0 => None,
        1 => Some(best[0]),
        n => Some(best[uniform_index(n, rng)]),
    }
}

/// A candidate drawn with probability ∝ `weight` (weights must be finite and > 0).
/// `None` when `candidates` is empty.
pub fn proportional<R: Rng + ?Sized>(
    candidates: &[usize],
    weight: impl Fn(usize) -> f64,
    rng: &mut R,
) -> Option<usize> {
    let last = *candidates.last()?;
    let total: f64 = candidates.iter().map(|&c| weight(c)).sum();
    let mut draw = rng.gen::<f64>() * total;
    for &c in candidates {
        let w = weight(c);
        if draw < w {
            return Some(c);
        }
        draw -= w;
    }
    // Rounding can leave a sliver past the last weight.
    Some(last)
}

/// A uniform index below `n` (`n > 0`), drawn as a `u64` for platform-independent streams.
fn uniform_index<R: Rng + ?Sized>(n: usize, rng: &mut R) -> usize {
    rng.gen_range(0..n as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    #[test]
    fn lowest_without_a_tie_is_the_minimum() {
        let keys = [3, 1, 2];
        let mut rng = SmallRng::seed_from_u64(0);
        assert_eq!(lowest(&[0, 1, 2], |a, b| keys[a].cmp(&keys[b]), &mut rng), Some(1));
    }

    #[test]
    fn lowest_breaks_ties_at_random_over_all_tied() {
        let keys = [1, 5, 1, 1];
        let mut rng = SmallRng::seed_from_u64(0);
        let mut seen = [false; 4];
        for _ in 0..100 {
            seen[lowest(&[0, 1, 2, 3], |a, b| keys[a].cmp(&keys[b]), &mut rng).unwrap()] = true;
        }
        assert_eq!(seen, [true, false, true, true]);
    }

    #[test]
    fn pickers_return_none_for_no_candidates() {
        let mut rng = SmallRng::seed_from_u64(0);
        assert_eq!(lowest(&[], |_, _| Ordering::Equal, &mut rng), None);
        assert_eq!(proportional(&[], |_| 1.0, &mut rng), None);
    }

    #[test]
    fn proportional_follows_the_weights() {
        let weights = [1.0, 3.0];
        let mut rng = SmallRng::seed_from_u64(9);
        let ones = (0..4000).filter(|_| proportional(&[0, 1], |i| weights[i], &mut rng) == Some(1)).count();
        assert!((2850..3150).contains(&ones), "{ones}");
    }
}
