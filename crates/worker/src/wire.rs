//! Between a group's Rust types and their wire form (`proto/shardline/worker/v1`): the one
//! place step plans, structured-output masks, sampled tokens and the group's dtype, device and
//! load format are converted for the wire.

use std::time::Duration;

use candle_core::DType;
use shardline_exec::{NewRequest, PromptLogprobs, Sampled, ScheduledRequest, StepMasks, StepOutput, StepPlan};
use shardline_model::{DeviceKind, LoadFormat, Quantization};
use shardline_proto::worker::v1 as pb;
use shardline_sampling::{SampledToken, SamplerSettings, ScoredToken, TokenLogprob};

use crate::error::{Result, WorkerError};
use crate::layout::GroupLayout;

/// What a group serves and how it is split; rank 0 hands it to every rank at the rendezvous.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupConfig {
    /// Model path or alias, resolved (and fetched if needed) on each rank.
    pub model: String,
    pub load_format: LoadFormat,
    pub quantization: Quantization,
    pub dtype: DType,
    pub device: DeviceKind,
    pub layout: GroupLayout,
    /// KV cache blocks every rank allocates.
    pub num_blocks: usize,
    /// Tokens per KV block.
    pub block_size: usize,
    /// How long rank 0 and a worker may hear nothing from each other before the silent one is
    /// taken for dead (each sends heartbeats several times within it).
    pub heartbeat_timeout: Duration,
    /// Whether a failed rank is replaced and the group re-formed (survivors rejoin) rather than
    /// every rank exiting.
    pub recover: bool,
}

impl GroupConfig {
    pub fn to_proto(&self) -> pb::GroupSpec {
        pb::GroupSpec {
            model: self.model.clone(),
            load_format: match self.load_format {
                LoadFormat::Auto => pb::LoadFormat::Auto,
                LoadFormat::Dummy => pb::LoadFormat::Dummy,
            } as i32,
            dtype: match self.dtype {
                DType::F16 => pb::Dtype::F16,
                DType::BF16 => pb::Dtype::Bf16,
                _ => pb::Dtype::F32,
            } as i32,
            tp: self.layout.tp as u32,
            pp: self.layout.pp as u32,
            stage_layers: self.layout.stage_layers.iter().map(|&l| l as u32).collect(),
            num_blocks: self.num_blocks as u32,
            block_size: self.block_size as u32,
            device: match self.device {
                DeviceKind::Cpu => pb::Device::Cpu,
                DeviceKind::Cuda => pb::Device::Cuda,
            } as i32,
            heartbeat_timeout_ms: u32::try_from(self.heartbeat_timeout.as_millis()).unwrap_or(u32::MAX),
            recover: self.recover,
            quantization: self.quantization.to_string(),
        }
    }

    pub fn from_proto(spec: &pb::GroupSpec) -> Result<Self> {
        let bad = |what: &str, v: i32| WorkerError::Protocol(format!("the group spec has no valid {what} ({v})"));
        let load_format = match pb::LoadFormat::try_from(spec.load_format) {
            Ok(pb::LoadFormat::Auto) => LoadFormat::Auto,
            Ok(pb::LoadFormat::Dummy) => LoadFormat::Dummy,
            _ => return Err(bad("load format", spec.load_format)),
        };
        let dtype = match pb::Dtype::try_from(spec.dtype) {
            Ok(pb::Dtype::F32) => DType::F32,
            Ok(pb::Dtype::F16) => DType::F16,
            Ok(pb::Dtype::Bf16) => DType::BF16,
            _ => return Err(bad("dtype", spec.dtype)),
        };
        let device = match pb::Device::try_from(spec.device) {
            Ok(pb::Device::Cpu) => DeviceKind::Cpu,
            Ok(pb::Device::Cuda) => DeviceKind::Cuda,
            _ => return Err(bad("device", spec.device)),
        };
        let layout = GroupLayout {
            tp: spec.tp as usize,
            pp: spec.pp as usize,
            stage_layers: spec.stage_layers.iter().map(|&l| l as usize).collect(),
        };
        if layout.tp == 0 || layout.pp != layout.stage_layers.len() {
            return Err(WorkerError::Protocol(format!("the group spec's layout is inconsistent: {layout:?}")));
        }
        let quantization = spec.quantization.parse().map_err(|_| {
            WorkerError::Protocol(format!("the group spec's quantization `{}` is unknown", spec.quantization))
        })?;
        Ok(GroupConfig {
            model: spec.model.clone(),
            load_format,
            quantization,
            dtype,
            device,
            layout,
            num_blocks: spec.num_blocks as usize,
            block_size: spec.block_size as usize,
            heartbeat_timeout: match spec.heartbeat_timeout_ms {
                0 => return Err(bad("heartbeat timeout", 0)),
                ms => Duration::from_millis(ms.into()),
            },
            recover: spec.recover,
        })
    }
}

