//! Inner loops of attention over one run of consecutive cache slots (keys or values `stride`
//! floats apart, as they sit in a paged block): scores, softmax, probability-weighted V sum.
//!
//! Two implementations behind one trait: [`Portable`], plain loops, and (x86_64) [`Avx2`], a
//! token that exists only when the CPU has AVX2+FMA. The crate is built for baseline x86-64, so
//! without explicit intrinsics these loops would run 4 lanes wide with serial horizontal sums.

/// The three inner loops; `self` is a zero-sized capability token.
pub(crate) trait AttnKernels: Copy + Send + Sync {
    /// scores[i] = scale · (q · key_i), key_i = keys[i·stride..][..q.len()].
    fn qk(self, q: &[f32], keys: &[f32], stride: usize, scale: f32, scores: &mut [f32]);
    /// x ← softmax(x), subtracting the max first so exp cannot overflow.
    fn softmax(self, x: &mut [f32]);
    /// o += Σ p[i] · value_i, value_i = values[i·stride..][..o.len()].
    fn pv(self, p: &[f32], values: &[f32], stride: usize, o: &mut [f32]);
}

/// The run's last vector must lie inside the slice (raw-pointer loops rely on it).
fn check_run(len: usize, n: usize, stride: usize, hd: usize) {
    assert!(n == 0 || (n - 1) * stride + hd <= len, "attention: run outside the cache");
}

#[derive(Clone, Copy)]
pub(crate) struct Portable;

impl AttnKernels for Portable {
    fn qk(self, q: &[f32], keys: &[f32], stride: usize, scale: f32, scores: &mut [f32]) {
        check_run(keys.len(), scores.len(), stride, q.len());
        for (i, s) in scores.iter_mut().enumerate() {
            *s = dot(q, &keys[i * stride..i * stride + q.len()]) * scale;
        }
    }

    fn softmax(self, x: &mut [f32]) {
        let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let mut sum = 0.0f32;
        for v in x.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        let inv = 1.0 / sum;
        x.iter_mut().for_each(|v| *v *= inv);
    }

    fn pv(self, p: &[f32], values: &[f32], stride: usize, o: &mut [f32]) {
        let hd = o.len();
        check_run(values.len(), p.len(), stride, hd);
        for (i, &pi) in p.iter().enumerate() {
            for (od, &vd) in o.iter_mut().zip(&values[i * stride..i * stride + hd]) {
                *od += pi * vd;
            }
        }
    }
}

/// Dot product with eight independent partial sums (vectorizes without fast-math), reduced
/// pairwise rather than in one serial chain.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut l = [0.0f32; 8];
    let body = a.len() - a.len() % 8;
    for (x, y) in a[..body].chunks_exact(8).zip(b[..body].chunks_exact(8)) {
        for i in 0..8 {
            l[i] += x[i] * y[i];
        }
    }
    let tail: f32 = a[body..].iter().zip(&b[body..]).map(|(x, y)| x * y).sum();
    ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7])) + tail
}

