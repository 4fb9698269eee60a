//! The whole model in this process, as an [`Executor`]: one rank, no collectives, each step
//! run when submitted. A step with structured-output masks runs its layers and logits first
//! and only then waits for the masks, which the engine computes meanwhile.

use std::collections::VecDeque;

use shardline_exec::{Executor, ExecutorError, PendingMasks, StepOutput, StepPlan};
use shardline_model::{Llama, SingleRank};

use crate::error::Result;
use crate::runner::ModelRunner;

pub struct LocalExecutor {
    runner: ModelRunner,
    /// Outputs of submitted steps, oldest first (at most one: `max_in_flight` is 1).
    done: VecDeque<StepOutput>,
}

impl LocalExecutor {
    /// `model` with a KV cache of `num_blocks` × `block_size` tokens.
    pub fn new(model: Llama, num_blocks: usize, block_size: usize) -> Result<Self> {
        Ok(LocalExecutor { runner: ModelRunner::new(model, num_blocks, block_size)?, done: VecDeque::new() })
    }

    pub fn model(&self) -> &Llama {
        self.runner.model()
    }

    fn run(&mut self, plan: &StepPlan, masks: Option<PendingMasks>) -> Result<StepOutput> {
        if plan.has_masks() != masks.is_some() {
            let why =
                if masks.is_some() { "masks for a plan without masked requests" } else { "no masks for a masked plan" };
            return Err(ExecutorError::Plan(why.into()).into());
        }
        let Some(batch) = self.runner.prepare(plan)? else { return Ok(StepOutput::default()) };
        let x = self.runner.embed(&batch, &SingleRank)?;
        let x = self.runner.forward_layers(x, &batch, &SingleRank)?;
        let prompt_logprobs = self.runner.score_prompts(&x, &batch, &SingleRank, true)?;
        if batch.sampled.is_empty() {
            return Ok(StepOutput { prompt_logprobs, ..Default::default() });
        }
        let logits = self.runner.logits(&x, &batch, &SingleRank)?;
        if let Some(masks) = masks {
            self.runner.set_masks(&batch, masks.wait().map_err(ExecutorError::from)?)?;
        }
        Ok(StepOutput { prompt_logprobs, ..self.runner.sample(&logits, &batch)? })
    }
}

impl Executor for LocalExecutor {
    fn block_size(&self) -> usize {
        self.runner.cache().block_size()
    }

    fn num_blocks(&self) -> usize {
        self.runner.cache().num_blocks()
    }

    fn vocab_size(&self) -> usize {
        self.runner.model().config().vocab_size
    }

    fn max_model_len(&self) -> usize {
        self.runner.model().config().max_position_embeddings
    }

    fn submit(&mut self, plan: StepPlan, masks: Option<PendingMasks>) -> std::result::Result<(), ExecutorError> {
        let out = self.run(&plan, masks)?;
        self.done.push_back(out);
        Ok(())
    }

    fn wait(&mut self) -> std::result::Result<StepOutput, ExecutorError> {
        self.done.pop_front().ok_or_else(|| ExecutorError::Plan("wait without a submitted step".into()))
    }
}
