//! What a device can do, as the planner's roofline needs it: memory, bandwidth, peak dense
//! throughput per compute type, achieved-efficiency factors, per-step and per-layer overheads,
//! and the links between devices as alpha–beta terms.
//!
//! Presets are TOML files in `crates/plan/hardware/` (vendor datasheet figures, with the
//! efficiency factors and where they were fitted cited in each file), compiled in; a user's
//! own file has the same fields. `cpu` is this machine's ranks: after `shardline plan
//! --calibrate` the measured profile in the cache replaces the shipped one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{PlanError, Result};

const PRESETS: &[(&str, &str)] = &[
    ("h100-sxm", include_str!("../hardware/h100-sxm.toml")),
    ("h200", include_str!("../hardware/h200.toml")),
    ("a100-80g", include_str!("../hardware/a100-80g.toml")),
    ("l4", include_str!("../hardware/l4.toml")),
    ("rtx6000-pro", include_str!("../hardware/rtx6000-pro.toml")),
    ("cpu", include_str!("../hardware/cpu.toml")),
];

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// One link between ranks: a message of S bytes takes `latency + S / bandwidth`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// NVLink, PCIe, InfiniBand, loopback TCP, ….
    pub kind: String,
    /// Achieved bandwidth in one direction, GB/s (10⁹ bytes).
    pub bandwidth_gbs: f64,
    /// Per-message (per-hop) latency, µs.
    pub latency_us: f64,
}

impl Link {
    pub fn seconds(&self, bytes: f64) -> f64 {
        self.latency_us * 1e-6 + bytes / (self.bandwidth_gbs * 1e9)
    }
}

/// How an all-reduce moves data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllReduce {
    /// NCCL: ring or tree, whichever is cheaper for the size.
    #[default]
    Nccl,
    /// Every rank sends its whole buffer to every other (Shardline's CPU communicator).
    Direct,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Efficiency {
    /// Fraction of peak FLOP/s a compute-bound matmul reaches.
    pub compute: f64,
    /// Fraction of peak bandwidth a memory-bound matmul or attention reaches.
    pub memory: f64,
    /// How far streaming weights and computing on them overlap: an op of memory time a and
    /// compute time b takes max(a, b) + (1 − overlap) · min(a, b). GPUs overlap fully (the
    /// roofline); a CPU core decoding blocks does both in turn, partly.
    #[serde(default = "full_overlap")]
    pub overlap: f64,
}

