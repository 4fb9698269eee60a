//! Flags and start-up shared by every command that runs a TP × PP group: `run --tp --pp`
//! (rank 0 in this process, other local ranks spawned and supervised), `launch` (every local
//! rank spawned) and `worker` (one rank, started by `launch`, torchrun, mpirun or srun).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use std::sync::mpsc::{self, Receiver};

use shardline_launcher::{LaunchPlan, RankCommand, RestartBudget, RestartPolicy, Supervisor, Watch};
use shardline_worker::{group_secret, GroupSecret, RankEnv, RankReplacer, DEFAULT_MASTER_PORT};

/// Where the group's ranks run and how they find each other.
#[derive(Args, Clone, Debug)]
pub struct LaunchArgs {
    /// Number of nodes (machines) in the group; each runs one launcher.
    #[arg(long, env = "SHARDLINE_NNODES", default_value_t = 1)]
    pub nnodes: usize,
    /// This node's index (node 0 hosts rank 0).
    #[arg(long, env = "SHARDLINE_NODE_RANK", default_value_t = 0)]
    pub node_rank: usize,
    /// Address of node 0, where rank 0 listens for the rendezvous.
    #[arg(long, env = "MASTER_ADDR", default_value = "127.0.0.1")]
    pub master_addr: String,
    /// Rendezvous port on node 0 (single node: a free port is picked when unset).
    #[arg(long, env = "MASTER_PORT")]
    pub master_port: Option<u16>,
    /// CPU threads per rank (default: this machine's cores split evenly between its ranks).
    #[arg(long, env = "SHARDLINE_THREADS_PER_RANK")]
    pub threads_per_rank: Option<usize>,
    /// Seconds any rank waits for another (rendezvous, collectives) before failing.
    #[arg(long, env = "SHARDLINE_COMM_TIMEOUT", default_value_t = 60)]
    pub comm_timeout: u64,
    /// Seconds rank 0 and a worker may hear nothing from each other (they exchange heartbeats
    /// several times within it) before the silent one counts as dead: stopped, hung or cut off.
    #[arg(long, env = "SHARDLINE_HEARTBEAT_TIMEOUT", default_value_t = 5.0, value_parser = positive_seconds)]
    pub heartbeat_timeout: f64,
    /// GPU ordinals of this node's ranks, by local rank (e.g. `2,3`); default: local rank i
    /// takes visible GPU i, or GPU 0 when each task sees only its own (Slurm/MPI pinning).
    #[arg(long, env = "SHARDLINE_DEVICES", value_delimiter = ',')]
    pub devices: Vec<usize>,
    /// Times a failed worker rank is started again, within --restart-window, before the group
    /// fails instead (0: fail at the first rank lost). Each launcher restarts its own ranks and
    /// rank 0 forms the group again, recomputing every request in flight; give every node the
    /// same value.
    #[arg(long, env = "SHARDLINE_MAX_RESTARTS", default_value_t = 3)]
    pub max_restarts: usize,
    /// Seconds over which --max-restarts counts restarts.
    #[arg(long, env = "SHARDLINE_RESTART_WINDOW", default_value_t = 600)]
    pub restart_window: u64,
    /// File holding the group's secret, which every rank proves when connecting (or set
    /// SHARDLINE_GROUP_SECRET). Required for several nodes, all given the same one; a single
    /// node makes a fresh one when none is given.
    #[arg(long, env = "SHARDLINE_GROUP_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,
}

impl LaunchArgs {
    /// `--devices` for the ranks this process starts (they read SHARDLINE_DEVICES).
    pub fn devices_env(&self) -> Vec<(String, String)> {
        if self.devices.is_empty() {
            return Vec::new();
        }
        let list: Vec<String> = self.devices.iter().map(usize::to_string).collect();
        vec![("SHARDLINE_DEVICES".to_string(), list.join(","))]
    }

    /// The secret of the group this process starts ranks of: the user's, else (one node only)
    /// a fresh one.
    pub fn group_secret(&self, plan: &LaunchPlan) -> anyhow::Result<GroupSecret> {
        let file = self.secret_file.as_ref().map(|p| p.display().to_string());
        let lookup = |k: &str| if k == "SHARDLINE_GROUP_SECRET_FILE" { file.clone() } else { std::env::var(k).ok() };
        match group_secret(&lookup)? {
            Some(secret) => Ok(secret),
            None if plan.nnodes == 1 => Ok(GroupSecret::generate()),
            None => bail!(
                "a group on several nodes needs one secret shared by every node: set SHARDLINE_GROUP_SECRET \
                 (at least 16 characters, e.g. `openssl rand -hex 32`) or --secret-file on each launcher"
            ),
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.comm_timeout)
    }

    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.heartbeat_timeout)
    }

    /// How failed worker ranks are started again; `None` with --max-restarts 0.
    pub fn restart_policy(&self) -> Option<RestartPolicy> {
        (self.max_restarts > 0).then(|| RestartPolicy {
            max_restarts: self.max_restarts,
            window: Duration::from_secs(self.restart_window),
        })
    }

    /// The timeouts and restart settings, for a rank-0 job this process starts (rank 0 decides
    /// them for the whole group).
    pub fn rank0_job_env(&self) -> Vec<(String, String)> {
        vec![
            ("SHARDLINE_COMM_TIMEOUT".into(), self.comm_timeout.to_string()),
            ("SHARDLINE_HEARTBEAT_TIMEOUT".into(), self.heartbeat_timeout.to_string()),
            ("SHARDLINE_MAX_RESTARTS".into(), self.max_restarts.to_string()),
            ("SHARDLINE_RESTART_WINDOW".into(), self.restart_window.to_string()),
        ]
    }

    pub fn plan(&self, world_size: usize) -> anyhow::Result<LaunchPlan> {
        let master_port = match self.master_port {
            Some(p) => p,
            None if self.nnodes == 1 => free_port()?,
            None => DEFAULT_MASTER_PORT,
        };
        let plan = LaunchPlan {
            world_size,
            nnodes: self.nnodes,
            node_rank: self.node_rank,
            master_addr: self.master_addr.clone(),
            master_port,
            threads_per_rank: self.threads_per_rank,
        };
        plan.validate()?;
        Ok(plan)
    }
}

fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.05..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a number of seconds between 0.05 and 3600")),
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn current_exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("locating the shardline binary to start ranks")
}

/// The environment that hands the group's secret to a rank this process starts.
pub fn secret_env(secret: &GroupSecret) -> (String, String) {
    ("SHARDLINE_GROUP_SECRET".to_string(), secret.expose().to_string())
}

pub fn worker_command(rank: usize, launch: &LaunchArgs, secret: &GroupSecret) -> anyhow::Result<RankCommand> {
    Ok(RankCommand {
        rank,
        program: current_exe()?,
        args: vec!["worker".into(), "--comm-timeout".into(), launch.comm_timeout.to_string()],
        env: launch.devices_env().into_iter().chain([secret_env(secret)]).collect(),
        raw_stdout: false,
    })
}

/// This node's worker ranks, spawned and supervised by the process playing rank 0.
pub struct LocalWorkers {
    pub watch: Watch,
    /// Failed ranks started again (`--max-restarts` > 0): rank 0 re-forms the group with them.
    pub restarts: Option<Receiver<usize>>,
    /// The ranks this process supervises.
    pub ranks: Vec<usize>,
}

/// Spawns this node's ranks other than rank 0 (which the calling process plays) and supervises
/// them in the background. A rank that fails is started again while --max-restarts allows;
/// otherwise, or once restarts run out, the group is taken down and this process exits 1.
pub fn spawn_local_workers(
    plan: &LaunchPlan,
    launch: &LaunchArgs,
    secret: &GroupSecret,
) -> anyhow::Result<LocalWorkers> {
    let ranks: Vec<usize> = plan.local_ranks().filter(|&r| r != 0).collect();
    let cmds = ranks.iter().map(|&r| worker_command(r, launch, secret)).collect::<anyhow::Result<Vec<_>>>()?;
    let mut sup = Supervisor::spawn(plan, cmds)?;
    let mut restarts = None;
    if let Some(policy) = launch.restart_policy() {
        let (tx, rx) = mpsc::channel();
        sup = sup.restart_failed(policy, tx);
        restarts = Some(rx);
    }
    let watch = sup.watch(|e| {
        eprintln!("error: {e}");
        std::process::exit(1);
    });
    Ok(LocalWorkers { watch, restarts, ranks })
}

/// Rank 0's side of replacing failed ranks: restarts of the ranks this process supervises are
/// awaited; ranks on other nodes (or started by a sibling launcher) are restarted by their own
/// launchers, which rank 0 cannot ask or hear, so it trusts them. Recoveries are bounded like
/// restarts, as this process may not see other launchers' restarts.
pub struct Replacer {
    /// The ranks this process supervises and their restarts.
    pub local: Vec<usize>,
    pub restarts: Option<Receiver<usize>>,
    pub world_size: usize,
    recoveries: RestartBudget,
}

impl Replacer {
    pub fn new(workers: Option<&mut LocalWorkers>, world_size: usize, policy: RestartPolicy) -> Self {
        let (local, restarts) = match workers {
            Some(w) => (w.ranks.clone(), w.restarts.take()),
            None => (Vec::new(), None),
        };
        Replacer { local, restarts, world_size, recoveries: RestartBudget::new(policy) }
    }
}

/// How long a failure may precede the supervisor seeing the rank's exit (it polls every 50 ms;
/// a killed process takes a moment to be reaped).
const EXIT_SEEN_WITHIN: Duration = Duration::from_secs(3);

impl RankReplacer for Replacer {
    fn replace_failed(&mut self) -> Result<Vec<usize>, String> {
        if !self.recoveries.take() {
            return Err(format!(
                "{} recoveries within {} s already (--max-restarts)",
                self.recoveries.taken(),
                self.recoveries.policy.window.as_secs()
            ));
        }
        let all_local = self.local.len() + 1 == self.world_size;
        let mut ranks = Vec::new();
        if let Some(restarts) = &self.restarts {
            // With every rank here a failure must show up as an exit; with other nodes it may
            // be theirs, and their launchers restart it.
            let first_within = if all_local { EXIT_SEEN_WITHIN } else { Duration::from_secs(1) };
            if let Ok(rank) = restarts.recv_timeout(first_within) {
                ranks.push(rank);
                // Ranks that died together (a node's worth) are replaced together.
                ranks.extend(std::iter::from_fn(|| restarts.recv_timeout(Duration::from_millis(200)).ok()));
            }
        }
        if ranks.is_empty() && all_local {
            return Err("no rank exited, so there is none to replace".into());
        }
        Ok(ranks)
    }
}

/// The rank environment for rank 0 played by this process.
pub fn rank0_env(plan: &LaunchPlan, launch: &LaunchArgs, secret: GroupSecret) -> anyhow::Result<RankEnv> {
    if !plan.local_ranks().contains(&0) {
        bail!("node {} does not host rank 0; start it with `shardline launch` instead", plan.node_rank);
    }
    Ok(RankEnv {
        rank: 0,
        world_size: plan.world_size,
        local_rank: 0,
        master_addr: plan.master_addr.clone(),
        master_port: plan.master_port,
        devices: launch.devices.clone(),
        secret: Some(secret),
    })
}
