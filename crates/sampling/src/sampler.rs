//! One row of logits → one token. Processor order follows HF/vLLM: repetition penalty, then
//! greedy argmax or temperature → top-k → top-p → min-p → draw. Logprobs describe the raw
//! model distribution (log_softmax of unprocessed logits, in f64), as vLLM reports by default.
//!
//! The draw for a token is a pure function of the request's seed and the token's position
//! ([`draw`]), not the next value of a stream consumed in order: a request then gives the same
//! tokens however its steps are batched, whichever rank samples it, and when it is recomputed
//! after a preemption. The draw walks the surviving tokens in ascending id, so a device that
//! returns only a row's best candidates ([`crate::candidates`]) picks the same token.
//!
//! Vocabularies are 49k–152k entries, so the hot path avoids full sorts: top-k is a
//! `select_nth_unstable`, and top-p a quickselect on probability mass.
//! NaN logits are treated as -inf so a numerically broken row never yields a NaN token.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::logprobs::{by_value_desc, exp_nonpos, key, log_sum_exp, top_with_lse, TokenLogprob};

/// Below this temperature sampling is greedy (vLLM's `_SAMPLING_EPS`); dividing by a smaller
/// value would overflow logits without changing the outcome meaningfully.
const GREEDY_TEMPERATURE: f32 = 1e-5;

/// Below this many undecided candidates the top-p search just sorts them.
const NUCLEUS_SORT_BELOW: usize = 64;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SampledToken {
    pub token_id: u32,
    /// The chosen token's raw logprob (0 unless the settings ask for logprobs: it costs a
    /// log-sum-exp over the vocabulary).
    pub logprob: f32,
    /// The K most likely tokens (when logprobs were requested), most likely first.
    pub top: Vec<TokenLogprob>,
}

/// What the sampler needs of a request: its processors, seed and logprobs, none of the stop
/// rules. This is what travels to the rank that holds the logits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplerSettings {
    /// Below 1e-5 sampling is greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1 = off.
    pub top_p: f32,
    /// 0 = off.
    pub min_p: f32,
    /// 1 = off.
    pub repetition_penalty: f32,
    /// Subtracted once from every generated token's logit. 0 = off.
    pub presence_penalty: f32,
    /// Subtracted per occurrence among the generated tokens. 0 = off.
    pub frequency_penalty: f32,
    /// (token id, bias) added to logits.
    pub logit_bias: Vec<(u32, f32)>,
    /// Tokens of the prompt: presence and frequency count only what follows it.
    pub prompt_len: usize,
    /// The request's seed, or one the engine drew for it.
    pub seed: u64,
    /// Top logprobs to return per token (`Some(0)`: only the chosen token's).
    pub logprobs: Option<usize>,
    /// Top logprobs to return per prompt token: the last stage then computes logits for every
    /// prompt row, not only the sampled one.
    pub prompt_logprobs: Option<usize>,
}

impl SamplerSettings {
    pub fn is_greedy(&self) -> bool {
        self.temperature < GREEDY_TEMPERATURE || self.top_k == 1
    }

    /// Whether any processor changes logits before the choice (the device's raw candidates
    /// then cannot stand in for the row).
    pub fn processes_logits(&self) -> bool {
        self.repetition_penalty != 1.0
            || self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
            || !self.logit_bias.is_empty()
    }
}

