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
#[inline(always)]
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
const LOG2E: f64 = std::f64::consts::LOG2_E;
const LN2_HI: f64 = 6.931_471_803_691_238e-1;
const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
/// Adding 1.5·2^52 rounds to an integer and leaves it in the low mantissa bits.
const MAGIC: f64 = 6_755_399_441_055_744.0;
/// Horner coefficients of the degree-13 Taylor polynomial of e^r, highest first.
const EXP_POLY: [f64; 14] = [
    1.0 / 6_227_020_800.0, // 1/13!
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
];

#[inline(always)]
pub(crate) fn exp_nonpos(x: f64) -> f64 {
    let xc = x.max(-708.0);
    let shifted = xc * LOG2E + MAGIC;
    let n = shifted - MAGIC;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p = EXP_POLY[0];
    for c in &EXP_POLY[1..] {
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
///
/// Every sampled token pays for this over the whole vocabulary: at batch 32 with 49k entries
/// it was 12% of a decode step, because the compiler leaves the exp loop scalar. So the sum
/// has an AVX-512 form that performs exactly the portable form's operations, lane for lane
/// (multiplies and adds unfused, same lane sums in the same order): the result's bits do not
/// depend on the CPU.
pub(crate) fn log_sum_exp(logits: &[f32]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was detected.
        let max = unsafe { avx512::max_key(logits) };
        if max == f64::NEG_INFINITY {
            return max;
        }
        // SAFETY: as above.
        return max + unsafe { avx512::sum_exp(logits, max) }.ln();
    }
    let max = logits.iter().map(|&l| key(l)).fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + sum_exp_lanes(logits, max).ln()
}

const LANES: usize = 8;

/// Σ exp(key(l) − max) as 8 independent lane sums (lane i takes elements ≡ i mod 8), added
/// in lane order, then the tail.
fn sum_exp_lanes(logits: &[f32], max: f64) -> f64 {
    let chunks = logits.chunks_exact(LANES);
    let tail = chunks.remainder();
    let mut lanes = [0.0f64; LANES];
    for c in chunks {
        for (s, &l) in lanes.iter_mut().zip(c) {
            *s += exp_nonpos(key(l) - max);
        }
    }
    lanes.iter().sum::<f64>() + tail.iter().map(|&l| exp_nonpos(key(l) - max)).sum::<f64>()
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{exp_nonpos, key, EXP_POLY, LANES, LN2_HI, LN2_LO, LOG2E, MAGIC};

    /// The largest key(l) (a max is exact, so the lane order cannot change it).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn max_key(logits: &[f32]) -> f64 {
        let chunks = logits.chunks_exact(2 * LANES);
        let tail = chunks.remainder();
        // max_ps returns its second operand when either is NaN, so NaN lanes keep the max.
        let mut acc = _mm512_set1_ps(f32::NEG_INFINITY);
        for c in chunks {
            acc = _mm512_max_ps(_mm512_loadu_ps(c.as_ptr()), acc);
        }
        tail.iter().map(|&l| key(l)).fold(_mm512_reduce_max_ps(acc) as f64, f64::max)
    }

    /// [`super::sum_exp_lanes`], 8 f64 lanes at a time.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn sum_exp(logits: &[f32], max: f64) -> f64 {
        let chunks = logits.chunks_exact(LANES);
        let tail = chunks.remainder();
        let (vmax, neg_inf) = (_mm512_set1_pd(max), _mm512_set1_pd(f64::NEG_INFINITY));
        let mut acc = _mm512_setzero_pd();
        for c in chunks {
            let x = _mm512_cvtps_pd(_mm256_loadu_ps(c.as_ptr()));
            // key(): NaN counts as -inf.
            let x = _mm512_mask_blend_pd(_mm512_cmp_pd_mask::<_CMP_UNORD_Q>(x, x), x, neg_inf);
            acc = _mm512_add_pd(acc, exp_nonpos_pd(_mm512_sub_pd(x, vmax)));
        }
        let mut lanes = [0.0f64; LANES];
        _mm512_storeu_pd(lanes.as_mut_ptr(), acc);
        lanes.iter().sum::<f64>() + tail.iter().map(|&l| exp_nonpos(key(l) - max)).sum::<f64>()
    }

    /// [`exp_nonpos`] on 8 lanes, operation for operation.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn exp_nonpos_pd(x: __m512d) -> __m512d {
        let xc = _mm512_max_pd(x, _mm512_set1_pd(-708.0));
        let magic = _mm512_set1_pd(MAGIC);
        let shifted = _mm512_add_pd(_mm512_mul_pd(xc, _mm512_set1_pd(LOG2E)), magic);
        let n = _mm512_sub_pd(shifted, magic);
        let r = _mm512_sub_pd(
            _mm512_sub_pd(xc, _mm512_mul_pd(n, _mm512_set1_pd(LN2_HI))),
            _mm512_mul_pd(n, _mm512_set1_pd(LN2_LO)),
        );
        let mut p = _mm512_set1_pd(EXP_POLY[0]);
        for &c in &EXP_POLY[1..] {
            p = _mm512_add_pd(_mm512_mul_pd(p, r), _mm512_set1_pd(c));
        }
        let n_bits = _mm512_sub_epi64(_mm512_castpd_si512(shifted), _mm512_castpd_si512(magic));
        let scale = _mm512_castsi512_pd(_mm512_slli_epi64::<52>(_mm512_add_epi64(n_bits, _mm512_set1_epi64(1023))));
        let under = _mm512_cmp_pd_mask::<_CMP_LT_OQ>(x, _mm512_set1_pd(-708.0));
        _mm512_maskz_mov_pd(!under, _mm512_mul_pd(p, scale))
    }
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
    top_raw(logits, k).into_iter().map(|(l, id)| TokenLogprob { token_id: id, logprob: (l - lse) as f32 }).collect()
}

