//! Test fixtures: a tiny byte-level BPE tokenizer.json that tiny in-test models can use.

use serde_json::{json, Map, Value};

use crate::gguf::byte_alphabet;

/// Special tokens, at ids 256..260 (after the 256 byte tokens).
pub const SPECIAL_TOKENS: [&str; 4] = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"];

/// Letters the filler merges are built from: merges of these grow English-like pieces, so short
/// ASCII texts encode to fewer ids than bytes.
const LETTERS: &str = "etaoinshrdlcumwfgypbvkjxqz";

/// tokenizer.json text for a byte-level BPE tokenizer with exactly `vocab_size` ids: ids 0..256
/// are the bytes (GPT-2 byte alphabet), 256..260 the special tokens `<s>`, `</s>`,
/// `<|im_start|>`, `<|im_end|>`, and the rest filler merges (`Ġ`/letter + letter, breadth-first).
///
/// # Panics
/// If `vocab_size < 260`.
pub fn tiny_tokenizer_json(vocab_size: usize) -> String {
    assert!(vocab_size >= 260, "tiny_tokenizer_json: vocab_size {vocab_size} is below the 260 byte + special tokens");
    let alphabet = byte_alphabet();
    let mut vocab = Map::new();
    for (id, c) in alphabet.iter().enumerate() {
        vocab.insert(c.to_string(), json!(id));
    }
    for (i, s) in SPECIAL_TOKENS.iter().enumerate() {
        vocab.insert(s.to_string(), json!(256 + i));
    }

    // Breadth-first: every queued piece extended by every letter. Pieces in the queue are
    // distinct and each merge appends one char, so every produced piece is new.
    let space = alphabet[b' ' as usize];
    let mut queue: std::collections::VecDeque<String> =
        std::iter::once(space.to_string()).chain(LETTERS.chars().map(String::from)).collect();
    let mut merges = Vec::new();
    let mut next_id = 256 + SPECIAL_TOKENS.len();
    'fill: while let Some(left) = queue.pop_front() {
        for c in LETTERS.chars() {
            if next_id == vocab_size {
                break 'fill;
            }
            let piece = format!("{left}{c}");
            vocab.insert(piece.clone(), json!(next_id));
            merges.push(json!([left, c.to_string()]));
            queue.push_back(piece);
            next_id += 1;
        }
    }

    let added: Vec<Value> = SPECIAL_TOKENS
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({"id": 256 + i, "content": s, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges
        }
    });
    tokenizer.to_string()
}
