//! `shardline worker`: one rank of a group, started by `shardline launch`, torchrun, mpirun or
//! srun. It learns the model and layout from rank 0 at the rendezvous.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use shardline_worker::{run_worker, RankEnv};

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// Seconds to wait for another rank (rendezvous, collectives) before failing.
    #[arg(long, env = "SHARDLINE_COMM_TIMEOUT", default_value_t = 60)]
    comm_timeout: u64,
    /// CPU threads for this rank's kernels (0: all cores).
    #[arg(long, env = "SHARDLINE_THREADS", default_value_t = 0)]
    threads: usize,
}

pub fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let env = RankEnv::from_env()?
        .context("shardline worker needs RANK and WORLD_SIZE (set by shardline launch, torchrun, mpirun or srun)")?;
    crate::args::init_threads(args.threads)?;
    run_rank(&env, args.comm_timeout)
}

pub fn run_rank(env: &RankEnv, timeout_s: u64) -> anyhow::Result<()> {
    run_worker(env, Duration::from_secs(timeout_s)).with_context(|| format!("rank {}", env.rank))
}
