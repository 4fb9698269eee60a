//! Engine limits and the scheduling policy, as `shardline run`, `serve` and `launch` set them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Most tokens (decodes + prompt chunks) in one forward pass.
    pub max_batch_tokens: usize,
    /// Most sequences running at once.
    pub max_num_seqs: usize,
    /// When waiting requests may join the running batch.
    pub policy: SchedulerPolicy,
    /// Reuse the K/V of cached prompt prefixes (on by default, as in vLLM).
    pub enable_prefix_caching: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_batch_tokens: 2048,
            max_num_seqs: 64,
            policy: SchedulerPolicy::Continuous,
            enable_prefix_caching: true,
        }
    }
}

/// When waiting requests may join the running batch. The non-default policies exist to measure
/// what continuous batching buys over the classic ways of serving.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchedulerPolicy {
    /// Requests join whenever a sequence slot and KV blocks for their first chunk are free
    /// (Orca-style iteration-level scheduling).
    #[default]
    Continuous,
    /// Classic static batching: when nothing runs, up to `max_num_seqs` waiting requests form a
    /// batch, and nothing else joins until every one of them has finished.
    Static,
    /// One request at a time, like a naive server.
    Sequential,
}

impl SchedulerPolicy {
    pub const NAMES: [&'static str; 3] = ["continuous", "static", "sequential"];

    pub fn name(self) -> &'static str {
        match self {
            SchedulerPolicy::Continuous => "continuous",
            SchedulerPolicy::Static => "static",
            SchedulerPolicy::Sequential => "sequential",
        }
    }
}

impl fmt::Display for SchedulerPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SchedulerPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "continuous" => Ok(SchedulerPolicy::Continuous),
            "static" => Ok(SchedulerPolicy::Static),
            "sequential" => Ok(SchedulerPolicy::Sequential),
            _ => Err(format!("unknown scheduler policy `{s}` (expected one of: {})", Self::NAMES.join(", "))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_round_trip() {
        for name in SchedulerPolicy::NAMES {
            let p: SchedulerPolicy = name.parse().unwrap();
            assert_eq!(p.to_string(), name);
        }
        assert_eq!("Static".parse::<SchedulerPolicy>(), Ok(SchedulerPolicy::Static));
        let err = "fifo".parse::<SchedulerPolicy>().unwrap_err();
        assert!(err.contains("fifo") && err.contains("sequential"), "{err}");
        assert_eq!(EngineConfig::default().policy, SchedulerPolicy::Continuous);
    }
}
