//! Liveness between rank 0 and the workers. Each side sends the other an empty frame several
//! times per heartbeat timeout from a thread of its own (`Comm::start_heartbeat`), and checks,
//! whenever it waits for the other, that it heard something within the timeout. A process that
//! exits closes its sockets and is seen at once; these catch the ones that do not: a rank
//! stopped (SIGSTOP, a debugger), frozen by the machine, or cut off without a reset.

use std::sync::Arc;
use std::time::Duration;

use shardline_comm::Comm;

use crate::error::{Result, WorkerError};

/// Beats per timeout: a peer must miss several in a row before it counts as silent.
const BEATS_PER_TIMEOUT: u32 = 5;

/// Starts beating to `peers` (rank 0: every worker; a worker: rank 0).
pub fn start(comm: &Arc<Comm>, peers: Vec<usize>, timeout: Duration) -> Result<()> {
    let every = (timeout / BEATS_PER_TIMEOUT).max(Duration::from_millis(20));
    Ok(comm.start_heartbeat(peers, every)?)
}

/// Fails naming the first of `ranks` silent for longer than `timeout`.
pub fn check(comm: &Comm, ranks: impl IntoIterator<Item = usize>, timeout: Duration) -> Result<()> {
    for rank in ranks {
        let silent = comm.silent_for(rank)?;
        if silent > timeout {
            return Err(WorkerError::Silent { rank, silent, timeout });
        }
    }
    Ok(())
}