/// The `k` highest raw logprobs, most likely first (ties: lower id first).
pub fn log_softmax_top(logits: &[f32], k: usize) -> Vec<TokenLogprob> {
    top_with_lse(logits, k, log_sum_exp(logits))
}

/// Raw logprob of one token. Panics if `token` is outside `logits`.
pub fn logprob_of(logits: &[f32], token: u32) -> f32 {
    (key(logits[token as usize]) - log_sum_exp(logits)) as f32
}

/// A known token scored under a row's raw distribution: a prompt token, for prompt logprobs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScoredToken {
    pub token_id: u32,
    pub logprob: f32,
    /// 1 + how many tokens are strictly more likely (vLLM's `rank`; ties share a rank).
    pub rank: u32,
    /// The `k` most likely tokens, most likely first.
    pub top: Vec<TokenLogprob>,
}

/// Scores `token` under `logits` (one log-sum-exp for its logprob and the top `k`).
/// Panics if `token` is outside `logits`.
pub fn score_token(logits: &[f32], token: u32, k: usize) -> ScoredToken {
    let lse = log_sum_exp(logits);
    let own = key(logits[token as usize]);
    let above = logits.iter().filter(|&&l| key(l) > own).count();
    ScoredToken {
        token_id: token,
        logprob: (own - lse) as f32,
        rank: above as u32 + 1,
        top: top_with_lse(logits, k, lse),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scored_token_has_its_logprob_rank_and_the_top_list() {
        let logits = [1.0f32, 3.0, 2.0, 3.0, f32::NAN];
        let s = score_token(&logits, 2, 2);
        assert_eq!(s.rank, 3, "two tokens are more likely");
        assert!((s.logprob - logprob_of(&logits, 2)).abs() < 1e-6);
        assert_eq!(s.top, log_softmax_top(&logits, 2));
        assert_eq!(score_token(&logits, 1, 0).rank, 1, "a tie shares the best rank");
        assert!(score_token(&logits, 1, 0).top.is_empty());
    }

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
    fn log_sum_exp_matches_a_plain_f64_sum() {
        let naive = |l: &[f32]| {
            let max = l.iter().map(|&x| key(x)).fold(f64::NEG_INFINITY, f64::max);
            max + l.iter().map(|&x| (key(x) - max).exp()).sum::<f64>().ln()
        };
        for n in [1, 7, 8, 9, 100, 49152] {
            let l: Vec<f32> = (0..n).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 0.03).collect();
            let (got, want) = (log_sum_exp(&l), naive(&l));
            assert!((got - want).abs() < 1e-12 * want.abs().max(1.0), "n={n}: {got} vs {want}");
            let max = l.iter().map(|&x| key(x)).fold(f64::NEG_INFINITY, f64::max);
            assert_eq!(got, max + sum_exp_lanes(&l, max).ln(), "n={n}: the SIMD form must give the portable bits");
        }
        assert_eq!(log_sum_exp(&[f32::NAN, f32::NEG_INFINITY]), f64::NEG_INFINITY);
        let with_nan = log_sum_exp(&[0.0, f32::NAN, 0.0, f32::NEG_INFINITY, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        assert!((with_nan - (8.0f64).ln()).abs() < 1e-12, "NaN and -inf count as 0: {with_nan}");
    }

    #[test]
    fn top_list_breaks_ties_by_lower_id() {
        let top = log_softmax_top(&[1.0, 3.0, 3.0, f32::NAN, 2.0], 3);
        let ids: Vec<u32> = top.iter().map(|t| t.token_id).collect();
        assert_eq!(ids, vec![1, 2, 4]);
        assert!(log_softmax_top(&[1.0], 0).is_empty());
        assert_eq!(log_softmax_top(&[0.0, 0.0], 5).len(), 2, "k larger than the vocabulary");
    }
}
