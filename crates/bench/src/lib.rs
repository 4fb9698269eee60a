//! `shardline bench`: a load generator for Shardline's gRPC API or any OpenAI-compatible
//! server, measuring what clients see.
//!
//! The pieces, one job each: [`workload`] makes seeded requests of exact token lengths
//! (optionally behind shared prefixes, or replays a [`dataset`]'s),
//! [`load`] offers them (closed loop or Poisson arrivals), [`backend`] sends them and records
//! every token's arrival, [`metrics`] turns those timelines into TTFT/TPOT/ITL/E2E and
//! throughputs (pure, with the definitions), [`report`] prints and serializes the result, and
//! [`run`] sequences a sweep; [`cost`] prices a report's throughput.

pub mod backend;
pub mod cost;
pub mod dataset;
pub mod load;
pub mod metrics;
pub mod report;
mod run;
pub mod workload;

pub use backend::BackendKind;
pub use load::{Load, Stop};
pub use metrics::Slo;
pub use run::{run, BenchConfig, BenchReport, DatasetConfig, RunResult, DEFAULT_VOCAB};
