//! Recently tokenized prompts, so a service tokenizes as little text as it can:
//! - the **same text** arriving twice in a row — a pool-selection probe (`/best_worker` from the
//!   global router or the Envoy filter) and then the request itself — is tokenized once;
//! - a text that **begins like a recent one** — the next turn of a conversation, another question
//!   about the same document — reuses that one's ids for the shared beginning and tokenizes only
//!   the rest ([`Tokenizer::encode_after`], exact), when the tokenizer allows it;
//! - a **query** about a long text's cached prefix (a probe) can ask for the text's beginning
//!   only ([`RecentTexts::encode_beginning`]): the ids stop at a safe point past the bytes asked
//!   for, and the request that follows carries on from there.
//!
//! Tokenizing is by far the most expensive step of routing a long text prompt (≈ 1.5 MB/s: 150
//! ms for 220 KB), so this is what keeps a probe of one cheap. The kv-router and the global
//! router each keep one.
//!
//! A bounded LRU keyed by the 128-bit xxh3 of the exact text, holding the text (to find shared
//! beginnings) and its tokenization; at most [`ENTRIES`] texts and [`BUDGET_BYTES`] in all.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::resume::common_prefix_len;
use crate::{Tokenized, Tokenizer, TokenizerError};
use lru::LruCache;
use xxhash_rust::xxh3::xxh3_128;

/// Texts kept (the most recently used ones).
const ENTRIES: usize = 64;
/// Bytes of text and ids kept at most; a text larger than this is not kept.
const BUDGET_BYTES: usize = 128 << 20;
/// Texts shorter than this are tokenized whole: it costs less than looking for a beginning.
const RESUME_MIN_BYTES: usize = 4096;
/// A recent text sharing all but this much of what is wanted of a text is resumed from without
/// comparing older ones (which could save tokenizing at most this much: ≈ 1 ms).
const GOOD_ENOUGH_BYTES: usize = 1024;
/// Texts are compared for a shared beginning only if their first bytes agree this far.
const PROBE_BYTES: usize = 64;

/// How a text's ids were obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tokenization {
    /// The same text was tokenized recently.
    Cached,
    /// The first `reused` ids came from a recent text that begins the same way.
    Resumed { reused: usize },
    /// Tokenized whole.
    Whole,
    /// Only the text's beginning was tokenized (as asked); the first `reused` ids came from a
    /// recent text.
    Beginning { reused: usize },
}

impl Tokenization {
    /// How many of a text's `ids` ids were not tokenized this time.
    pub fn reused(self, ids: usize) -> usize {
        match self {
            Tokenization::Cached => ids,
            Tokenization::Resumed { reused } | Tokenization::Beginning { reused } => reused,
            Tokenization::Whole => 0,
        }
    }
}

/// The first ids of a text — exactly those of tokenizing it whole — and how far they go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Beginning {
    pub ids: Vec<u32>,
    /// Bytes of the text the ids stand for: its length when they are all of its ids.
    pub bytes: usize,
    pub how: Tokenization,
}

struct Entry {
    text: Box<str>,
    tokens: Tokenized,
}

impl Entry {
    fn bytes(&self) -> usize {
        self.text.len() + 4 * self.tokens.ids().len()
    }

    /// Bytes of the text its ids stand for.
    fn covered(&self) -> usize {
        self.tokens.ends_at().unwrap_or(self.text.len())
    }
}

struct Recent {
    entries: LruCache<u128, Arc<Entry>>,
    bytes: usize,
}

/// The recent texts and their tokenizations; shared by reference across threads. Keep one per
/// tokenizer: entries are the ids of whichever tokenizer `encode` was given.
pub struct RecentTexts {
    recent: Mutex<Recent>,
}

impl Default for RecentTexts {
    fn default() -> Self {
        let entries = LruCache::new(NonZeroUsize::new(ENTRIES).expect("non-zero"));
        RecentTexts { recent: Mutex::new(Recent { entries, bytes: 0 }) }
    }
}

impl RecentTexts {
    /// `text`'s token ids, and how they were obtained.
    pub fn encode(&self, tokenizer: &Tokenizer, text: &str) -> Result<(Vec<u32>, Tokenization), TokenizerError> {
        let whole = self.encode_beginning(tokenizer, text, text.len())?;
        Ok((whole.ids, whole.how))
    }

