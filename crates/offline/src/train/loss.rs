//! The two NoteLLM losses (NOTELLM.md).
//!
//! - Generative-Contrastive Learning: a batch holds B related pairs as 2B rows, rows `2i` and
//!   `2i + 1` being a pair. With `s = cos(n_i, n_j) * e^tau` and the diagonal masked,
//!   `L_cl = -1/(2B) * sum_i log( exp(s(i, i+)) / sum_{j != i} exp(s(i, j)) )`: every other note of
//!   the batch, from either side of any pair, is a negative.
//! - Collaborative Supervised Fine-Tuning: next-token cross-entropy over the output tokens only,
//!   averaged over every labelled token of the batch.
//! - Total: `(L_cl + alpha * L_gen) / (1 + alpha)`.
//! - Distillation (optional, `--distill`): the KL divergence from a teacher encoder's in-batch
//!   similarity distribution to the student's, added with its own weight.

use candle_core::{DType, Device, Result, Tensor, D};

/// In-batch contrastive loss. `emb`: `[2B, d]`, rows already L2-normalised; `tau`: a scalar
/// (the log of the logit scale, learnable).
pub fn contrastive(emb: &Tensor, tau: &Tensor) -> Result<Tensor> {
    contrastive_masked(emb, tau, &[])
}

/// [`contrastive`] with known partners left out of each other's negatives: for every `(i, j)`
/// of `known` (rows of the batch that are related, other than the pair being scored), row `j`
/// is no negative of row `i` nor `i` of `j`. A pair of rows `2k, 2k + 1` in `known` is
/// ignored: they are each other's positive.
pub fn contrastive_masked(emb: &Tensor, tau: &Tensor, known: &[(usize, usize)]) -> Result<Tensor> {
    let n = emb.dim(0)?;
    if n < 2 || n % 2 != 0 {
        candle_core::bail!("the contrastive loss needs an even number (>= 2) of rows, got {n}");
    }
    let sims = emb.matmul(&emb.t()?)?.broadcast_mul(&tau.exp()?)?;
    let sims = (sims + negative_mask(n, known, emb.device())?)?;
    let log_p = candle_nn::ops::log_softmax(&sims, D::Minus1)?;
    // Row i's positive is its pair: i ^ 1.
    let positives: Vec<u32> = (0..n as u32).map(|i| i ^ 1).collect();
    let positives = Tensor::from_vec(positives, (n, 1), emb.device())?;
    log_p.gather(&positives, 1)?.mean_all()?.neg()
}

/// `-inf`-like on the diagonal so a note is never its own negative, and at both `(i, j)` and
/// `(j, i)` of every known partner that is not row `i`'s positive (a large finite value keeps
/// the backward pass free of NaNs).
fn negative_mask(n: usize, known: &[(usize, usize)], device: &Device) -> Result<Tensor> {
    let mut m = vec![0f32; n * n];
    for i in 0..n {
        m[i * n + i] = -1e9;
    }
    for &(i, j) in known {
        if i >= n || j >= n {
            candle_core::bail!("known partners ({i}, {j}) outside a batch of {n} rows");
        }
        if i != j && i ^ 1 != j {
            m[i * n + j] = -1e9;
            m[j * n + i] = -1e9;
        }
    }
    Tensor::from_vec(m, (n, n), device)
}

/// Distillation of a teacher's in-batch similarities: for every row `i` of the batch, the KL
/// divergence `KL(p_t(i) || p_s(i))` between the teacher's and the student's distributions over
/// the batch's other rows, `p(i, j) = softmax_j(cos(i, j) * scale)` with the diagonal masked
/// (the student's scale `e^tau`, the teacher's `teacher_scale`), averaged over the rows.
/// `student`: `[n, d]` and `teacher`: `[n, d_t]`, rows L2-normalised; the teacher gets no
/// gradient.
pub fn distillation(student: &Tensor, tau: &Tensor, teacher: &Tensor, teacher_scale: f64) -> Result<Tensor> {
    let n = student.dim(0)?;
    if n < 2 || teacher.dim(0)? != n {
        candle_core::bail!("distillation needs the same n >= 2 rows from both models, got {n} and {}", teacher.dim(0)?);
    }
    let mask = negative_mask(n, &[], student.device())?;
    let s = (student.matmul(&student.t()?)?.broadcast_mul(&tau.exp()?)? + &mask)?;
    let t = ((teacher.matmul(&teacher.t()?)? * teacher_scale)? + &mask)?.detach();
    let log_s = candle_nn::ops::log_softmax(&s, D::Minus1)?;
    let log_t = candle_nn::ops::log_softmax(&t, D::Minus1)?;
    // p_t (log p_t - log p_s); the masked diagonal has p_t = 0 and contributes nothing.
    let kl = (log_t.exp()? * (log_t - log_s)?)?.sum(D::Minus1)?;
    kl.mean_all()
}