fn sampling_to_proto(s: &SamplerSettings) -> pb::SamplerSettings {
    pb::SamplerSettings {
        temperature: s.temperature,
        top_k: s.top_k as u32,
        top_p: s.top_p,
        min_p: s.min_p,
        repetition_penalty: s.repetition_penalty,
        seed: s.seed,
        logprobs: s.logprobs.map(|k| k as u32),
        presence_penalty: s.presence_penalty,
        frequency_penalty: s.frequency_penalty,
        prompt_len: s.prompt_len as u32,
        logit_bias: s.logit_bias.iter().map(|&(token_id, bias)| pb::LogitBias { token_id, bias }).collect(),
        prompt_logprobs: s.prompt_logprobs.map(|k| k as u32),
    }
}

fn sampling_from_proto(s: &pb::SamplerSettings) -> SamplerSettings {
    SamplerSettings {
        temperature: s.temperature,
        top_k: s.top_k as usize,
        top_p: s.top_p,
        min_p: s.min_p,
        repetition_penalty: s.repetition_penalty,
        seed: s.seed,
        logprobs: s.logprobs.map(|k| k as usize),
        presence_penalty: s.presence_penalty,
        frequency_penalty: s.frequency_penalty,
        prompt_len: s.prompt_len as usize,
        logit_bias: s.logit_bias.iter().map(|b| (b.token_id, b.bias)).collect(),
        prompt_logprobs: s.prompt_logprobs.map(|k| k as usize),
    }
}

pub fn step_to_proto(step_id: u64, plan: &StepPlan) -> pb::Step {
    pb::Step {
        step_id,
        forget_request_ids: plan.forget.clone(),
        new_requests: plan
            .new_requests
            .iter()
            .map(|r| pb::NewRequest {
                request_id: r.id,
                token_ids: r.token_ids.clone(),
                num_computed_tokens: r.num_computed_tokens as u32,
                block_ids: r.block_ids.clone(),
                sampling: Some(sampling_to_proto(&r.sampling)),
            })
            .collect(),
        scheduled: plan
            .scheduled
            .iter()
            .map(|s| pb::ScheduledRequest {
                request_id: s.id,
                num_tokens: s.num_tokens as u32,
                new_token_ids: s.new_token_ids.clone(),
                new_block_ids: s.new_block_ids.clone(),
                masked: s.masked,
            })
            .collect(),
    }
}