fn full_overlap() -> f64 {
    1.0
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overhead {
    /// Per engine step on rank 0: scheduling, sampling, sending the plan (µs).
    pub step_us: f64,
    /// Per decoder layer per forward: launches, synchronisation, norms (µs).
    pub layer_us: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hardware {
    pub name: String,
    pub description: String,
    /// Where the figures come from.
    #[serde(default)]
    pub sources: Vec<String>,
    /// Memory one device has (for `shares_host`: the whole host's, shared by its ranks), GiB.
    pub memory_gib: f64,
    /// Fraction of memory the server may use (vLLM's `--gpu-memory-utilization`).
    pub memory_utilization: f64,
    /// Memory neither weights nor KV may use: runtime context, communicator buffers, GiB.
    pub reserved_gib: f64,
    /// Peak memory bandwidth, GB/s.
    pub memory_bandwidth_gbs: f64,
    /// Where lower than `memory_bandwidth_gbs`: the GB/s one-row matmuls stream weights of a
    /// compute type at (CPU kernels decoding blocks run short of the bus).
    #[serde(default)]
    pub stream_gbs: BTreeMap<String, f64>,
    /// The same with one thread: what a rank of few threads reaches while the others idle.
    #[serde(default)]
    pub thread_stream_gbs: BTreeMap<String, f64>,
    /// Peak TFLOP/s per compute type on one thread: a rank of one thread is not slowed by
    /// the synchronisation a team of threads pays.
    #[serde(default)]
    pub thread_tflops: BTreeMap<String, f64>,
    /// Threads the host's kernels run on (`shares_host`: split evenly over its ranks).
    #[serde(default)]
    pub cores: Option<usize>,
    /// Peak dense TFLOP/s per compute type (`f32`, `bf16`, `fp8`, `int8`, `fp4`, `int4`).
    pub tflops: BTreeMap<String, f64>,
    pub efficiency: Efficiency,
    pub overhead: Overhead,
    /// Devices per node: a TP group wider than this crosses nodes.
    pub devices_per_node: usize,
    /// Whether the ranks of one node share its compute and bandwidth (CPU ranks split the
    /// cores evenly); GPUs each have their own.
    #[serde(default)]
    pub shares_host: bool,
    #[serde(default)]
    pub all_reduce: AllReduce,
    /// Between ranks of one node.
    pub intra_node: Link,
    /// Between nodes.
    pub inter_node: Link,
}

impl Hardware {
    /// A preset's name, or a path to a TOML file.
    pub fn load(name_or_path: &str) -> Result<Hardware> {
        let path = Path::new(name_or_path);
        if name_or_path.ends_with(".toml") || path.is_file() {
            let text = std::fs::read_to_string(path).map_err(|source| PlanError::Read { path: path.into(), source })?;
            return Hardware::parse(&text, path);
        }
        if name_or_path == "cpu" {
            let calibrated = calibrated_cpu_path();
            if calibrated.is_file() {
                let text = std::fs::read_to_string(&calibrated)
                    .map_err(|source| PlanError::Read { path: calibrated.clone(), source })?;
                return Hardware::parse(&text, &calibrated);
            }
        }
        match PRESETS.iter().find(|(n, _)| *n == name_or_path) {
            Some((n, text)) => Hardware::parse(text, Path::new(&format!("<preset {n}>"))),
            None => {
                Err(PlanError::UnknownHardware { name: name_or_path.to_string(), known: preset_names().join(", ") })
            }
        }
    }

    pub fn parse(text: &str, path: &Path) -> Result<Hardware> {
        let bad = |message: String| PlanError::BadHardware { path: path.to_path_buf(), message };
        let hw: Hardware = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        hw.validate().map_err(bad)?;
        Ok(hw)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let positive = |v: f64, what: &str| match v.is_finite() && v > 0.0 {
            true => Ok(()),
            false => Err(format!("{what} must be a positive number, not {v}")),
        };
        let fraction = |v: f64, what: &str| match v > 0.0 && v <= 1.0 {
            true => Ok(()),
            false => Err(format!("{what} must be in (0, 1], not {v}")),
        };
        positive(self.memory_gib, "memory_gib")?;
        positive(self.memory_bandwidth_gbs, "memory_bandwidth_gbs")?;
        fraction(self.memory_utilization, "memory_utilization")?;
        fraction(self.efficiency.compute, "efficiency.compute")?;
        fraction(self.efficiency.memory, "efficiency.memory")?;
        if !(0.0..=1.0).contains(&self.efficiency.overlap) {
            return Err(format!("efficiency.overlap must be in [0, 1], not {}", self.efficiency.overlap));
        }
        if !(self.reserved_gib >= 0.0 && self.reserved_gib < self.memory_gib) {
            return Err(format!("reserved_gib must be in [0, memory_gib), not {}", self.reserved_gib));
        }
        if self.overhead.step_us < 0.0 || self.overhead.layer_us < 0.0 {
            return Err("overhead.step_us and overhead.layer_us must not be negative".into());
        }
        if self.devices_per_node == 0 {
            return Err("devices_per_node must be at least 1".into());
        }
        for (kind, v) in &self.tflops {
            positive(*v, &format!("tflops.{kind}"))?;
        }
        if !self.tflops.contains_key("bf16") && !self.tflops.contains_key("f32") {
            return Err("tflops needs at least `bf16` or `f32`".into());
        }
        for (link, what) in [(&self.intra_node, "intra_node"), (&self.inter_node, "inter_node")] {
            positive(link.bandwidth_gbs, &format!("{what}.bandwidth_gbs"))?;
            if link.latency_us < 0.0 {
                return Err(format!("{what}.latency_us must not be negative"));
            }
        }
        Ok(())
    }

    pub fn memory_bytes(&self) -> f64 {
        self.memory_gib * GIB
    }

    pub fn reserved_bytes(&self) -> f64 {
        self.reserved_gib * GIB
    }

    /// Achieved FLOP/s of the first compute type in `kinds` this device has (each a fallback
    /// for the one before: FP8 weights run at bf16 on a GPU without FP8 units).
    pub fn flops(&self, kinds: &[&str]) -> f64 {
        Self::peak(&self.tflops, kinds).unwrap_or(1.0) * 1e12 * self.efficiency.compute
    }

    /// FLOP/s of a rank with `threads` of the host's `cores` threads: its share of the
    /// whole, or the one-thread figure for a rank of one thread, where measured.
    pub fn flops_with_threads(&self, kinds: &[&str], threads: usize) -> f64 {
        let cores = self.cores.unwrap_or(threads).max(1);
        match Self::peak(&self.thread_tflops, kinds) {
            Some(one) if threads == 1 => one * 1e12 * self.efficiency.compute,
            _ => self.flops(kinds) * threads.min(cores) as f64 / cores as f64,
        }
    }

    fn peak(table: &BTreeMap<String, f64>, kinds: &[&str]) -> Option<f64> {
        let found = kinds.iter().find_map(|k| table.get(*k)).or_else(|| table.get("bf16"));
        found.or_else(|| table.get("f32")).copied()
    }

    /// Achieved memory bandwidth, bytes/s.
    pub fn bandwidth(&self) -> f64 {
        self.memory_bandwidth_gbs * 1e9 * self.efficiency.memory
    }

    /// Bytes/s a matmul streams weights of the first of `kinds` with a measured rate (else
    /// the memory's), with `threads` threads (all of them when `None`).
    pub fn stream_bandwidth(&self, kinds: &[&str], threads: Option<usize>) -> f64 {
        let rate = |table: &BTreeMap<String, f64>| kinds.iter().find_map(|k| table.get(*k)).copied();
        let all = rate(&self.stream_gbs).map_or(self.memory_bandwidth_gbs, |g| g.min(self.memory_bandwidth_gbs));
        let gbs = match (threads, rate(&self.thread_stream_gbs)) {
            (Some(t), Some(one)) => all.min(t as f64 * one),
            _ => all,
        };
        gbs * 1e9 * self.efficiency.memory
    }

    /// Seconds of an op that moves `memory` seconds' worth of bytes and computes for
    /// `compute` seconds (see [`Efficiency::overlap`]).
    pub fn combine(&self, memory: f64, compute: f64) -> f64 {
        memory.max(compute) + (1.0 - self.efficiency.overlap) * memory.min(compute)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a hardware profile is plain data")
    }
}

pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|(n, _)| *n).collect()
}

