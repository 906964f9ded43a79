//! A run's local hashes, with a fingerprint of all of them that lets `find_matches` follow a
//! whole run without reading it.
//!
//! On a cold cache, comparing a long run against a request streams two arrays from memory —
//! the run's hashes and the request's — and the run's is the one a fingerprint can stand in
//! for: the first request that follows a run to its end records the fingerprint of what it
//! followed, and a later request that reaches as far compares fingerprints instead of hashes.
//! Any change to the run forgets the fingerprint.
//!
//! A fingerprint match is taken as a match of every block, as two equal 64-bit local hashes are
//! taken as one block: two different sequences of hashes are mistaken for each other with a
//! probability of about 2^-64 per comparison of fingerprints that should have differed.

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};

use kvroute_protocol::LocalBlockHash;

/// A run's local hashes in path order, and their fingerprint once a reader has recorded it.
#[derive(Default)]
pub(super) struct RunHashes {
    hashes: Vec<u64>,
    /// `fingerprint(hashes)`, or 0 while not recorded. Set by readers under the run's read lock
    /// (every reader that records it computes the same value); cleared by the writer under the
    /// write lock, so the lock orders the two.
    fingerprint: AtomicU64,
}

impl RunHashes {
    pub fn with_capacity(capacity: usize) -> Self {
        RunHashes { hashes: Vec::with_capacity(capacity), fingerprint: AtomicU64::new(0) }
    }

    pub fn capacity(&self) -> usize {
        self.hashes.capacity()
    }

    pub fn reserve_exact(&mut self, additional: usize) {
        self.hashes.reserve_exact(additional);
    }

    pub fn push(&mut self, hash: u64) {
        self.hashes.push(hash);
        *self.fingerprint.get_mut() = 0;
    }

    pub fn truncate(&mut self, len: usize) {
        self.hashes.truncate(len);
        *self.fingerprint.get_mut() = 0;
    }

    /// The fingerprint of all the hashes, if a reader has recorded it since the last change.
    #[inline]
    pub fn fingerprint(&self) -> Option<u64> {
        Some(self.fingerprint.load(Ordering::Relaxed)).filter(|&f| f != 0)
    }

    /// Record `f`, which the caller computed with [`fingerprint`] from a slice it found equal
    /// to these hashes.
    #[inline]
    pub fn record_fingerprint(&self, f: u64) {
        self.fingerprint.store(f, Ordering::Relaxed);
    }
}

impl Deref for RunHashes {
    type Target = [u64];

    #[inline]
    fn deref(&self) -> &[u64] {
        &self.hashes
    }
}

/// Per-lane keys (the fractional digits of π); one more for folding the lanes together.
const KEYS: [u64; LANES + 1] = [
    0x243F_6A88_85A3_08D3,
    0x1319_8A2E_0370_7344,
    0xA409_3822_299F_31D0,
    0x082E_FA98_EC4E_6C89,
    0x4528_21E6_38D0_1377,
    0xBE54_66CF_34E9_0C6C,
    0xC0AC_29B7_C97C_50DD,
    0x3F84_D5B5_B547_0917,
    0x9216_D5D9_8979_FB1B,
];
/// Pairs of hashes are folded into this many independent lanes, so the multiplications overlap.
const LANES: usize = 8;

/// The 128-bit product of `a` and `b`, its halves folded together (wyhash's "mum").
#[inline(always)]
fn mum(a: u64, b: u64) -> u64 {
    let p = a as u128 * b as u128;
    p as u64 ^ (p >> 64) as u64
}

/// A 64-bit fingerprint of a sequence of local hashes (never 0; the length is part of it).
/// Each lane takes two hashes per 64×64-bit multiplication: `lane = mum(lane ^ a, b ^ key)`.
#[inline(never)]
pub(super) fn fingerprint(hashes: &[LocalBlockHash]) -> u64 {
    let mut lanes: [u64; LANES] = KEYS[1..].try_into().expect("LANES keys");
    let chunks = hashes.chunks_exact(2 * LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for k in 0..LANES {
            lanes[k] = mum(lanes[k] ^ chunk[2 * k].0, chunk[2 * k + 1].0 ^ KEYS[k]);
        }
    }
    for (k, pair) in tail.chunks(2).enumerate() {
        let second = pair.get(1).map_or(0, |h| h.0);
        lanes[k] = mum(lanes[k] ^ pair[0].0, second ^ KEYS[k]);
    }
    // Fold the lanes pairwise (three dependent steps, not eight), then the length.
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for k in 0..width {
            lanes[k] = mum(lanes[k] ^ KEYS[LANES], lanes[k + width]);
        }
    }
    mum(lanes[0] ^ hashes.len() as u64, KEYS[LANES]).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(v: &[u64]) -> Vec<LocalBlockHash> {
        v.iter().copied().map(LocalBlockHash).collect()
    }

    #[test]
    fn the_fingerprint_depends_on_every_hash_its_position_and_the_length() {
        let base: Vec<u64> = (1..=19).map(|i| i * 0x1234_5678_9ABC).collect();
        let f = fingerprint(&hashes(&base));
        assert_eq!(f, fingerprint(&hashes(&base)));
        for i in 0..base.len() {
            let mut changed = base.clone();
            changed[i] ^= 1 << 63;
            assert_ne!(fingerprint(&hashes(&changed)), f, "top bit of hash {i}");
        }
        let mut swapped = base.clone();
        swapped.swap(0, 8); // the same lane
        assert_ne!(fingerprint(&hashes(&swapped)), f);
        assert_ne!(fingerprint(&hashes(&base[..18])), f);
        let mut zero_tail = base.clone();
        zero_tail.push(0);
        assert_ne!(fingerprint(&hashes(&zero_tail)), f);
    }

    #[test]
    fn any_change_forgets_the_fingerprint() {
        let mut run = RunHashes::with_capacity(4);
        run.push(7);
        run.record_fingerprint(fingerprint(&hashes(&[7])));
        assert!(run.fingerprint().is_some());
        run.push(8);
        assert_eq!(run.fingerprint(), None);
        run.record_fingerprint(fingerprint(&hashes(&[7, 8])));
        run.truncate(1);
        assert_eq!(run.fingerprint(), None);
        assert_eq!(&*run, &[7]);
    }
}