/// The uniform draw in [0, 1) for the token at `position` of a request seeded `seed`.
/// `seed_from_u64` spreads its input over the generator's whole state (through PCG32), so
/// neighbouring positions give independent draws.
pub fn draw(seed: u64, position: usize) -> f64 {
    let key = seed ^ (position as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    StdRng::seed_from_u64(key).random::<f64>()
}

/// One request's sampler: its settings and a candidate buffer reused across its tokens.
#[derive(Clone, Debug)]
pub struct Sampler {
    settings: SamplerSettings,
    /// (value, token id): logits, then unnormalised probabilities.
    cand: Vec<(f64, u32)>,
}

/// Index of the largest logit (lowest index on ties, NaN skipped).
fn argmax(logits: &[f32]) -> u32 {
    let (mut best, mut best_val) = (0, f32::NEG_INFINITY);
    for (i, &l) in logits.iter().enumerate() {
        if l > best_val {
            (best, best_val) = (i, l);
        }
    }
    best as u32
}

/// HF's repetition penalty: shrink positive logits, push negative ones further down.
fn penalize(l: f32, penalty: f32) -> f32 {
    if l < 0.0 {
        l * penalty
    } else {
        l / penalty
    }
}

impl Sampler {
    pub fn new(settings: &SamplerSettings) -> Self {
        Sampler { settings: settings.clone(), cand: Vec::new() }
    }

    pub fn settings(&self) -> &SamplerSettings {
        &self.settings
    }

    /// The reusable candidate buffer.
    pub(crate) fn scratch(&mut self) -> &mut Vec<(f64, u32)> {
        &mut self.cand
    }

    /// The token at `position` of the sequence (its index once appended). `history` is the
    /// prompt plus everything generated so far (for the repetition penalty). Panics on an
    /// empty `logits` row.
    pub fn sample(&mut self, logits: &[f32], history: &[u32], position: usize) -> SampledToken {
        self.sample_masked(logits, history, position, None)
    }

    /// As [`Sampler::sample`], drawing only among the tokens `allowed` sets (one bit per id,
    /// 32 to a word: a structured output's mask). Logprobs stay those of the raw row.
    pub fn sample_masked(
        &mut self,
        logits: &[f32],
        history: &[u32],
        position: usize,
        allowed: Option<&[u32]>,
    ) -> SampledToken {
        assert!(!logits.is_empty(), "sample() needs a non-empty logits row");
        let token_id = self.choose(logits, history, position, allowed);
        let Some(k) = self.settings.logprobs else {
            return SampledToken { token_id, logprob: 0.0, top: Vec::new() };
        };
        let lse = log_sum_exp(logits);
        let top = top_with_lse(logits, k, lse);
        let logprob = (key(logits[token_id as usize]) - lse) as f32;
        SampledToken { token_id, logprob, top }
    }

    fn choose(&mut self, raw: &[f32], history: &[u32], position: usize, allowed: Option<&[u32]>) -> u32 {
        let p = &self.settings;
        let greedy = p.is_greedy();
        if greedy && !p.processes_logits() && allowed.is_none() {
            return argmax(raw);
        }
        let cand = &mut self.cand;
        cand.clear();
        cand.extend(raw.iter().enumerate().map(|(i, &l)| (key(l), i as u32)));
        let in_vocab = |&&t: &&u32| (t as usize) < raw.len();
        if p.repetition_penalty != 1.0 {
            // Computed from the raw logit, so a token repeated in history is penalised once.
            for &t in history.iter().filter(in_vocab) {
                cand[t as usize].0 = key(penalize(raw[t as usize], p.repetition_penalty));
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            // vLLM's order: after the repetition penalty, over the generated tokens only. A
            // token's first occurrence takes the presence penalty, every one the frequency's.
            let generated = &history[p.prompt_len.min(history.len())..];
            for (i, &t) in generated.iter().enumerate().filter(|(_, t)| in_vocab(t)) {
                let first = !generated[..i].contains(&t);
                let presence = if first { p.presence_penalty as f64 } else { 0.0 };
                cand[t as usize].0 -= p.frequency_penalty as f64 + presence;
            }
        }
        for &(t, bias) in p.logit_bias.iter().filter(|(t, _)| (*t as usize) < raw.len()) {
            cand[t as usize].0 += bias as f64;
        }
        if let Some(words) = allowed {
            // Before top-k/top-p/min-p, as vLLM applies grammar bitmasks.
            let allows = |t: usize| words.get(t / 32).is_some_and(|w| w >> (t % 32) & 1 == 1);
            cand.iter_mut().filter(|c| !allows(c.1 as usize)).for_each(|c| c.0 = f64::NEG_INFINITY);
        }
        if greedy {
            return cand.iter().min_by(|a, b| by_value_desc(a, b)).map_or(0, |c| c.1);
        }
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.select_nth_unstable_by(p.top_k - 1, by_value_desc);
            cand.truncate(p.top_k);
        }
        let max = cand.iter().map(|c| c.0).fold(f64::NEG_INFINITY, f64::max);
        if max == f64::NEG_INFINITY {
            // Every candidate is masked; fall back to the lowest surviving id deterministically.
            return cand.iter().map(|c| c.1).min().unwrap_or(0);
        }
        // Unnormalised probabilities of softmax(logits / T); the best token weighs exactly 1.
        let inv_t = 1.0 / p.temperature as f64;
        cand.iter_mut().for_each(|c| c.0 = exp_nonpos((c.0 - max) * inv_t));
        if p.top_p < 1.0 {
            let keep = nucleus_len(cand, p.top_p as f64);
            cand.truncate(keep);
        }
        if p.min_p > 0.0 {
            cand.retain(|c| c.0 >= min_p_floor(p.min_p));
        }
        walk(cand, draw(p.seed, position))
    }
}

/// q_i >= min_p · q_max  <=>  w_i >= min_p, since w_max = 1. Clamped so an unvalidated
/// min_p > 1 still keeps the best token.
pub(crate) fn min_p_floor(min_p: f32) -> f64 {
    (min_p as f64).min(1.0)
}

/// The token `u` ∈ [0, 1) falls on when the support's weights are laid end to end in ascending
/// token id: a canonical order, so the same support and weights give the same token however
/// they were found (from the whole row here, or from a device's best candidates).
pub(crate) fn walk(support: &mut [(f64, u32)], u: f64) -> u32 {
    if !support.is_sorted_by_key(|c| c.1) {
        support.sort_unstable_by_key(|c| c.1);
    }
    let mass: f64 = support.iter().map(|c| c.0).sum();
    let mut u = u * mass;
    for &(w, id) in support.iter() {
        if u < w {
            return id;
        }
        u -= w;
    }
    // Rounding left a sliver of `u`: the last candidate with weight takes it.
    support.iter().rev().find(|c| c.0 > 0.0).map_or(support[0].1, |c| c.1)
}

/// Reorders `cand` (weights) so its first `n` entries are the nucleus — the best-first prefix
/// whose mass first reaches `top_p` of the total — and returns `n`. A quickselect on mass:
/// each round partitions the undecided range around its median and keeps the half holding
/// the boundary, so the cost is O(V) however large the nucleus is (a flat 152k distribution
/// would otherwise need a full sort). Only the final small range is sorted.
fn nucleus_len(cand: &mut [(f64, u32)], top_p: f64) -> usize {
    let target = top_p * cand.iter().map(|c| c.0).sum::<f64>();
    // cand[..lo] is surely in the nucleus (mass `before`), cand[hi..] surely out.
    let (mut lo, mut hi, mut before) = (0, cand.len(), 0.0);
    while hi - lo > NUCLEUS_SORT_BELOW {
        let mid = (hi - lo) / 2;
        cand[lo..hi].select_nth_unstable_by(mid, by_value_desc);
        let upper: f64 = cand[lo..=lo + mid].iter().map(|c| c.0).sum();
        if before + upper >= target {
            hi = lo + mid + 1;
        } else {
            before += upper;
            lo += mid + 1;
        }
    }
    cand[lo..hi].sort_unstable_by(by_value_desc);
    let mut cum = before;
    match cand[lo..hi].iter().position(|c| {
        cum += c.0;
        cum >= target
    }) {
        Some(i) => lo + i + 1,
        // Rounding kept the mass just short of the target: everything left is in.
        None => hi.max(1),
    }
}
