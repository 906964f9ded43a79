//! Recently tokenized prompts, so the same text is tokenized once per router even when it
//! arrives twice in a row — a pool-selection probe (`/best_worker` from the global router or
//! the Envoy filter) and then the request itself. Tokenizing is by far the most expensive step
//! for a long text prompt (hundreds of ms for 220 KB), so the second pass is what this saves.
//!
//! Keyed by the 128-bit xxh3 of the exact text; a bounded LRU of token id lists.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use kvroute_tokenizer::{Tokenizer, TokenizerError};
use lru::LruCache;
use xxhash_rust::xxh3::xxh3_128;

/// Texts whose tokens are kept (the most recently used ones).
const ENTRIES: usize = 64;

pub struct EncodeCache {
    recent: Mutex<LruCache<u128, Arc<[u32]>>>,
}

impl Default for EncodeCache {
    fn default() -> Self {
        EncodeCache { recent: Mutex::new(LruCache::new(NonZeroUsize::new(ENTRIES).expect("non-zero"))) }
    }
}

impl EncodeCache {
    /// `text`'s token ids: from the cache, or from `tokenizer` (then kept).
    pub fn encode(&self, tokenizer: &Tokenizer, text: &str) -> Result<Arc<[u32]>, TokenizerError> {
        let key = xxh3_128(text.as_bytes());
        if let Some(ids) = self.lock().get(&key) {
            return Ok(ids.clone());
        }
        // Tokenize outside the lock: other texts need not wait for this one.
        let ids: Arc<[u32]> = tokenizer.encode(text)?.into();
        self.lock().put(key, ids.clone());
        Ok(ids)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<u128, Arc<[u32]>>> {
        // A panic while holding the lock cannot leave the cache inconsistent: use it anyway.
        self.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_text_is_tokenized_once_and_answers_the_same() {
        let tokenizer = Tokenizer::builtin();
        let cache = EncodeCache::default();
        let first = cache.encode(&tokenizer, "the same text twice").unwrap();
        let second = cache.encode(&tokenizer, "the same text twice").unwrap();
        assert!(Arc::ptr_eq(&first, &second), "the second answer comes from the cache");
        assert_eq!(&first[..], &tokenizer.encode("the same text twice").unwrap()[..]);
        let other = cache.encode(&tokenizer, "another text").unwrap();
        assert_ne!(first, other);
    }

    #[test]
    fn it_keeps_only_the_most_recent_texts() {
        let tokenizer = Tokenizer::builtin();
        let cache = EncodeCache::default();
        let first = cache.encode(&tokenizer, "text 0").unwrap();
        for i in 1..=ENTRIES {
            cache.encode(&tokenizer, &format!("text {i}")).unwrap();
        }
        let again = cache.encode(&tokenizer, "text 0").unwrap();
        assert!(!Arc::ptr_eq(&first, &again), "evicted, tokenized again");
        assert_eq!(first, again);
    }
}
