//! What the row-interleaved kernels ([`super::q4_1x16`], [`super::q8_0x16`]) share: the SIMD
//! level this CPU runs, and per level the accumulator of one activation row's 16 lanes (one
//! lane per weight row), in f32 or in f64 with exact block terms.
//!
//! Every level takes the same floating-point steps per lane in the same order as the portable
//! loops, on exact integer block sums, so all levels agree bit for bit.

/// Which kernel this CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Portable,
    Avx2,
    Avx512Vnni,
}

impl Level {
    /// The best level this CPU has, detected once (kernels ask per group of rows).
    pub fn detect() -> Level {
        static LEVEL: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
        *LEVEL.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                if std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vnni")
                    && crate::simd::has_avx2_fma_f16c()
                {
                    return Level::Avx512Vnni;
                }
                if crate::simd::has_avx2_fma_f16c() {
                    return Level::Avx2;
                }
            }
            Level::Portable
        })
    }

    /// The levels this CPU can run, for tests and benchmarks.
    pub fn available() -> Vec<Level> {
        let mut levels = vec![Level::Portable];
        if crate::simd::has_avx2_fma_f16c() {
            levels.push(Level::Avx2);
        }
        if Level::detect() == Level::Avx512Vnni {
            levels.push(Level::Avx512Vnni);
        }
        levels
    }
}

/// Calls `$level::tile::<A, R>(w, xs, out)` with R = xs.len() (1 to 4), a constant per
/// instance so that the accumulators stay in registers.
macro_rules! by_rows {
    ($level:ident, $acc:ty, $w:expr, $xs:expr, $out:expr) => {
        match $xs.len() {
            1 => $level::tile::<$acc, 1>($w, $xs, $out),
            2 => $level::tile::<$acc, 2>($w, $xs, $out),
            3 => $level::tile::<$acc, 3>($w, $xs, $out),
            _ => $level::tile::<$acc, 4>($w, $xs, $out),
        }
    };
}
pub(crate) use by_rows;

