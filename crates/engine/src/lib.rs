//! Shardline's engine core, in vLLM v1's split: the [`Scheduler`] decides what runs (queues,
//! KV blocks with prefix caching, preemption, the batching policy) and hands out step plans;
//! an [`Executor`] runs them wherever the model lives and samples; the output processor turns
//! sampled tokens into text, stop decisions and results. [`Engine`] is the step loop joining
//! them, keeping the executor's pipeline full.
//!
//! The engine takes token ids: front ends (`shardline run`, the router) tokenize and render chat
//! templates on their own threads.

mod config;
mod engine;
mod error;
mod guided;
mod output;
mod output_processor;
mod scheduler;

pub use config::{EngineConfig, SchedulerPolicy};
pub use engine::{Engine, EngineLimits, RecoveryStats};
pub use error::{EngineError, Result};
pub use output::{GenerationMetrics, GenerationOutput, StepEvent, TokenLogprobs};
pub use scheduler::{PrefixCacheStats, Scheduler, SchedulerConfig};
pub use shardline_exec::{Executor, RequestId};
