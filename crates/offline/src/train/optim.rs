//! AdamW with decoupled weight decay, global-norm gradient clipping and a warm-up + cosine
//! learning-rate schedule. Ours rather than candle-nn's `AdamW` because a resumed run must
//! continue bit-identically, which needs the moment estimates saved and restored.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.001 }
    }
}

/// One trainable variable with its moments. `decay` is false for norms, biases and tau.
#[derive(Debug)]
struct Slot {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
    decay: bool,
}

#[derive(Debug)]
pub struct AdamW {
    slots: Vec<Slot>,
    params: AdamWParams,
    step: u64,
}

impl AdamW {
    /// `vars`: name, variable, whether weight decay applies. Order is kept (sorted by name by
    /// the caller) so that updates run in the same order on every run.
    pub fn new(vars: Vec<(String, Var, bool)>, params: AdamWParams) -> Result<Self> {
        let slots = vars
            .into_iter()
            .map(|(name, var, decay)| {
                let m = var.zeros_like()?;
                let v = var.zeros_like()?;
                Ok(Slot { name, var, m, v, decay })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { slots, params, step: 0 })
    }

    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// One update with learning rate `lr`. Variables without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step += 1;
        let p = self.params;
        let t = self.step as i32;
        let bc1 = 1.0 - p.beta1.powi(t);
        let bc2 = 1.0 - p.beta2.powi(t);
        for s in &mut self.slots {
            let Some(g) = grads.get(s.var.as_tensor()) else { continue };
            let g = g.to_dtype(s.m.dtype())?;
            s.m = ((&s.m * p.beta1)? + (&g * (1.0 - p.beta1))?)?;
            s.v = ((&s.v * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let m_hat = (&s.m / bc1)?;
            let v_hat = (&s.v / bc2)?;
            let update = (m_hat / (v_hat.sqrt()? + p.eps)?)?;
            let theta = s.var.as_tensor();
            let theta = if s.decay { (theta * (1.0 - lr * p.weight_decay))? } else { theta.clone() };
            s.var.set(&(theta - (update * lr)?)?)?;
        }
        Ok(())
    }

    /// The moments and the step count, as tensors to save next to the weights.
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for s in &self.slots {
            out.insert(format!("adamw.m.{}", s.name), s.m.clone());
            out.insert(format!("adamw.v.{}", s.name), s.v.clone());
        }
        out.insert("adamw.step".into(), Tensor::new(&[self.step as i64], &candle_core::Device::Cpu)?);
        Ok(out)
    }

    /// Restores what [`AdamW::state`] saved.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        for s in &mut self.slots {
            let get = |k: String| {
                state.get(&k).cloned().ok_or_else(|| candle_core::Error::Msg(format!("optimizer state lacks {k}")))
            };
            let dev = s.var.device().clone();
            s.m = get(format!("adamw.m.{}", s.name))?.to_device(&dev)?;
            s.v = get(format!("adamw.v.{}", s.name))?.to_device(&dev)?;
        }
        let step = state
            .get("adamw.step")
            .ok_or_else(|| candle_core::Error::Msg("optimizer state lacks adamw.step".into()))?
            .to_vec1::<i64>()?;
        self.step = step.first().copied().unwrap_or(0).max(0) as u64;
        Ok(())
    }
}

/// The sum of two micro-batches' gradients, variable by variable (gradient accumulation).
pub fn add_grads(mut acc: GradStore, grads: GradStore, vars: &[Var]) -> Result<GradStore> {
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            let sum = match acc.remove(v.as_tensor()) {
                Some(prev) => (prev + g)?,
                None => g.clone(),
            };
            acc.insert(v.as_tensor(), sum);
        }
    }
    Ok(acc)
}

/// Scales every gradient so that their global L2 norm is at most `max_norm`; returns the norm
/// before clipping.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<f64> {
    let mut sq = 0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            sq += g.to_dtype(candle_core::DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
        }
    }
    let norm = sq.sqrt();
    if norm.is_finite() && norm > max_norm && max_norm > 0.0 {
        let scale = max_norm / (norm + 1e-6);
        for v in vars {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), (g * scale)?);
            }
        }
    }
    Ok(norm)
}

