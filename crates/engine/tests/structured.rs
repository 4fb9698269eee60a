//! Structured outputs in the engine, on SmolLM2-135M (resolved like `--model smollm2-135m`):
//! a batch of constrained and free requests, sampled at temperature with seeds, gives the same
//! outputs whether it runs with room to spare or on a KV cache so small that requests are
//! preempted and recomputed (the guide lives on, and no drawn token is drawn again), and with
//! prefix caching on or off; every constrained output is valid.

use std::sync::Arc;

use candle_core::DType;
use serde_json::{json, Value};
use shardline_engine::{Engine, EngineConfig, GenerationOutput};
use shardline_model::ModelSpec;
use shardline_sampling::SamplingParams;
use shardline_structured::Constraint;
use shardline_tokenizer::Tokenizer;
use shardline_worker::LocalExecutor;

fn engine(num_blocks: usize, cfg: EngineConfig) -> Engine {
    let model = ModelSpec::cpu("smollm2-135m", DType::F32).load().unwrap();
    let path = shardline_weights::resolve_model("smollm2-135m").unwrap();
    let tokenizer = Arc::new(Tokenizer::from_path(&path).unwrap());
    let eos = model.config().eos_token_ids.clone();
    let exec = LocalExecutor::new(model, num_blocks, 16).unwrap();
    Engine::new(Box::new(exec), tokenizer, &eos, cfg).unwrap()
}

fn schema() -> Value {
    json!({"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
        "days": {"type": "array", "items": {"enum": ["mon", "tue", "wed"]}, "maxItems": 3}},
        "required": ["city", "days"], "additionalProperties": false})
}

/// Eight requests, three constrained, sampled with seeds.
fn batch(engine: &mut Engine) -> Vec<GenerationOutput> {
    let tok = Arc::clone(engine.tokenizer());
    let mut ids = Vec::new();
    for i in 0..8u64 {
        let constraint = match i % 4 {
            0 => Some(Constraint::JsonSchema(schema())),
            1 => Some(Constraint::Regex("[0-9]{2}:[0-9]{2}".into())),
            2 => Some(Constraint::Choice(vec!["yes".into(), "no".into(), "maybe".into()])),
            _ => None,
        };
        let prompt =
            tok.encode(&format!("Request {i}: describe a trip in the city of Lyon, with days."), true).unwrap();
        let params =
            SamplingParams { temperature: 0.9, seed: Some(100 + i), max_tokens: 40, constraint, ..Default::default() };
        ids.push(engine.add_request(prompt, params).unwrap());
    }
    engine.run_to_completion(&ids, |_| {}).unwrap()
}

fn check(outs: &[GenerationOutput]) {
    for (i, o) in outs.iter().enumerate() {
        if o.finish_reason.as_str() != "stop" {
            continue; // cut off by max_tokens: a prefix, checked by the guide's own tests
        }
        match i % 4 {
            0 => {
                let v: Value = serde_json::from_str(&o.text).unwrap_or_else(|e| panic!("{e}: {}", o.text));
                assert!(v["city"].is_string() && v["days"].is_array(), "{}", o.text);
            }
            1 => assert!(o.text.len() == 5 && o.text.as_bytes()[2] == b':', "{}", o.text),
            2 => assert!(["yes", "no", "maybe"].contains(&o.text.as_str()), "{}", o.text),
            _ => {}
        }
    }
}

#[test]
fn constrained_batches_survive_preemption_and_prefix_caching_unchanged() {
    let want = batch(&mut engine(256, EngineConfig::default()));
    check(&want);
    assert!(want.iter().step_by(4).any(|o| o.finish_reason.as_str() == "stop"), "some schema output completes");
    let tight_cfg = EngineConfig { max_batch_tokens: 64, ..Default::default() };
    let mut tight = engine(8, tight_cfg);
    let got = batch(&mut tight);
    assert!(tight.num_preemptions() > 0, "8 blocks of 16 were meant to force preemption");
    let texts = |outs: &[GenerationOutput]| outs.iter().map(|o| o.token_ids.clone()).collect::<Vec<_>>();
    assert_eq!(texts(&got), texts(&want), "preempted and recomputed");
    let no_cache = EngineConfig { enable_prefix_caching: false, ..Default::default() };
    assert_eq!(texts(&batch(&mut engine(256, no_cache))), texts(&want), "prefix caching off");
    let (masks, seconds) = tight.structured_mask_stats();
    assert!(masks > 0 && seconds > 0.0);
    // Prompts in 8-token chunks: one mask per token drawn under a constraint, none for the
    // chunks that sample nothing.
    let mut chunked = engine(256, EngineConfig { max_batch_tokens: 8, ..Default::default() });
    let got = batch(&mut chunked);
    assert_eq!(texts(&got), texts(&want), "prompts in 8-token chunks");
    let drawn: usize = got.iter().enumerate().filter(|(i, _)| i % 4 != 3).map(|(_, o)| o.token_ids.len()).sum();
    assert_eq!(chunked.structured_mask_stats().0 as usize, drawn, "masks computed");
}