pub fn step_from_proto(step: pb::Step) -> Result<StepPlan> {
    let new_requests = step
        .new_requests
        .into_iter()
        .map(|r| {
            let sampling = r.sampling.as_ref().ok_or_else(|| {
                WorkerError::Protocol(format!(
                    "step {}: request {} has no sampling settings",
                    step.step_id, r.request_id
                ))
            })?;
            Ok(NewRequest {
                id: r.request_id,
                token_ids: r.token_ids,
                num_computed_tokens: r.num_computed_tokens as usize,
                block_ids: r.block_ids,
                sampling: sampling_from_proto(sampling),
            })
        })
        .collect::<Result<_>>()?;
    let scheduled = step
        .scheduled
        .into_iter()
        .map(|s| ScheduledRequest {
            id: s.request_id,
            num_tokens: s.num_tokens as usize,
            new_token_ids: s.new_token_ids,
            new_block_ids: s.new_block_ids,
            masked: s.masked,
        })
        .collect();
    Ok(StepPlan { forget: step.forget_request_ids, new_requests, scheduled })
}

pub fn masks_to_proto(step_id: u64, masks: &StepMasks) -> pb::StepMasks {
    let mut ids: Vec<_> = masks.allowed.keys().copied().collect();
    ids.sort_unstable();
    let masks = ids
        .into_iter()
        .map(|id| pb::RequestMask {
            request_id: id,
            allowed_tokens: masks.allowed[&id].iter().flat_map(|w| w.to_le_bytes()).collect(),
        })
        .collect();
    pb::StepMasks { step_id, masks }
}

/// The masks of step `step_id`; masks of another step are a protocol error (the control
/// stream's order broke).
pub fn masks_from_proto(step_id: u64, masks: pb::StepMasks) -> Result<StepMasks> {
    if masks.step_id != step_id {
        return Err(WorkerError::Protocol(format!(
            "received the structured-output masks of step {} during step {step_id}",
            masks.step_id
        )));
    }
    let mut allowed = std::collections::HashMap::with_capacity(masks.masks.len());
    for m in masks.masks {
        if !m.allowed_tokens.len().is_multiple_of(4) {
            return Err(WorkerError::Protocol(format!(
                "step {step_id}: request {}'s mask is {} bytes, not whole 32-bit words",
                m.request_id,
                m.allowed_tokens.len()
            )));
        }
        let words = m.allowed_tokens.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        allowed.insert(m.request_id, words);
    }
    Ok(StepMasks { allowed })
}

fn top_to_proto(top: &[TokenLogprob]) -> Vec<pb::TopLogprob> {
    top.iter().map(|t| pb::TopLogprob { token_id: t.token_id, logprob: t.logprob }).collect()
}

fn top_from_proto(top: Vec<pb::TopLogprob>) -> Vec<TokenLogprob> {
    top.into_iter().map(|t| TokenLogprob { token_id: t.token_id, logprob: t.logprob }).collect()
}

pub fn output_to_proto(step_id: u64, out: &StepOutput) -> pb::StepResult {
    let sampled = out
        .sampled
        .iter()
        .map(|s| pb::SampledToken {
            request_id: s.id,
            token_id: s.token.token_id,
            logprob: s.token.logprob,
            top: top_to_proto(&s.token.top),
        })
        .collect();
    let prompt_logprobs = out
        .prompt_logprobs
        .iter()
        .map(|p| pb::PromptLogprobs {
            request_id: p.id,
            start: p.start as u32,
            entries: p
                .entries
                .iter()
                .map(|e| pb::ScoredToken {
                    token_id: e.token_id,
                    logprob: e.logprob,
                    rank: e.rank,
                    top: top_to_proto(&e.top),
                })
                .collect(),
        })
        .collect();
    pb::StepResult { step_id, sampled, error: String::new(), prompt_logprobs }
}

pub fn output_from_proto(result: pb::StepResult) -> StepOutput {
    let sampled = result
        .sampled
        .into_iter()
        .map(|s| Sampled {
            id: s.request_id,
            token: SampledToken { token_id: s.token_id, logprob: s.logprob, top: top_from_proto(s.top) },
        })
        .collect();
    let prompt_logprobs = result
        .prompt_logprobs
        .into_iter()
        .map(|p| PromptLogprobs {
            id: p.request_id,
            start: p.start as usize,
            entries: p
                .entries
                .into_iter()
                .map(|e| ScoredToken {
                    token_id: e.token_id,
                    logprob: e.logprob,
                    rank: e.rank,
                    top: top_from_proto(e.top),
                })
                .collect(),
        })
        .collect();
    StepOutput { sampled, prompt_logprobs }
}

