//! Trains the shipped tokenizer: a GPT-2-style byte-level BPE learned from `corpus.txt`.
//!
//! Run it through `scripts/make-tokenizer` (which also checks the output):
//!
//!     cargo run -p kvroute-tokenizer --example train -- CORPUS OUT
//!
//! The result depends only on the corpus and the settings below: the trainer breaks ties between
//! equally frequent pairs by pair id and the JSON lists the vocabulary in id order, so the same
//! corpus always gives the same bytes.
use std::process::ExitCode;

use kvroute_tokenizer::{ENDOFTEXT, IM_END, IM_START};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, TokenizerBuilder, TokenizerImpl};

/// Final vocabulary: 3 special tokens, 256 byte tokens, the rest merges.
const VOCAB_SIZE: usize = 4096;
/// A pair seen once in the corpus is noise, not vocabulary.
const MIN_FREQUENCY: u64 = 2;

type Bpe = TokenizerImpl<BPE, NormalizerWrapper, ByteLevel, ByteLevel, ByteLevel>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [corpus, out] = args.as_slice() else {
        eprintln!("usage: train CORPUS OUT");
        return ExitCode::from(2);
    };
    match train(corpus, out) {
        Ok(vocab) => {
            eprintln!("wrote {out}: {vocab} tokens");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("training failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn train(corpus: &str, out: &str) -> tokenizers::Result<usize> {
    // Special tokens come first (ids 0, 1, 2), are never split and never merged into others.
    let specials = [ENDOFTEXT, IM_START, IM_END].map(|t| AddedToken::from(t, true)).to_vec();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(VOCAB_SIZE)
        .min_frequency(MIN_FREQUENCY)
        .show_progress(false)
        .special_tokens(specials)
        // All 256 byte symbols, so any UTF-8 text encodes and decodes back exactly.
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    // No normalizer and no prefix space: decode(encode(s)) == s for every string.
    let byte_level = ByteLevel::default().add_prefix_space(false).trim_offsets(false);
    let mut tokenizer: Bpe = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(None)
        .with_pre_tokenizer(Some(byte_level))
        .with_post_processor(Some(byte_level))
        .with_decoder(Some(byte_level))
        .build()?;
    tokenizer.train_from_files(&mut trainer, vec![corpus.to_string()])?;
    tokenizer.save(out, true)?;
    Ok(tokenizer.get_vocab_size(true))
}
