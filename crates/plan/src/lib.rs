//! `shardline plan`: which TP × PP layout for a model on N devices, predicted before anything
//! is launched.
//!
//! - [`model`]: the model (a built-in family, a config, a checkpoint) and how ranks hold it;
//! - [`shape`]: what each rank of a layout holds, from the real sharding code;
//! - [`memory`]: weights, activations and the KV tokens left per rank;
//! - [`perf`]: a roofline per op, alpha–beta collectives, pipeline bubbles and continuous
//!   batching in steady state;
//! - [`search`]: every layout, predicted, priced and ranked;
//! - [`report`]: the table, JSON and chart;
//! - [`hardware`]: device presets and profiles (`--calibrate` measures the `cpu` one).

pub mod error;
pub mod hardware;
pub mod memory;
pub mod model;
pub mod perf;
pub mod report;
pub mod search;
pub mod shape;

pub use error::{PlanError, Result};
pub use hardware::Hardware;
pub use model::{KvDtype, PlanModel, WeightsDtype};
pub use search::{plan, Load, Plan, Question, Slo};
