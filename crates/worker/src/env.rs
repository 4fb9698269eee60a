//! Which rank this process is, from the environment of whoever started it: our launcher and
//! torchrun (RANK, WORLD_SIZE, LOCAL_RANK), Open MPI (OMPI_COMM_WORLD_*), MPICH/Hydra (PMI_*),
//! Slurm (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID). MASTER_ADDR / MASTER_PORT locate rank 0;
//! SHARDLINE_DEVICES (`--devices`) lists this node's GPU ordinals by local rank.
//! SHARDLINE_GROUP_SECRET, or the file SHARDLINE_GROUP_SECRET_FILE names, is the group's secret
//! (`shardline launch` sets it for the ranks it starts).

use shardline_comm::GroupSecret;

use crate::error::{Result, WorkerError};

pub const DEFAULT_MASTER_PORT: u16 = 29500;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RankEnv {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// GPU ordinal per local rank (`--devices`); empty: local rank among the visible GPUs.
    pub devices: Vec<usize>,
    /// What every member proves when connecting; required for groups of more than one rank.
    pub secret: Option<GroupSecret>,
}

const SCHEMES: [(&str, &str, &str); 4] = [
    ("RANK", "WORLD_SIZE", "LOCAL_RANK"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
    ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
];

impl RankEnv {
    /// `None` when no launcher set a rank (a standalone process).
    pub fn from_env() -> Result<Option<RankEnv>> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<RankEnv>> {
        let num = |k: &str| -> Result<Option<usize>> {
            get(k)
                .map(|v| v.trim().parse::<usize>().map_err(|_| WorkerError::Env(format!("{k}={v} is not a number"))))
                .transpose()
        };
        for (rank_var, size_var, local_var) in SCHEMES {
            let Some(rank) = num(rank_var)? else { continue };
            let world_size =
                num(size_var)?.ok_or_else(|| WorkerError::Env(format!("{rank_var} is set but {size_var} is not")))?;
            if rank >= world_size {
                return Err(WorkerError::Env(format!("{rank_var}={rank} is not below {size_var}={world_size}")));
            }
            let master_port = match get("MASTER_PORT") {
                Some(p) => p.trim().parse().map_err(|_| WorkerError::Env(format!("MASTER_PORT={p} is not a port")))?,
                None => DEFAULT_MASTER_PORT,
            };
            return Ok(Some(RankEnv {
                rank,
                world_size,
                local_rank: num(local_var)?.unwrap_or(rank),
                master_addr: get("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into()),
                master_port,
                devices: get("SHARDLINE_DEVICES").map_or(Ok(Vec::new()), |v| parse_devices(&v))?,
                secret: group_secret(&get)?,
            }));
        }
        Ok(None)
    }
}

/// SHARDLINE_GROUP_SECRET, else the contents of SHARDLINE_GROUP_SECRET_FILE, else none (`get`
/// looks variables up).
pub fn group_secret(get: &impl Fn(&str) -> Option<String>) -> Result<Option<GroupSecret>> {
    let bad = |what: String| move |e: shardline_comm::CommError| WorkerError::Env(format!("{what}: {e}"));
    if let Some(text) = get("SHARDLINE_GROUP_SECRET") {
        return GroupSecret::from_text(&text).map(Some).map_err(bad("SHARDLINE_GROUP_SECRET".into()));
    }
    let Some(path) = get("SHARDLINE_GROUP_SECRET_FILE") else { return Ok(None) };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| WorkerError::Env(format!("SHARDLINE_GROUP_SECRET_FILE={path}: {e}")))?;
    GroupSecret::from_text(&text).map(Some).map_err(bad(format!("the secret in {path}")))
}

/// `2,3` → [2, 3]; empty → [].
pub fn parse_devices(list: &str) -> Result<Vec<usize>> {
    list.split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| {
            d.parse().map_err(|_| WorkerError::Env(format!("SHARDLINE_DEVICES={list}: `{d}` is not a GPU ordinal")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Option<RankEnv>> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        RankEnv::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn reads_each_launcher_convention() {
        assert_eq!(env(&[]).unwrap(), None);
        let ours = env(&[("RANK", "3"), ("WORLD_SIZE", "4"), ("MASTER_ADDR", "10.0.0.1"), ("MASTER_PORT", "1234")])
            .unwrap()
            .unwrap();
        assert_eq!((ours.rank, ours.world_size, ours.master_addr.as_str(), ours.master_port), (3, 4, "10.0.0.1", 1234));
        let mpi =
            env(&[("OMPI_COMM_WORLD_RANK", "1"), ("OMPI_COMM_WORLD_SIZE", "2"), ("OMPI_COMM_WORLD_LOCAL_RANK", "0")])
                .unwrap()
                .unwrap();
        assert_eq!((mpi.rank, mpi.local_rank, mpi.master_port), (1, 0, DEFAULT_MASTER_PORT));
        let slurm = env(&[("SLURM_PROCID", "5"), ("SLURM_NTASKS", "8"), ("SLURM_LOCALID", "1")]).unwrap().unwrap();
        assert_eq!((slurm.rank, slurm.world_size, slurm.local_rank), (5, 8, 1));
        assert!(env(&[("RANK", "4"), ("WORLD_SIZE", "4")]).unwrap_err().to_string().contains("not below"));
        assert!(env(&[("PMI_RANK", "0")]).unwrap_err().to_string().contains("PMI_SIZE"));
        let pinned = env(&[("RANK", "1"), ("WORLD_SIZE", "2"), ("SHARDLINE_DEVICES", "2, 3")]).unwrap().unwrap();
        assert_eq!(pinned.devices, [2, 3]);
        assert!(env(&[("RANK", "0"), ("WORLD_SIZE", "1"), ("SHARDLINE_DEVICES", "x")]).is_err());
    }

    #[test]
    fn the_group_secret_comes_from_the_variable_or_its_file() {
        let rank = [("RANK", "1"), ("WORLD_SIZE", "2")];
        assert_eq!(env(&rank).unwrap().unwrap().secret, None);
        let given = env(&[rank[0], rank[1], ("SHARDLINE_GROUP_SECRET", "a-secret-of-some-length")]).unwrap().unwrap();
        assert_eq!(given.secret, Some(GroupSecret::from_text("a-secret-of-some-length").unwrap()));
        let short = env(&[rank[0], rank[1], ("SHARDLINE_GROUP_SECRET", "short")]).unwrap_err().to_string();
        assert!(short.contains("SHARDLINE_GROUP_SECRET") && short.contains("at least 16"), "{short}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "from-a-file-0123456789\n").unwrap();
        let path = file.to_str().unwrap();
        let from_file = env(&[rank[0], rank[1], ("SHARDLINE_GROUP_SECRET_FILE", path)]).unwrap().unwrap();
        assert_eq!(from_file.secret, Some(GroupSecret::from_text("from-a-file-0123456789").unwrap()));
        let missing = env(&[rank[0], rank[1], ("SHARDLINE_GROUP_SECRET_FILE", "/nonexistent/secret")]);
        assert!(missing.unwrap_err().to_string().contains("/nonexistent/secret"));
    }
}
