//! A Shardline group: TP × PP ranks each holding one shard. Rank 0 runs the engine core and a
//! [`GroupExecutor`]; every other rank runs [`run_worker`]. A single process uses
//! [`LocalExecutor`]. Rank layout: rank = stage · tp + tp_rank (see [`GroupLayout`]); the wire
//! messages are in `proto/shardline/worker/v1`.
//!
//! Workers know nothing of requests' text, tokenizers or scheduling: they apply step plans to
//! their request tables, run their layers and sample where the logits are.

mod collective;
mod device;
mod driver;
mod env;
mod error;
mod group;
mod heartbeat;
mod layout;
mod links;
mod local;
#[cfg(feature = "cuda")]
mod nccl;
mod process_id;
mod requests;
mod runner;
mod shard;
mod wire;

pub use device::{cuda_ordinal, device_for};
pub use driver::{GroupExecutor, RankReplacer};
pub use env::{group_secret, RankEnv, DEFAULT_MASTER_PORT};
pub use error::{Result, WorkerError};
pub use group::{run_worker, start_group, GroupReady};
pub use layout::GroupLayout;
pub use local::LocalExecutor;
pub use shard::peak_rss_bytes;
pub use shardline_comm::GroupSecret;
pub use wire::GroupConfig;
