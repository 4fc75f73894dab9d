//! Reciprocal rank fusion of two scorers: would a hybrid channel (NoteLLM merged with TF-IDF)
//! beat either alone?
//!
//! For a query row, each scorer ranks the pool; a note's fused score is
//! `sum over scorers of 1 / (k + rank)`, with `rank` starting at 1 and `k = 60` as Cormack et al.
//! (SIGIR 2009) recommend. Tied scores share the mean of the ranks they span, so TF-IDF's many
//! zero scores neither help nor hurt one note over another.

use super::error::{EvalError, Result};
use super::recall::Scorer;

/// The `k` of RRF unless told otherwise.
pub const RRF_K: f32 = 60.0;

/// Two scorers over the same pool, fused by reciprocal rank.
pub struct RrfScorer<'a> {
    a: &'a dyn Scorer,
    b: &'a dyn Scorer,
    k: f32,
}

impl<'a> RrfScorer<'a> {
    pub fn new(a: &'a dyn Scorer, b: &'a dyn Scorer, k: f32) -> Result<Self> {
        if a.pool_len() != b.pool_len() {
            return Err(EvalError::Input(format!("fusion needs one pool: {} vs {} notes", a.pool_len(), b.pool_len())));
        }
        if !(k.is_finite() && k >= 0.0) {
            return Err(EvalError::Input(format!("RRF k must be a non-negative number, not {k}")));
        }
        Ok(Self { a, b, k })
    }
}

/// Mean 1-based ranks of `row` (highest score first; ties share the mean of their ranks).
pub fn ranks(row: &[f32]) -> Vec<f32> {
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&x, &y| row[y].total_cmp(&row[x]));
    let mut out = vec![0f32; row.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i + 1;
        while j < order.len() && row[order[j]] == row[order[i]] {
            j += 1;
        }
        // positions i..j (0-based) hold ranks i+1..=j: their mean
        let mean = (i + 1 + j) as f32 / 2.0;
        for &o in &order[i..j] {
            out[o] = mean;
        }
        i = j;
    }
    out
}

impl Scorer for RrfScorer<'_> {
    fn pool_len(&self) -> usize {
        self.a.pool_len()
    }

    fn score_rows(&self, queries: &[usize], out: &mut Vec<f32>) -> Result<()> {
        let n = self.pool_len();
        let (mut ra, mut rb) = (Vec::new(), Vec::new());
        self.a.score_rows(queries, &mut ra)?;
        self.b.score_rows(queries, &mut rb)?;
        out.clear();
        out.reserve(queries.len() * n);
        for q in 0..queries.len() {
            let (xa, xb) = (ranks(&ra[q * n..(q + 1) * n]), ranks(&rb[q * n..(q + 1) * n]));
            out.extend(xa.iter().zip(&xb).map(|(a, b)| 1.0 / (self.k + a) + 1.0 / (self.k + b)));
        }
        Ok(())
    }

    fn chunk_size(&self) -> usize {
        self.a.chunk_size().min(self.b.chunk_size())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Vec<Vec<f32>>);

    impl Scorer for Fixed {
        fn pool_len(&self) -> usize {
            self.0.len()
        }
        fn score_rows(&self, queries: &[usize], out: &mut Vec<f32>) -> Result<()> {
            out.clear();
            for &q in queries {
                out.extend(&self.0[q]);
            }
            Ok(())
        }
    }

    #[test]
    fn ranks_share_ties() {
        assert_eq!(ranks(&[0.5, 0.9, 0.5, 0.1]), vec![2.5, 1.0, 2.5, 4.0]);
        assert_eq!(ranks(&[0.0, 0.0, 0.0]), vec![2.0, 2.0, 2.0]);
        assert!(ranks(&[]).is_empty());
    }

    #[test]
    fn fusion_rewards_agreement() {
        let a = Fixed(vec![vec![9.0, 0.6, 0.9, 0.1]; 4]);
        let b = Fixed(vec![vec![9.0, 0.6, 0.1, 0.9]; 4]);
        let f = RrfScorer::new(&a, &b, 0.0).unwrap();
        let mut out = Vec::new();
        f.score_rows(&[0], &mut out).unwrap();
        // ranks: note 0 is 1st for both, note 1 is 3rd for both, notes 2/3 are 2nd and 4th.
        let want = [2.0, 2.0 / 3.0, 0.5 + 0.25, 0.25 + 0.5];
        for (g, w) in out.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{out:?}");
        }
        assert!(RrfScorer::new(&a, &Fixed(vec![vec![0.0]]), 60.0).is_err());
    }
}
