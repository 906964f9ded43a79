//! The one tokenizer the mocker and the router share: the same text gives the same token ids in
//! both, so their KV block hashes agree.
//!
//! A [`Tokenizer`] is one of
//! - an HF `tokenizer.json` ([`Tokenizer::from_file`]), run by the `tokenizers` crate;
//! - the **builtin** tokenizer ([`Tokenizer::builtin`]): a 4096-token byte-level BPE trained
//!   from the repo's own text by `scripts/make-tokenizer` and embedded in the binary, so the
//!   demo and the tests run the HF code path with nothing to download;
//! - the **byte-level fallback** ([`Tokenizer::byte_level`]): one token per UTF-8 byte, for
//!   when no tokenizer is configured. It never fails but costs ~4× the tokens.
//!
//! A text that begins like an earlier one is tokenized from a checkpoint inside the shared
//! part, reusing the earlier ids — exactly ([`Tokenizer::encode_after`]); a text's beginning
//! can be tokenized alone, its ids exactly the whole text's first ones
//! ([`Tokenizer::encode_beginning`]: what a query about a long prompt's cached prefix needs);
//! [`RecentTexts`] keeps the recent prompts a service saw for both.
//!
//! Chat requests go through a Jinja chat template ([`chat`]) rendered as HF renders it, then
//! [`Tokenizer::encode`]. The trade-off: loading a real model's tokenizer makes the block hashes
//! match a real engine's, at the cost of a file to ship to both sides; the builtin one matches
//! only other kvroute components.
//!
//! ```
//! use kvroute_tokenizer::{ChatMessage, Tokenizer};
//!
//! let tokenizer = Tokenizer::builtin();
//! let messages = [ChatMessage::new("user", "Route me to a warm cache.")];
//! let prompt = tokenizer.apply_chat_template(&messages, true).unwrap();
//! assert!(prompt.ends_with("<|im_start|>assistant\n"));
//! let ids = tokenizer.encode(&prompt).unwrap();
//! assert_eq!(tokenizer.decode(&ids), prompt);
//! ```
#![forbid(unsafe_code)]

mod bytes;
pub mod chat;
mod recent;
mod resume;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use chat::{ChatMessage, ChatTemplate, ContentPart, MessageContent};
pub use recent::{Beginning, RecentTexts, Tokenization};
pub use resume::Tokenized;

/// End of a document; the builtin tokenizer's id 0.
pub const ENDOFTEXT: &str = "<|endoftext|>";
/// Start of a ChatML turn; the builtin tokenizer's id 1.
pub const IM_START: &str = "<|im_start|>";
/// End of a ChatML turn, and the builtin tokenizer's EOS; id 2.
pub const IM_END: &str = "<|im_end|>";

/// The shipped tokenizer, made by `scripts/make-tokenizer` (see `assets/tokenizer/README.md`).
const BUILTIN_JSON: &str = include_str!("../../assets/tokenizer/tokenizer.json");

/// End-of-sequence tokens looked for, in order, when a `tokenizer.json` is loaded without a
/// `tokenizer_config.json` to name its EOS: end-of-turn tokens first, as chat models stop there.
const EOS_CANDIDATES: [&str; 7] = [IM_END, "<|eot_id|>", "<|end|>", ENDOFTEXT, "<|end_of_text|>", "</s>", "<eos>"];

/// Why a tokenizer or template could not be loaded or used. Names the file where there is one.
#[derive(Debug, Error)]
pub enum TokenizerError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{} is not a tokenizer.json that can be loaded: {source}", path.display())]
    Load { path: PathBuf, source: tokenizers::Error },
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    #[error("chat template: {0}")]
    Template(#[source] minijinja::Error),
    #[error("this tokenizer has no chat template; configure one")]
    NoChatTemplate,
    #[error("cannot encode the text: {0}")]
    Encode(#[source] tokenizers::Error),
}

/// Which tokenizer to load: the setting the mocker and the router must agree on. (Not HF's
/// `tokenizer_config.json`, which [`ChatTemplate::from_file`] reads.) The field-less variants
/// are `{}` structs so that a stray field next to their `type` is rejected, not ignored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum TokenizerConfig {
    /// One token per byte; what applies when nothing is configured.
    ByteLevel {},
    /// The BPE tokenizer shipped in the repo, with the ChatML template.
    Builtin {},
    /// An HF `tokenizer.json`, and optionally a chat template (Jinja or `tokenizer_config.json`).
    File {
        path: PathBuf,
        #[serde(default)]
        chat_template: Option<PathBuf>,
    },
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        TokenizerConfig::ByteLevel {}
    }
}

