//! Behaviours of the three tokenizers, the chat template and loading.

use std::path::PathBuf;

use super::*;

const SHIPPED_JSON: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/tokenizer/tokenizer.json");

/// A file in the temp dir, unique to this test process, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> TempFile {
        let path =
            std::env::temp_dir().join(format!("kvroute-tokenizer-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn round_trip(tokenizer: &Tokenizer, text: &str) -> String {
    tokenizer.decode(&tokenizer.encode(text).unwrap())
}

fn conversation() -> Vec<ChatMessage> {
    vec![ChatMessage::new("system", "You are terse."), ChatMessage::new("user", "Hi!")]
}

const CHATML_CONVERSATION: &str =
    "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n";

// --- builtin BPE ---

#[test]
fn builtin_round_trips_ascii() {
    let text = "fn main() {\n    println!(\"route the request to the worker with the most overlap\");\n}\n";
    assert_eq!(round_trip(&Tokenizer::builtin(), text), text);
}

#[test]
fn builtin_round_trips_utf8() {
    for text in ["naïve – 東京", "emoji 🦀 and\ttabs\r\n", "  leading and trailing spaces  "]
    {
        assert_eq!(round_trip(&Tokenizer::builtin(), text), text);
    }
}

#[test]
fn same_text_gives_same_ids_every_time_and_from_the_file() {
    let text = "KV-cache-aware routing sends a prompt to the worker holding its prefix.";
    let ids = Tokenizer::builtin().encode(text).unwrap();
    assert_eq!(Tokenizer::builtin().encode(text).unwrap(), ids);
    assert_eq!(Tokenizer::from_file(SHIPPED_JSON).unwrap().encode(text).unwrap(), ids);
}

#[test]
fn builtin_merges_english_and_code() {
    let tokenizer = Tokenizer::builtin();
    for text in [
        "The router picks the worker whose cached blocks overlap the request the most.",
        "pub fn best_worker(&self, request: &BlockedRequest) -> Result<Routed, RouterError> {",
    ] {
        let tokens = tokenizer.encode(text).unwrap().len();
        assert!(tokens * 3 < text.len(), "{tokens} tokens for {} bytes: {text}", text.len());
    }
}

#[test]
fn special_tokens_encode_to_single_ids() {
    let tokenizer = Tokenizer::builtin();
    for (token, id) in [(ENDOFTEXT, 0), (IM_START, 1), (IM_END, 2)] {
        assert_eq!(tokenizer.encode(token).unwrap(), [id], "{token}");
        assert_eq!(tokenizer.token_id(token), Some(id));
    }
    let ids = tokenizer.encode("<|im_start|>user\nhello<|im_end|>").unwrap();
    assert_eq!(ids.first(), Some(&1));
    assert_eq!(ids.last(), Some(&2));
}

#[test]
fn builtin_has_4096_tokens_and_stops_at_im_end() {
    let tokenizer = Tokenizer::builtin();
    assert_eq!(tokenizer.vocab_size(), 4096);
    assert_eq!(tokenizer.eos_token_id(), Some(2));
}

// --- chat template ---

#[test]
fn chatml_renders_a_conversation() {
    let prompt = Tokenizer::builtin().apply_chat_template(&conversation(), false).unwrap();
    assert_eq!(prompt, CHATML_CONVERSATION);
}

#[test]
fn generation_prompt_opens_the_assistant_turn() {
    let prompt = Tokenizer::builtin().apply_chat_template(&conversation(), true).unwrap();
    assert_eq!(prompt, format!("{CHATML_CONVERSATION}<|im_start|>assistant\n"));
}

#[test]
fn array_of_parts_content_renders_like_string_content() {
    let as_string: Vec<ChatMessage> =
        serde_json::from_str(r#"[{"role": "user", "content": "Hi!"}]"#).unwrap();
    let as_parts: Vec<ChatMessage> =
        serde_json::from_str(r#"[{"role": "user", "content": [{"type": "text", "text": "Hi!"}]}]"#)
            .unwrap();
    let tokenizer = Tokenizer::builtin();
    assert_eq!(
        tokenizer.apply_chat_template(&as_parts, true).unwrap(),
        tokenizer.apply_chat_template(&as_string, true).unwrap(),
    );
}

#[test]
fn text_parts_join_with_newlines_and_other_parts_are_skipped() {
    let content: MessageContent = serde_json::from_str(
        r#"[{"type": "text", "text": "a"},
            {"type": "image_url", "image_url": {"url": "data:,"}},
            {"type": "text", "text": "b"}]"#,
    )
    .unwrap();
    assert_eq!(content.text(), "a\nb");
}

#[test]
fn null_or_missing_content_is_empty_text() {
    let messages: Vec<ChatMessage> =
        serde_json::from_str(r#"[{"role": "assistant", "content": null}, {"role": "tool"}]"#)
            .unwrap();
    assert!(messages.iter().all(|m| m.content.text().is_empty()));
}

#[test]
fn template_syntax_error_is_an_error() {
    let err = ChatTemplate::new("{% for m in messages %}{{ m.content }}").unwrap_err();
    assert!(matches!(err, TokenizerError::Template(_)), "{err}");
}

#[test]
fn template_file_errors_name_the_file() {
    let file = TempFile::new("broken.jinja", "{% if messages %}");
    let err = ChatTemplate::from_file(&file.0).unwrap_err();
    assert!(err.to_string().contains("broken.jinja"), "{err}");
}

#[test]
fn templates_never_escape_html() {
    let file = TempFile::new("template.html", "{% for m in messages %}{{ m.content }}{% endfor %}");
    let template = ChatTemplate::from_file(&file.0).unwrap();
    let prompt = template.render(&[ChatMessage::new("user", "<b>&\"")], false).unwrap();
    assert_eq!(prompt, "<b>&\"");
}

#[test]
fn raise_exception_in_a_template_is_an_error() {
    let template = ChatTemplate::new("{{ raise_exception('roles must alternate') }}").unwrap();
    let err = template.render(&conversation(), false).unwrap_err();
    assert!(err.to_string().contains("roles must alternate"), "{err}");
}

#[test]
fn template_sees_bos_and_eos_and_python_string_methods() {
    let template = ChatTemplate::new(
        "{{ bos_token }}{% for m in messages %}{{ m.content.strip() }}{{ eos_token }}{% endfor %}",
    )
    .unwrap()
    .with_special_tokens(Some("<s>".into()), Some("</s>".into()));
    let prompt = template.render(&[ChatMessage::new("user", "  hi  ")], false).unwrap();
    assert_eq!(prompt, "<s>hi</s>");
}

#[test]
fn unset_bos_token_renders_as_nothing() {
    let template = ChatTemplate::new("[{{ bos_token }}]").unwrap();
    assert_eq!(template.render(&conversation(), false).unwrap(), "[]");
}

#[test]
fn template_loads_from_a_tokenizer_config() {
    let config = TempFile::new(
        "tokenizer_config.json",
        r#"{"chat_template": [{"name": "default", "template": "{{ eos_token }}"}],
            "eos_token": {"content": "<|endoftext|>", "special": true}}"#,
    );
    let tokenizer =
        Tokenizer::builtin().with_chat_template(ChatTemplate::from_file(&config.0).unwrap());
    assert_eq!(tokenizer.apply_chat_template(&conversation(), false).unwrap(), ENDOFTEXT);
    assert_eq!(tokenizer.eos_token_id(), Some(0));
}

#[test]
fn tokenizer_config_without_a_template_is_an_error_naming_the_file() {
    let config = TempFile::new("no_template.json", r#"{"eos_token": "</s>"}"#);
    let err = ChatTemplate::from_file(&config.0).unwrap_err();
    assert!(err.to_string().contains("no_template.json"), "{err}");
}

// --- byte-level fallback ---

#[test]
fn byte_level_encodes_one_id_per_byte() {
    assert_eq!(Tokenizer::byte_level().encode("abc").unwrap(), [97, 98, 99]);
    assert_eq!(Tokenizer::byte_level().encode("é").unwrap(), [0xC3, 0xA9]);
}

#[test]
fn byte_level_round_trips_utf8_and_special_tokens() {
    let tokenizer = Tokenizer::byte_level();
    let text = "<|im_start|>user\nnaïve – 東京 <| not special<|im_end|>";
    let ids = tokenizer.encode(text).unwrap();
    assert_eq!(ids.first(), Some(&257));
    assert_eq!(ids.last(), Some(&258));
    assert_eq!(tokenizer.decode(&ids), text);
    assert_eq!(tokenizer.vocab_size(), 259);
    assert_eq!(tokenizer.eos_token_id(), Some(258));
}

#[test]
fn byte_level_shows_unknown_ids_as_replacement_characters() {
    assert_eq!(Tokenizer::byte_level().decode(&[104, 105, 9999]), "hi\u{FFFD}");
}

// --- loading ---

#[test]
fn from_file_on_a_missing_path_names_the_path() {
    let err = Tokenizer::from_file("/nonexistent/kvroute/tokenizer.json").unwrap_err();
    assert!(matches!(err, TokenizerError::Read { .. }));
    assert!(err.to_string().contains("/nonexistent/kvroute/tokenizer.json"), "{err}");
}

#[test]
fn from_file_on_invalid_json_names_the_path() {
    let file = TempFile::new("broken-tokenizer.json", "{\"model\": 1}");
    let err = Tokenizer::from_file(&file.0).unwrap_err();
    assert!(matches!(err, TokenizerError::Load { .. }));
    assert!(err.to_string().contains("broken-tokenizer.json"), "{err}");
}

#[test]
fn from_file_has_no_chat_template_until_given_one() {
    let tokenizer = Tokenizer::from_file(SHIPPED_JSON).unwrap();
    let err = tokenizer.apply_chat_template(&conversation(), true).unwrap_err();
    assert!(matches!(err, TokenizerError::NoChatTemplate));
    // The EOS is guessed from the vocabulary.
    assert_eq!(tokenizer.eos_token_id(), Some(2));
}

#[test]
fn config_defaults_to_byte_level() {
    let config: TokenizerConfig = serde_json::from_str(r#"{"type": "byte_level"}"#).unwrap();
    assert_eq!(config, TokenizerConfig::default());
    assert_eq!(config.load().unwrap().vocab_size(), 259);
}

#[test]
fn config_loads_a_file_with_a_chat_template() {
    let template = TempFile::new("template.jinja", "{{ messages | length }}");
    let config = TokenizerConfig::File {
        path: SHIPPED_JSON.into(),
        chat_template: Some(template.0.clone()),
    };
    let tokenizer = config.load().unwrap();
    assert_eq!(tokenizer.apply_chat_template(&conversation(), false).unwrap(), "2");
}

#[test]
fn config_rejects_unknown_fields() {
    let err = serde_json::from_str::<TokenizerConfig>(r#"{"type": "builtin", "path": "x"}"#);
    assert!(err.is_err());
}

#[test]
fn tokenizer_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Tokenizer>();
}
