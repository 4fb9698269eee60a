//! Hugging Face directory loading (tokenizer.json + configs), built on the tiny test tokenizer,
//! plus chat template semantics and error cases.

use std::path::Path;

use shardline_tokenizer::testing::tiny_tokenizer_json;
use shardline_tokenizer::{ChatMessage, IncrementalDecoder, Tokenizer, TokenizerError};

/// Exercises trim_blocks/lstrip_blocks, `continue`, pycompat `.startswith()`/`.strip()`,
/// `raise_exception`, `tools is not none` and `tojson`.
const TEMPLATE: &str = include_str!("chat_test_template.jinja");

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn tiny_dir(vocab_size: usize, tokenizer_config: serde_json::Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "tokenizer.json", &tiny_tokenizer_json(vocab_size));
    write(dir.path(), "tokenizer_config.json", &tokenizer_config.to_string());
    dir
}

fn chat_config() -> serde_json::Value {
    serde_json::json!({
        "bos_token": "<s>",
        "eos_token": {"content": "<|im_end|>", "special": true},
        "add_bos_token": true,
        "chat_template": TEMPLATE,
    })
}

#[test]
fn tiny_tokenizer_has_exact_vocab_and_working_merges() {
    for size in [260, 261, 1000, 4096] {
        let tok =
            Tokenizer::from_tokenizer(tiny_tokenizer_json(size).parse().unwrap(), Some("<s>"), Some("</s>"), None);
        assert_eq!(tok.vocab_size(), size);
        assert_eq!(tok.token_to_id("<|im_start|>"), Some(258));
        assert!(tok.id_to_token(size as u32 - 1).is_some());
        let text = "at the zoo, 😀 <|im_end|>";
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
        assert_eq!(*ids.last().unwrap(), 259);
        // "at" is filler merge 3 * 26 + 1 (queue: Ġ, e, t, a...; letter t is second): id 339.
        let at = tok.encode("at", false).unwrap().len();
        assert_eq!(at, if size > 339 { 1 } else { 2 }, "vocab {size}");
    }
}