#[cfg(test)]
mod tests {
    use shardline_sampling::SamplingParams;

    use super::*;

    #[test]
    fn group_config_round_trips_and_unspecified_fields_are_refused() {
        let cfg = GroupConfig {
            model: "m".into(),
            load_format: LoadFormat::Dummy,
            quantization: Quantization::Q4K,
            dtype: DType::BF16,
            device: DeviceKind::Cuda,
            layout: GroupLayout::new(2, 2, 30, None).unwrap(),
            num_blocks: 64,
            block_size: 16,
            heartbeat_timeout: Duration::from_millis(2500),
            recover: true,
        };
        assert_eq!(GroupConfig::from_proto(&cfg.to_proto()).unwrap(), cfg);
        let unset = pb::GroupSpec { dtype: 0, ..cfg.to_proto() };
        assert!(GroupConfig::from_proto(&unset).unwrap_err().to_string().contains("dtype"));
        let no_heartbeat = pb::GroupSpec { heartbeat_timeout_ms: 0, ..cfg.to_proto() };
        assert!(GroupConfig::from_proto(&no_heartbeat).unwrap_err().to_string().contains("heartbeat"));
    }

    #[test]
    fn plans_and_outputs_round_trip() {
        let plan = StepPlan {
            forget: vec![3],
            new_requests: vec![NewRequest {
                id: 4,
                token_ids: vec![1, 2, 3],
                num_computed_tokens: 0,
                block_ids: vec![9],
                sampling: SamplingParams {
                    temperature: 0.8,
                    logprobs: Some(2),
                    prompt_logprobs: Some(1),
                    ..Default::default()
                }
                .sampler_settings(77),
            }],
            scheduled: vec![ScheduledRequest { id: 4, num_tokens: 3, ..Default::default() }],
        };
        assert_eq!(step_from_proto(step_to_proto(5, &plan)).unwrap(), plan);
        let out = StepOutput {
            sampled: vec![Sampled {
                id: 4,
                token: SampledToken {
                    token_id: 7,
                    logprob: -0.5,
                    top: vec![TokenLogprob { token_id: 7, logprob: -0.5 }],
                },
            }],
            prompt_logprobs: vec![PromptLogprobs {
                id: 4,
                start: 1,
                entries: vec![ScoredToken {
                    token_id: 2,
                    logprob: -1.5,
                    rank: 3,
                    top: vec![TokenLogprob { token_id: 8, logprob: -0.25 }],
                }],
            }],
        };
        assert_eq!(output_from_proto(output_to_proto(5, &out)), out);
    }

    #[test]
    fn masked_plans_and_their_masks_round_trip() {
        let masked = ScheduledRequest { id: 4, num_tokens: 1, masked: true, ..Default::default() };
        let plan = StepPlan { scheduled: vec![masked], ..Default::default() };
        assert_eq!(step_from_proto(step_to_proto(6, &plan)).unwrap(), plan);
        let masks = StepMasks { allowed: [(4, vec![0x8000_0001, 7]), (9, vec![0, 1 << 31])].into() };
        assert_eq!(masks_from_proto(6, masks_to_proto(6, &masks)).unwrap(), masks);
        let late = masks_from_proto(7, masks_to_proto(6, &masks)).unwrap_err();
        assert!(late.to_string().contains("masks of step 6 during step 7"), "{late}");
        let mut torn = masks_to_proto(6, &masks);
        torn.masks[0].allowed_tokens.pop();
        assert!(masks_from_proto(6, torn).unwrap_err().to_string().contains("not whole 32-bit words"));
    }
}
