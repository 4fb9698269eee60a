//! Shared x86-64 SIMD pieces. The crate is compiled for baseline x86-64 (SSE2), so AVX2+FMA
//! code paths are selected at run time; these helpers are the building blocks they share.

/// Whether this CPU can run the `#[target_feature(enable = "avx2,fma")]` paths.
pub(crate) fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU can also convert f16 in registers (every AVX2 CPU can; checked anyway).
pub(crate) fn has_avx2_fma_f16c() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        has_avx2_fma() && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 0x55)))
    }

    /// The sum of 4 f64 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn hsum_pd(v: __m256d) -> f64 {
        let s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
        _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)))
    }

    /// 8 i32 lanes summed pairwise (exactly, as integers) into 4 f64 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn i32x8_to_f64x4(v: __m256i) -> __m256d {
        _mm256_cvtepi32_pd(_mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1)))
    }

    /// exp for 8 lanes (Cephes expf: range reduction by ln 2, degree-5 polynomial); relative
    /// error ~1e-7; clamps to ±88.38, so very negative inputs give ~0 and +inf stays finite.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn exp(x: __m256) -> __m256 {
        let x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.376_26)), _mm256_set1_ps(-88.376_26));
        let fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E), _mm256_set1_ps(0.5)));
        // ln 2 split in two so x - n·ln 2 stays exact.
        let x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693_359_4), x);
        let x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.121_944_4e-4), x);
        let mut y = _mm256_set1_ps(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
            y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(c));
        }
        let y = _mm256_add_ps(_mm256_fmadd_ps(y, _mm256_mul_ps(x, x), x), _mm256_set1_ps(1.0));
        let pow2n = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)));
        _mm256_mul_ps(y, _mm256_castsi256_ps(pow2n))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn exp_is_accurate_over_the_softmax_and_silu_range() {
            if !crate::simd::has_avx2_fma() {
                return;
            }
            let xs: Vec<f32> = (0..=16000).map(|i| -80.0 + i as f32 * 0.01).collect();
            for c in xs.chunks_exact(8) {
                let mut got = [0.0f32; 8];
                // SAFETY: features detected above; both arrays hold 8 floats.
                unsafe { _mm256_storeu_ps(got.as_mut_ptr(), exp(_mm256_loadu_ps(c.as_ptr()))) };
                for (&x, &g) in c.iter().zip(&got) {
                    let want = (x as f64).exp();
                    assert!(((g as f64 - want) / want).abs() < 1e-6, "exp({x}) = {g}, want {want}");
                }
            }
        }
    }
}