impl TokenizerConfig {
    pub fn load(&self) -> Result<Tokenizer, TokenizerError> {
        match self {
            TokenizerConfig::ByteLevel {} => Ok(Tokenizer::byte_level()),
            TokenizerConfig::Builtin {} => Ok(Tokenizer::builtin()),
            TokenizerConfig::File { path, chat_template } => {
                let tokenizer = Tokenizer::from_file(path)?;
                Ok(match chat_template {
                    Some(template) => tokenizer.with_chat_template(ChatTemplate::from_file(template)?),
                    None => tokenizer,
                })
            }
        }
    }
}

/// Text to token ids and back, plus the chat template. Cheap to clone (shared internals).
#[derive(Clone)]
pub struct Tokenizer {
    model: Model,
    chat: Option<Arc<ChatTemplate>>,
    eos_token: Option<String>,
}

#[derive(Clone)]
enum Model {
    Hf(Arc<HfModel>),
    ByteLevel,
}

struct HfModel {
    tokenizer: tokenizers::Tokenizer,
    /// Special tokens included; counted once at load (HF builds the whole vocabulary map to
    /// answer `get_vocab_size(true)`).
    vocab_size: usize,
    /// Whether (and with what margin) tokenization can resume inside a text ([`resume`]).
    resume_margin: Option<usize>,
}

impl Tokenizer {
    /// The shipped 4096-token BPE tokenizer with the ChatML template; EOS is `<|im_end|>`.
    pub fn builtin() -> Tokenizer {
        static BUILTIN: OnceLock<Tokenizer> = OnceLock::new();
        BUILTIN
            .get_or_init(|| {
                let hf = BUILTIN_JSON.parse().expect("the shipped tokenizer.json loads (tested)");
                Tokenizer::from_hf(hf).with_chat_template(ChatTemplate::chatml())
            })
            .clone()
    }

    /// The byte-level fallback: ids 0..=255 are the UTF-8 bytes, 256..=258 are `<|endoftext|>`,
    /// `<|im_start|>`, `<|im_end|>`; ChatML template, EOS `<|im_end|>`.
    pub fn byte_level() -> Tokenizer {
        Tokenizer {
            model: Model::ByteLevel,
            chat: Some(Arc::new(ChatTemplate::chatml())),
            eos_token: Some(IM_END.to_string()),
        }
    }

