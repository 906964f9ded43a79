//! The byte-level fallback: one token per UTF-8 byte (ids 0..=255, the byte's value), plus the
//! three ChatML special tokens as ids 256..=258.
//!
//! It applies only when no tokenizer is configured (or it is chosen explicitly): it needs no
//! file and never fails, but a prompt costs 3–4× the tokens of a BPE encoding, so block counts
//! and KV overlap differ from a real engine's. The special tokens are single ids, as in the
//! shipped BPE tokenizer, so a ChatML prompt has the same structure under both.

use crate::{ENDOFTEXT, IM_END, IM_START};

/// Special tokens and their ids, after the 256 byte ids.
const SPECIALS: [(&str, u32); 3] = [(ENDOFTEXT, 256), (IM_START, 257), (IM_END, 258)];

/// Byte ids plus the special ids.
pub(crate) const VOCAB_SIZE: usize = 256 + SPECIALS.len();

pub(crate) fn encode(text: &str) -> Vec<u32> {
    let mut ids = Vec::with_capacity(text.len());
    let mut rest = text;
    while let Some((at, token, id)) = next_special(rest) {
        ids.extend(rest[..at].bytes().map(u32::from));
        ids.push(id);
        rest = &rest[at + token.len()..];
    }
    ids.extend(rest.bytes().map(u32::from));
    ids
}

/// The earliest special token in `text`: its byte offset, text and id. All three start with
/// `<|`, so one pass over the text finds it (no rescans of a long prompt per token).
fn next_special(text: &str) -> Option<(usize, &'static str, u32)> {
    text.match_indices("<|").find_map(|(at, _)| {
        SPECIALS.iter().find(|&&(token, _)| text[at..].starts_with(token)).map(|&(token, id)| (at, token, id))
    })
}

/// Bytes back to text; a split multi-byte character or an unknown id shows as U+FFFD.
pub(crate) fn decode(ids: &[u32]) -> String {
    let mut bytes = Vec::with_capacity(ids.len());
    for &id in ids {
        match (u8::try_from(id), token(id)) {
            (Ok(byte), _) => bytes.push(byte),
            (Err(_), Some(special)) => bytes.extend_from_slice(special.as_bytes()),
            (Err(_), None) => bytes.extend_from_slice("\u{FFFD}".as_bytes()),
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The id of a special token.
pub(crate) fn token_id(token: &str) -> Option<u32> {
    SPECIALS.iter().find(|&&(t, _)| t == token).map(|&(_, id)| id)
}

fn token(id: u32) -> Option<&'static str> {
    SPECIALS.iter().find(|&&(_, i)| i == id).map(|&(t, _)| t)
}
