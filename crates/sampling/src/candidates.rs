//! Sampling from a row's best candidates instead of the whole row. A GPU keeps the logits and
//! sends back only the K largest (with the row's log-sum-exps); for most requests that is all
//! the sampler needs, and it then picks exactly the token the whole row would have given (up to
//! rounding when a nucleus boundary falls within an ulp of top_p):
//!
//! - greedy: the first candidate;
//! - top-k with k ≤ K: the support is the first k candidates;
//! - top-p or min-p: the support is a best-first prefix of the row, found among the candidates
//!   when it is short enough (the nucleus mass is measured against the whole row's, from its
//!   log-sum-exp at the request's temperature).
//!
//! Otherwise (a repetition penalty changes logits the device did not see; plain temperature
//! sampling draws from the whole vocabulary; a nucleus longer than K) it answers `None` and the
//! caller fetches the whole row. Logprobs need only the top entries and the log-sum-exp.

use crate::logprobs::{key, TokenLogprob};
use crate::sampler::{min_p_floor, walk, SampledToken, Sampler, SamplerSettings};

/// Most candidates a device returns per row.
pub const MAX_CANDIDATES: usize = 64;

/// A row's best candidates and whole-row statistics, as a device computes them.
#[derive(Clone, Copy, Debug)]
pub struct Candidates<'a> {
    /// The largest logits, by value descending then id ascending (NaN ranks as −inf).
    pub values: &'a [f32],
    pub ids: &'a [u32],
    /// Entries in the whole row (when `values` has them all, nothing is missing).
    pub vocab_size: usize,
    /// log Σ exp(logit) over the row.
    pub lse: f64,
    /// log Σ exp(logit / temperature) over the row, at the request's temperature.
    pub lse_t: f64,
}

impl Candidates<'_> {
    fn complete(&self) -> bool {
        self.values.len() >= self.vocab_size
    }
}

impl SamplerSettings {
    /// How many candidates a row needs for [`Sampler::sample_candidates`] to stand in for the
    /// whole row, or `None` when it needs the row itself.
    pub fn candidates_needed(&self) -> Option<usize> {
        let top = self.logprobs.unwrap_or(0);
        let needed = if self.processes_logits() {
            return None;
        } else if self.is_greedy() {
            1
        } else if self.top_k > 0 {
            self.top_k
        } else if self.top_p < 1.0 || self.min_p > 0.0 {
            MAX_CANDIDATES
        } else {
            return None;
        };
        Some(needed.max(top)).filter(|&n| n <= MAX_CANDIDATES)
    }
}

impl Sampler {
    /// The token at `position`, from a row's candidates: the same token [`Sampler::sample`]
    /// gives on the whole row, or `None` when the candidates cannot decide it.
    pub fn sample_candidates(&mut self, c: &Candidates, position: usize) -> Option<SampledToken> {
        assert!(c.values.len() == c.ids.len() && !c.values.is_empty(), "candidates: values and ids");
        let p = self.settings().clone();
        p.candidates_needed()?;
        let token_id = if p.is_greedy() { c.ids[0] } else { self.choose_among(c, position)? };
        let Some(k) = p.logprobs else {
            return Some(SampledToken { token_id, logprob: 0.0, top: Vec::new() });
        };
        let logprob_of = |v: f32| (key(v) - c.lse) as f32;
        let chosen = c.ids.iter().position(|&id| id == token_id).expect("the token is a candidate");
        let top = (0..k.min(c.values.len()))
            .map(|i| TokenLogprob { token_id: c.ids[i], logprob: logprob_of(c.values[i]) })
            .collect();
        Some(SampledToken { token_id, logprob: logprob_of(c.values[chosen]), top })
    }

