//! `tokenizer.ggml.model = gpt2`: byte-level BPE (GPT-2 / Llama 3 / Qwen2 / SmolLM style).
//!
//! The vocabulary and merges come straight from the file. What the file does not carry is the
//! pre-tokenizer regex; llama.cpp picks it from `tokenizer.ggml.pre` (`llama-vocab.cpp`), and so
//! do we, expressed as the equivalent HF pre-tokenizer.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

/// Llama 3 split regex (llama.cpp `LLAMA_VOCAB_PRE_TYPE_LLAMA3`, HF Llama-3 tokenizer.json).
pub(crate) const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2 split regex: like Llama 3 but single digits (llama.cpp `LLAMA_VOCAB_PRE_TYPE_QWEN2`).
pub(crate) const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How `tokenizer.ggml.pre` maps onto HF pre-tokenizers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PreKind {
    /// GPT-2 regex (HF `ByteLevel(use_regex=true)`).
    Gpt2,
    /// Every digit on its own, then the GPT-2 regex (SmolLM, StarCoder, ...).
    DigitsThenGpt2,
    /// A `Split` with this regex, then byte mapping without a regex.
    Split(&'static str),
}

pub(crate) fn pre_kind(pre: &str) -> PreKind {
    match pre {
        "default" | "gpt2" | "gpt-2" | "olmo" | "jais" | "phi-2" => PreKind::Gpt2,
        // llama.cpp groups these: regex `\p{N}` then the GPT-2 regex.
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva" => PreKind::DigitsThenGpt2,
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2" | "dbrx"
        | "smaug-bpe" => PreKind::Split(LLAMA3_SPLIT),
        "qwen2" | "deepseek-r1-qwen" | "megrez" => PreKind::Split(QWEN2_SPLIT),
        other => {
            tracing::warn!(
                pre = other,
                "unknown GGUF tokenizer.ggml.pre; falling back to the GPT-2 byte-level pre-tokenizer"
            );
            PreKind::Gpt2
        }
    }
}

fn pre_tokenizer(kind: PreKind) -> Result<PreTokenizerWrapper, String> {
    Ok(match kind {
        PreKind::Gpt2 => ByteLevel::new(false, true, true).into(),
        PreKind::DigitsThenGpt2 => {
            Sequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()]).into()
        }
        PreKind::Split(regex) => {
            let split = Split::new(SplitPattern::Regex(regex.to_string()), SplitDelimiterBehavior::Isolated, false)
                .map_err(|e| format!("invalid pre-tokenizer regex: {e}"))?;
            Sequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()]).into()
        }
    })
}

/// GPT-2's reversible byte → printable char table (`bytes_to_unicode`).
pub(crate) fn byte_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            b as char
        } else {
            let c = char::from_u32(next).expect("256..512 are valid chars");
            next += 1;
            c
        };
    }
    table
}

/// Build the byte-level BPE tokenizer. `added[i]` is `Some(_)` for tokens that will become added
/// tokens (control / user-defined): those keep their raw spelling so the added token maps onto the
/// same id instead of growing the vocabulary.
pub(super) fn build(tokens: &[&str], merges: &[&str], added: &[Option<bool>], pre: &str) -> Result<Tokenizer, String> {
    let alphabet = byte_alphabet();
    let in_alphabet: std::collections::HashSet<char> = alphabet.iter().copied().collect();
    let mut vocab = Vocab::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        // Some converters store raw text (e.g. a literal space) instead of the byte alphabet;
        // respell those byte by byte, as transformers' GGUF loader does.
        let spelled = if added[id].is_some() || token.chars().all(|c| in_alphabet.contains(&c)) {
            token.to_string()
        } else {
            token.bytes().map(|b| alphabet[b as usize]).collect()
        };
        vocab.insert(spelled, id as u32);
    }
    let merges = merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| format!("merge {i} ({m:?}) is not two space-separated tokens"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let model = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| format!("invalid BPE vocabulary/merges: {e}"))?;
    let mut tokenizer = Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer(pre_kind(pre))?));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tokenizer)
}
