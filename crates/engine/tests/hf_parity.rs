//! Parity with HF transformers on SmolLM2-135M-Instruct (the Q4_1 GGUF dequantized to f32, as
//! HF loads it: `--quantization none`): greedy token ids must be identical and top-5 logprobs
//! within 1e-3 of the golden file made by `scripts/hf_golden.py`; prompt logprobs of the same
//! tokens, scored as a prompt, likewise. The model is resolved like `--model smollm2-135m`
//! (fetched into $SHARDLINE_CACHE on first use).

use std::sync::Arc;

use candle_core::DType;
use serde_json::Value;
use shardline_engine::{Engine, EngineConfig};
use shardline_model::{ModelSpec, Quantization};
use shardline_sampling::{SamplingParams, TokenLogprob};
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

/// Our logprobs of HF's greedy steps (the chosen token's, and the top list) against HF's.
fn check_steps<'a>(name: &str, got: impl Iterator<Item = (f32, &'a [TokenLogprob])>, want_steps: &[Value]) {
    let mut checked = 0;
    for (i, ((logprob, top), w)) in got.zip(want_steps).enumerate() {
        let chosen = w["logprob"].as_f64().unwrap();
        assert!((logprob as f64 - chosen).abs() < TOLERANCE, "{name} step {i}: chosen logprob {logprob} vs {chosen}");
        let weakest = top.last().unwrap().logprob as f64;
        for wt in w["top"].as_array().unwrap() {
            let (id, lp) = (wt["token_id"].as_u64().unwrap() as u32, wt["logprob"].as_f64().unwrap());
            match top.iter().find(|t| t.token_id == id) {
                Some(t) => assert!(
                    (t.logprob as f64 - lp).abs() < TOLERANCE,
                    "{name} step {i} token {id}: {} vs {lp}",
                    t.logprob
                ),
                // A near-tie at the edge of the top 5 may swap which token makes the list.
                None => {
                    assert!(
                        (weakest - lp).abs() < TOLERANCE,
                        "{name} step {i}: token {id} ({lp}) missing from our top 5"
                    )
                }
            }
        }
        checked += 1;
    }
    assert_eq!(checked, want_steps.len(), "{name}: every step checked");
}

/// The golden file, and an engine over SmolLM2 as HF loads it with a step budget of
/// `max_batch_tokens`.
fn golden_and_engine(max_batch_tokens: usize) -> (Value, Arc<Tokenizer>, Engine) {
    let golden: Value = serde_json::from_str(include_str!("data/hf_golden_smollm2.json")).unwrap();
    let mut spec = ModelSpec::cpu("smollm2-135m", DType::F32);
    spec.options.quantization = Quantization::None;
    let model = spec.load().unwrap();
    let path = shardline_weights::resolve_model("smollm2-135m").unwrap();
    let tokenizer = Arc::new(Tokenizer::from_path(&path).unwrap());
    let eos = model.config().eos_token_ids.clone();
    let exec = LocalExecutor::new(model, 64, 16).unwrap();
    let cfg = EngineConfig { max_batch_tokens, ..Default::default() };
    let engine = Engine::new(Box::new(exec), Arc::clone(&tokenizer), &eos, cfg).unwrap();
    (golden, tokenizer, engine)
}

/// Prompt logprobs against HF: each case's prompt followed by HF's greedy tokens, scored as one
/// prompt in 24-token chunks, gives at each generated position what HF computed when it
/// generated that token.
#[test]
fn prompt_logprobs_match_hf_transformers() {
    let (golden, _, mut engine) = golden_and_engine(24);
    for case in golden["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let ids = |v: &Value| v.as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect::<Vec<_>>();
        let prompt = ids(&case["prompt_token_ids"]);
        let steps = case["steps"].as_array().unwrap();
        let generated: Vec<u32> = steps.iter().map(|s| s["token_id"].as_u64().unwrap() as u32).collect();
        let params = SamplingParams { max_tokens: 1, prompt_logprobs: Some(5), ..SamplingParams::greedy() };
        let out = engine.generate([prompt.clone(), generated].concat(), params, |_| {}).unwrap();
        let scores = out.prompt_logprobs.unwrap();
        assert!(scores[0].is_none() && scores[1..].iter().all(Option::is_some), "{name}");
        let got = scores[prompt.len()..].iter().flatten().map(|s| (s.logprob, s.top.as_slice()));
        check_steps(name, got, steps);
    }
}

#[test]
fn greedy_tokens_and_logprobs_match_hf_transformers() {
    let (golden, tokenizer, mut engine) = golden_and_engine(EngineConfig::default().max_batch_tokens);
    let steps = golden["meta"]["max_new_tokens"].as_u64().unwrap() as usize;
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
        check_steps(name, got.iter().map(|g| (g.logprob, g.top.as_slice())), want_steps);
    }
}
