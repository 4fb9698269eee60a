//! What runs a step's forward pass. The engine core sees only this trait: in-process today, a
//! group of tensor/pipeline-parallel workers later.

use shardline_model::{BatchInput, KvCache, Llama, SeqInput, SingleRank};

use crate::error::{EngineError, Result};

/// One sequence's share of a step.
#[derive(Clone, Debug)]
pub struct ScheduledSeq {
    /// The id this block table goes by; not the request id. A table never changes under one id:
    /// when a sequence's table grows (blocks are allocated on demand) or is dropped (preemption)
    /// the engine retires the id in [`StepPlan::finished`] and uses a fresh one, so a remote
    /// executor may learn each id's table once.
    pub seq_id: u64,
    pub input: SeqInput,
}

/// Everything an executor needs for one step. Ids let remote executors learn a sequence's
/// block table once and forget it when `finished` says so.
#[derive(Clone, Debug, Default)]
pub struct StepPlan {
    pub seqs: Vec<ScheduledSeq>,
    /// Ids (see [`ScheduledSeq::seq_id`]) the executor may forget: their sequences ended, were
    /// preempted, or now go by a new id. None of them is scheduled in the same plan.
    pub finished: Vec<u64>,
}

pub trait Executor: Send {
    /// Tokens per KV block.
    fn block_size(&self) -> usize;
    /// KV blocks available per sequence-independent pool.
    fn num_blocks(&self) -> usize;
    fn vocab_size(&self) -> usize;
    /// The longest sequence (prompt + generated) the model supports.
    fn max_model_len(&self) -> usize;
    /// Runs one ragged step; returns f32 logits for every sequence with `wants_logits`, in order.
    fn execute(&mut self, plan: StepPlan) -> Result<Vec<Vec<f32>>>;

    /// How many steps may be in flight at once (e.g. one per pipeline stage, so every stage
    /// works on its own microbatch). Above 1 the engine uses [`Executor::submit`] and
    /// [`Executor::wait`] instead of [`Executor::execute`], and never has one sequence (or one KV
    /// block) in two steps in flight.
    fn max_in_flight(&self) -> usize {
        1
    }

    /// Starts a step without waiting for it; needed only where `max_in_flight` exceeds 1.
    fn submit(&mut self, _plan: StepPlan) -> Result<()> {
        Err(EngineError::Load("this executor runs one step at a time: use execute".into()))
    }

    /// Waits for the oldest submitted step and returns what [`Executor::execute`] would have.
    fn wait(&mut self) -> Result<Vec<Vec<f32>>> {
        Err(EngineError::Load("this executor runs one step at a time: use execute".into()))
    }
}

/// The whole model in this process.
pub struct LocalExecutor {
    model: Llama,
    cache: KvCache,
}

impl LocalExecutor {
    /// Allocates a KV cache of `num_blocks` × `block_size` tokens for `model`.
    pub fn new(model: Llama, num_blocks: usize, block_size: usize) -> Result<Self> {
        let cache = model.new_cache(num_blocks, block_size)?;
        Ok(LocalExecutor { model, cache })
    }

    pub fn model(&self) -> &Llama {
        &self.model
    }
}

impl Executor for LocalExecutor {
    fn block_size(&self) -> usize {
        self.cache.block_size()
    }

    fn num_blocks(&self) -> usize {
        self.cache.num_blocks()
    }

    fn vocab_size(&self) -> usize {
        self.model.config().vocab_size
    }

    fn max_model_len(&self) -> usize {
        self.model.config().max_position_embeddings
    }

    fn execute(&mut self, plan: StepPlan) -> Result<Vec<Vec<f32>>> {
        let seqs = plan.seqs.into_iter().map(|s| s.input).collect();
        let batch = BatchInput::new(seqs, self.cache.block_size(), self.cache.num_blocks())?;
        if batch.logit_rows.is_empty() {
            let x = self.model.embed(&batch.tokens, &SingleRank)?;
            self.model.forward_layers(x, &batch, &mut self.cache, &SingleRank)?;
            return Ok(Vec::new());
        }
        let logits = self.model.forward(&batch, &mut self.cache, &SingleRank)?;
        Ok(logits.to_vec2::<f32>()?)
    }
}
