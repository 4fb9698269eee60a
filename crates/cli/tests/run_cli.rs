//! `shardline run` as a user runs it: a tiny model directory on disk, text and JSON output,
//! dummy weights from a config alone, and clear failures for bad input.

use std::process::Command;

fn tiny_model() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let cfg = shardline_model::testing::tiny_config("Qwen2ForCausalLM", 300, true);
    shardline_model::testing::write_tiny_model(dir.path(), &cfg, 11).unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), shardline_tokenizer::testing::tiny_tokenizer_json(300)).unwrap();
    dir
}

fn shardline(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_shardline")).args(args).env_remove("SHARDLINE_MODEL").output().unwrap()
}

#[test]
fn json_output_follows_the_contract_and_text_mode_reports_speed() {
    let dir = tiny_model();
    let model = dir.path().to_str().unwrap();
    let out = shardline(&[
        "run",
        "--model",
        model,
        "--prompt",
        "hello",
        "--max-tokens",
        "5",
        "--ignore-eos",
        "--logprobs",
        "2",
        "--output",
        "json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["token_ids"].as_array().unwrap().len(), 5);
    assert_eq!(v["finish_reason"], "length");
    assert!(!v["prompt_token_ids"].as_array().unwrap().is_empty());
    assert!(v["text"].is_string());
    let lp = v["logprobs"].as_array().unwrap();
    assert_eq!(lp.len(), 5);
    assert_eq!(lp[0]["top"].as_array().unwrap().len(), 2);
    for key in ["ttft_ms", "prefill_tokens_per_s", "decode_tokens_per_s"] {
        assert!(v["metrics"][key].as_f64().unwrap() > 0.0, "{key}");
    }
    let out = shardline(&["run", "--model", model, "--prompt", "hello", "--max-tokens", "4", "--batch", "3"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("TTFT") && text.contains("decode") && text.contains("batch 3"),
        "{text}"
    );
}

#[test]
fn dummy_weights_need_only_a_config() {
    let dir = tiny_model();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let model = dir.path().to_str().unwrap();
    let out = shardline(&[
        "run",
        "--model",
        model,
        "--prompt",
        "hi",
        "--max-tokens",
        "3",
        "--ignore-eos",
        "--output",
        "json",
    ]);
    assert!(!out.status.success(), "real weights are required without --load-format dummy");
    let out = shardline(&[
        "run",
        "--model",
        model,
        "--load-format",
        "dummy",
        "--prompt",
        "hi",
        "--max-tokens",
        "3",
        "--ignore-eos",
        "--output",
        "json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["token_ids"].as_array().unwrap().len(), 3);
}

#[test]
fn bad_input_fails_with_a_message() {
    let dir = tiny_model();
    let model = dir.path().to_str().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (&["run", "--model", "/no/such/model", "--prompt", "x"], "not an existing path and not a known alias"),
        (&["run", "--model", model, "--prompt", "x", "--temperature", "-1"], "temperature must be >= 0"),
        (&["run", "--model", model, "--prompt", "x", "--max-tokens", "100000"], "context length"),
        (&["run", "--model", model], "--prompt"),
    ];
    for (args, needle) in cases {
        let out = shardline(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(needle), "{args:?}: {err}");
    }
}
