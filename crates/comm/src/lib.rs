//! How the ranks of a Shardline group talk. A rendezvous at `MASTER_ADDR:MASTER_PORT` (rank 0
//! listens) exchanges each rank's data address and rank 0's group description; then every pair
//! of ranks holds one TCP stream, multiplexed by message tag. Collectives (all-reduce, all-gather,
//! broadcast, barrier) run over any subgroup, e.g. one pipeline stage's tensor-parallel ranks.
//!
//! Only members join: every connection proves the group's secret ([`GroupSecret`]) first.
//!
//! Every wait is bounded or fails on disconnect: a rank that never joins, dies or stalls shows up
//! as an error naming it, never as a hang.

mod auth;
mod collectives;
mod error;
mod mesh;
#[cfg(feature = "cuda")]
pub mod nccl;
mod poll;
mod rendezvous;
mod wire;

pub use auth::GroupSecret;
pub use collectives::Group;
pub use error::{CommError, Result};
pub use mesh::{Comm, Tag};
pub use poll::poll_until;
pub use rendezvous::{rendezvous, RendezvousConfig};
