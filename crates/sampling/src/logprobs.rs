//! Raw-distribution logprobs (vLLM's default: log_softmax of the unprocessed logits, in f64)
//! and the numeric helpers the sampler shares with them.
//!
//! Every sampled token needs a log-sum-exp over the whole vocabulary (up to 152k entries), so
//! `exp` is the hot spot; [`exp_nonpos`] is a branch-free f64 exp the compiler can vectorise,
//! accurate to a few ulp, unlike the libm call per element.

use std::cmp::Ordering;

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct TokenLogprob {
    pub token_id: u32,
    pub logprob: f32,
}

/// NaN ranks with -inf: never chosen, never in a top list ahead of a real value.
pub(crate) fn key(l: f32) -> f64 {
    if l.is_nan() {
        f64::NEG_INFINITY
    } else {
        l as f64
    }
}

/// Descending by value, ascending id on ties: a total, deterministic order.
pub(crate) fn by_value_desc(a: &(f64, u32), b: &(f64, u32)) -> Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// `exp(x)` for `x <= 0` (softmax weights after subtracting the max); -inf gives 0.
/// Range reduction x = n·ln2 + r with |r| <= ln2/2, a degree-13 Taylor polynomial for e^r
/// (truncation < 1e-17), and 2^n assembled from bits. Results below e^-708 flush to 0, which
/// no probability sum can notice.
#[inline]
pub(crate) fn exp_nonpos(x: f64) -> f64 {
    const LOG2E: f64 = std::f64::consts::LOG2_E;
    const LN2_HI: f64 = 6.931_471_803_691_238e-1;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    // Adding 1.5·2^52 rounds to an integer and leaves it in the low mantissa bits.
    const MAGIC: f64 = 6_755_399_441_055_744.0;
    let xc = x.max(-708.0);
    let shifted = xc * LOG2E + MAGIC;
    let n = shifted - MAGIC;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.0 / 6_227_020_800.0; // 1/13!
    for c in [
        1.0 / 479_001_600.0,
        1.0 / 39_916_800.0,
        1.0 / 3_628_800.0,
        1.0 / 362_880.0,
        1.0 / 40_320.0,
        1.0 / 5_040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p * r + c;
    }
    let n_bits = shifted.to_bits().wrapping_sub(MAGIC.to_bits());
    let scale = f64::from_bits(n_bits.wrapping_add(1023) << 52);
    if x < -708.0 {
        0.0
    } else {
        p * scale
    }
}

/// log Σ exp(logits) in f64; -inf when every logit is -inf or NaN.
pub(crate) fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits
        .iter()
        .map(|&l| key(l))
        .fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + logits
        .iter()
        .map(|&l| exp_nonpos(key(l) - max))
        .sum::<f64>()
        .ln()
}

/// The `k` largest logits, best first, in one pass with a small sorted buffer (no O(V) copy).
fn top_raw(logits: &[f32], k: usize) -> Vec<(f64, u32)> {
    let mut best: Vec<(f64, u32)> = Vec::with_capacity(k + 1);
    if k == 0 {
        return best;
    }
    for (i, &l) in logits.iter().enumerate() {
        let c = (key(l), i as u32);
        if best.len() == k && by_value_desc(&c, &best[k - 1]) != Ordering::Less {
            continue;
        }
        let pos = best.partition_point(|b| by_value_desc(b, &c) == Ordering::Less);
        best.insert(pos, c);
        best.truncate(k);
    }
    best
}

/// [`log_softmax_top`] with the log-sum-exp already known.
pub(crate) fn top_with_lse(logits: &[f32], k: usize, lse: f64) -> Vec<TokenLogprob> {
    top_raw(logits, k)
        .into_iter()
        .map(|(l, id)| TokenLogprob {
            token_id: id,
            logprob: (l - lse) as f32,
        })
        .collect()
}

/// The `k` highest raw logprobs, most likely first (ties: lower id first).
pub fn log_softmax_top(logits: &[f32], k: usize) -> Vec<TokenLogprob> {
    top_with_lse(logits, k, log_sum_exp(logits))
}

/// Raw logprob of one token. Panics if `token` is outside `logits`.
pub fn logprob_of(logits: &[f32], token: u32) -> f32 {
    (key(logits[token as usize]) - log_sum_exp(logits)) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_matches_std_to_a_few_ulp() {
        let mut worst: f64 = 0.0;
        for i in 0..=200_000 {
            let x = -(i as f64) * 0.003_5; // 0 down to -700
            let want = x.exp();
            worst = worst.max(((exp_nonpos(x) - want) / want).abs());
        }
        assert!(worst < 1e-15, "worst relative error {worst:e}");
        assert_eq!(exp_nonpos(0.0), 1.0);
        assert_eq!(exp_nonpos(f64::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpos(-800.0), 0.0);
    }

    #[test]
    fn top_list_breaks_ties_by_lower_id() {
        let top = log_softmax_top(&[1.0, 3.0, 3.0, f32::NAN, 2.0], 3);
        let ids: Vec<u32> = top.iter().map(|t| t.token_id).collect();
        assert_eq!(ids, vec![1, 2, 4]);
        assert!(log_softmax_top(&[1.0], 0).is_empty());
        assert_eq!(
            log_softmax_top(&[0.0, 0.0], 5).len(),
            2,
            "k larger than the vocabulary"
        );
    }
}
