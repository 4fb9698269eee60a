//! What the engine core and the executors agree on, and nothing more: the engine decides what
//! runs ([`StepPlan`]: new requests once with their whole state, then per-step diffs, as vLLM
//! v1's `SchedulerOutput`), an [`Executor`] runs the forward pass wherever the model lives and
//! samples where the logits are ([`StepOutput`]: token ids and, when asked, logprobs).
//! Structured-output masks follow a step's plan ([`PendingMasks`]) so that the engine computes
//! them while the forward runs.
//!
//! This crate is small on purpose: the engine imports it without any model code, and the
//! workers import it without any scheduling, tokenizer or request text.

mod executor;
mod masks;
mod plan;

pub use executor::{Executor, ExecutorError, Reset};
pub use masks::{MasksError, PendingMasks, StepMasks, MASKS_TIMEOUT};
pub use plan::{NewRequest, PromptLogprobs, RequestId, Sampled, ScheduledRequest, StepOutput, StepPlan};
