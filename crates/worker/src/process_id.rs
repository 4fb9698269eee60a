//! A rank's process as another process can act on it: its pid, and the pid namespace in which
//! that pid means it. Rank 0 kills a rank that stopped answering (stopped, hung) when they share
//! the namespace, so that the rank's launcher sees it exit and starts it again; a rank elsewhere
//! (another node, another container) it cannot reach this way.

use shardline_proto::worker::v1::Ready;

/// Names this process's pid namespace: the kernel's boot id (one per machine and boot) and the
/// namespace's inode. Empty where /proc does not tell, which matches nothing.
pub fn pid_namespace() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let ns = std::fs::read_link("/proc/self/ns/pid").map(|p| p.display().to_string()).unwrap_or_default();
    if boot.trim().is_empty() || ns.is_empty() {
        return String::new();
    }
    format!("{}/{ns}", boot.trim())
}

/// By rank, the pid of each rank this process can signal (`None` for the others).
pub fn signalable(ready: &[Ready]) -> Vec<Option<u32>> {
    let here = pid_namespace();
    let world = ready.iter().map(|r| r.rank as usize + 1).max().unwrap_or(0);
    let mut pids = vec![None; world];
    for r in ready {
        if !here.is_empty() && r.pid_namespace == here && r.pid != 0 {
            pids[r.rank as usize] = Some(r.pid);
        }
    }
    pids
}

/// SIGKILL to `pid`. A silent rank still holds its connections, so it has not exited and its
/// pid cannot have been reused.
pub fn kill(pid: u32) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| std::io::Error::other("pid out of range"))?;
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ranks_in_this_pid_namespace_are_signalable() {
        let here = pid_namespace();
        assert!(!here.is_empty(), "Linux tells the boot id and the pid namespace");
        let ready = |rank: u32, pid: u32, ns: &str| Ready { rank, pid, pid_namespace: ns.into(), ..Default::default() };
        let pids = signalable(&[ready(0, 10, &here), ready(2, 12, "other-boot/pid:[1]"), ready(1, 11, &here)]);
        assert_eq!(pids, vec![Some(10), Some(11), None]);
        assert_eq!(signalable(&[ready(0, 10, ""), ready(1, 0, &here)]), vec![None, None], "unknown is never local");
    }
}
