//! `shardline launch`: starts this node's ranks and supervises them until the group ends.

use anyhow::bail;
use clap::Args;
use shardline_launcher::{RankCommand, Supervisor, SupervisorError};

use crate::args::EngineArgs;
use crate::group::{secret_env, worker_command, LaunchArgs};

#[derive(Args, Debug)]
pub struct LaunchCmdArgs {
    /// Tensor-parallel degree.
    #[arg(long, env = "SHARDLINE_TP", default_value_t = 1)]
    tp: usize,
    /// Pipeline-parallel degree.
    #[arg(long, env = "SHARDLINE_PP", default_value_t = 1)]
    pp: usize,
    #[command(flatten)]
    launch: LaunchArgs,
    /// Model rank 0 serves when no job is given after `--`.
    #[arg(long, env = "SHARDLINE_MODEL", default_value = "smollm2-135m")]
    model: String,
    /// gRPC address rank 0 serves on when no job is given after `--`.
    #[arg(long, env = "SHARDLINE_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    grpc_addr: String,
    /// HTTP address (or `off`) rank 0 serves on when no job is given after `--`.
    #[arg(long, env = "SHARDLINE_HTTP_ADDR", default_value = "127.0.0.1:8000")]
    http_addr: String,
    /// Engine settings for rank 0's job (passed in its environment; its own flags win).
    #[command(flatten)]
    engine: EngineArgs,
    /// Rank 0's job, after `--` (e.g. `-- serve --scheduler static` or `-- run --prompt hi`);
    /// default: `serve --model M --grpc-addr G --http-addr H`.
    #[arg(last = true)]
    rank0: Vec<String>,
}

pub fn launch(args: LaunchCmdArgs) -> anyhow::Result<()> {
    let world = args.tp * args.pp;
    if world == 0 {
        bail!("--tp and --pp must be at least 1");
    }
    let plan = args.launch.plan(world)?;
    let secret = args.launch.group_secret(&plan)?;
    let mut cmds = Vec::new();
    for rank in plan.local_ranks() {
        if rank == 0 {
            let job = if args.rank0.is_empty() {
                ["serve", "--model", &args.model, "--grpc-addr", &args.grpc_addr, "--http-addr", &args.http_addr]
                    .map(String::from)
                    .to_vec()
            } else {
                args.rank0.clone()
            };
            cmds.push(RankCommand {
                rank,
                program: std::env::current_exe()?,
                args: job,
                env: [
                    ("SHARDLINE_TP".to_string(), args.tp.to_string()),
                    ("SHARDLINE_PP".to_string(), args.pp.to_string()),
                ]
                .into_iter()
                .chain(args.engine.to_env())
                .chain(args.launch.devices_env())
                .chain(args.launch.rank0_job_env())
                .chain([secret_env(&secret)])
                .collect(),
                raw_stdout: true,
            });
        } else {
            cmds.push(worker_command(rank, &args.launch, &secret)?);
        }
    }
    eprintln!(
        "launcher: node {}/{} starting ranks {:?} of {world} (rendezvous {}:{}, {} threads per rank)",
        plan.node_rank,
        plan.nnodes,
        plan.local_ranks(),
        plan.master_addr,
        plan.master_port,
        plan.threads()
    );
    let mut supervisor = Supervisor::spawn(&plan, cmds)?;
    if let Some(policy) = args.launch.restart_policy() {
        // This node's worker ranks are restarted here; rank 0 re-forms the group with them.
        supervisor = supervisor.restart_failed(policy, std::sync::mpsc::channel().0);
    }
    match supervisor.wait() {
        Ok(()) => Ok(()),
        Err(e @ SupervisorError::Interrupted(_)) => {
            eprintln!("launcher: {e}");
            std::process::exit(130);
        }
        Err(e) => Err(e.into()),
    }
}
