//! What runs a step's forward pass: this process's model, or a tensor/pipeline-parallel group.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::masks::{MasksError, PendingMasks};
use crate::plan::{StepOutput, StepPlan};

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The plan contradicts what the executor knows (an unknown request, a table too short):
    /// a bug in the engine, reported rather than computed wrongly.
    #[error("invalid step plan: {0}")]
    Plan(String),
    /// The forward pass or the group failed; the engine cannot go on.
    #[error(transparent)]
    Failed(Box<dyn std::error::Error + Send + Sync>),
    /// The executor lost every request and every K/V it held, and every step in flight (a rank
    /// was replaced and the group re-formed), but can run steps again: the engine recomputes
    /// each request from its tokens.
    #[error("the executor was reset: {}", .0.what)]
    Reset(Reset),
}

/// What a reset of the executor was.
#[derive(Clone, Debug, PartialEq)]
pub struct Reset {
    /// What happened, for the logs.
    pub what: String,
    /// Ranks replaced by new processes.
    pub ranks_replaced: usize,
    /// From the failure to the group running again.
    pub seconds: f64,
}

impl ExecutorError {
    pub fn failed(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        ExecutorError::Failed(Box::new(e))
    }
}

impl From<MasksError> for ExecutorError {
    fn from(e: MasksError) -> Self {
        ExecutorError::failed(e)
    }
}

/// Runs step plans. Up to [`Executor::max_in_flight`] steps may be submitted before the oldest
/// is waited for (one per pipeline stage, like vLLM's virtual engines); the engine never puts a
/// request, or a KV block it writes, in two steps in flight.
pub trait Executor: Send {
    /// Tokens per KV block.
    fn block_size(&self) -> usize;
    /// KV blocks in the pool every rank allocated.
    fn num_blocks(&self) -> usize;
    fn vocab_size(&self) -> usize;
    /// The longest sequence (prompt + generated) the model supports.
    fn max_model_len(&self) -> usize;
    /// How many steps may be in flight at once.
    fn max_in_flight(&self) -> usize {
        1
    }
    /// Starts a step (an executor running one step at a time may run it here). When the plan
    /// has masked requests ([`StepPlan::has_masks`]), `masks` brings their masks later: the
    /// engine computes them while this runs, and the executor samples only once they came
    /// (waiting at most [`crate::MASKS_TIMEOUT`]); `None` when no request is masked. An
    /// executor that samples elsewhere passes them on to the rank that samples.
    fn submit(&mut self, plan: StepPlan, masks: Option<PendingMasks>) -> Result<(), ExecutorError>;
    /// Waits for the oldest submitted step.
    fn wait(&mut self) -> Result<StepOutput, ExecutorError>;
    /// A flag raised while the executor re-forms its group after losing a rank (a `wait` is
    /// then busy for a while), for front ends to report; `None` for executors that never do.
    fn recovering(&self) -> Option<Arc<AtomicBool>> {
        None
    }
}

/// Implements the [`Executor`] methods that describe the model and cache (block size, blocks,
/// vocabulary, context length) by asking the executor in the field `$inner`: for executors that
/// wrap another to add behaviour around its steps (tests' fault injection, for instance).
#[macro_export]
macro_rules! executor_shape_from {
    ($inner:ident) => {
        fn block_size(&self) -> usize {
            self.$inner.block_size()
        }
        fn num_blocks(&self) -> usize {
            self.$inner.num_blocks()
        }
        fn vocab_size(&self) -> usize {
            self.$inner.vocab_size()
        }
        fn max_model_len(&self) -> usize {
            self.$inner.max_model_len()
        }
    };
}