/// Where `--calibrate` writes the measured `cpu` profile (and `--hardware cpu` reads it).
pub fn calibrated_cpu_path() -> PathBuf {
    shardline_weights::cache_dir().join("plan").join("cpu.toml")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_parses_and_unknown_names_list_them() {
        for name in preset_names() {
            let hw = Hardware::parse(PRESETS.iter().find(|p| p.0 == name).unwrap().1, Path::new(name)).unwrap();
            assert_eq!(hw.name, name);
            assert!(!hw.sources.is_empty(), "{name} cites its figures");
        }
        let err = Hardware::load("h1000").unwrap_err().to_string();
        assert!(err.contains("unknown hardware `h1000`") && err.contains("h100-sxm, h200"), "{err}");
    }

    #[test]
    fn bad_files_name_the_field() {
        let good = PRESETS[0].1;
        let err =
            Hardware::parse(&good.replace("memory_utilization = 0.9", "memory_utilization = 1.5"), Path::new("x"))
                .unwrap_err()
                .to_string();
        assert!(err.contains("memory_utilization must be in (0, 1]"), "{err}");
        let err = Hardware::parse("name = 3", Path::new("y.toml")).unwrap_err().to_string();
        assert!(err.starts_with("y.toml: "), "{err}");
    }

    #[test]
    fn missing_compute_types_fall_back() {
        let a100 = Hardware::load("a100-80g").unwrap();
        assert_eq!(a100.flops(&["fp8", "bf16"]), a100.flops(&["bf16"]), "A100 has no FP8 units");
        let h100 = Hardware::load("h100-sxm").unwrap();
        assert!(h100.flops(&["fp8"]) > 1.9 * h100.flops(&["bf16"]));
    }
}
