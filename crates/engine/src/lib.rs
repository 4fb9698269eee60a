//! Shardline's engine core: it owns requests from arrival to their last token. It admits them
//! into a continuous batch (or a static or sequential one, for comparison), allocates their paged
//! KV blocks on demand, preempts by recompute when the cache runs out, feeds an [`Executor`] one
//! ragged step at a time (prefill chunks and decodes mixed), samples, detokenizes incrementally
//! and applies stop rules.
//! Front ends (`shardline run`, later the gRPC router) only submit prompts and read events.

mod blocks;
mod config;
mod engine;
mod error;
mod executor;
mod load;
mod output;
mod sequence;

pub use blocks::BlockAllocator;
pub use config::{EngineConfig, SchedulerPolicy};
pub use engine::{Engine, RequestId, StepEvent};
pub use error::{EngineError, Result};
pub use executor::{Executor, LocalExecutor, ScheduledSeq, StepPlan};
pub use load::{load_local, read_config, LoadFormat, ModelSpec};
pub use output::{GenerationMetrics, GenerationOutput, TokenLogprobs};
pub use sequence::Prompt;
