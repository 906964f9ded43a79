//! The Jinja chat template that turns chat messages into a prompt string, rendered the way HF
//! `transformers` renders `tokenizer.apply_chat_template`.
//!
//! The message types are `kvroute-protocol`'s (re-exported here). Owns template loading (a
//! Jinja file or a `tokenizer_config.json`) and rendering. It does not tokenize:
//! [`crate::Tokenizer`] encodes the rendered string.
//!
//! Rendering follows HF: `trim_blocks` and `lstrip_blocks` on, the context holds `messages`,
//! `add_generation_prompt`, `bos_token` and `eos_token`, and `raise_exception(msg)` is a
//! function; Python string methods (`.strip()`, `.startswith()`, …) work, as real templates use
//! them. Every failure, at load or at render, is a [`TokenizerError`], never a panic.

use std::path::Path;

pub use kvroute_protocol::openai::{ChatMessage, ContentPart, MessageContent};
use minijinja::syntax::SyntaxConfig;
use minijinja::{AutoEscape, Environment, ErrorKind, Value};
use serde::Deserialize;

use crate::TokenizerError;

/// The name a template given as text goes by in error messages (one from a file goes by its path).
const NAME: &str = "chat_template";

/// The shipped ChatML template: `<|im_start|>{role}\n{content}<|im_end|>\n` per message.
pub const CHATML: &str = include_str!("../../assets/tokenizer/chat_template.jinja");

/// A compiled chat template, with the BOS/EOS strings it was published with (if any).
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    name: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl ChatTemplate {
    /// Compiles Jinja source; a syntax error is reported here, not at the first request.
    pub fn new(source: impl Into<String>) -> Result<Self, TokenizerError> {
        Self::named(NAME.to_string(), source.into())
    }

    fn named(name: String, source: String) -> Result<Self, TokenizerError> {
        let mut env = Environment::new();
        let hf_whitespace = SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build();
        env.set_syntax(hf_whitespace.map_err(TokenizerError::Template)?);
        // Prompts are plain text: never escape, whatever the template's name (minijinja would
        // pick HTML or JSON escaping from a file name's extension).
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(name.clone(), source).map_err(TokenizerError::Template)?;
        Ok(ChatTemplate { env, name, bos_token: None, eos_token: None })
    }

    /// The shipped ChatML template ([`CHATML`]).
    pub fn chatml() -> Self {
        Self::new(CHATML).expect("the shipped ChatML template compiles (tested)")
    }

    /// Loads a template from a Jinja file, or from an HF `tokenizer_config.json` (by extension),
    /// taking its `chat_template`, `bos_token` and `eos_token`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|source| TokenizerError::Read { path: path.to_path_buf(), source })?;
        if path.extension().is_some_and(|ext| ext == "json") {
            Self::from_tokenizer_config(&text, path)
        } else {
            Self::named(path.display().to_string(), text)
        }
    }

    /// `chat_template` is a string, or a list of `{name, template}` of which the one named
    /// `default` is used.
    fn from_tokenizer_config(json: &str, path: &Path) -> Result<Self, TokenizerError> {
        let config_error = |message: String| TokenizerError::Config { path: path.to_path_buf(), message };
        let config: TokenizerConfigJson = serde_json::from_str(json).map_err(|e| config_error(e.to_string()))?;
        let source = match config.chat_template {
            Some(TemplateField::One(source)) => source,
            Some(TemplateField::Named(list)) => list
                .into_iter()
                .find(|t| t.name == "default")
                .map(|t| t.template)
                .ok_or_else(|| config_error("no chat template named `default`".into()))?,
            None => return Err(config_error("no `chat_template` field".into())),
        };
        let template = Self::named(path.display().to_string(), source)?;
        Ok(template.with_special_tokens(
            config.bos_token.map(SpecialToken::content),
            config.eos_token.map(SpecialToken::content),
        ))
    }

    /// Sets the strings the template sees as `bos_token` and `eos_token`.
    pub fn with_special_tokens(self, bos: Option<String>, eos: Option<String>) -> Self {
        ChatTemplate { bos_token: bos, eos_token: eos, ..self }
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// Renders `messages` into a prompt; with `add_generation_prompt` the prompt ends where the
    /// assistant's reply begins.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, TokenizerError> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from_pairs([("role", Value::from(m.role.as_str())), ("content", Value::from(m.content.text()))])
            })
            .collect();
        let mut ctx =
            vec![("messages", Value::from(messages)), ("add_generation_prompt", Value::from(add_generation_prompt))];
        // An unset token is left undefined (renders as ""), as HF leaves it out of the context;
        // `none` would render as "none".
        let tokens = [("bos_token", &self.bos_token), ("eos_token", &self.eos_token)];
        ctx.extend(tokens.into_iter().filter_map(|(k, v)| Some((k, Value::from(v.as_deref()?)))));
        let ctx = Value::from_pairs(ctx);
        let template = self.env.get_template(&self.name).map_err(TokenizerError::Template)?;
        template.render(ctx).map_err(TokenizerError::Template)
    }
}

/// HF's `raise_exception(message)`: templates call it to reject a conversation.
fn raise_exception(message: String) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// The fields of `tokenizer_config.json` a chat template needs.
#[derive(Deserialize)]
struct TokenizerConfigJson {
    #[serde(default)]
    chat_template: Option<TemplateField>,
    #[serde(default)]
    bos_token: Option<SpecialToken>,
    #[serde(default)]
    eos_token: Option<SpecialToken>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TemplateField {
    One(String),
    Named(Vec<NamedTemplate>),
}

#[derive(Deserialize)]
struct NamedTemplate {
    name: String,
    template: String,
}

/// A special token as HF writes it: a string or an `AddedToken` object.
#[derive(Deserialize)]
#[serde(untagged)]
enum SpecialToken {
    Text(String),
    Added { content: String },
}

impl SpecialToken {
    fn content(self) -> String {
        match self {
            SpecialToken::Text(content) | SpecialToken::Added { content } => content,
        }
    }
}