#[cfg(target_arch = "x86_64")]
pub(crate) use avx2::Avx2;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{check_run, AttnKernels, Portable};
    use crate::simd::avx2::{exp, hsum};

    /// Proof that the CPU has AVX2 and FMA: only [`Avx2::detect`] makes one.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx2(());

    impl Avx2 {
        pub(crate) fn detect() -> Option<Self> {
            crate::simd::has_avx2_fma().then_some(Avx2(()))
        }
    }

    impl AttnKernels for Avx2 {
        fn qk(self, q: &[f32], keys: &[f32], stride: usize, scale: f32, scores: &mut [f32]) {
            if !q.len().is_multiple_of(8) {
                return Portable.qk(q, keys, stride, scale, scores);
            }
            check_run(keys.len(), scores.len(), stride, q.len());
            // SAFETY: the token proves AVX2+FMA; check_run bounds every key read.
            unsafe { qk(q, keys.as_ptr(), stride, scale, scores) }
        }

        fn softmax(self, x: &mut [f32]) {
            // SAFETY: the token proves AVX2+FMA.
            unsafe { softmax(x) }
        }

        fn pv(self, p: &[f32], values: &[f32], stride: usize, o: &mut [f32]) {
            check_run(values.len(), p.len(), stride, o.len());
            // SAFETY (both arms): the token proves AVX2+FMA; check_run bounds every value read,
            // and each arm's chunk width divides o.len().
            unsafe {
                if o.len().is_multiple_of(64) {
                    pv::<8>(p, values.as_ptr(), stride, o)
                } else if o.len().is_multiple_of(8) {
                    pv::<1>(p, values.as_ptr(), stride, o)
                } else {
                    Portable.pv(p, values, stride, o)
                }
            }
        }
    }

    /// Sums of each of eight vectors, as one vector: two hadd levels, then add the halves.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum8(v: &[__m256; 8]) -> __m256 {
        let h0123 = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
        let h4567 = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
        // Low 128 bits hold partial sums over elements 0..4, high 128 bits over 4..8.
        let lo = _mm256_permute2f128_ps(h0123, h4567, 0x20);
        let hi = _mm256_permute2f128_ps(h0123, h4567, 0x31);
        _mm256_add_ps(lo, hi)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hmax(v: __m256) -> f32 {
        let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_max_ss(s, _mm_shuffle_ps(s, s, 0x55)))
    }

    /// Eight keys at a time, one accumulator each, so the per-key horizontal sum becomes one
    /// shared 8-way reduction. Requires q.len() % 8 == 0.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn qk(q: &[f32], k: *const f32, stride: usize, scale: f32, scores: &mut [f32]) {
        let (hd, n) = (q.len(), scores.len());
        let sc = _mm256_set1_ps(scale);
        let mut i = 0;
        while i + 8 <= n {
            let mut acc = [_mm256_setzero_ps(); 8];
            for d in (0..hd).step_by(8) {
                let qv = _mm256_loadu_ps(q.as_ptr().add(d));
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(_mm256_loadu_ps(k.add((i + j) * stride + d)), qv, *a);
                }
            }
            _mm256_storeu_ps(scores.as_mut_ptr().add(i), _mm256_mul_ps(hsum8(&acc), sc));
            i += 8;
        }
        for (j, s) in scores.iter_mut().enumerate().skip(i) {
            let mut acc = _mm256_setzero_ps();
            for d in (0..hd).step_by(8) {
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(k.add(j * stride + d)), _mm256_loadu_ps(q.as_ptr().add(d)), acc);
            }
            *s = hsum(acc) * scale;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn softmax(x: &mut [f32]) {
        let n = x.len();
        let body = n - n % 8;
        let p = x.as_mut_ptr();
        let mut vmax = _mm256_set1_ps(f32::NEG_INFINITY);
        for i in (0..body).step_by(8) {
            vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(p.add(i)));
        }
        let max = x[body..].iter().fold(hmax(vmax), |m, &v| m.max(v));
        let (vm, mut vsum) = (_mm256_set1_ps(max), _mm256_setzero_ps());
        for i in (0..body).step_by(8) {
            let e = exp(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), vm));
            _mm256_storeu_ps(p.add(i), e);
            vsum = _mm256_add_ps(vsum, e);
        }
        let mut sum = hsum(vsum);
        for v in &mut x[body..] {
            *v = (*v - max).exp();
            sum += *v;
        }
        let inv = 1.0 / sum;
        let vinv = _mm256_set1_ps(inv);
        for i in (0..body).step_by(8) {
            _mm256_storeu_ps(p.add(i), _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), vinv));
        }
        x[body..].iter_mut().for_each(|v| *v *= inv);
    }

    /// o += Σ p_i · v_i, holding N vectors (8·N floats) of o in registers across the whole run.
    /// Requires o.len() % (8·N) == 0.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn pv<const N: usize>(p: &[f32], v: *const f32, stride: usize, o: &mut [f32]) {
        for c in (0..o.len()).step_by(8 * N) {
            let op = o.as_mut_ptr().add(c);
            let mut acc = [_mm256_setzero_ps(); N];
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm256_loadu_ps(op.add(8 * j));
            }
            for (i, &pi) in p.iter().enumerate() {
                let (w, vp) = (_mm256_set1_ps(pi), v.add(i * stride + c));
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(w, _mm256_loadu_ps(vp.add(8 * j)), *a);
                }
            }
            for (j, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(op.add(8 * j), *a);
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    //! The public tests only reach the implementation the CPU selects; here both are compared.
    use super::*;

    fn rand_vec(seed: &mut u64, n: usize, amp: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                ((*seed >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * amp
            })
            .collect()
    }

    fn close(a: &[f32], b: &[f32], tol: f32) {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "[{i}] {x} vs {y}");
        }
    }

    #[test]
    fn avx2_matches_portable() {
        let Some(fast) = Avx2::detect() else { return };
        let mut seed = 7u64;
        for hd in [8, 12, 16, 64, 128] {
            let stride = hd * 3 + 8;
            for n in [0, 1, 7, 8, 9, 16, 17] {
                let q = rand_vec(&mut seed, hd, 1.0);
                let kv = rand_vec(&mut seed, n.max(1) * stride, 1.0);
                let (mut a, mut b) = (vec![0.0; n], vec![0.0; n]);
                fast.qk(&q, &kv, stride, 0.3, &mut a);
                Portable.qk(&q, &kv, stride, 0.3, &mut b);
                close(&a, &b, 1e-5);

                let p = rand_vec(&mut seed, n, 1.0);
                let (mut oa, mut ob) = (q.clone(), q.clone());
                fast.pv(&p, &kv, stride, &mut oa);
                Portable.pv(&p, &kv, stride, &mut ob);
                close(&oa, &ob, 1e-5);
            }
        }
        // Scores far apart (one dominates, others underflow) and all below exp's range.
        // Multiples of 1/8 below 2^10, so shifting by -1024 is exact and must not change a thing.
        for (n, amp) in [(1, 1.0), (7, 1.0), (8, 30.0), (100, 200.0)] {
            let x: Vec<f32> = rand_vec(&mut seed, n, amp).iter().map(|v| (v * 8.0).round() / 8.0).collect();
            let mut want = x.clone();
            Portable.softmax(&mut want);
            for shift in [0.0, -1024.0] {
                let mut got: Vec<f32> = x.iter().map(|v| v + shift).collect();
                fast.softmax(&mut got);
                close(&got, &want, 1e-6);
            }
            assert!((want.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    #[should_panic(expected = "outside the cache")]
    fn run_past_the_cache_panics() {
        let mut scores = [0.0; 3];
        // Three keys at stride 10 need 2 · 10 + 8 floats; 27 is one short.
        match Avx2::detect() {
            Some(fast) => fast.qk(&[0.0; 8], &[0.0; 27], 10, 1.0, &mut scores),
            None => Portable.qk(&[0.0; 8], &[0.0; 27], 10, 1.0, &mut scores),
        }
    }
}
