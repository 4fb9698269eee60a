//! The `llama` (SentencePiece BPE) GGUF kind on a hand-made vocabulary, written with candle's GGUF
//! writer so the test needs no downloaded file.
//!
//! Expected ids come from transformers 5.23 on the identical vocabulary (a one-off script wrote
//! the same tokens/scores/types with `gguf.GGUFWriter(..., "llama")` and ran
//! `AutoTokenizer.from_pretrained(dir, gguf_file="tiny_spm.gguf").encode(text)`).

use candle_core::quantized::gguf_file::{self, Value};
use shardline_tokenizer::{IncrementalDecoder, Tokenizer, TokenizerError};

/// (piece, score); ids start at 259 after `<unk>`, `<s>`, `</s>` and the 256 `<0xNN>` tokens.
/// "hel" scores better than "he" though listed later, so merge order must follow scores.
const PIECES: &[(&str, f32)] = &[
    ("▁", -1.0),
    ("e", -2.0),
    ("h", -3.0),
    ("l", -4.0),
    ("o", -5.0),
    ("w", -6.0),
    ("r", -7.0),
    ("d", -8.0),
    ("▁h", -9.0),
    ("he", -10.0),
    ("ll", -11.0),
    ("lo", -12.0),
    ("▁he", -13.0),
    ("llo", -14.0),
    ("▁hello", -15.0),
    ("▁w", -16.0),
    ("or", -17.0),
    ("▁wor", -18.0),
    ("ld", -19.0),
    ("▁world", -20.0),
    ("hel", -9.5),
    ("▁▁", -30.0),
    ("é", -25.0),
];

fn write_gguf(path: &std::path::Path, extra: &[(&str, Value)], with_scores: bool) {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    tokens.extend(PIECES.iter().map(|(p, _)| p.to_string()));
    let mut scores = vec![0f32; 259];
    scores.extend(PIECES.iter().map(|(_, s)| *s));
    let mut types = vec![2i32, 3, 3];
    types.extend(std::iter::repeat_n(6, 256));
    types.extend(std::iter::repeat_n(1, PIECES.len()));

    let array = |v: Vec<Value>| Value::Array(v);
    let mut meta: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.tokens", array(tokens.into_iter().map(Value::String).collect())),
        ("tokenizer.ggml.token_type", array(types.into_iter().map(Value::I32).collect())),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
    ];
    if with_scores {
        meta.push(("tokenizer.ggml.scores", array(scores.into_iter().map(Value::F32).collect())));
    }
    meta.extend(extra.iter().cloned());
    let refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let mut file = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut file, &refs, &[]).unwrap();
}

fn tiny(extra: &[(&str, Value)]) -> (tempfile::TempDir, Tokenizer) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny_spm.gguf");
    write_gguf(&path, extra, true);
    let tok = Tokenizer::from_path(&path).unwrap();
    (dir, tok)
}

#[test]
fn ids_match_transformers() {
    let (_dir, tok) = tiny(&[]);
    let cases: &[(&str, &[u32])] = &[
        ("hello world", &[1, 273, 278]),
        ("hello", &[1, 273]),
        (" hello  world", &[1, 273, 259, 278]),
        ("helloworld", &[1, 273, 264, 275, 277]),
        ("héllo wörld", &[1, 267, 281, 272, 274, 198, 185, 265, 277]),
        ("world\nhello", &[1, 278, 13, 279, 270]),
        ("<s>hello</s>", &[1, 1, 279, 270, 2]),
        ("ab 😀", &[1, 259, 100, 101, 259, 243, 162, 155, 131]),
    ];
    for (text, expected) in cases {
        assert_eq!(tok.encode(text, true).unwrap(), *expected, "ids for {text:?}");
        // BOS is added by default for SentencePiece vocabularies, and only with special tokens.
        assert_eq!(tok.encode(text, false).unwrap(), expected[1..], "no-BOS ids for {text:?}");
    }
    assert_eq!(tok.vocab_size(), 259 + PIECES.len());
    assert_eq!(tok.bos_token_id(), Some(1));
    assert_eq!(tok.eos_token_ids(), &[2]);
}

