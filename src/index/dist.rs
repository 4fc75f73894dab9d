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

/// Dot product with eight independent accumulators, so that the compiler can keep the lanes in
/// SIMD registers (a single running sum is a serial dependency chain it may not reorder).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
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
        for n in 0..40 {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.91).cos()).collect();
            let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - naive).abs() < 1e-4, "n={n}");
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