    fn choose_among(&mut self, c: &Candidates, position: usize) -> Option<u32> {
        let p = self.settings().clone();
        let max = key(c.values[0]);
        if max == f64::NEG_INFINITY {
            return None; // every logit masked: the whole row decides
        }
        let inv_t = 1.0 / p.temperature as f64;
        let restricted = p.top_k > 0 && p.top_k < c.vocab_size;
        let n = if restricted { p.top_k.min(c.values.len()) } else { c.values.len() };
        let mut support = std::mem::take(self.scratch());
        support.clear();
        support.extend(
            c.values[..n]
                .iter()
                .zip(&c.ids[..n])
                .map(|(&v, &id)| (crate::logprobs::exp_nonpos((key(v) - max) * inv_t), id)),
        );
        // The nucleus is measured against the mass of everything still in play: the top-k, or
        // the whole row (from its log-sum-exp at this temperature).
        let whole = restricted || c.complete();
        let mut cut = whole;
        if p.top_p < 1.0 {
            let total = if whole { support.iter().map(|w| w.0).sum() } else { (c.lse_t - max * inv_t).exp() };
            let target = p.top_p as f64 * total;
            let mut cum = 0.0;
            match support.iter().position(|w| {
                cum += w.0;
                cum >= target
            }) {
                Some(i) => {
                    support.truncate(i + 1);
                    cut = true;
                }
                // Rounding kept the mass just short of the target: everything in play is in.
                None if whole => {}
                None => {
                    *self.scratch() = support;
                    return None; // the nucleus runs past the candidates
                }
            }
        }
        if p.min_p > 0.0 {
            let floor = min_p_floor(p.min_p);
            if !cut && support.last().is_some_and(|w| w.0 >= floor) {
                *self.scratch() = support;
                return None; // tokens past the candidates may pass the floor too
            }
            support.retain(|w| w.0 >= floor);
        }
        let token = walk(&mut support, crate::sampler::draw(p.seed, position));
        *self.scratch() = support;
        Some(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logprobs::{by_value_desc, log_sum_exp};
    use crate::params::SamplingParams;

    /// What a device returns for `logits`: the best `k` candidates and the log-sum-exps.
    fn candidates_of(logits: &[f32], k: usize, temperature: f32) -> (Vec<f32>, Vec<u32>, f64, f64) {
        let mut all: Vec<(f64, u32)> = logits.iter().enumerate().map(|(i, &l)| (key(l), i as u32)).collect();
        all.sort_by(by_value_desc);
        all.truncate(k);
        let scaled: Vec<f32> = logits.iter().map(|&l| l / temperature).collect();
        let values = all.iter().map(|c| logits[c.1 as usize]).collect();
        (values, all.iter().map(|c| c.1).collect(), log_sum_exp(logits), log_sum_exp(&scaled))
    }

    /// A row with a few strong tokens, a long tail, ties and a masked entry.
    fn row(seed: u32, vocab: usize) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        let mut out: Vec<f32> = (0..vocab)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let noise = (x % 1000) as f32 / 250.0;
                if i % 97 == 0 {
                    noise + 6.0
                } else {
                    noise
                }
            })
            .collect();
        out[3] = out[0]; // a tie
        out[5] = f32::NEG_INFINITY;
        out
    }

    #[test]
    fn candidates_pick_the_whole_rows_token_whenever_they_can() {
        let settings = [
            SamplingParams { logprobs: Some(5), ..SamplingParams::greedy() },
            SamplingParams { temperature: 0.7, top_k: 20, ..Default::default() },
            SamplingParams { temperature: 1.0, top_k: 64, logprobs: Some(3), ..Default::default() },
            SamplingParams { temperature: 0.8, top_p: 0.5, ..Default::default() },
            SamplingParams { temperature: 0.3, top_p: 0.9, ..Default::default() },
            SamplingParams { temperature: 1.0, top_k: 40, top_p: 0.8, min_p: 0.05, ..Default::default() },
            SamplingParams { temperature: 0.5, min_p: 0.2, ..Default::default() },
        ];
        let mut decided = 0;
        for (si, params) in settings.iter().enumerate() {
            for seed in 0..40u32 {
                let logits = row(seed, 1000);
                let s = params.sampler_settings(u64::from(seed) * 31 + si as u64);
                let k = s.candidates_needed().expect("these settings use candidates");
                let (values, ids, lse, lse_t) = candidates_of(&logits, k, params.temperature.max(1e-5));
                let c = Candidates { values: &values, ids: &ids, vocab_size: logits.len(), lse, lse_t };
                let want = Sampler::new(&s).sample(&logits, &[], seed as usize);
                if let Some(got) = Sampler::new(&s).sample_candidates(&c, seed as usize) {
                    decided += 1;
                    assert_eq!(got.token_id, want.token_id, "settings {si}, row {seed}");
                    assert_eq!(got.top.len(), want.top.len());
                    for (g, w) in got.top.iter().zip(&want.top) {
                        assert_eq!(g.token_id, w.token_id);
                        assert!((g.logprob - w.logprob).abs() < 1e-5, "settings {si}, row {seed}");
                    }
                    assert!((got.logprob - want.logprob).abs() < 1e-5);
                }
            }
        }
        assert!(decided > 7 * 40 * 3 / 4, "candidates decided only {decided} of {}", 7 * 40);
    }

    #[test]
    fn what_candidates_cannot_decide_is_left_to_the_whole_row() {
        let logits: Vec<f32> = (0..500).map(|i| (i % 7) as f32 * 0.01).collect(); // nearly flat
        let (values, ids, lse, lse_t) = candidates_of(&logits, MAX_CANDIDATES, 1.0);
        let c = Candidates { values: &values, ids: &ids, vocab_size: logits.len(), lse, lse_t };
        let nucleus = SamplingParams { top_p: 0.9, ..Default::default() }.sampler_settings(1);
        assert!(Sampler::new(&nucleus).sample_candidates(&c, 0).is_none(), "a flat nucleus spans the vocabulary");
        let floor = SamplingParams { min_p: 0.5, ..Default::default() }.sampler_settings(1);
        assert!(Sampler::new(&floor).sample_candidates(&c, 0).is_none(), "min-p keeps more than 64 tokens");
        let plain = SamplingParams::default().sampler_settings(1);
        assert_eq!(plain.candidates_needed(), None, "plain temperature sampling needs the row");
        let penalty = SamplingParams { repetition_penalty: 1.2, ..SamplingParams::greedy() }.sampler_settings(1);
        assert_eq!(penalty.candidates_needed(), None, "a penalty changes logits the device did not see");
        let big_k = SamplingParams { top_k: 100, ..Default::default() }.sampler_settings(1);
        assert_eq!(big_k.candidates_needed(), None);
        let greedy = SamplingParams { logprobs: Some(20), ..SamplingParams::greedy() }.sampler_settings(1);
        assert_eq!(greedy.candidates_needed(), Some(20));
    }
}