#[test]
fn decode_undoes_metaspace_and_byte_fallback() {
    let (_dir, tok) = tiny(&[]);
    for text in ["hello world", "héllo wörld", "world\nhello", "ab 😀"] {
        let ids = tok.encode(text, true).unwrap();
        assert_eq!(tok.decode(&ids, true).unwrap(), text);
    }
    // transformers drops the leading space too (prefix ▁ merged with the text's own space).
    let ids = tok.encode(" hello  world", true).unwrap();
    assert_eq!(tok.decode(&ids, true).unwrap(), "hello  world");
    let ids = tok.encode("<s>hello</s>", true).unwrap();
    assert_eq!(tok.decode(&ids, false).unwrap(), "<s><s>hello</s>");
}

#[test]
fn add_bos_and_space_prefix_flags_are_honoured() {
    let (_dir, tok) = tiny(&[
        ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
        ("tokenizer.ggml.add_space_prefix", Value::Bool(false)),
    ]);
    // No BOS, and no ▁ before the first word: "hello" is "hel"+"lo" as after a special token.
    assert_eq!(tok.encode("hello", true).unwrap(), [279, 270]);
    assert_eq!(tok.decode(&[279, 270, 278], true).unwrap(), "hello world");
}

#[test]
fn incremental_decoding_uses_prompt_context_for_spaces() {
    let (_dir, tok) = tiny(&[]);
    let prompt = tok.encode("hello", true).unwrap();
    let generated = tok.encode("world hé😀", false).unwrap();
    let mut dec = IncrementalDecoder::new(&tok, &prompt);
    let mut pieces = Vec::new();
    for &id in &generated {
        pieces.push(dec.push(id).unwrap());
    }
    pieces.push(dec.finish().unwrap());
    let out: String = pieces.concat();
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
    // In context the generated "▁world" is a new word, so its space is kept...
    assert_eq!(out, " world hé😀");
    // ...and equals what the full sequence decodes to beyond the prompt.
    let mut all = prompt.clone();
    all.extend(&generated);
    let full = tok.decode(&all, true).unwrap();
    assert_eq!(full, format!("{}{out}", tok.decode(&prompt, true).unwrap()));

    // Without a prompt the output equals a plain decode of the generated ids.
    let mut dec = IncrementalDecoder::new(&tok, &[]);
    let mut out = String::new();
    for &id in &generated {
        out.push_str(&dec.push(id).unwrap());
    }
    out.push_str(&dec.finish().unwrap());
    assert_eq!(out, tok.decode(&generated, true).unwrap());
}

#[test]
fn missing_scores_fall_back_to_vocab_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("noscores.gguf");
    write_gguf(&path, &[], false);
    let tok = Tokenizer::from_gguf(&path).unwrap();
    let ids = tok.encode("hello world", true).unwrap();
    assert_eq!(tok.decode(&ids, true).unwrap(), "hello world");
}

#[test]
fn unsupported_model_and_missing_keys_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    write_gguf(&path, &[("tokenizer.ggml.model", Value::String("t5".into()))], true);
    // The later duplicate key wins in the metadata map.
    let err = Tokenizer::from_gguf(&path).unwrap_err();
    assert!(matches!(err, TokenizerError::GgufUnsupportedModel { ref model, .. } if model == "t5"), "{err}");

    let path = dir.path().join("empty.gguf");
    let mut file = std::fs::File::create(&path).unwrap();
    gguf_file::write(&mut file, &[], &[]).unwrap();
    let err = Tokenizer::from_gguf(&path).unwrap_err();
    assert!(err.to_string().contains("tokenizer.ggml.model"), "{err}");

    let path = dir.path().join("garbage.gguf");
    std::fs::write(&path, b"not a gguf file").unwrap();
    let err = Tokenizer::from_path(&path).unwrap_err();
    assert!(matches!(err, TokenizerError::GgufRead { .. }), "{err}");
}
