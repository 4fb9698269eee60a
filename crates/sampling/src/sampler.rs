//! One row of logits → one token. Processor order follows HF/vLLM: repetition penalty, then
//! greedy argmax or temperature → top-k → top-p → min-p → draw. Logprobs describe the raw
//! model distribution (log_softmax of unprocessed logits, in f64), as vLLM reports by default.

use std::cmp::Ordering;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::params::SamplingParams;

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct TokenLogprob {
    pub token_id: u32,
    pub logprob: f32,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SampledToken {
    pub token_id: u32,
    /// The chosen token's raw logprob.
    pub logprob: f32,
    /// The K most likely tokens (when logprobs were requested), most likely first.
    pub top: Vec<TokenLogprob>,
}

pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    scratch: Vec<(f32, u32)>,
}

/// Descending by value, ascending id on ties: a total, deterministic order.
fn by_value_desc(a: &(f32, u32), b: &(f32, u32)) -> Ordering {
    b.0.partial_cmp(&a.0).unwrap_or(Ordering::Equal).then(a.1.cmp(&b.1))
}

fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    max + logits.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln()
}

/// The `k` highest raw logprobs, most likely first (ties: lower id first).
pub fn log_softmax_top(logits: &[f32], k: usize) -> Vec<TokenLogprob> {
    if k == 0 || logits.is_empty() {
        return Vec::new();
    }
    let lse = log_sum_exp(logits);
    let mut all: Vec<(f32, u32)> = logits.iter().enumerate().map(|(i, &l)| (l, i as u32)).collect();
    let k = k.min(all.len());
    if k < all.len() {
        all.select_nth_unstable_by(k - 1, by_value_desc);
        all.truncate(k);
    }
    all.sort_unstable_by(by_value_desc);
    all.into_iter().map(|(l, id)| TokenLogprob { token_id: id, logprob: (l as f64 - lse) as f32 }).collect()
}

/// Raw logprob of one token.
pub fn logprob_of(logits: &[f32], token: u32) -> f32 {
    (logits[token as usize] as f64 - log_sum_exp(logits)) as f32
}

impl Sampler {
    pub fn new(params: &SamplingParams) -> Self {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Sampler { params: params.clone(), rng, scratch: Vec::new() }
    }

    /// `history` is the prompt plus everything generated so far (for the repetition penalty).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> SampledToken {
        let token_id = self.choose(logits, history);
        let top = self.params.logprobs.map_or_else(Vec::new, |k| log_softmax_top(logits, k));
        let logprob = top
            .iter()
            .find(|t| t.token_id == token_id)
            .map_or_else(|| logprob_of(logits, token_id), |t| t.logprob);
        SampledToken { token_id, logprob, top }
    }

    fn choose(&mut self, raw: &[f32], history: &[u32]) -> u32 {
        let p = &self.params;
        let mut penalized;
        let logits = if p.repetition_penalty != 1.0 && !history.is_empty() {
            penalized = raw.to_vec();
            let mut seen = history.to_vec();
            seen.sort_unstable();
            seen.dedup();
            let vocab = penalized.len();
            for &t in seen.iter().filter(|&&t| (t as usize) < vocab) {
                let l = &mut penalized[t as usize];
                *l = if *l < 0.0 { *l * p.repetition_penalty } else { *l / p.repetition_penalty };
            }
            &penalized[..]
        } else {
            raw
        };
        if p.temperature == 0.0 || p.top_k == 1 {
            return argmax(logits);
        }
        let cand = &mut self.scratch;
        cand.clear();
        cand.extend(logits.iter().enumerate().map(|(i, &l)| (l / p.temperature, i as u32)));
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.select_nth_unstable_by(p.top_k - 1, by_value_desc);
            cand.truncate(p.top_k);
        }
        cand.sort_unstable_by(by_value_desc);
        // Probabilities of the survivors (softmax over them, f64 for a stable cumulative sum).
        let max = cand[0].0 as f64;
        let mut probs: Vec<f64> = cand.iter().map(|&(l, _)| (l as f64 - max).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= total);
        let mut keep = probs.len();
        if p.top_p < 1.0 {
            // Smallest prefix whose mass reaches top_p (at least one token).
            let mut cum = 0.0;
            keep = probs
                .iter()
                .position(|&q| {
                    cum += q;
                    cum >= p.top_p as f64
                })
                .map_or(probs.len(), |i| i + 1);
        }
        if p.min_p > 0.0 {
            let floor = p.min_p as f64 * probs[0];
            keep = keep.min(probs.iter().take_while(|&&q| q >= floor).count().max(1));
        }
        let mass: f64 = probs[..keep].iter().sum();
        let mut u = self.rng.random::<f64>() * mass;
        for (i, &q) in probs[..keep].iter().enumerate() {
            if u < q {
                return cand[i].1;
            }
            u -= q;
        }
        cand[keep - 1].1
    }
}

/// Index of the largest logit (lowest index on ties).
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}
