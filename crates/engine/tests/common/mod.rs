//! A tiny random model and tokenizer written to disk in-test, and engines over it.

#![allow(dead_code)] // each test binary uses a different part

use std::sync::{Arc, OnceLock};

use candle_core::DType;
use shardline_engine::{Engine, EngineConfig};
use shardline_model::ModelSpec;
use shardline_sampling::SamplingParams;
use shardline_tokenizer::Tokenizer;
use shardline_worker::LocalExecutor;

/// Tokens per KV block in every test engine.
pub const BLOCK_SIZE: usize = 4;

pub fn model_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let cfg = shardline_model::testing::tiny_config("LlamaForCausalLM", 300, false);
    shardline_model::testing::write_tiny_model(dir.path(), &cfg, 3).unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), shardline_tokenizer::testing::tiny_tokenizer_json(300)).unwrap();
    dir
}

/// The tokenizer of every [`model_dir`], loaded once.
pub fn tokenizer() -> Arc<Tokenizer> {
    static TOKENIZER: OnceLock<Arc<Tokenizer>> = OnceLock::new();
    Arc::clone(TOKENIZER.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), shardline_tokenizer::testing::tiny_tokenizer_json(300))
            .unwrap();
        Arc::new(Tokenizer::from_dir(dir.path()).unwrap())
    }))
}

/// An executor running the model in `dir` with a cache of `num_blocks` blocks.
pub fn executor(dir: &tempfile::TempDir, num_blocks: usize) -> (LocalExecutor, Vec<u32>) {
    let model = ModelSpec::cpu(dir.path().to_str().unwrap(), DType::F32).load().unwrap();
    let eos = model.config().eos_token_ids.clone();
    (LocalExecutor::new(model, num_blocks, BLOCK_SIZE).unwrap(), eos)
}

pub fn engine(dir: &tempfile::TempDir, num_blocks: usize, cfg: EngineConfig) -> Engine {
    let (exec, eos) = executor(dir, num_blocks);
    Engine::new(Box::new(exec), tokenizer(), &eos, cfg).unwrap()
}

/// The prompt token ids of `s`, as a front end would send them.
pub fn text(s: &str) -> Vec<u32> {
    tokenizer().encode(s, true).unwrap()
}

/// Greedy, ignoring EOS, so every request runs to exactly `max_tokens`.
pub fn params(max_tokens: usize) -> SamplingParams {
    SamplingParams { max_tokens, ignore_eos: true, ..SamplingParams::greedy() }
}