    /// Loads an HF `tokenizer.json`. It has no chat template until
    /// [`with_chat_template`](Self::with_chat_template); its EOS is guessed from well-known
    /// token names until a template from a `tokenizer_config.json` names it.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Tokenizer, TokenizerError> {
        let path = path.as_ref();
        let json = std::fs::read(path).map_err(|source| TokenizerError::Read { path: path.to_path_buf(), source })?;
        let hf = tokenizers::Tokenizer::from_bytes(json)
            .map_err(|source| TokenizerError::Load { path: path.to_path_buf(), source })?;
        Ok(Tokenizer::from_hf(hf))
    }

    fn from_hf(mut hf: tokenizers::Tokenizer) -> Tokenizer {
        // A prompt is tokenized whole: a file's truncation or padding would change its ids.
        // (Setting no truncation cannot fail: only a stride check can, on Some.)
        hf.with_padding(None);
        let _ = hf.with_truncation(None);
        let eos_token = EOS_CANDIDATES.into_iter().find(|t| hf.token_to_id(t).is_some()).map(String::from);
        let model =
            HfModel { vocab_size: hf.get_vocab_size(true), resume_margin: resume::resume_margin(&hf), tokenizer: hf };
        Tokenizer { model: Model::Hf(Arc::new(model)), chat: None, eos_token }
    }

    /// Uses `template` for chat requests. If it names an EOS token (from a
    /// `tokenizer_config.json`) that becomes this tokenizer's EOS; otherwise the template sees
    /// this tokenizer's.
    pub fn with_chat_template(mut self, mut template: ChatTemplate) -> Tokenizer {
        match template.eos_token() {
            Some(eos) => self.eos_token = Some(eos.to_string()),
            None => {
                let bos = template.bos_token().map(String::from);
                template = template.with_special_tokens(bos, self.eos_token.clone());
            }
        }
        self.chat = Some(Arc::new(template));
        self
    }

    /// Token ids of `text`. Adds no BOS/EOS (a chat template writes those itself); special
    /// tokens written in the text become their single ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        match &self.model {
            Model::Hf(hf) => hf
                .tokenizer
                .encode_fast(text, false)
                .map(|encoding| encoding.get_ids().to_vec())
                .map_err(TokenizerError::Encode),
            Model::ByteLevel => Ok(bytes::encode(text)),
        }
    }

    /// [`encode`](Self::encode), remembering where tokenization could restart inside `text`, so
    /// that a later text beginning the same way can be tokenized with
    /// [`encode_after`](Self::encode_after).
    pub fn encode_tokenized(&self, text: &str) -> Result<Tokenized, TokenizerError> {
        match &self.model {
            Model::Hf(hf) if hf.resume_margin.is_some() => {
                resume::encode(&hf.tokenizer, text).map_err(TokenizerError::Encode)
            }
            _ => self.encode(text).map(Tokenized::plain),
        }
    }

    /// The ids of `text` — exactly [`encode`](Self::encode)'s — reusing `earlier`, the
    /// tokenization of `earlier_text`, for as much of the beginning they share as is safe
    /// (see [`Tokenized`]); only the rest is tokenized. With a tokenizer that cannot resume
    /// ([`resumes`](Self::resumes) is false), or nothing useful shared, the whole text is.
    pub fn encode_after(
        &self,
        earlier: &Tokenized,
        earlier_text: &str,
        text: &str,
    ) -> Result<Tokenized, TokenizerError> {
        self.encode_beginning(Some((earlier, earlier_text)), text, text.len())
    }

    /// The ids of `text`'s beginning, to about byte `limit` — exactly the first ids of
    /// [`encode`](Self::encode)'s — reusing `earlier` (a tokenization of a text beginning the
    /// same way, as [`encode_after`](Self::encode_after)) when given. What a query about a
    /// long prompt's cached prefix needs: the ids stop at a checkpoint at or before `limit`
    /// ([`Tokenized::ends_at`]), whose ids the rest of the text cannot change. A tokenizer that
    /// cannot resume, or a limit at or past the end, tokenizes the whole text.
    pub fn encode_beginning(
        &self,
        earlier: Option<(&Tokenized, &str)>,
        text: &str,
        limit: usize,
    ) -> Result<Tokenized, TokenizerError> {
        match &self.model {
            Model::Hf(hf) => match hf.resume_margin {
                Some(margin) => resume::encode_beginning(&hf.tokenizer, margin, earlier, text, limit)
                    .map_err(TokenizerError::Encode),
                None => self.encode_tokenized(text),
            },
            Model::ByteLevel => self.encode_tokenized(text),
        }
    }

    /// Whether [`encode_after`](Self::encode_after) can reuse an earlier text's ids with this
    /// tokenizer (decided from its configuration at load).
    pub fn resumes(&self) -> bool {
        matches!(&self.model, Model::Hf(hf) if hf.resume_margin.is_some())
    }

    /// Text of `ids`, special tokens included, for display and logs. Exact for ids that came
    /// from [`encode`](Self::encode); unknown ids are dropped (HF) or shown as U+FFFD (bytes).
    pub fn decode(&self, ids: &[u32]) -> String {
        match &self.model {
            Model::Hf(hf) => hf.tokenizer.decode(ids, false).unwrap_or_else(|_| "\u{FFFD}".to_string()),
            Model::ByteLevel => bytes::decode(ids),
        }
    }

    /// The ids that decode on their own to printable text — whole characters, no control
    /// characters but line ends and tabs, no special tokens — plus the EOS id if there is one:
    /// what a simulated engine can emit one at a time and still stream readable text.
    pub fn printable_ids(&self) -> Vec<u32> {
        let readable = |text: &str| {
            !text.is_empty()
                && !text.contains('\u{FFFD}')
                && text.chars().all(|c| !c.is_control() || c == '\n' || c == '\t')
        };
        let eos = self.eos_token_id();
        (0..self.vocab_size() as u32)
            .filter(|&id| {
                Some(id) == eos
                    || match &self.model {
                        Model::Hf(hf) => hf.tokenizer.decode(&[id], true).is_ok_and(|t| readable(&t)),
                        Model::ByteLevel => {
                            u8::try_from(id).is_ok_and(|b| b.is_ascii() && readable(&bytes::decode(&[id])))
                        }
                    }
            })
            .collect()
    }

    /// Number of ids, special tokens included.
    pub fn vocab_size(&self) -> usize {
        match &self.model {
            Model::Hf(hf) => hf.vocab_size,
            Model::ByteLevel => bytes::VOCAB_SIZE,
        }
    }

    /// The id of one token (as written in the vocabulary), e.g. a special token.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        match &self.model {
            Model::Hf(hf) => hf.tokenizer.token_to_id(token),
            Model::ByteLevel => bytes::token_id(token),
        }
    }

    /// The id generation stops at, if known.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.token_id(self.eos_token.as_deref()?)
    }

    /// Renders a chat request into its prompt text (then [`encode`](Self::encode) it).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let template = self.chat.as_ref().ok_or(TokenizerError::NoChatTemplate)?;
        template.render(messages, add_generation_prompt)
    }
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.model {
            Model::Hf(..) => "hf",
            Model::ByteLevel => "byte_level",
        };
        f.debug_struct("Tokenizer")
            .field("kind", &kind)
            .field("vocab_size", &self.vocab_size())
            .field("eos_token", &self.eos_token)
            .field("chat_template", &self.chat.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests;
