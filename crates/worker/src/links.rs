//! Which transport each group of ranks that works together uses: a stage's tensor-parallel
//! group, and each pipeline hand-off (stage s, tp rank t) → (stage s + 1, tp rank t).
//!
//! GPUs talk through NCCL, on the device. CPU ranks talk through the TCP mesh, and so do GPU
//! ranks that share one GPU: NCCL refuses two ranks on one device up to 2.29 ("Duplicate GPU
//! detected") and allows it from 2.30 only with `NCCL_MULTI_RANK_GPU_ENABLE=1`, which every
//! member must then have set. The TCP path copies through the host and is slower, but it is what
//! lets a pipeline be tried out on a single GPU.
//!
//! Every rank computes the same plan from the same inputs (the layout and every rank's
//! [`GpuIdentity`], gathered once after the rendezvous), so the members of a group agree on its
//! transport without a further exchange.

// Only CUDA ranks plan links; CPU builds still compile and test the plan.
#![cfg_attr(not(feature = "cuda"), allow(dead_code))]

use std::fmt::Write;

use shardline_comm::{Comm, Group};

use crate::error::{Result, WorkerError};
use crate::layout::GroupLayout;

#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::Display)]
#[strum(serialize_all = "lowercase")]
pub enum Link {
    Tcp,
    Nccl,
}

/// A rank's GPU as the group sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuIdentity {
    /// Host name and the GPU's UUID: equal only for one physical GPU.
    pub gpu: String,
    /// `NCCL_MULTI_RANK_GPU_ENABLE=1` in this rank's environment.
    pub multi_rank_gpu: bool,
}

impl GpuIdentity {
    pub fn new(host: &str, uuid: &[u8], multi_rank_gpu: bool) -> Self {
        let mut gpu = format!("{host}/GPU-");
        for b in uuid {
            let _ = write!(gpu, "{b:02x}");
        }
        GpuIdentity { gpu, multi_rank_gpu }
    }

    /// This process's host name and multi-rank setting, with `uuid` for its GPU.
    pub fn here(uuid: &[u8]) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let multi = std::env::var("NCCL_MULTI_RANK_GPU_ENABLE").is_ok_and(|v| v.trim() == "1");
        GpuIdentity::new(host.trim(), uuid, multi)
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = vec![u8::from(self.multi_rank_gpu)];
        out.extend_from_slice(self.gpu.as_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self> {
        match bytes.split_first() {
            Some((&flag @ (0 | 1), gpu)) => {
                Ok(GpuIdentity { gpu: String::from_utf8_lossy(gpu).into_owned(), multi_rank_gpu: flag == 1 })
            }
            _ => Err(WorkerError::Protocol("malformed GPU identity".into())),
        }
    }

    /// Every rank's identity, by rank (all ranks call it, right after the rendezvous).
    pub fn exchange(comm: &Comm, mine: &GpuIdentity) -> Result<Vec<GpuIdentity>> {
        let world = Group::new((0..comm.world_size()).collect());
        world.all_gather_bytes(comm, &mine.encode())?.iter().map(|b| GpuIdentity::decode(b)).collect()
    }
}

/// One group of ranks that an NCCL communicator joins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Channel {
    /// A stage's tensor-parallel ranks.
    Tp { stage: usize },
    /// The hand-off from `stage` to `stage + 1` at tensor-parallel rank `tp_rank`.
    Pipeline { stage: usize, tp_rank: usize },
}

/// Every group's transport, for a group of GPU ranks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkPlan {
    /// By stage.
    tp: Vec<Link>,
    /// By stage boundary (s → s + 1), then tp rank.
    pipeline: Vec<Vec<Link>>,
}

impl LinkPlan {
    /// GPU ranks, given every rank's GPU: NCCL unless two members share a GPU and not all of
    /// them allow it.
    pub fn for_gpus(layout: &GroupLayout, gpus: &[GpuIdentity]) -> Self {
        let link = |ranks: &[usize]| {
            let shared = ranks.iter().enumerate().any(|(i, &a)| ranks[..i].iter().any(|&b| gpus[a].gpu == gpus[b].gpu));
            if !shared || ranks.iter().all(|&r| gpus[r].multi_rank_gpu) {
                Link::Nccl
            } else {
                Link::Tcp
            }
        };
        LinkPlan {
            tp: (0..layout.pp).map(|s| link(&layout.tp_group(s))).collect(),
            pipeline: (0..layout.pp - 1)
                .map(|s| (0..layout.tp).map(|t| link(&[layout.rank_of(s, t), layout.rank_of(s + 1, t)])).collect())
                .collect(),
        }
    }

    pub fn tp(&self, stage: usize) -> Link {
        self.tp[stage]
    }

    /// The hand-off from `stage` to `stage + 1` at `tp_rank`.
    pub fn pipeline(&self, stage: usize, tp_rank: usize) -> Link {
        self.pipeline[stage][tp_rank]
    }

