//! Engine limits and the scheduling policy, as `shardline run`, `serve` and `launch` set them.

use serde::{Deserialize, Serialize};
use strum::{Display, EnumString, IntoStaticStr, VariantNames};

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
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, Display, EnumString, IntoStaticStr, VariantNames,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase", ascii_case_insensitive)]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_round_trip() {
        assert_eq!(SchedulerPolicy::VARIANTS, ["continuous", "static", "sequential"]);
        for name in SchedulerPolicy::VARIANTS {
            let p: SchedulerPolicy = name.parse().unwrap();
            assert_eq!((p.to_string().as_str(), <&str>::from(p)), (*name, *name));
        }
        assert_eq!("Static".parse::<SchedulerPolicy>(), Ok(SchedulerPolicy::Static));
        assert!("fifo".parse::<SchedulerPolicy>().is_err());
        assert_eq!(EngineConfig::default().policy, SchedulerPolicy::Continuous);
    }
}
