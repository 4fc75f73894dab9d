//! The trainable building blocks of the connector, in ops that all have a backward pass
//! (candle's fused `layer_norm` and `softmax_last_dim` have none): a LayerNorm, a multi-head
//! attention over a separate key/value source, and the feed-forward block.
//!
//! Every weight is taken with `get_with_hints`, so the same code initialises fresh weights from
//! a `VarMap` (to train) and loads stored ones (the hint is then ignored).

use candle_core::{Module, Tensor, D};
use candle_nn::{Init, Linear, VarBuilder};

use crate::error::Result;

/// LayerNorm with a weight and a bias, written out so it is differentiable.
#[derive(Debug, Clone)]
pub struct Norm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl Norm {
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(dim, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(dim, "bias", Init::Const(0.0))?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let y = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Ok(y.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)?)
    }
}

/// Multi-head attention of queries `x` (`[b, n, dim]`) over a source (`[b, m, source_dim]`):
/// self-attention when the source is `x`, cross-attention otherwise. No mask: every query and
/// every image token is real.
#[derive(Debug, Clone)]
pub struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
}

impl Attention {
    pub fn new(dim: usize, source_dim: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            q: candle_nn::linear(dim, dim, vb.pp("query"))?,
            k: candle_nn::linear(source_dim, dim, vb.pp("key"))?,
            v: candle_nn::linear(source_dim, dim, vb.pp("value"))?,
            out: candle_nn::linear(dim, dim, vb.pp("output"))?,
            heads,
        })
    }

    pub fn forward(&self, x: &Tensor, source: &Tensor) -> Result<Tensor> {
        let (b, n, dim) = x.dims3()?;
        let m = source.dim(1)?;
        let hd = dim / self.heads;
        let split = |t: Tensor, len: usize| -> Result<Tensor> {
            Ok(t.reshape((b, len, self.heads, hd))?.transpose(1, 2)?.contiguous()?)
        };
        let q = split(self.q.forward(x)?, n)?;
        let k = split(self.k.forward(source)?, m)?;
        let v = split(self.v.forward(source)?, m)?;
        let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?;
        let attn = candle_nn::ops::softmax(&scores, D::Minus1)?.matmul(&v)?;
        Ok(self.out.forward(&attn.transpose(1, 2)?.reshape((b, n, dim))?)?)
    }
}

/// `fc2(gelu(fc1(x)))`, exact (erf) GELU.
#[derive(Debug, Clone)]
pub struct FeedForward {
    fc1: Linear,
    fc2: Linear,
}

impl FeedForward {
    pub fn new(dim: usize, inner: usize, out: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: candle_nn::linear(dim, inner, vb.pp("fc1"))?,
            fc2: candle_nn::linear(inner, out, vb.pp("fc2"))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.fc2.forward(&self.fc1.forward(x)?.gelu_erf()?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    #[test]
    fn norm_matches_candles_fused_layer_norm() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 3.0, (2, 5, 8), &dev).unwrap();
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let norm = Norm::new(8, 1e-6, vb).unwrap();
        let ours = norm.forward(&x).unwrap();
        let (w, b) = (Tensor::ones(8, DType::F32, &dev).unwrap(), Tensor::zeros(8, DType::F32, &dev).unwrap());
        let fused = candle_nn::ops::layer_norm(&x, &w, &b, 1e-6).unwrap();
        let diff = (ours - fused).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn attention_rows_are_convex_combinations_of_the_values() {
        // With the value and output maps the identity and zero biases, every output row is a
        // softmax-weighted mean of the source rows, so it lies inside their range.
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let attn = Attention::new(4, 4, 2, vb).unwrap();
        for (name, var) in vm.data().lock().unwrap().iter() {
            let t = var.as_tensor();
            if name.ends_with("weight") && (name.starts_with("value") || name.starts_with("output")) {
                var.set(&Tensor::eye(4, DType::F32, &dev).unwrap()).unwrap();
            } else if name.ends_with("bias") {
                var.set(&Tensor::zeros(t.dims(), DType::F32, &dev).unwrap()).unwrap();
            }
        }
        let x = Tensor::randn(0f32, 1.0, (1, 3, 4), &dev).unwrap();
        let src = Tensor::randn(0f32, 1.0, (1, 6, 4), &dev).unwrap();
        let out = attn.forward(&x, &src).unwrap().squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        let src = src.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        for row in out {
            for (c, v) in row.iter().enumerate() {
                let lo = src.iter().map(|r| r[c]).fold(f32::INFINITY, f32::min);
                let hi = src.iter().map(|r| r[c]).fold(f32::NEG_INFINITY, f32::max);
                assert!(*v >= lo - 1e-5 && *v <= hi + 1e-5, "{v} outside [{lo}, {hi}]");
            }
        }
    }
}