    /// The ids of `text`'s beginning, covering at least its first `min_bytes` bytes (or all of
    /// it). Stops early only when the tokenizer can resume ([`Tokenizer::encode_beginning`]);
    /// a later call for more of the same text, or all of it, carries on from where this one
    /// stopped.
    pub fn encode_beginning(
        &self,
        tokenizer: &Tokenizer,
        text: &str,
        min_bytes: usize,
    ) -> Result<Beginning, TokenizerError> {
        let key = xxh3_128(text.as_bytes());
        let wanted = min_bytes.min(text.len());
        let same = self.lock().entries.get(&key).cloned();
        if let Some(entry) = same.as_ref().filter(|e| e.covered() >= wanted) {
            return Ok(Beginning {
                ids: entry.tokens.ids().to_vec(),
                bytes: entry.covered(),
                how: Tokenization::Cached,
            });
        }
        // Tokenize outside the lock: other texts need not wait for this one.
        let tokens = if text.len() < RESUME_MIN_BYTES {
            // A short text is never resumed from: it needs no checkpoints.
            Tokenized::plain(tokenizer.encode(text)?)
        } else {
            let earlier = same.or_else(|| self.closest_beginning(tokenizer, text, wanted));
            tokenizer.encode_beginning(earlier.as_deref().map(|e| (&e.tokens, &*e.text)), text, wanted)?
        };
        let how = match (tokens.ends_at(), tokens.reused()) {
            (Some(_), reused) => Tokenization::Beginning { reused },
            (None, 0) => Tokenization::Whole,
            (None, reused) => Tokenization::Resumed { reused },
        };
        let entry = Entry { text: text.into(), tokens };
        let beginning = Beginning { ids: entry.tokens.ids().to_vec(), bytes: entry.covered(), how };
        self.keep(key, entry);
        Ok(beginning)
    }

    /// The recent text sharing the longest tokenized beginning with `text`, if any: resuming
    /// from any shared checkpoint costs less than tokenizing from the start. One that covers
    /// the `wanted` bytes (all but 1 KB of them) ends the search.
    fn closest_beginning(&self, tokenizer: &Tokenizer, text: &str, wanted: usize) -> Option<Arc<Entry>> {
        if text.len() < RESUME_MIN_BYTES || !tokenizer.resumes() {
            return None;
        }
        let head = &text.as_bytes()[..PROBE_BYTES];
        // Pick candidates under the lock (a cheap check each), compare them outside it, most
        // recent first: comparing is a pass over both texts (64 prompts sharing a 220 KB
        // document are 14 MB), so stop at one that leaves little to tokenize.
        let candidates: Vec<Arc<Entry>> = self
            .lock()
            .entries
            .iter()
            .filter(|(_, e)| e.text.as_bytes().starts_with(head))
            .map(|(_, e)| e.clone())
            .collect();
        let shared = |e: &Entry| common_prefix_len(&e.text.as_bytes()[..e.covered()], text.as_bytes());
        let mut best: Option<(usize, Arc<Entry>)> = None;
        for entry in candidates {
            let n = shared(&entry);
            if best.as_ref().is_none_or(|(most, _)| n > *most) {
                best = Some((n, entry));
            }
            if n + GOOD_ENOUGH_BYTES >= wanted {
                break;
            }
        }
        best.map(|(_, e)| e)
    }

    fn keep(&self, key: u128, entry: Entry) {
        let bytes = entry.bytes();
        if bytes > BUDGET_BYTES {
            return;
        }
        let mut recent = self.lock();
        while recent.bytes + bytes > BUDGET_BYTES {
            match recent.entries.pop_lru() {
                Some((_, old)) => recent.bytes -= old.bytes(),
                None => break,
            }
        }
        if let Some((_, old)) = recent.entries.push(key, Arc::new(entry)) {
            recent.bytes -= old.bytes(); // the least recent entry made room (or the same text again)
        }
        recent.bytes += bytes;
    }

    fn lock(&self) -> MutexGuard<'_, Recent> {
        // A panic while holding the lock cannot leave the cache inconsistent: use it anyway.
        self.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document(lines: usize) -> String {
        (0..lines).map(|i| format!("Line {i}: the cat's {} items cost {}.\n", i * 7 % 13, i * 31 % 1000)).collect()
    }

    #[test]
    fn the_same_text_is_tokenized_once_and_answers_the_same() {
        let tokenizer = Tokenizer::builtin();
        let cache = RecentTexts::default();
        let first = cache.encode(&tokenizer, "the same text twice").unwrap();
        let second = cache.encode(&tokenizer, "the same text twice").unwrap();
        assert_eq!((first.1, second.1), (Tokenization::Whole, Tokenization::Cached));
        assert_eq!(first.0, tokenizer.encode("the same text twice").unwrap());
        assert_eq!(first.0, second.0);
        let other = cache.encode(&tokenizer, "another text").unwrap();
        assert_ne!(first.0, other.0);
    }

    #[test]
    fn it_keeps_only_the_most_recent_texts() {
        let tokenizer = Tokenizer::builtin();
        let cache = RecentTexts::default();
        let first = cache.encode(&tokenizer, "text 0").unwrap();
        for i in 1..=ENTRIES {
            cache.encode(&tokenizer, &format!("text {i}")).unwrap();
        }
        let again = cache.encode(&tokenizer, "text 0").unwrap();
        assert_eq!(again.1, Tokenization::Whole, "evicted, tokenized again");
        assert_eq!(first.0, again.0);
        assert_eq!(cache.lock().entries.len(), ENTRIES);
    }