    /// Every channel that needs an NCCL communicator, with its ranks, in the one order all ranks
    /// join them in. NCCL's join waits for every member, so ranks joining in different orders
    /// could wait on each other in a cycle; one global order cannot. Groups of one rank need none.
    pub fn nccl_channels(&self, layout: &GroupLayout) -> Vec<(Channel, Vec<usize>)> {
        let tp = (0..layout.pp)
            .filter(|&s| layout.tp > 1 && self.tp(s) == Link::Nccl)
            .map(|stage| (Channel::Tp { stage }, layout.tp_group(stage)));
        let pipeline = (0..layout.pp - 1).flat_map(|stage| {
            (0..layout.tp).filter(move |&t| self.pipeline(stage, t) == Link::Nccl).map(move |tp_rank| {
                (
                    Channel::Pipeline { stage, tp_rank },
                    vec![layout.rank_of(stage, tp_rank), layout.rank_of(stage + 1, tp_rank)],
                )
            })
        });
        tp.chain(pipeline).collect()
    }

    /// `rank`'s links in words, for its start-up log line.
    pub fn describe(&self, layout: &GroupLayout, rank: usize) -> String {
        let (stage, tp_rank) = (layout.stage_of(rank), layout.tp_rank_of(rank));
        let mut parts = Vec::new();
        if layout.tp > 1 {
            parts.push(format!("tp={}", self.tp(stage)));
        }
        if stage > 0 {
            parts.push(format!("from_stage_{}={}", stage - 1, self.pipeline(stage - 1, tp_rank)));
        }
        if stage + 1 < layout.pp {
            parts.push(format!("to_stage_{}={}", stage + 1, self.pipeline(stage, tp_rank)));
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(" ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpus(names: &[&str], multi: bool) -> Vec<GpuIdentity> {
        names.iter().map(|n| GpuIdentity::new("node", n.as_bytes(), multi)).collect()
    }

    #[test]
    fn distinct_gpus_use_nccl_everywhere_in_one_global_order() {
        let layout = GroupLayout::new(2, 2, 30, None).unwrap();
        let plan = LinkPlan::for_gpus(&layout, &gpus(&["a", "b", "c", "d"], false));
        assert_eq!(
            (plan.tp(0), plan.tp(1), plan.pipeline(0, 0), plan.pipeline(0, 1)),
            (Link::Nccl, Link::Nccl, Link::Nccl, Link::Nccl)
        );
        assert_eq!(
            plan.nccl_channels(&layout),
            vec![
                (Channel::Tp { stage: 0 }, vec![0, 1]),
                (Channel::Tp { stage: 1 }, vec![2, 3]),
                (Channel::Pipeline { stage: 0, tp_rank: 0 }, vec![0, 2]),
                (Channel::Pipeline { stage: 0, tp_rank: 1 }, vec![1, 3]),
            ]
        );
        assert_eq!(plan.describe(&layout, 3), "tp=nccl from_stage_0=nccl");
        assert_eq!(plan.describe(&layout, 0), "tp=nccl to_stage_1=nccl");
    }

    #[test]
    fn ranks_sharing_a_gpu_fall_back_to_tcp_unless_all_allow_it() {
        // PP 2 with both stages on GPU 0: the hand-off goes through TCP.
        let pp = GroupLayout::new(1, 2, 30, None).unwrap();
        let plan = LinkPlan::for_gpus(&pp, &gpus(&["a", "a"], false));
        assert_eq!(plan.pipeline(0, 0), Link::Tcp);
        assert!(plan.nccl_channels(&pp).is_empty(), "no communicator for a TCP link or a group of one");
        assert_eq!(plan.describe(&pp, 1), "from_stage_0=tcp");

        // TP 2 on one GPU: TCP, or NCCL where every member set NCCL_MULTI_RANK_GPU_ENABLE=1.
        let tp = GroupLayout::new(2, 1, 30, None).unwrap();
        assert_eq!(LinkPlan::for_gpus(&tp, &gpus(&["a", "a"], false)).tp(0), Link::Tcp);
        assert_eq!(LinkPlan::for_gpus(&tp, &gpus(&["a", "a"], true)).tp(0), Link::Nccl);
        let mut mixed = gpus(&["a", "a"], true);
        mixed[1].multi_rank_gpu = false;
        assert_eq!(LinkPlan::for_gpus(&tp, &mixed).tp(0), Link::Tcp);

        // The same UUID on two hosts is two GPUs.
        let two_hosts = vec![GpuIdentity::new("n1", b"a", false), GpuIdentity::new("n2", b"a", false)];
        assert_eq!(LinkPlan::for_gpus(&pp, &two_hosts).pipeline(0, 0), Link::Nccl);
    }

    #[test]
    fn identities_round_trip_and_reject_garbage() {
        let id = GpuIdentity::new("host-1", &[0xde, 0xad], true);
        assert_eq!(id.gpu, "host-1/GPU-dead");
        assert_eq!(GpuIdentity::decode(&id.encode()).unwrap(), id);
        assert!(GpuIdentity::decode(&[]).is_err());
        assert!(GpuIdentity::decode(&[7, b'x']).is_err());
    }
}
