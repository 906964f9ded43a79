//! Behaviours of the three tokenizers, the chat template and loading.

use std::path::PathBuf;

use super::*;

const SHIPPED_JSON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/tokenizer/tokenizer.json");

/// A file in the temp dir, unique to this test process and call (tests run concurrently),
/// removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> TempFile {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("kvroute-tokenizer-{}-{n}-{name}", std::process::id()));
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

const CHATML_CONVERSATION: &str = "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n";

// --- builtin BPE ---

#[test]
fn builtin_round_trips_ascii() {
    let text = "fn main() {\n    println!(\"route the request to the worker with the most overlap\");\n}\n";
    assert_eq!(round_trip(&Tokenizer::builtin(), text), text);
}

#[test]
fn builtin_round_trips_utf8() {
    for text in ["naïve – 東京", "emoji 🦀 and\ttabs\r\n", "  leading and trailing spaces  "] {
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
    let as_string: Vec<ChatMessage> = serde_json::from_str(r#"[{"role": "user", "content": "Hi!"}]"#).unwrap();
    let as_parts: Vec<ChatMessage> =
        serde_json::from_str(r#"[{"role": "user", "content": [{"type": "text", "text": "Hi!"}]}]"#).unwrap();
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
        serde_json::from_str(r#"[{"role": "assistant", "content": null}, {"role": "tool"}]"#).unwrap();
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
    let template =
        ChatTemplate::new("{{ bos_token }}{% for m in messages %}{{ m.content.strip() }}{{ eos_token }}{% endfor %}")
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
    let tokenizer = Tokenizer::builtin().with_chat_template(ChatTemplate::from_file(&config.0).unwrap());
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
    let config = TokenizerConfig::File { path: SHIPPED_JSON.into(), chat_template: Some(template.0.clone()) };
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

/// Resuming inside an earlier text ([`Tokenizer::encode_after`]) gives exactly the ids of
/// tokenizing the whole text.
mod resume {
    use proptest::prelude::*;

    use super::*;

    /// Pieces that stress the pre-tokenizer's edges: whitespace runs before words and line
    /// ends, contractions, digit runs, punctuation, multi-byte characters, added tokens.
    const FRAGMENTS: &[&str] = &[
        "the",
        " cat",
        "  ",
        " ",
        "\n",
        "\n\n",
        "\t",
        "   \n",
        "\r\n",
        "'s",
        "'ll",
        "123",
        "4567",
        "3.14",
        ",",
        ".",
        "!?",
        "--",
        "é",
        "日本語",
        "🦀",
        "Ω",
        "a1b2",
        "x",
        "user",
        " assistant",
        IM_START,
        IM_END,
        ENDOFTEXT,
        "<|im_",
        "start|>",
    ];

    /// The shipped vocabulary behind Llama 3's pre-tokenizer (a regex split, then byte-level),
    /// plus a merge of a line end with a space, as Llama 3's vocabulary has: its
    /// `\s*[\r\n]+` looks to the end of a whitespace run, which is why a checkpoint never
    /// sits on whitespace (see `a_whitespace_run_that_gains_a_line_end_stays_exact`).
    fn llama3_style() -> (TempFile, Tokenizer) {
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(SHIPPED_JSON).unwrap()).unwrap();
        config["pre_tokenizer"] = serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "behavior": "Isolated", "invert": false, "pattern": {"Regex":
                r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"}},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]});
        let model = &mut config["model"];
        let next_id = model["vocab"].as_object().unwrap().len();
        model["vocab"]["ĊĠ"] = next_id.into(); // "\n " in byte-level letters
        model["merges"].as_array_mut().unwrap().insert(0, serde_json::json!(["Ċ", "Ġ"]));
        let file = TempFile::new("llama3-style.json", &config.to_string());
        let tokenizer = Tokenizer::from_file(&file.0).unwrap();
        (file, tokenizer)
    }

    fn text(max: usize) -> impl Strategy<Value = String> {
        prop::collection::vec(0..FRAGMENTS.len(), 0..max).prop_map(|v| v.iter().map(|&i| FRAGMENTS[i]).collect())
    }

    /// `text` cut at or before byte `at`, on a character boundary.
    fn prefix(text: &str, at: usize) -> &str {
        let mut c = at.min(text.len());
        while !text.is_char_boundary(c) {
            c -= 1;
        }
        &text[..c]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Cuts land anywhere, and in particular just at or after a checkpoint, where what
        /// follows decides whether the earlier piece boundary still holds.
        #[test]
        fn resumed_ids_are_the_whole_texts_ids(
            base in text(2000),
            anywhere in any::<prop::sample::Index>(),
            checkpoint in any::<prop::sample::Index>(),
            after_checkpoint in 0usize..24,
            suffix in text(300),
        ) {
            let (_file, llama3) = llama3_style();
            for tokenizer in [Tokenizer::builtin(), llama3] {
                prop_assert!(tokenizer.resumes());
                let earlier = tokenizer.encode_tokenized(&base).unwrap();
                prop_assert_eq!(earlier.ids(), &tokenizer.encode(&base).unwrap()[..]);
                let checkpoints = earlier.checkpoint_bytes();
                let cut = match checkpoints.is_empty() {
                    true => anywhere.index(base.len() + 1),
                    false => checkpoint.get(&checkpoints) + after_checkpoint,
                };
                let text = format!("{}{suffix}", prefix(&base, cut));
                let resumed = tokenizer.encode_after(&earlier, &base, &text).unwrap();
                prop_assert_eq!(resumed.ids(), &tokenizer.encode(&text).unwrap()[..]);
                // Resuming again from the resumed text is as exact (its checkpoints are right too).
                let again = format!("{}{suffix}", prefix(&text, anywhere.index(text.len() + 1)));
                let twice = tokenizer.encode_after(&resumed, &text, &again).unwrap();
                prop_assert_eq!(twice.ids(), &tokenizer.encode(&again).unwrap()[..]);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// A text's beginning, tokenized alone up to a limit, is the start of its whole ids, and
        /// carrying on from it — to a further limit, then to the end — gives exactly those ids.
        #[test]
        fn a_beginning_is_the_start_of_the_whole_ids_and_carries_on_exactly(
            text in text(2000),
            first in any::<prop::sample::Index>(),
            second in any::<prop::sample::Index>(),
        ) {
            let (_file, llama3) = llama3_style();
            for tokenizer in [Tokenizer::builtin(), llama3] {
                let whole = tokenizer.encode(&text).unwrap();
                let limit = first.index(text.len() + 1);
                let beginning = tokenizer.encode_beginning(None, &text, limit).unwrap();
                prop_assert!(whole.starts_with(beginning.ids()), "limit {}", limit);
                if let Some(end) = beginning.ends_at() {
                    prop_assert!(end <= limit && beginning.ids().len() < whole.len(), "ends at {} for limit {}", end, limit);
                }
                let further = limit + second.index(text.len() + 1 - limit);
                let more = tokenizer.encode_beginning(Some((&beginning, &text)), &text, further).unwrap();
                prop_assert!(whole.starts_with(more.ids()));
                prop_assert!(more.ids().len() >= beginning.ids().len());
                let rest = tokenizer.encode_after(&more, &text, &text).unwrap();
                prop_assert_eq!(rest.ids(), &whole[..]);
                prop_assert_eq!(rest.ends_at(), None);
            }
        }
    }

    #[test]
    fn a_long_texts_beginning_stops_near_the_limit() {
        let tokenizer = Tokenizer::builtin();
        let doc = document();
        let beginning = tokenizer.encode_beginning(None, &doc, 4096).unwrap();
        let end = beginning.ends_at().expect("stopped early");
        assert!((4096 - 300..=4096).contains(&end), "ends at {end}");
        assert_eq!(tokenizer.decode(beginning.ids()), doc[..end]);
        // A limit at or past the end, or a tokenizer that cannot resume, gives the whole text.
        assert_eq!(tokenizer.encode_beginning(None, &doc, doc.len()).unwrap().ends_at(), None);
        let bytes = Tokenizer::byte_level().encode_beginning(None, &doc, 4096).unwrap();
        assert_eq!((bytes.ends_at(), bytes.ids().len()), (None, doc.len()));
    }

    fn document() -> String {
        (0..2000).map(|i| format!("Line {i}: the cat's {} items cost {}.\n", i * 7 % 13, i * 31 % 1000)).collect()
    }

    #[test]
    fn a_long_shared_beginning_is_reused_not_tokenized_again() {
        let tokenizer = Tokenizer::builtin();
        assert!(tokenizer.resumes());
        let doc = document();
        let earlier = tokenizer.encode_tokenized(&format!("{doc}Question one?")).unwrap();
        assert!(earlier.checkpoints() > doc.len() / 1024, "{} checkpoints", earlier.checkpoints());
        let text = format!("{doc}A different question, longer than the first one?");
        let resumed = tokenizer.encode_after(&earlier, &format!("{doc}Question one?"), &text).unwrap();
        assert_eq!(resumed.ids(), &tokenizer.encode(&text).unwrap()[..]);
        let whole = tokenizer.encode(&doc).unwrap().len();
        assert!(resumed.reused() > whole - 200, "reused {} of the document's {whole} ids", resumed.reused());
    }

    #[test]
    fn whitespace_runs_that_continue_differently_stay_exact() {
        let tokenizer = Tokenizer::builtin();
        let base = format!("{}word{}end", "x. ".repeat(200), " ".repeat(300));
        let earlier = tokenizer.encode_tokenized(&base).unwrap();
        for tail in ["   more", "\n\nmore", "end", " ", "<|im_end|>"] {
            let text = format!("{}{tail}", &base[..base.len() - 3]);
            let resumed = tokenizer.encode_after(&earlier, &base, &text).unwrap();
            assert_eq!(resumed.ids(), &tokenizer.encode(&text).unwrap()[..], "tail {tail:?}");
            assert!(resumed.reused() > 0);
        }
    }

    /// Llama 3's `\s*[\r\n]+` runs to the last line end of a whitespace run: a whitespace run
    /// that carries on into a new line end past the shared part changes the piece before it.
    #[test]
    fn a_whitespace_run_that_gains_a_line_end_stays_exact() {
        let (_file, tokenizer) = llama3_style();
        let head = format!("{}\n\n{}", "a".repeat(254), " ".repeat(30));
        let base = format!("{head}y{}", "b".repeat(300));
        let earlier = tokenizer.encode_tokenized(&base).unwrap();
        let text = format!("{head}\nz");
        let resumed = tokenizer.encode_after(&earlier, &base, &text).unwrap();
        assert_eq!(resumed.ids(), &tokenizer.encode(&text).unwrap()[..]);
    }

    #[test]
    fn texts_that_share_nothing_are_tokenized_whole() {
        let tokenizer = Tokenizer::builtin();
        let earlier = tokenizer.encode_tokenized(&document()).unwrap();
        let resumed = tokenizer.encode_after(&earlier, &document(), "something else entirely").unwrap();
        assert_eq!(resumed.reused(), 0);
        assert_eq!(resumed.ids(), &tokenizer.encode("something else entirely").unwrap()[..]);
    }

    #[test]
    fn a_tokenizer_with_a_normalizer_or_a_prefix_space_does_not_resume() {
        let shipped = std::fs::read_to_string(SHIPPED_JSON).unwrap();
        for (from, to) in [
            (r#""normalizer": null"#, r#""normalizer": {"type": "NFC"}"#),
            (r#""add_prefix_space": false"#, r#""add_prefix_space": true"#),
        ] {
            assert!(shipped.contains(from), "the shipped tokenizer.json has {from}");
            let file = TempFile::new("resume.json", &shipped.replacen(from, to, 1));
            let tokenizer = Tokenizer::from_file(&file.0).unwrap();
            assert!(!tokenizer.resumes(), "{to}");
            let doc = document();
            let earlier = tokenizer.encode_tokenized(&doc).unwrap();
            assert_eq!(earlier.checkpoints(), 0);
            let text = format!("{doc}more");
            let resumed = tokenizer.encode_after(&earlier, &doc, &text).unwrap();
            assert_eq!((resumed.reused(), resumed.ids()), (0, &tokenizer.encode(&text).unwrap()[..]));
        }
        assert!(!Tokenizer::byte_level().resumes());
    }
}

#[test]
fn printable_ids_decode_one_at_a_time_to_readable_text() {
    for tokenizer in [Tokenizer::builtin(), Tokenizer::byte_level()] {
        let ids = tokenizer.printable_ids();
        let eos = tokenizer.eos_token_id();
        assert!(ids.len() > 64, "{} ids", ids.len());
        for &id in &ids {
            if Some(id) == eos {
                continue;
            }
            let text = tokenizer.decode(&[id]);
            assert!(!text.contains('\u{FFFD}') && !text.contains("<|"), "{id}: {text:?}");
        }
        assert!(eos.is_some_and(|e| ids.contains(&e)));
    }
    let builtin = Tokenizer::builtin();
    assert!(!builtin.printable_ids().contains(&builtin.token_id(IM_START).unwrap()));
}
