//! `shardline experiment`'s pure half: the TOML definition of server layouts × load levels
//! ([`config`]), and the report folder made from their results ([`report`]: JSON, Markdown,
//! and the [`charts`] drawn by [`plot`]). Starting servers and running the sweeps is the CLI's
//! job; everything here is tested without a server.

pub mod charts;
pub mod config;
pub mod machine;
pub mod plot;
pub mod report;

pub use config::{ConfigError, ExperimentConfig, Layout};
pub use report::{ExperimentReport, LayoutResult, ReportError};