    #[test]
    fn a_text_beginning_like_a_recent_one_reuses_its_ids() {
        let tokenizer = Tokenizer::builtin();
        let cache = RecentTexts::default();
        let doc = document(500);
        cache.encode(&tokenizer, &format!("{doc}First question?")).unwrap();
        cache.encode(&tokenizer, "an unrelated prompt").unwrap();
        let text = format!("{doc}Second, different question?");
        let (ids, how) = cache.encode(&tokenizer, &text).unwrap();
        assert_eq!(ids, tokenizer.encode(&text).unwrap());
        let Tokenization::Resumed { reused } = how else { panic!("{how:?}") };
        assert!(reused > tokenizer.encode(&doc).unwrap().len() - 100, "reused {reused}");
        // Short texts and texts sharing little are tokenized whole.
        assert_eq!(cache.encode(&tokenizer, &format!("{}?", &doc[..100])).unwrap().1, Tokenization::Whole);
        assert_eq!(cache.encode(&tokenizer, &format!("{}!", &doc[..3000])).unwrap().1, Tokenization::Whole);
    }

    #[test]
    fn a_beginning_asked_for_first_is_carried_on_by_the_whole_text() {
        let tokenizer = Tokenizer::builtin();
        let cache = RecentTexts::default();
        let doc = document(2000);
        let whole = tokenizer.encode(&doc).unwrap();
        let first = cache.encode_beginning(&tokenizer, &doc, 8192).unwrap();
        assert!(matches!(first.how, Tokenization::Beginning { reused: 0 }), "{:?}", first.how);
        assert!(first.bytes <= 8192 && first.bytes > 8192 - 512, "{} bytes", first.bytes);
        assert!(whole.starts_with(&first.ids));
        // Asking again for no more is answered from the cache; for more, carried on.
        assert_eq!(cache.encode_beginning(&tokenizer, &doc, 4096).unwrap().how, Tokenization::Cached);
        let more = cache.encode_beginning(&tokenizer, &doc, 30_000).unwrap();
        assert_eq!(more.how, Tokenization::Beginning { reused: first.ids.len() });
        assert!(whole.starts_with(&more.ids) && more.bytes > first.bytes);
        let (ids, how) = cache.encode(&tokenizer, &doc).unwrap();
        assert_eq!(ids, whole);
        assert_eq!(how, Tokenization::Resumed { reused: more.ids.len() });
        assert_eq!(cache.encode(&tokenizer, &doc).unwrap().1, Tokenization::Cached);
        // Another text beginning the same way resumes from what was tokenized of this one.
        let next = format!("{}A question?", &doc[..20_000]);
        let other = cache.encode_beginning(&tokenizer, &next, 10_000).unwrap();
        assert!(matches!(other.how, Tokenization::Beginning { reused } if reused > 0), "{:?}", other.how);
        assert!(tokenizer.encode(&next).unwrap().starts_with(&other.ids));
    }

    #[test]
    fn a_beginning_is_resumed_from_by_the_next_query_about_a_text_beginning_the_same_way() {
        // A router that holds none of a conversation is asked about each turn: after the
        // first, the few KB each query needs come from the last one's beginning.
        let tokenizer = Tokenizer::builtin();
        let cache = RecentTexts::default();
        let doc = document(3000);
        let first = cache.encode_beginning(&tokenizer, &format!("{doc}First?"), 4096).unwrap();
        assert!(matches!(first.how, Tokenization::Beginning { reused: 0 }), "{:?}", first.how);
        let next = format!("{doc}Second?");
        let second = cache.encode_beginning(&tokenizer, &next, 4096).unwrap();
        assert_eq!(second.how, Tokenization::Beginning { reused: first.ids.len() });
        assert_eq!(second.ids, first.ids);
        assert!(tokenizer.encode(&next).unwrap().starts_with(&second.ids));
    }

    #[test]
    fn the_byte_budget_bounds_what_is_kept() {
        let tokenizer = Tokenizer::byte_level();
        let cache = RecentTexts::default();
        let big = "x".repeat(BUDGET_BYTES / 8);
        for i in 0..10 {
            cache.encode(&tokenizer, &format!("{i}{big}")).unwrap();
        }
        let recent = cache.lock();
        assert!(recent.bytes <= BUDGET_BYTES, "{} bytes kept", recent.bytes);
        assert_eq!(recent.bytes, recent.entries.iter().map(|(_, e)| e.bytes()).sum::<usize>());
        assert!(recent.entries.len() < 10);
    }
}