/// Linear warm-up to `peak` over `warmup` steps, then cosine decay to `peak * floor` at
/// `total` steps. `step` counts from 0.
pub fn learning_rate(step: u64, warmup: u64, total: u64, peak: f64, floor: f64) -> f64 {
    if warmup > 0 && step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step.saturating_sub(warmup)) as f64 / span).min(1.0);
    let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    peak * (floor + (1.0 - floor) * cos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn schedule_warms_up_then_decays() {
        assert!((learning_rate(0, 10, 100, 1.0, 0.0) - 0.1).abs() < 1e-12);
        assert!((learning_rate(9, 10, 100, 1.0, 0.0) - 1.0).abs() < 1e-12);
        assert!((learning_rate(10, 10, 100, 1.0, 0.0) - 1.0).abs() < 1e-12);
        assert!((learning_rate(55, 10, 100, 1.0, 0.0) - 0.5).abs() < 1e-12);
        assert!(learning_rate(100, 10, 100, 1.0, 0.1) >= 0.1 - 1e-12);
        assert!(learning_rate(99, 10, 100, 1.0, 0.0) < 0.01);
    }

    #[test]
    fn adamw_first_step_moves_by_lr_against_the_gradient() -> Result<()> {
        let x = Var::new(&[1.0f32, -2.0], &Device::Cpu)?;
        let mut opt =
            AdamW::new(vec![("x".into(), x.clone(), false)], AdamWParams { weight_decay: 0.0, ..Default::default() })?;
        let loss = x.as_tensor().sqr()?.sum_all()?; // grad = 2x
        opt.step(&loss.backward()?, 0.1)?;
        // Bias-corrected first Adam step is lr * sign(g) (up to eps).
        let v = x.as_tensor().to_vec1::<f32>()?;
        assert!((v[0] - 0.9).abs() < 1e-5 && (v[1] + 1.9).abs() < 1e-5, "{v:?}");
        Ok(())
    }

    #[test]
    fn weight_decay_is_decoupled() -> Result<()> {
        let x = Var::new(&[1.0f32], &Device::Cpu)?;
        let y = Var::new(&[1.0f32], &Device::Cpu)?;
        let mut opt = AdamW::new(
            vec![("x".into(), x.clone(), true), ("y".into(), y.clone(), true)],
            AdamWParams { weight_decay: 0.5, ..Default::default() },
        )?;
        // Only y has a gradient: x is untouched (no gradient, no decay), y decays and moves.
        let loss = y.as_tensor().sum_all()?;
        opt.step(&loss.backward()?, 0.1)?;
        assert_eq!(x.as_tensor().to_vec1::<f32>()?, vec![1.0]);
        let yv = y.as_tensor().to_vec1::<f32>()?[0];
        assert!((yv - (1.0 * (1.0 - 0.05) - 0.1)).abs() < 1e-5, "{yv}");
        Ok(())
    }

    #[test]
    fn clipping_bounds_the_global_norm() -> Result<()> {
        let x = Var::new(&[3.0f32, 4.0], &Device::Cpu)?;
        let loss = (x.as_tensor().sqr()? * 0.5)?.sum_all()?; // grad = x, norm 5
        let mut grads = loss.backward()?;
        let norm = clip_grad_norm(&mut grads, std::slice::from_ref(&x), 1.0)?;
        assert!((norm - 5.0).abs() < 1e-6);
        let g = grads.get(x.as_tensor()).map(|g| g.to_vec1::<f32>()).transpose()?.unwrap_or_default();
        assert!((g[0] - 0.6).abs() < 1e-5 && (g[1] - 0.8).abs() < 1e-5, "{g:?}");
        Ok(())
    }

    #[test]
    fn state_round_trips() -> Result<()> {
        let x = Var::new(&[1.0f32, 2.0], &Device::Cpu)?;
        let mut opt = AdamW::new(vec![("x".into(), x.clone(), true)], AdamWParams::default())?;
        opt.step(&x.as_tensor().sum_all()?.backward()?, 0.01)?;
        let state = opt.state()?;
        let mut other = AdamW::new(vec![("x".into(), x.clone(), true)], AdamWParams::default())?;
        other.load_state(&state)?;
        assert_eq!(other.step_count(), 1);
        let a = opt.state()?;
        let b = other.state()?;
        for (k, t) in &a {
            let u = &b[k];
            assert_eq!(
                t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?,
                u.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?
            );
        }
        Ok(())
    }
}
