//! The launcher: spawns this node's ranks with RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
//! MASTER_PORT set (torchrun's contract, so the same binary also runs under mpirun or srun),
//! prefixes their output, and supervises them the way TGI's launcher does: any rank exiting
//! early takes the whole group down (SIGTERM, grace period, SIGKILL) and the launcher exits
//! non-zero naming the rank. Children die with the launcher (PR_SET_PDEATHSIG), so a killed
//! launcher leaves no orphans.

mod plan;
pub mod process;
mod supervisor;

pub use plan::{LaunchPlan, PlanError};
pub use supervisor::{RankCommand, RestartBudget, RestartPolicy, Supervisor, SupervisorError, Watch, EXIT_GROUP_GONE};