#[test]
fn directory_configs_set_bos_eos_and_template() {
    let dir = tiny_dir(300, chat_config());
    write(dir.path(), "generation_config.json", r#"{"eos_token_id": [259, 257]}"#);
    let tok = Tokenizer::from_path(dir.path()).unwrap();
    assert_eq!(tok.vocab_size(), 300);
    assert_eq!(tok.bos_token_id(), Some(256));
    assert_eq!(tok.eos_token_ids(), &[259, 257]);
    assert_eq!(tok.chat_template(), Some(TEMPLATE));

    let plain = tok.encode("hi", false).unwrap();
    let with_bos = tok.encode("hi", true).unwrap();
    assert_eq!(with_bos[0], 256);
    assert_eq!(&with_bos[1..], &plain[..]);
    // A literal "<s>" in the text is a special token of its own; BOS is still added in front.
    assert_eq!(tok.encode("<s>hi", true).unwrap()[..2], [256, 256]);
    // Pointing at tokenizer.json itself loads the directory.
    let via_file = Tokenizer::from_path(&dir.path().join("tokenizer.json")).unwrap();
    assert_eq!(via_file.eos_token_ids(), &[259, 257]);
}

#[test]
fn add_bos_false_overrides_post_processor() {
    let dir = tempfile::tempdir().unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&tiny_tokenizer_json(270)).unwrap();
    json["post_processor"] = serde_json::json!({
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [256], "tokens": ["<s>"]}}
    });
    write(dir.path(), "tokenizer.json", &json.to_string());
    // No tokenizer_config: the post-processor decides.
    write(dir.path(), "config.json", r#"{"bos_token_id": 256, "eos_token_id": 257}"#);
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(tok.eos_token_ids(), &[257]);
    assert_eq!(tok.encode("hi", true).unwrap()[0], 256);
    // tokenizer_config says no BOS: the post-processor's one is dropped, a literal one kept.
    write(dir.path(), "tokenizer_config.json", r#"{"bos_token": "<s>", "add_bos_token": false}"#);
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(tok.encode("hi", true).unwrap(), tok.encode("hi", false).unwrap());
    assert_eq!(tok.encode("<s>hi", true).unwrap()[0], 256);
}

#[test]
fn chat_template_renders_like_transformers_jinja() {
    let dir = tiny_dir(300, chat_config());
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    let messages = [
        ChatMessage::new("system", "  Be brief.  "),
        ChatMessage::new("user", "SKIP me"),
        ChatMessage::new("user", "Hi <b> & 'you' é"),
    ];
    // Expected output rendered by jinja2 with transformers' settings (ImmutableSandboxedEnvironment,
    // trim_blocks, lstrip_blocks, loopcontrols, json.dumps tojson), tools=None.
    let body = "<s>\n<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi <b> & 'you' é<|im_end|>\n{\"role\": \"user\", \"content\": \"Hi <b> & 'you' é\"}\n";
    assert_eq!(tok.apply_chat_template(&messages, false).unwrap(), body);
    assert_eq!(tok.apply_chat_template(&messages, true).unwrap(), format!("{body}<|im_start|>assistant\n"));

    let err = tok.apply_chat_template(&[ChatMessage::new("tool", "x")], false).unwrap_err();
    assert!(matches!(err, TokenizerError::ChatTemplate { .. }));
    assert!(err.to_string().contains("Unknown role: tool"), "{err}");
}

/// `tools` reach the template as transformers passes them (OpenAI's list), so a template's
/// tools section renders them in its own words (here, Qwen2.5's); without, `tools` is none.
#[test]
fn chat_template_renders_the_tools_it_is_given() {
    let dir = tiny_dir(300, chat_config());
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    let messages = [ChatMessage::new("user", "Hi")];
    let tools = [serde_json::json!({"type": "function", "function": {"name": "get_weather", "parameters": {}}})];
    assert!(!tok.apply_chat_template(&messages, true).unwrap().contains("TOOLS"));
    assert!(tok.apply_chat_template_with_tools(&messages, &tools, true).unwrap().contains("TOOLS"));

    let qwen = "{%- if tools %}<|im_start|>system\n<tools>{%- for tool in tools %}\n{{ tool | tojson }}{%- endfor %}\n</tools><|im_end|>\n{%- endif %}{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endfor %}";
    write(dir.path(), "chat_template.jinja", qwen);
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    // trim_blocks drops the newline after each block tag, `{%-` the whitespace before it.
    let want = "<|im_start|>system\n<tools>{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"parameters\": {}}}</tools><|im_end|><|im_start|>user\nHi<|im_end|>";
    assert_eq!(tok.apply_chat_template_with_tools(&messages, &tools, false).unwrap(), want);
    assert_eq!(tok.apply_chat_template(&messages, false).unwrap(), "<|im_start|>user\nHi<|im_end|>");
}

#[test]
fn chat_template_jinja_file_takes_precedence() {
    let dir = tiny_dir(300, chat_config());
    write(dir.path(), "chat_template.jinja", "{% for m in messages %}[{{ m.role | upper }}]{% endfor %}");
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    let out =
        tok.apply_chat_template(&[ChatMessage::new("user", "a"), ChatMessage::new("assistant", "b")], true).unwrap();
    assert_eq!(out, "[USER][ASSISTANT]");
}

#[test]
fn named_template_list_uses_default() {
    let config = serde_json::json!({
        "chat_template": [
            {"name": "tool_use", "template": "TOOLS"},
            {"name": "default", "template": "{{ messages[0].content }}"},
        ]
    });
    let dir = tiny_dir(300, config);
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(tok.apply_chat_template(&[ChatMessage::new("user", "x")], false).unwrap(), "x");
}

#[test]
fn errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let err = Tokenizer::from_path(dir.path()).unwrap_err();
    assert!(matches!(err, TokenizerError::MissingTokenizerJson { .. }), "{err}");
    assert!(err.to_string().contains("tokenizer.json"));

    let err = Tokenizer::from_path(&dir.path().join("nope")).unwrap_err();
    assert!(matches!(err, TokenizerError::PathNotFound { .. }), "{err}");

    write(dir.path(), "tokenizer.json", "{ not json");
    let err = Tokenizer::from_dir(dir.path()).unwrap_err();
    assert!(matches!(err, TokenizerError::Load { .. }), "{err}");

    let dir = tiny_dir(300, serde_json::json!({"bos_token": "<s>"}));
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(tok.chat_template(), None);
    let err = tok.apply_chat_template(&[ChatMessage::new("user", "hi")], true).unwrap_err();
    assert!(matches!(err, TokenizerError::NoChatTemplate), "{err}");
    assert!(matches!(tok.decode(&[300], false), Err(TokenizerError::UnknownTokenId { id: 300, .. })));

    write(dir.path(), "generation_config.json", "[1,");
    let err = Tokenizer::from_dir(dir.path()).unwrap_err();
    assert!(err.to_string().contains("generation_config.json"), "{err}");

    let dir = tiny_dir(300, serde_json::json!({"chat_template": "{% for %}"}));
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    let err = tok.apply_chat_template(&[], false).unwrap_err();
    assert!(matches!(err, TokenizerError::ChatTemplate { .. }), "{err}");
}

#[test]
fn incremental_decoder_on_byte_level_matches_full_decode() {
    let tok = Tokenizer::from_tokenizer(tiny_tokenizer_json(600).parse().unwrap(), None, None, None);
    let text = "naïve 中文 😀👍🏽 ok<|im_end|>";
    let ids = tok.encode(text, false).unwrap();
    let mut dec = IncrementalDecoder::new(&tok, &tok.encode("prompt ", false).unwrap());
    let mut out = String::new();
    let mut empties = 0;
    for &id in &ids {
        let piece = dec.push(id).unwrap();
        assert!(!piece.contains('\u{FFFD}'));
        empties += usize::from(piece.is_empty());
        out.push_str(&piece);
    }
    out.push_str(&dec.finish().unwrap());
    assert_eq!(out, tok.decode(&ids, true).unwrap());
    assert_eq!(out, "naïve 中文 😀👍🏽 ok");
    // Every byte token of a multi-byte char but the last is held back.
    assert!(empties >= 10, "only {empties} pushes were held back");

    // An incomplete trailing character comes out of finish() as U+FFFD, like a full decode.
    let cut = &ids[..ids.iter().position(|&i| i == tok.encode("中", false).unwrap()[1]).unwrap()];
    let mut dec = IncrementalDecoder::new(&tok, &[]);
    let mut out = String::new();
    for &id in cut {
        out.push_str(&dec.push(id).unwrap());
    }
    assert!(!out.contains('\u{FFFD}'));
    out.push_str(&dec.finish().unwrap());
    assert_eq!(out, tok.decode(cut, true).unwrap());
    assert!(out.ends_with('\u{FFFD}'));
}
