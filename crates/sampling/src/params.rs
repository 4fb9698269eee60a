//! Per-request sampling parameters and their validation.

use serde::{Deserialize, Serialize};

use crate::error::SamplingError;
use crate::sampler::SamplerSettings;
use shardline_structured::Constraint;

/// Most top logprobs a request may ask for per token (vLLM's default limit).
pub const MAX_LOGPROBS: usize = 20;

/// What a request asks of the sampler, in vLLM's names and conventions. Missing JSON fields
/// take the defaults below.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1 = off.
    pub top_p: f32,
    /// 0 = off.
    pub min_p: f32,
    /// 1 = off.
    pub repetition_penalty: f32,
    /// OpenAI's: subtracted once from the logit of every token already generated. 0 = off.
    pub presence_penalty: f32,
    /// OpenAI's: subtracted per occurrence among the generated tokens. 0 = off.
    pub frequency_penalty: f32,
    /// Added to the logits of these token ids (OpenAI's `logit_bias`, in [-100, 100]).
    pub logit_bias: Vec<(u32, f32)>,
    pub seed: Option<u64>,
    /// Top logprobs per generated token (`Some(0)`: only the chosen token's).
    pub logprobs: Option<usize>,
    /// Top logprobs per prompt token (vLLM's `prompt_logprobs`; `Some(0)`: only the prompt
    /// token's own). The prompt then skips the prefix cache: every position's logits are
    /// computed.
    pub prompt_logprobs: Option<usize>,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// What the output must match (structured outputs): rank 0 keeps the request's guide and
    /// sends the allowed tokens with each step; the sampler draws only among them.
    pub constraint: Option<Constraint>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: None,
            logprobs: None,
            prompt_logprobs: None,
            max_tokens: 256,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            constraint: None,
        }
    }
}

impl SamplingParams {
    /// Deterministic argmax decoding.
    pub fn greedy() -> Self {
        SamplingParams { temperature: 0.0, ..Default::default() }
    }

    /// What the sampler needs; `seed` is the request's own when it has one (the engine draws
    /// one for requests without, so even those replay the same tokens after a preemption).
    pub fn sampler_settings(&self, seed: u64) -> SamplerSettings {
        SamplerSettings {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            logit_bias: self.logit_bias.clone(),
            prompt_len: 0,
            seed: self.seed.unwrap_or(seed),
            logprobs: self.logprobs,
            prompt_logprobs: self.prompt_logprobs,
        }
    }

    /// Rejects parameters vLLM would reject, naming the field and the allowed range.
    pub fn validate(&self, vocab_size: usize) -> Result<(), SamplingError> {
        let bad = |field, rule, value: String| Err(SamplingError::OutOfRange { field, rule, value });
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad("temperature", ">= 0", self.temperature.to_string());
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", "in (0, 1]", self.top_p.to_string());
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", "in [0, 1]", self.min_p.to_string());
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad("repetition_penalty", "> 0", self.repetition_penalty.to_string());
        }
        for (field, v) in [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)] {
            if !(-2.0..=2.0).contains(&v) {
                return bad(field, "in [-2, 2]", v.to_string());
            }
        }
        if let Some(&(id, b)) = self.logit_bias.iter().find(|&&(_, b)| !(-100.0..=100.0).contains(&b)) {
            return bad("logit_bias", "values in [-100, 100]", format!("{b} for token {id}"));
        }
        if let Some(&(id, _)) = self.logit_bias.iter().find(|&&(id, _)| id as usize >= vocab_size) {
            return bad("logit_bias", "token ids inside the vocabulary", format!("{id} (vocabulary {vocab_size})"));
        }
        if let Some(k) = self.logprobs.filter(|&k| k > MAX_LOGPROBS) {
            return bad("logprobs", "at most 20 (MAX_LOGPROBS)", k.to_string());
        }
        if let Some(k) = self.prompt_logprobs.filter(|&k| k > MAX_LOGPROBS) {
            return bad("prompt_logprobs", "at most 20 (MAX_LOGPROBS)", k.to_string());
        }
        if self.max_tokens == 0 {
            return bad("max_tokens", ">= 1", "0".into());
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(SamplingError::EmptyStop);
        }
        if let Some(&id) = self.stop_token_ids.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(SamplingError::StopTokenOutOfVocab { id, vocab_size });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_bad_field_is_named() {
        let ok = SamplingParams::default();
        assert!(ok.validate(10).is_ok());
        let cases: Vec<(SamplingParams, &str)> = vec![
            (SamplingParams { temperature: -1.0, ..ok.clone() }, "temperature must be >= 0, got -1"),
            (SamplingParams { temperature: f32::NAN, ..ok.clone() }, "temperature"),
            (SamplingParams { top_p: 0.0, ..ok.clone() }, "top_p must be in (0, 1]"),
            (SamplingParams { top_p: 1.5, ..ok.clone() }, "top_p"),
            (SamplingParams { min_p: -0.1, ..ok.clone() }, "min_p must be in [0, 1]"),
            (SamplingParams { min_p: 1.5, ..ok.clone() }, "min_p"),
            (SamplingParams { repetition_penalty: -1.0, ..ok.clone() }, "repetition_penalty must be > 0"),
            (SamplingParams { repetition_penalty: 0.0, ..ok.clone() }, "repetition_penalty"),
            (SamplingParams { logprobs: Some(21), ..ok.clone() }, "logprobs must be at most 20"),
            (SamplingParams { max_tokens: 0, ..ok.clone() }, "max_tokens must be >= 1, got 0"),
            (SamplingParams { stop: vec![String::new()], ..ok.clone() }, "stop strings must not be empty"),
            (
                SamplingParams { stop_token_ids: vec![10], ..ok.clone() },
                "stop_token_id 10 is outside the vocabulary (size 10)",
            ),
        ];
        for (p, msg) in cases {
            let err = p.validate(10).unwrap_err().to_string();
            assert!(err.contains(msg), "`{err}` should contain `{msg}`");
        }
    }

    #[test]
    fn edge_values_are_accepted() {
        let p = SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            min_p: 1.0,
            logprobs: Some(MAX_LOGPROBS),
            max_tokens: 1,
            stop: vec!["x".into()],
            stop_token_ids: vec![9],
            ..Default::default()
        };
        assert_eq!(p.validate(10), Ok(()));
        assert_eq!(SamplingParams::greedy().temperature, 0.0);
    }

    #[test]
    fn json_fills_missing_fields_with_defaults() {
        let p: SamplingParams = serde_json::from_str(r#"{"temperature": 0.7, "stop": ["\n\n"], "seed": 3}"#).unwrap();
        let want = SamplingParams { temperature: 0.7, stop: vec!["\n\n".into()], seed: Some(3), ..Default::default() };
        assert_eq!(p, want);
        assert_eq!(p.max_tokens, 256);
        let back: SamplingParams = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }
}