/// Defines a format's `$name(level, w, xs, out)`: out[r·16 + j] = row j of the group · xs[r]
/// for up to TILE activation rows, accumulated in `$acc`, at `level` (the module's `avx512`
/// and `avx2` tiles, or `$portable` per activation row).
macro_rules! level_dots {
    ($(#[$doc:meta])* $name:ident, $acc:ty, $portable:ident, $w:ty, $a:ty) => {
        $(#[$doc])*
        pub fn $name(level: Level, w: &[$w], xs: &[&[$a]], out: &mut [$acc]) {
            assert!(!xs.is_empty() && xs.len() <= TILE && out.len() >= xs.len() * ROWS);
            assert!(xs.iter().all(|x| x.len() == w.len()));
            match level {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Level::detect` found the features; shapes checked above.
                Level::Avx512Vnni => unsafe { by_rows!(avx512, $acc, w, xs, out) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as above.
                Level::Avx2 => unsafe { by_rows!(avx2, $acc, w, xs, out) },
                _ => {
                    for (r, x) in xs.iter().enumerate() {
                        $portable(w, x, &mut out[r * ROWS..(r + 1) * ROWS]);
                    }
                }
            }
        }
    };
}
pub(crate) use level_dots;

/// The 4 activation bytes at `qs[i..]` as one i32, for a broadcast.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn x4(qs: &[i8; 32], i: usize) -> i32 {
    i32::from_le_bytes([qs[i] as u8, qs[i + 1] as u8, qs[i + 2] as u8, qs[i + 3] as u8])
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use std::arch::x86_64::*;

    /// The accumulator of one activation row's 16 lanes: f32, or f64 in two halves.
    pub(in crate::quant) trait Acc: Copy {
        type V: Copy;
        fn zero() -> Self::V;
        /// acc + d·Σq.
        unsafe fn add(acc: Self::V, d: __m512, isum: __m512i) -> Self::V;
        /// acc + (d·Σq + m·s), in the order the portable loop takes.
        unsafe fn add_with_min(acc: Self::V, d: __m512, isum: __m512i, m: __m512, s: __m512) -> Self::V;
        unsafe fn store(acc: Self::V, out: &mut [Self]);
    }

    impl Acc for f32 {
        type V = __m512;
        fn zero() -> __m512 {
            // SAFETY: avx512f is in every caller's features.
            unsafe { _mm512_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn add(acc: __m512, d: __m512, isum: __m512i) -> __m512 {
            _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(isum), acc)
        }
        #[inline(always)]
        unsafe fn add_with_min(acc: __m512, d: __m512, isum: __m512i, m: __m512, s: __m512) -> __m512 {
            _mm512_fmadd_ps(m, s, _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(isum), acc))
        }
        #[inline(always)]
        unsafe fn store(acc: __m512, out: &mut [f32]) {
            _mm512_storeu_ps(out.as_mut_ptr(), acc)
        }
    }

    /// Lanes 8h..8h + 8 of 16 f32, widened to f64.
    #[inline(always)]
    unsafe fn half_pd(v: __m512, h: usize) -> __m512d {
        let bits = _mm512_castps_si512(v);
        let lanes = if h == 0 { _mm512_castsi512_si256(bits) } else { _mm512_extracti64x4_epi64(bits, 1) };
        _mm512_cvtps_pd(_mm256_castsi256_ps(lanes))
    }

    /// Lanes 8h..8h + 8 of 16 i32, as f64 (exact).
    #[inline(always)]
    unsafe fn half_int_pd(v: __m512i, h: usize) -> __m512d {
        let lanes = if h == 0 { _mm512_castsi512_si256(v) } else { _mm512_extracti64x4_epi64(v, 1) };
        _mm512_cvtepi32_pd(lanes)
    }

    impl Acc for f64 {
        type V = [__m512d; 2];
        fn zero() -> [__m512d; 2] {
            // SAFETY: avx512f is in every caller's features.
            unsafe { [_mm512_setzero_pd(); 2] }
        }
        #[inline(always)]
        unsafe fn add(acc: [__m512d; 2], d: __m512, isum: __m512i) -> [__m512d; 2] {
            // d·Σq is exact in f64, so the fused form rounds once, as acc + term does.
            [
                _mm512_fmadd_pd(half_pd(d, 0), half_int_pd(isum, 0), acc[0]),
                _mm512_fmadd_pd(half_pd(d, 1), half_int_pd(isum, 1), acc[1]),
            ]
        }
        #[inline(always)]
        unsafe fn add_with_min(acc: [__m512d; 2], d: __m512, isum: __m512i, m: __m512, s: __m512) -> [__m512d; 2] {
            let ms = _mm512_mul_ps(m, s);
            let term = |h| _mm512_fmadd_pd(half_pd(d, h), half_int_pd(isum, h), half_pd(ms, h));
            [_mm512_add_pd(acc[0], term(0)), _mm512_add_pd(acc[1], term(1))]
        }
        #[inline(always)]
        unsafe fn store(acc: [__m512d; 2], out: &mut [f64]) {
            _mm512_storeu_pd(out.as_mut_ptr(), acc[0]);
            _mm512_storeu_pd(out.as_mut_ptr().add(8), acc[1]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use std::arch::x86_64::*;

    /// As avx512's, for 8 lanes (a tile keeps two, for the 16 rows).
    pub(in crate::quant) trait Acc: Copy {
        type V: Copy;
        fn zero() -> Self::V;
        unsafe fn add(acc: Self::V, d: __m256, isum: __m256i) -> Self::V;
        unsafe fn add_with_min(acc: Self::V, d: __m256, isum: __m256i, m: __m256, s: __m256) -> Self::V;
        unsafe fn store(acc: Self::V, out: &mut [Self]);
    }

    impl Acc for f32 {
        type V = __m256;
        fn zero() -> __m256 {
            // SAFETY: avx is in every caller's features.
            unsafe { _mm256_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn add(acc: __m256, d: __m256, isum: __m256i) -> __m256 {
            _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(isum), acc)
        }
        #[inline(always)]
        unsafe fn add_with_min(acc: __m256, d: __m256, isum: __m256i, m: __m256, s: __m256) -> __m256 {
            _mm256_fmadd_ps(m, s, _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(isum), acc))
        }
        #[inline(always)]
        unsafe fn store(acc: __m256, out: &mut [f32]) {
            _mm256_storeu_ps(out.as_mut_ptr(), acc)
        }
    }

    /// Lanes 4h..4h + 4 of 8 f32 and of 8 i32, widened to f64.
    #[inline(always)]
    unsafe fn halves(v: __m256, h: usize) -> __m256d {
        _mm256_cvtps_pd(if h == 0 { _mm256_castps256_ps128(v) } else { _mm256_extractf128_ps(v, 1) })
    }

    #[inline(always)]
    unsafe fn int_halves(v: __m256i, h: usize) -> __m256d {
        _mm256_cvtepi32_pd(if h == 0 { _mm256_castsi256_si128(v) } else { _mm256_extracti128_si256(v, 1) })
    }

    impl Acc for f64 {
        type V = [__m256d; 2];
        fn zero() -> [__m256d; 2] {
            // SAFETY: avx is in every caller's features.
            unsafe { [_mm256_setzero_pd(); 2] }
        }
        #[inline(always)]
        unsafe fn add(acc: [__m256d; 2], d: __m256, isum: __m256i) -> [__m256d; 2] {
            [
                _mm256_fmadd_pd(halves(d, 0), int_halves(isum, 0), acc[0]),
                _mm256_fmadd_pd(halves(d, 1), int_halves(isum, 1), acc[1]),
            ]
        }
        #[inline(always)]
        unsafe fn add_with_min(acc: [__m256d; 2], d: __m256, isum: __m256i, m: __m256, s: __m256) -> [__m256d; 2] {
            let ms = _mm256_mul_ps(m, s);
            let term = |h| _mm256_fmadd_pd(halves(d, h), int_halves(isum, h), halves(ms, h));
            [_mm256_add_pd(acc[0], term(0)), _mm256_add_pd(acc[1], term(1))]
        }
        #[inline(always)]
        unsafe fn store(acc: [__m256d; 2], out: &mut [f64]) {
            _mm256_storeu_pd(out.as_mut_ptr(), acc[0]);
            _mm256_storeu_pd(out.as_mut_ptr().add(4), acc[1]);
        }
    }
}
