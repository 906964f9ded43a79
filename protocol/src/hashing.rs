//! Dynamo-compatible KV block hashing.
//!
//! A prompt is cut into **full** blocks of `block_size` tokens (a partial trailing block is never
//! hashed). Each block gets a *local* hash, `xxh3_64` of its tokens as little-endian `u32`s with
//! seed 1337, which identifies the block's content regardless of what precedes it; the index
//! navigates a tree of local hashes. The *sequence* hash chains the prefix
//! (`seq[i] = xxh3_64(le(seq[i-1]) ++ le(local[i]))`), which is what Dynamo-style engines use as a
//! block's identity. A LoRA adapter name or cache salt changes the seed so the same tokens under
//! different adapters never match.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The seed Dynamo uses for block hashes.
pub const DEFAULT_SEED: u64 = 1337;

/// Hash of one block's tokens (content only, not position).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LocalBlockHash(pub u64);

/// Hash of a block together with everything before it (the chained prefix hash).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SequenceHash(pub u64);

/// The seed block hashes are computed with: 1337, shifted by a LoRA adapter name and/or a cache
/// salt so that caches under different adapters or salts never match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HashSeed(pub u64);

impl Default for HashSeed {
    fn default() -> Self {
        HashSeed(DEFAULT_SEED)
    }
}

impl HashSeed {
    /// Seed for a request, as Dynamo 1.6.1 computes it (`dynamo-kv-hashing`'s salt):
    /// `1337 + xxh3(lora_name, seed 0) + xxh3(cache_salt, seed 1)` (wrapping), each term only when
    /// present and non-empty.
    pub fn for_request(lora_name: Option<&str>, cache_salt: Option<&str>) -> Self {
        let mut seed = DEFAULT_SEED;
        if let Some(name) = lora_name.filter(|n| !n.is_empty()) {
            seed = seed.wrapping_add(xxh3_64_with_seed(name.as_bytes(), 0));
        }
        if let Some(salt) = cache_salt.filter(|s| !s.is_empty()) {
            seed = seed.wrapping_add(xxh3_64_with_seed(salt.as_bytes(), 1));
        }
        HashSeed(seed)
    }
}

/// Local hash of one block of tokens.
pub fn local_block_hash(tokens: &[u32], seed: HashSeed) -> LocalBlockHash {
    // Blocks are small (16-64 tokens typical): a stack buffer avoids an allocation per block.
    const STACK_TOKENS: usize = 128;
    if tokens.len() <= STACK_TOKENS {
        let mut buf = [0u8; STACK_TOKENS * 4];
        for (chunk, t) in buf.chunks_exact_mut(4).zip(tokens) {
            chunk.copy_from_slice(&t.to_le_bytes());
        }
        LocalBlockHash(xxh3_64_with_seed(&buf[..tokens.len() * 4], seed.0))
    } else {
        let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
        LocalBlockHash(xxh3_64_with_seed(&bytes, seed.0))
    }
}

/// Local hashes of every full block of `tokens`. `block_size` 0 yields no blocks.
pub fn block_hashes(tokens: &[u32], block_size: usize, seed: HashSeed) -> Vec<LocalBlockHash> {
    if block_size == 0 {
        return Vec::new();
    }
    tokens.chunks_exact(block_size).map(|block| local_block_hash(block, seed)).collect()
}

/// Chained sequence hashes: `seq[0] = local[0]`, `seq[i] = xxh3(le(seq[i-1]) ++ le(local[i]))`.
pub fn sequence_hashes(local: &[LocalBlockHash]) -> Vec<SequenceHash> {
    let mut out = Vec::with_capacity(local.len());
    let mut prev: Option<u64> = None;
    for l in local {
        let h = match prev {
            None => l.0,
            Some(p) => chain(p, l.0),
        };
        out.push(SequenceHash(h));
        prev = Some(h);
    }
    out
}

/// One link of the sequence-hash chain.
pub fn chain(parent: u64, local: u64) -> u64 {
    let mut buf = [0u8; 16];
    buf[..8].copy_from_slice(&parent.to_le_bytes());
    buf[8..].copy_from_slice(&local.to_le_bytes());
    xxh3_64_with_seed(&buf, DEFAULT_SEED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_vector_from_wire_formats() {
        let h = block_hashes(&[1, 2, 3, 4], 4, HashSeed::default());
        assert_eq!(h, vec![LocalBlockHash(14643705804678351452)]);
    }

    #[test]
    fn partial_trailing_block_is_not_hashed() {
        assert_eq!(block_hashes(&[1, 2, 3, 4, 5, 6], 4, HashSeed::default()).len(), 1);
        assert!(block_hashes(&[1, 2, 3], 4, HashSeed::default()).is_empty());
        assert!(block_hashes(&[1, 2, 3], 0, HashSeed::default()).is_empty());
    }

    #[test]
    fn local_hash_ignores_position_sequence_hash_does_not() {
        let seed = HashSeed::default();
        let local = block_hashes(&[7, 7, 9, 9, 7, 7], 2, seed);
        assert_eq!(local[0], local[2]);
        let seq = sequence_hashes(&local);
        assert_eq!(seq[0].0, local[0].0);
        assert_ne!(seq[0], seq[2]);
        assert_eq!(seq[1].0, chain(seq[0].0, local[1].0));
    }

    #[test]
    fn lora_and_salt_change_every_hash() {
        let tokens: Vec<u32> = (0..32).collect();
        let base = block_hashes(&tokens, 16, HashSeed::default());
        let lora = block_hashes(&tokens, 16, HashSeed::for_request(Some("adapter-a"), None));
        let other = block_hashes(&tokens, 16, HashSeed::for_request(Some("adapter-b"), None));
        let salted = block_hashes(&tokens, 16, HashSeed::for_request(None, Some("tenant-1")));
        for i in 0..2 {
            assert_ne!(base[i], lora[i]);
            assert_ne!(lora[i], other[i]);
            assert_ne!(base[i], salted[i]);
        }
        assert_eq!(HashSeed::for_request(Some(""), None), HashSeed::default());
        // Dynamo's formula: the salt term uses seed 1, so a name means something else as a salt.
        assert_ne!(HashSeed::for_request(Some("x"), None), HashSeed::for_request(None, Some("x")));
        let both = HashSeed::for_request(Some("a"), Some("b")).0;
        let expected = DEFAULT_SEED.wrapping_add(xxh3_64_with_seed(b"a", 0)).wrapping_add(xxh3_64_with_seed(b"b", 1));
        assert_eq!(both, expected);
    }

    #[test]
    fn long_blocks_hash_like_short_ones() {
        // The stack-buffer fast path and the heap path must agree on the byte layout.
        let tokens: Vec<u32> = (0..256).collect();
        let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
        let expected = xxh3_64_with_seed(&bytes, DEFAULT_SEED);
        assert_eq!(local_block_hash(&tokens, HashSeed::default()).0, expected);
        let short: Vec<u32> = (0..64).collect();
        let bytes: Vec<u8> = short.iter().flat_map(|t| t.to_le_bytes()).collect();
        assert_eq!(local_block_hash(&short, HashSeed::default()).0, xxh3_64_with_seed(&bytes, DEFAULT_SEED));
    }
}
