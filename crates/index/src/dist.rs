//! The distance the HNSW graph is built with: `1 - dot` over unit-norm vectors, clamped at 0.
//!
//! Why not hnsw_rs's `DistDot`: anndists 0.1.5 computes it with `assert!(1 - dot >= 0)`, and the
//! dot product of a unit vector with itself is routinely `1.0000001` in f32, so a note searching
//! for its own neighbours (what `/related` does) would panic. Clamping keeps the graph's
//! invariants (distances are finite and non-negative) and changes no ranking that matters.

use hnsw_rs::anndists::dist::distances::Distance;

/// Cosine distance for unit-norm vectors: `max(0, 1 - a·b)`. The search score is `1 - distance`.
#[derive(Debug, Default, Clone, Copy)]
pub struct UnitDot;

impl Distance<f32> for UnitDot {
    #[inline]
    fn eval(&self, va: &[f32], vb: &[f32]) -> f32 {
        (1.0 - dot(va, vb)).max(0.0)
    }
}

/// Dot product over the common length of `a` and `b`: AVX2 with FMA where the CPU has them
/// (checked once, at run time: the default build targets baseline x86-64, i.e. SSE2), the
/// portable loop otherwise. The two differ only in rounding (FMA, summation order).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { dot_avx2_fma(a, b) };
    }
    dot_portable(a, b)
}

/// 32 floats per step in four independent FMA chains, then 8 per step, then the tail.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2_fma(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY (every load): `i + 8 <= n` for each 8-float load, and both slices hold `n` floats.
    while i + 32 <= n {
        for (j, acc) in acc.iter_mut().enumerate() {
            let o = i + 8 * j;
            *acc = _mm256_fmadd_ps(unsafe { _mm256_loadu_ps(pa.add(o)) }, unsafe { _mm256_loadu_ps(pb.add(o)) }, *acc);
        }
        i += 32;
    }
    while i + 8 <= n {
        acc[0] = _mm256_fmadd_ps(unsafe { _mm256_loadu_ps(pa.add(i)) }, unsafe { _mm256_loadu_ps(pb.add(i)) }, acc[0]);
        i += 8;
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let half = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps::<1>(sum));
    let quad = _mm_add_ps(half, _mm_movehl_ps(half, half));
    let one = _mm_add_ss(quad, _mm_shuffle_ps::<0b01>(quad, quad));
    _mm_cvtss_f32(one) + a[i..n].iter().zip(&b[i..n]).map(|(x, y)| x * y).sum::<f32>()
}

/// Dot product with eight independent accumulators, so that the compiler can keep the lanes in
/// SIMD registers (a single running sum is a serial dependency chain it may not reorder).
#[inline]
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let chunks_a = a.chunks_exact(8);
    let chunks_b = b.chunks_exact(8);
    let tail: f32 = chunks_a.remainder().iter().zip(chunks_b.remainder()).map(|(x, y)| x * y).sum();
    for (ca, cb) in chunks_a.zip(chunks_b) {
        for i in 0..8 {
            acc[i] += ca[i] * cb[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive_for_all_tail_lengths() {
        for n in 0..80 {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.91).cos()).collect();
            let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - naive).abs() < 1e-4, "n={n}");
            assert!((dot_portable(&a, &b) - naive).abs() < 1e-4, "n={n}");
            // Unequal lengths: the common prefix.
            let longer: Vec<f32> = b.iter().copied().chain([5.0, 7.0]).collect();
            assert!((dot(&a, &longer) - naive).abs() < 1e-4, "n={n}");
        }
    }

    #[test]
    fn distance_never_negative_for_self() {
        let v: Vec<f32> = (0..128).map(|i| ((i * 7919) % 13) as f32 - 6.0).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let v: Vec<f32> = v.iter().map(|x| x / norm).collect();
        let d = UnitDot.eval(&v, &v);
        assert!((0.0..1e-5).contains(&d));
    }
}
