//! Resuming tokenization inside a text tokenized before: a prompt that begins like an earlier one
//! (the next turn of a conversation, another question about the same document — the prompts
//! KV-aware routing exists for) keeps the earlier ids up to a safe point inside the shared
//! beginning and tokenizes only the rest. The ids are exactly those of tokenizing the whole text.
//!
//! # Why it is exact
//!
//! An HF tokenizer without a normalizer splits the text into pieces (added tokens first, then
//! the pre-tokenizer's regex) and encodes each piece on its own. A **checkpoint** is a token
//! that starts a piece at byte `c`, right where the previous token ends, with a non-whitespace
//! character at `c` or at `c` + 1 (GPT-2-style patterns start most pieces with a space:
//! `" word"`). Every piece before `c` was decided by the text up to that non-whitespace
//! character: a match ends where the next character no longer fits, and the one kind of match
//! that looks further — a greedy whitespace run that backtracks to its last line end, Llama 3's
//! `\s*[\r\n]+` — stops there too, the whitespace run being at most one character past `c`.
//! A regex search restarted at a match boundary finds what the running search would have (the
//! patterns allowed have no lookbehind, anchors or word boundaries). So if a new text agrees
//! with the earlier one on every byte up to `c + margin` — the margin covers those two
//! characters and the longest added token, so no added-token match can straddle `c` in one
//! text and not the other — its ids are the earlier ids before the checkpoint followed by the
//! ids of its own text from `c` on.
//! The tests check this against whole tokenization on random texts, for a GPT-2-style and a
//! Llama-3-style pre-tokenizer.
//!
//! Which tokenizers qualify is decided once, from the tokenizer's own configuration
//! ([`resume_margin`]): no normalizer, and a pre-tokenizer built from byte-level (without an
//! added prefix space), regex splits with local patterns, digits, punctuation and whitespace
//! splitters. GPT-2-style and Llama-3-style `tokenizer.json` files do; others (a normalizer, a
//! `Metaspace` prefix) are tokenized whole, as before.

use serde_json::Value;

/// At most one checkpoint per this many bytes of text: ~4 per KiB is plenty to resume close to
/// where two texts part, and keeps a 220 KB prompt's checkpoints under 4 KB.
const CHECKPOINT_SPACING: usize = 256;

/// A text's token ids, with the places tokenization could restart from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tokenized {
    ids: Vec<u32>,
    checkpoints: Vec<Checkpoint>,
    reused: usize,
    /// `Some(byte)`: only the text before `byte` (a checkpoint) was tokenized, and `ids` are
    /// the whole text's first ids, up to there ([`encode_beginning`]). `None`: all of it.
    ends_at: Option<usize>,
}

/// Token `token` starts a piece at byte `byte` of the text (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Checkpoint {
    token: usize,
    byte: usize,
}

impl Tokenized {
    /// Ids of a text that cannot be resumed from (a tokenizer that does not qualify).
    pub(crate) fn plain(ids: Vec<u32>) -> Self {
        Tokenized { ids, checkpoints: Vec::new(), reused: 0, ends_at: None }
    }

    /// The token ids.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// How many of the ids were taken from the earlier text rather than tokenized (0 unless
    /// this came from [`crate::Tokenizer::encode_after`]).
    pub fn reused(&self) -> usize {
        self.reused
    }

    /// `Some(byte)` when only the text before `byte` was tokenized (the ids are then the whole
    /// text's first ids, exactly); `None` when all of it was.
    pub fn ends_at(&self) -> Option<usize> {
        self.ends_at
    }

    /// How many places tokenization could restart from.
    pub fn checkpoints(&self) -> usize {
        self.checkpoints.len()
    }

    /// The byte offsets tokenization could restart from.
    #[cfg(test)]
    pub(crate) fn checkpoint_bytes(&self) -> Vec<usize> {
        self.checkpoints.iter().map(|c| c.byte).collect()
    }
}

