//! A tiny random model and tokenizer written to disk in-test, and engines over it that run
//! through an executor behaving like a remote one (see `LearnOnce`).

use std::collections::HashMap;

use candle_core::DType;
use shardline_engine::{load_local, Engine, EngineConfig, Executor, LocalExecutor, ModelSpec, Prompt, StepPlan};
use shardline_sampling::SamplingParams;

/// Tokens per KV block in every test engine.
pub const BLOCK_SIZE: usize = 4;

pub fn model_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let cfg = shardline_model::testing::tiny_config("LlamaForCausalLM", 300, false);
    shardline_model::testing::write_tiny_model(dir.path(), &cfg, 3).unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), shardline_tokenizer::testing::tiny_tokenizer_json(300)).unwrap();
    dir
}

pub fn engine(dir: &tempfile::TempDir, num_blocks: usize, cfg: EngineConfig) -> Engine {
    let spec = ModelSpec::cpu(dir.path().to_str().unwrap(), DType::F32);
    let (model, tok) = load_local(&spec).unwrap();
    let eos = model.config().eos_token_ids.clone();
    let inner = LocalExecutor::new(model, num_blocks, BLOCK_SIZE).unwrap();
    Engine::new(Box::new(LearnOnce { inner, tables: HashMap::new() }), tok, &eos, cfg).unwrap()
}

/// Holds the engine to the contract remote executors rely on: it learns each id's block table
/// the first time the id is scheduled, uses only what it learned, and forgets ids in `finished`.
/// A stale table makes the forward pass fail or change the tokens.
struct LearnOnce {
    inner: LocalExecutor,
    tables: HashMap<u64, Vec<u32>>,
}

impl Executor for LearnOnce {
    fn block_size(&self) -> usize {
        self.inner.block_size()
    }
    fn num_blocks(&self) -> usize {
        self.inner.num_blocks()
    }
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
    fn max_model_len(&self) -> usize {
        self.inner.max_model_len()
    }
    fn execute(&mut self, mut plan: StepPlan) -> shardline_engine::Result<Vec<Vec<f32>>> {
        for s in &mut plan.seqs {
            assert!(!plan.finished.contains(&s.seq_id), "id {} scheduled and retired in one plan", s.seq_id);
            s.input.block_table = self.tables.entry(s.seq_id).or_insert_with(|| s.input.block_table.clone()).clone();
        }
        for id in &plan.finished {
            self.tables.remove(id);
        }
        self.inner.execute(plan)
    }
}

pub fn text(s: &str) -> Prompt {
    Prompt::Text(s.to_string())
}

/// Greedy, ignoring EOS, so every request runs to exactly `max_tokens`.
pub fn params(max_tokens: usize) -> SamplingParams {
    SamplingParams { max_tokens, ignore_eos: true, ..SamplingParams::greedy() }
}
