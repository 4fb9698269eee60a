//! A Shardline group: TP × PP ranks each holding one shard. Rank 0 runs the engine core and a
//! [`GroupExecutor`]; every other rank runs [`run_worker`]. Rank layout: rank = stage · tp +
//! tp_rank (see [`GroupLayout`]); the wire messages are in `proto/shardline/worker/v1`.

mod collective;
mod driver;
mod env;
mod error;
mod group;
mod layout;
#[cfg(feature = "cuda")]
mod nccl;
mod shard;

pub use collective::TpCollective;
pub use driver::GroupExecutor;
pub use env::{RankEnv, DEFAULT_MASTER_PORT};
pub use error::{Result, WorkerError};
pub use group::{run_worker, start_group, GroupReady};
pub use layout::GroupLayout;
pub use shard::{device_for, peak_rss_bytes};
pub use shardline_proto::worker::v1::GroupSpec;
