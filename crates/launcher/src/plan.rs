//! Which ranks run on this node, and with how many CPU threads each.

use std::ops::Range;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{0}")]
    Invalid(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchPlan {
    pub world_size: usize,
    pub nnodes: usize,
    pub node_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// CPU threads per rank (`None`: split this machine's cores between the local ranks).
    pub threads_per_rank: Option<usize>,
}

impl LaunchPlan {
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.world_size == 0 || self.nnodes == 0 {
            return Err(PlanError::Invalid("world size and --nnodes must be positive".into()));
        }
        if !self.world_size.is_multiple_of(self.nnodes) {
            return Err(PlanError::Invalid(format!(
                "{} ranks cannot be spread evenly over {} nodes",
                self.world_size, self.nnodes
            )));
        }
        if self.node_rank >= self.nnodes {
            return Err(PlanError::Invalid(format!(
                "--node-rank {} must be below --nnodes {}",
                self.node_rank, self.nnodes
            )));
        }
        Ok(())
    }

    /// Ranks this node hosts: a contiguous block, so a stage's TP ranks share a node.
    pub fn local_ranks(&self) -> Range<usize> {
        let per = self.world_size / self.nnodes;
        self.node_rank * per..(self.node_rank + 1) * per
    }

    /// Threads for each local rank: the explicit setting, or the cores divided evenly (≥ 1),
    /// so ranks do not oversubscribe the machine.
    pub fn threads(&self) -> usize {
        self.threads_per_rank.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cores / self.local_ranks().len().max(1)).max(1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(world: usize, nnodes: usize, node_rank: usize) -> LaunchPlan {
        LaunchPlan {
            world_size: world,
            nnodes,
            node_rank,
            master_addr: "127.0.0.1".into(),
            master_port: 1,
            threads_per_rank: None,
        }
    }

    #[test]
    fn ranks_are_packed_per_node() {
        assert_eq!(plan(4, 2, 1).local_ranks(), 2..4);
        assert_eq!(plan(4, 1, 0).local_ranks(), 0..4);
        assert!(plan(3, 2, 0).validate().is_err());
        assert!(plan(4, 2, 2).validate().is_err());
        assert!(plan(4, 1, 0).threads() >= 1);
        assert_eq!(LaunchPlan { threads_per_rank: Some(3), ..plan(4, 1, 0) }.threads(), 3);
    }
}