/// Mean next-token cross-entropy of `logits` `[T, vocab]` (f32) against `targets` `[T]` (u32).
pub fn generation(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    candle_nn::loss::cross_entropy(&logits.to_dtype(DType::F32)?, targets)
}

/// `(L_cl + alpha L_gen) / (1 + alpha)`; without labelled tokens, `L_cl` alone.
pub fn total(cl: &Tensor, gen: Option<&Tensor>, alpha: f64) -> Result<Tensor> {
    match gen {
        Some(g) if alpha > 0.0 => ((cl + (g * alpha)?)? / (1.0 + alpha))?.contiguous(),
        _ => Ok(cl.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    #[test]
    fn contrastive_matches_hand_computation() -> Result<()> {
        // Four notes: pairs (0, 1) and (2, 3).
        let rows = [unit(&[1.0, 0.0]), unit(&[0.8, 0.6]), unit(&[0.0, 1.0]), unit(&[-0.6, 0.8])];
        let flat: Vec<f32> = rows.concat();
        let emb = Tensor::from_vec(flat, (4, 2), &Device::Cpu)?;
        let tau = Tensor::new(0.5f32, &Device::Cpu)?;
        let loss = contrastive(&emb, &tau)?.to_scalar::<f32>()?;
        let scale = 0.5f64.exp();
        let cos = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x * y) as f64).sum::<f64>();
        let mut expect = 0.0;
        for i in 0..4 {
            let pos = i ^ 1;
            let denom: f64 = (0..4).filter(|&j| j != i).map(|j| (cos(&rows[i], &rows[j]) * scale).exp()).sum();
            expect -= ((cos(&rows[i], &rows[pos]) * scale).exp() / denom).ln();
        }
        expect /= 4.0;
        assert!((loss as f64 - expect).abs() < 1e-5, "{loss} vs {expect}");
        Ok(())
    }

    /// Rows 0-1 and 2-3 are pairs; row 2 is also a known partner of row 0. Masked, row 2 is no
    /// negative of row 0 (nor 0 of 2), while the stranger row 3 still is.
    #[test]
    fn a_known_partner_is_no_negative_and_a_stranger_is() -> Result<()> {
        let rows = [unit(&[1.0, 0.0]), unit(&[0.8, 0.6]), unit(&[0.9, 0.1]), unit(&[-0.6, 0.8])];
        let emb = Tensor::from_vec(rows.concat(), (4, 2), &Device::Cpu)?;
        let tau = Tensor::new(1.0f32, &Device::Cpu)?;
        let masked = contrastive_masked(&emb, &tau, &[(0, 2)])?.to_scalar::<f32>()? as f64;
        let scale = 1f64.exp();
        let cos = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x * y) as f64).sum::<f64>();
        let negatives =
            |i: usize| -> Vec<usize> { (0..4).filter(|&j| j != i && !matches!((i, j), (0, 2) | (2, 0))).collect() };
        let mut expect = 0.0;
        for i in 0..4 {
            let denom: f64 = negatives(i).iter().map(|&j| (cos(&rows[i], &rows[j]) * scale).exp()).sum();
            expect -= ((cos(&rows[i], &rows[i ^ 1]) * scale).exp() / denom).ln();
        }
        expect /= 4.0;
        assert!((masked - expect).abs() < 1e-5, "{masked} vs {expect}");
        // the masking matters here: unmasked, row 2 (close to row 0) is a hard negative
        let plain = contrastive(&emb, &tau)?.to_scalar::<f32>()? as f64;
        assert!(plain > masked + 0.05, "{plain} vs {masked}");
        // a positive listed as known changes nothing; a row outside the batch is an error
        let same = contrastive_masked(&emb, &tau, &[(0, 1), (3, 2)])?.to_scalar::<f32>()? as f64;
        assert!((same - plain).abs() < 1e-6);
        assert!(contrastive_masked(&emb, &tau, &[(0, 9)]).is_err());
        Ok(())
    }

    #[test]
    fn distillation_matches_hand_computation_and_is_zero_for_the_teacher_itself() -> Result<()> {
        let rows = [unit(&[1.0, 0.0]), unit(&[0.8, 0.6]), unit(&[0.0, 1.0])];
        let teacher_rows = [unit(&[1.0, 0.2]), unit(&[0.1, 1.0]), unit(&[-1.0, 0.3])];
        let student = Tensor::from_vec(rows.concat(), (3, 2), &Device::Cpu)?;
        let teacher = Tensor::from_vec(teacher_rows.concat(), (3, 2), &Device::Cpu)?;
        let tau = Tensor::new(1.5f32, &Device::Cpu)?;
        let got = distillation(&student, &tau, &teacher, 20.0)?.to_scalar::<f32>()? as f64;
        let cos = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x * y) as f64).sum::<f64>();
        let dist = |r: &[Vec<f32>], i: usize, scale: f64| -> Vec<f64> {
            let others: Vec<usize> = (0..3).filter(|&j| j != i).collect();
            let z: f64 = others.iter().map(|&j| (cos(&r[i], &r[j]) * scale).exp()).sum();
            others.iter().map(|&j| (cos(&r[i], &r[j]) * scale).exp() / z).collect()
        };
        let mut expect = 0.0;
        for i in 0..3 {
            let (p, q) = (dist(&teacher_rows, i, 20.0), dist(&rows, i, 1.5f64.exp()));
            expect += p.iter().zip(&q).map(|(p, q)| p * (p / q).ln()).sum::<f64>();
        }
        expect /= 3.0;
        assert!((got - expect).abs() < 1e-4, "{got} vs {expect}");
        // A student that is the teacher at the teacher's scale has nothing left to learn.
        let same = distillation(&teacher, &Tensor::new(20f32.ln(), &Device::Cpu)?, &teacher, 20.0)?;
        assert!(same.to_scalar::<f32>()?.abs() < 1e-5);
        assert!(distillation(&student, &tau, &teacher.narrow(0, 0, 2)?, 20.0).is_err());
        Ok(())
    }

    #[test]
    fn contrastive_rejects_odd_batches() -> Result<()> {
        let emb = Tensor::ones((3, 2), DType::F32, &Device::Cpu)?;
        assert!(contrastive(&emb, &Tensor::new(0f32, &Device::Cpu)?).is_err());
        Ok(())
    }

    #[test]
    fn generation_matches_hand_computation() -> Result<()> {
        let logits = Tensor::new(&[[2.0f32, 0.0, 0.0], [0.0, 1.0, 3.0]], &Device::Cpu)?;
        let targets = Tensor::new(&[0u32, 1], &Device::Cpu)?;
        let got = generation(&logits, &targets)?.to_scalar::<f32>()? as f64;
        let lse = |v: &[f64]| v.iter().map(|x| x.exp()).sum::<f64>().ln();
        let expect = ((lse(&[2.0, 0.0, 0.0]) - 2.0) + (lse(&[0.0, 1.0, 3.0]) - 1.0)) / 2.0;
        assert!((got - expect).abs() < 1e-5, "{got} vs {expect}");
        Ok(())
    }

    #[test]
    fn total_weights_the_two_losses() -> Result<()> {
        let cl = Tensor::new(2.0f32, &Device::Cpu)?;
        let gen = Tensor::new(4.0f32, &Device::Cpu)?;
        let t = total(&cl, Some(&gen), 0.01)?.to_scalar::<f32>()?;
        assert!((t as f64 - (2.0 + 0.04) / 1.01).abs() < 1e-6);
        assert_eq!(total(&cl, Some(&gen), 0.0)?.to_scalar::<f32>()?, 2.0);
        assert_eq!(total(&cl, None, 0.01)?.to_scalar::<f32>()?, 2.0);
        Ok(())
    }
}
