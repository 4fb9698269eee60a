//! Parity with HF transformers on SmolLM2-135M-Instruct (the Q4_1 GGUF dequantized to f32, as
//! HF loads it: `--quantization none`):
//! greedy token ids must be identical and top-5 logprobs within 1e-3 of the golden file made by
//! `scripts/hf_golden.py`. The model is resolved like `--model smollm2-135m` (fetched into
//! $SHARDLINE_CACHE on first use).

use std::sync::Arc;

use candle_core::DType;
use serde_json::Value;
use shardline_engine::{Engine, EngineConfig};
use shardline_model::{ModelSpec, Quantization};
use shardline_sampling::SamplingParams;
use shardline_tokenizer::{ChatMessage, Prompt, Tokenizer};
use shardline_worker::LocalExecutor;

const TOLERANCE: f64 = 1e-3;

fn prompt_of(case: &Value) -> Prompt {
    match case["kind"].as_str().unwrap() {
        "chat" => Prompt::Chat(
            case["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
                .collect(),
        ),
        _ => Prompt::Text(case["prompt"].as_str().unwrap().to_string()),
    }
}

#[test]
fn greedy_tokens_and_logprobs_match_hf_transformers() {
    let golden: Value = serde_json::from_str(include_str!("data/hf_golden_smollm2.json")).unwrap();
    let steps = golden["meta"]["max_new_tokens"].as_u64().unwrap() as usize;
    let mut spec = ModelSpec::cpu("smollm2-135m", DType::F32);
    spec.options.quantization = Quantization::None;
    let model = spec.load().unwrap();
    let path = shardline_weights::resolve_model("smollm2-135m").unwrap();
    let tokenizer = Arc::new(Tokenizer::from_path(&path).unwrap());
    let eos = model.config().eos_token_ids.clone();
    let exec = LocalExecutor::new(model, 64, 16).unwrap();
    let mut engine = Engine::new(Box::new(exec), Arc::clone(&tokenizer), &eos, EngineConfig::default()).unwrap();
    let cases = golden["cases"].as_array().unwrap();
    assert!(cases.len() >= 5);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let prompt = prompt_of(case);
        let want_prompt: Vec<u32> =
            case["prompt_token_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let ids = tokenizer.encode_prompt(&prompt).unwrap();
        assert_eq!(ids, want_prompt, "{name}: prompt tokens");
        let params =
            SamplingParams { max_tokens: steps, ignore_eos: true, logprobs: Some(5), ..SamplingParams::greedy() };
        let out = engine.generate(ids, params, |_| {}).unwrap();
        let want_steps = case["steps"].as_array().unwrap();
        let want_ids: Vec<u32> = want_steps.iter().map(|s| s["token_id"].as_u64().unwrap() as u32).collect();
        assert_eq!(out.token_ids, want_ids, "{name}: greedy tokens");
        let got = out.logprobs.unwrap();
        for (i, (g, w)) in got.iter().zip(want_steps).enumerate() {
            let chosen = w["logprob"].as_f64().unwrap();
            assert!(
                (g.logprob as f64 - chosen).abs() < TOLERANCE,
                "{name} step {i}: chosen logprob {} vs {chosen}",
                g.logprob
            );
            let weakest = g.top.last().unwrap().logprob as f64;
            for wt in w["top"].as_array().unwrap() {
                let (id, lp) = (wt["token_id"].as_u64().unwrap() as u32, wt["logprob"].as_f64().unwrap());
                match g.top.iter().find(|t| t.token_id == id) {
                    Some(t) => assert!(
                        (t.logprob as f64 - lp).abs() < TOLERANCE,
                        "{name} step {i} token {id}: {} vs {lp}",
                        t.logprob
                    ),
                    // A near-tie at the edge of the top 5 may swap which token makes the list.
                    None => assert!(
                        (weakest - lp).abs() < TOLERANCE,
                        "{name} step {i}: token {id} ({lp}) missing from our top 5"
                    ),
                }
            }
        }
    }
}
