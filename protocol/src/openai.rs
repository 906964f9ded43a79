//! The OpenAI request shapes kvroute reads: `/v1/completions` and `/v1/chat/completions`.
//!
//! A *view*: only the fields routing and the mocker need are typed; unknown fields are ignored
//! (front doors forward the original body untouched). Also the OpenAI error body every kvroute
//! service answers bad requests with.

use serde::{Deserialize, Deserializer, Serialize};

/// A completion prompt: text, or token ids (OpenAI also allows a batch; kvroute serves one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

/// Read straight from the JSON (a string or an array), not through serde's untagged-enum
/// buffering, which copied every id of a long token prompt before reading it again; and with
/// an error that says what a prompt may be.
impl<'de> Deserialize<'de> for Prompt {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PromptVisitor;

        impl<'de> serde::de::Visitor<'de> for PromptVisitor {
            type Value = Prompt;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or an array of token ids (integers from 0 to 4294967295)")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Prompt, E> {
                Ok(Prompt::Text(text.to_owned()))
            }

            fn visit_string<E: serde::de::Error>(self, text: String) -> Result<Prompt, E> {
                Ok(Prompt::Text(text))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Prompt, A::Error> {
                let mut ids = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(TokenId(id)) = seq.next_element()? {
                    ids.push(id);
                }
                Ok(Prompt::Tokens(ids))
            }
        }

        deserializer.deserialize_any(PromptVisitor)
    }
}

/// One id of a token prompt, with an error that says what an id may be.
struct TokenId(u32);

impl<'de> Deserialize<'de> for TokenId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdVisitor;

        impl serde::de::Visitor<'_> for IdVisitor {
            type Value = TokenId;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a token id (an integer from 0 to 4294967295)")
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<TokenId, E> {
                u32::try_from(v).map(TokenId).map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<TokenId, E> {
                u32::try_from(v).map(TokenId).map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
        }

        deserializer.deserialize_u32(IdVisitor)
    }
}

/// One message of a chat request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    /// A missing or `null` content (an assistant turn that only calls tools) is empty text.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub content: MessageContent,
}

impl ChatMessage {
    /// A message with plain-text content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: MessageContent::Text(content.into()) }
    }
}

/// A message's content in either OpenAI form: a string, or an array of typed parts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

impl Default for MessageContent {
    fn default() -> Self {
        MessageContent::Text(String::new())
    }
}

impl MessageContent {
    /// Bytes of text in the content (what [`text`](Self::text) returns, without its `\n`
    /// separators), without copying it.
    pub fn text_len(&self) -> usize {
        match self {
            MessageContent::Text(text) => text.len(),
            MessageContent::Parts(parts) => {
                parts.iter().map(|p| if let ContentPart::Text { text } = p { text.len() } else { 0 }).sum()
            }
        }
    }

    /// The text the template sees. Text parts are joined with `\n`, as vLLM joins them for
    /// string-content templates; other parts (images, audio) carry no text and are skipped.
    pub fn text(&self) -> String {
        match self {
            MessageContent::Text(text) => text.clone(),
            MessageContent::Parts(parts) => {
                let texts: Vec<&str> = parts
                    .iter()
                    .filter_map(|part| match part {
                        ContentPart::Text { text } => Some(text.as_str()),
                        ContentPart::Other => None,
                    })
                    .collect();
                texts.join("\n")
            }
        }
    }
}

/// One element of an array content: `{"type": "text", "text": "..."}` or any other type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    Text {
        text: String,
    },
    /// A non-text part (`image_url`, `input_audio`, …), kept only so the request parses.
    #[serde(other)]
    Other,
}

fn null_as_empty<'de, D: Deserializer<'de>>(de: D) -> Result<MessageContent, D::Error> {
    Option::<MessageContent>::deserialize(de).map(Option::unwrap_or_default)
}

/// `stream_options` of a streaming request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Fields shared by both endpoints.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SamplingFields {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Chat's newer name for `max_tokens`.
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// vLLM extension: keep generating past the end-of-sequence token.
    #[serde(default)]
    pub ignore_eos: bool,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub n: Option<u32>,
}

impl SamplingFields {
    pub fn max_tokens(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options.is_some_and(|o| o.include_usage)
    }
}

/// `POST /v1/completions`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

/// `POST /v1/chat/completions`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionRequest {
    pub messages: Vec<ChatMessage>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

/// OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<u16>,
}

impl ErrorBody {
    /// An error of `kind` (e.g. `invalid_request_error`) with the HTTP status as its code.
    pub fn new(status: u16, kind: &str, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail { message: message.into(), kind: kind.to_owned(), param: None, code: Some(status) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_parse_as_text_or_token_ids() {
        let text: CompletionRequest =
            serde_json::from_str(r#"{"prompt": "hi", "max_tokens": 3, "stream": true}"#).unwrap();
        assert_eq!(text.prompt, Prompt::Text("hi".into()));
        assert_eq!(text.sampling.max_tokens(), Some(3));
        assert!(text.sampling.stream);
        let ids: CompletionRequest =
            serde_json::from_str(r#"{"model": "m", "prompt": [1, 2, 3], "extra": {"x": 1}}"#).unwrap();
        assert_eq!(ids.prompt, Prompt::Tokens(vec![1, 2, 3]));
        for bad in
            [r#"{"prompt": [-1]}"#, r#"{"prompt": [4294967296]}"#, r#"{"prompt": [[1], [2]]}"#, r#"{"prompt": 7}"#]
        {
            let err = serde_json::from_str::<CompletionRequest>(bad).unwrap_err().to_string();
            assert!(
                err.contains("expected a token id (an integer from 0 to 4294967295)")
                    || err.contains("expected a string or an array of token ids"),
                "{bad}: {err}"
            );
        }
        assert!(serde_json::from_str::<CompletionRequest>(r#"{"prompt": [1, -2]}"#).is_err());
        assert!(serde_json::from_str::<CompletionRequest>(r#"{"max_tokens": 3}"#).is_err());
    }

    #[test]
    fn chat_content_may_be_a_string_or_parts() {
        let req: ChatCompletionRequest = serde_json::from_str(
            r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": null},
                {"role": "user", "content": [{"type": "text", "text": "b"}, {"type": "image_url"}, {"type": "text", "text": "c"}]}],
                "max_completion_tokens": 9, "stream_options": {"include_usage": true}}"#,
        )
        .unwrap();
        assert_eq!(req.messages[0].content.text(), "a");
        assert_eq!(req.messages[1].content.text(), "");
        assert_eq!(req.messages[2].content.text(), "b\nc");
        let lengths: Vec<usize> = req.messages.iter().map(|m| m.content.text_len()).collect();
        assert_eq!(lengths, [1, 0, 2], "the text's bytes, separators not counted");
        assert_eq!(req.sampling.max_tokens(), Some(9));
        assert!(req.sampling.include_usage());
    }

    #[test]
    fn error_body_has_openais_shape() {
        let v = serde_json::to_value(ErrorBody::new(400, "invalid_request_error", "bad")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": {"message": "bad", "type": "invalid_request_error", "param": null, "code": 400}})
        );
    }
}