/// The margin (bytes two texts must share past a checkpoint) for `hf`, or `None` if its
/// configuration does not allow resuming.
pub(crate) fn resume_margin(hf: &tokenizers::Tokenizer) -> Option<usize> {
    let config = serde_json::to_value(hf).ok()?;
    if !config["normalizer"].is_null() || !pre_tokenizer_resumes(&config["pre_tokenizer"]) {
        return None;
    }
    let longest_added = config["added_tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["content"].as_str())
        .map(str::len)
        .max()
        .unwrap_or(0);
    // The (up to) two characters at the checkpoint (≤ 8 bytes) and the longest added token.
    Some(longest_added + 8)
}

fn pre_tokenizer_resumes(p: &Value) -> bool {
    match p["type"].as_str() {
        None => p.is_null(),
        Some("ByteLevel") => p["add_prefix_space"] == Value::Bool(false),
        Some("Sequence") => p["pretokenizers"].as_array().is_some_and(|all| all.iter().all(pre_tokenizer_resumes)),
        Some("Split") => match &p["pattern"] {
            Value::Object(pattern) => match pattern.get("Regex") {
                Some(regex) => regex.as_str().is_some_and(regex_is_local),
                None => pattern.contains_key("String"),
            },
            _ => false,
        },
        Some("Digits" | "Punctuation" | "Whitespace" | "WhitespaceSplit") => true,
        Some(_) => false,
    }
}

/// A pattern whose matches depend only on the text from where the search starts: no
/// lookbehind, anchors or word boundaries (`^` only as a class negation, `[^...]`).
fn regex_is_local(pattern: &str) -> bool {
    const NON_LOCAL: [&str; 8] = ["(?<", "\\b", "\\B", "\\A", "\\z", "\\Z", "\\G", "$"];
    if NON_LOCAL.iter().any(|s| pattern.contains(s)) {
        return false;
    }
    pattern.match_indices('^').all(|(i, _)| pattern[..i].ends_with('['))
}

/// Tokenizes `text` whole and records its checkpoints.
pub(crate) fn encode(hf: &tokenizers::Tokenizer, text: &str) -> tokenizers::Result<Tokenized> {
    let encoding = hf.encode(text, false)?;
    let (ids, offsets, words) = (encoding.get_ids(), encoding.get_offsets(), encoding.get_word_ids());
    let mut checkpoints = Vec::with_capacity(text.len() / CHECKPOINT_SPACING + 1);
    let mut next_at = CHECKPOINT_SPACING;
    for k in 1..ids.len() {
        let start = offsets[k].0;
        if start < next_at || words[k] == words[k - 1] || offsets[k - 1].1 != start || !text.is_char_boundary(start) {
            continue;
        }
        if at_most_one_space_ahead(&text[start..]) {
            checkpoints.push(Checkpoint { token: k, byte: start });
            next_at = start + CHECKPOINT_SPACING;
        }
    }
    Ok(Tokenized { ids: ids.to_vec(), checkpoints, reused: 0, ends_at: None })
}

/// Whether `rest` starts with a non-whitespace character, or with one whitespace character and
/// then a non-whitespace one (`" word"`, where GPT-2-style patterns start most pieces).
fn at_most_one_space_ahead(rest: &str) -> bool {
    let mut chars = rest.chars();
    match chars.next() {
        Some(c) if c.is_whitespace() => chars.next().is_some_and(|c| !c.is_whitespace()),
        Some(_) => true,
        None => false,
    }
}

/// The ids of `text` up to about byte `limit` — exactly the whole text's first ids — reusing
/// `earlier` (the tokenization of `earlier_text`, or of its beginning) up to its last
/// checkpoint both texts share with `margin` bytes to spare, when given. Tokenizes from the
/// reused part's end to `limit` and keeps the ids before the last checkpoint with `margin`
/// bytes of text after it inside that span (see the module docs: the text past it cannot
/// change them). When `limit` reaches the end, or no checkpoint qualifies, the whole text is
/// tokenized (`ends_at` is `None`).
pub(crate) fn encode_beginning(
    hf: &tokenizers::Tokenizer,
    margin: usize,
    earlier: Option<(&Tokenized, &str)>,
    text: &str,
    limit: usize,
) -> tokenizers::Result<Tokenized> {
    if let Some((whole, _)) = earlier.filter(|(e, e_text)| e.ends_at.is_none() && *e_text == text) {
        return Ok(Tokenized { reused: whole.ids.len(), ..whole.clone() }); // the same text, all of it
    }
    let head =
        earlier.map(|(e, e_text)| (e, usable_checkpoints(margin, e, e_text, text))).filter(|&(_, usable)| usable > 0);
    let (head_ids, head_checkpoints, from) = match head {
        Some((e, usable)) => {
            (&e.ids[..e.checkpoints[usable - 1].token], &e.checkpoints[..usable], e.checkpoints[usable - 1])
        }
        None => (&[][..], &[][..], Checkpoint { token: 0, byte: 0 }),
    };
    let mut end = text.len();
    if limit < text.len() {
        end = limit.max(from.byte);
        while !text.is_char_boundary(end) {
            end += 1;
        }
    }
    let mut tail = encode(hf, &text[from.byte..end])?;
    if end < text.len() {
        let safe = tail.checkpoints.partition_point(|c| from.byte + c.byte + margin <= end);
        match safe.checked_sub(1).map(|i| tail.checkpoints[i]) {
            Some(last) => {
                tail.ids.truncate(last.token);
                tail.checkpoints.truncate(safe);
                tail.ends_at = Some(from.byte + last.byte);
            }
            None if !head_ids.is_empty() => {
                // Nothing new that is safe to keep: the reused part is the beginning.
                tail = Tokenized { ends_at: Some(from.byte), ..Tokenized::default() };
            }
            None => tail = encode(hf, text)?, // no piece boundary early enough: all of it
        }
    }
    let mut ids = Vec::with_capacity(head_ids.len() + tail.ids.len());
    ids.extend_from_slice(head_ids);
    ids.extend_from_slice(&tail.ids);
    let mut checkpoints = head_checkpoints.to_vec();
    checkpoints
        .extend(tail.checkpoints.iter().map(|c| Checkpoint { token: from.token + c.token, byte: from.byte + c.byte }));
    Ok(Tokenized { ids, checkpoints, reused: from.token, ends_at: tail.ends_at })
}

/// How many of `earlier`'s checkpoints `text` can resume from. The texts are compared only as
/// far as the last checkpoint needs (an earlier text's beginning may have ids for a few KB of a
/// 220 KB text).
fn usable_checkpoints(margin: usize, earlier: &Tokenized, earlier_text: &str, text: &str) -> usize {
    let Some(last) = earlier.checkpoints.last() else { return 0 };
    let needed = (last.byte + margin).min(earlier_text.len());
    let shared = common_prefix_len(&earlier_text.as_bytes()[..needed], text.as_bytes());
    earlier.checkpoints.partition_point(|c| c.byte + margin <= shared)
}

/// How many leading bytes `a` and `b` share (compared a block at a time): the most of a text's
/// beginning [`crate::Tokenizer::encode_after`] can reuse from another's.
pub(crate) fn common_prefix_len(a: &[u8], b: &[u8]) -> usize {
    const BLOCK: usize = 64;
    let n = a.len().min(b.len());
    let whole = a[..n].chunks_exact(BLOCK).zip(b[..n].chunks_exact(BLOCK)).take_while(|(x, y)| x == y).count() * BLOCK;
    whole + a[whole..n].iter().zip(&b[whole..n]).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_prefix_lengths() {
        assert_eq!(common_prefix_len(b"", b"abc"), 0);
        assert_eq!(common_prefix_len(b"abc", b"abc"), 3);
        assert_eq!(common_prefix_len(b"abcd", b"abxd"), 2);
        let long: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let mut other = long.clone();
        other[777] ^= 1;
        assert_eq!(common_prefix_len(&long, &other), 777);
        assert_eq!(common_prefix_len(&long, &long[..130]), 130);
    }

    #[test]
    fn local_patterns() {
        // GPT-2 (ByteLevel's own), Llama 3.
        assert!(regex_is_local(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"));
        assert!(regex_is_local(
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        ));
        assert!(!regex_is_local(r"(?<=a)b"));
        assert!(!regex_is_local(r"\bword"));
        assert!(!regex_is_local(r"^start"));
        assert!(!regex_is_local(r"end$"));
    }

    #[test]
    fn pre_tokenizers_that_qualify() {
        let v = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        assert!(pre_tokenizer_resumes(&v(
            r#"{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true}"#
        )));
        assert!(!pre_tokenizer_resumes(&v(
            r#"{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":true,"use_regex":true}"#
        )));
        assert!(pre_tokenizer_resumes(&v(
            r#"{"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":"\\p{N}{1,3}| ?\\p{L}+"},"behavior":"Isolated","invert":false},{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":false}]}"#
        )));
        assert!(!pre_tokenizer_resumes(&v(
            r#"{"type":"Metaspace","replacement":"▁","prepend_scheme":"first","split":false}"#
        )));
        assert!(pre_tokenizer_resumes(&Value::Null));
    }
}
