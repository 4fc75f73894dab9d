//! A BERT encoder (Hugging Face names and `config.json`), written here rather than taken from
//! candle-transformers because training needs every op differentiable: candle-nn's fused
//! layer norm has no backward pass. One forward serves both uses: `differentiable = false` takes
//! the fused kernels (inference, the same numbers as candle-transformers' `BertModel`, which the
//! tests compare against), `true` spells layer norm and softmax out in ops that backpropagate.
//!
//! The weights are plain tensors looked up by name, so the trainer builds the model over its
//! variables' tensors (a `Var` shares its storage with the tensor it hands out: an optimizer
//! update is seen by the next forward) and the service over a memory-mapped file.

use std::collections::HashMap;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::Linear;
use candle_transformers::models::bert::{Config, HiddenAct};

use crate::error::{ModelError, Result};

/// One layer norm's parameters.
#[derive(Debug, Clone)]
struct Norm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl Norm {
    fn forward(&self, x: &Tensor, differentiable: bool) -> candle_core::Result<Tensor> {
        if !differentiable {
            return candle_nn::ops::layer_norm(&x.contiguous()?, &self.weight, &self.bias, self.eps as f32);
        }
        let h = x.dim(D::Minus1)? as f64;
        let mean = (x.sum_keepdim(D::Minus1)? / h)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = (centred.sqr()?.sum_keepdim(D::Minus1)? / h)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)
    }
}

#[derive(Debug, Clone)]
struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: Norm,
    up: Linear,
    down: Linear,
    out_norm: Norm,
}

/// The encoder's weights and geometry.
#[derive(Debug, Clone)]
pub struct Bert {
    word: Tensor,
    position: Tensor,
    /// Row 0 of the token-type table: every token of a single-segment input has type 0.
    token_type: Tensor,
    emb_norm: Norm,
    layers: Vec<Layer>,
    heads: usize,
    head_dim: usize,
    act: HiddenAct,
    max_positions: usize,
    /// Every tensor read, under its canonical name (Hugging Face's, without a `bert.` prefix).
    named: Vec<(String, Tensor)>,
}

/// Finds a tensor under its name, with the spellings checkpoints use (`bert.` prefix, layer
/// norms as `gamma`/`beta`), and checks its shape.
struct Lookup<'a> {
    tensors: &'a HashMap<String, Tensor>,
    file: &'a str,
    /// What was read, under the canonical names.
    read: std::cell::RefCell<Vec<(String, Tensor)>>,
}

impl Lookup<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let alt = name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta");
        let t = [name.to_owned(), format!("bert.{name}"), alt.clone(), format!("bert.{alt}")]
            .iter()
            .find_map(|n| self.tensors.get(n))
            .ok_or_else(|| ModelError::Tensor { file: self.file.into(), tensor: name.into(), msg: "missing".into() })?;
        if t.dims() != shape {
            return Err(ModelError::Tensor {
                file: self.file.into(),
                tensor: name.into(),
                msg: format!("shape {:?}, expected {shape:?}", t.dims()),
            });
        }
        self.read.borrow_mut().push((name.to_owned(), t.clone()));
        Ok(t.clone())
    }

    fn linear(&self, name: &str, out: usize, inp: usize) -> Result<Linear> {
        Ok(Linear::new(
            self.get(&format!("{name}.weight"), &[out, inp])?,
            Some(self.get(&format!("{name}.bias"), &[out])?),
        ))
    }

    fn norm(&self, name: &str, size: usize, eps: f64) -> Result<Norm> {
        Ok(Norm {
            weight: self.get(&format!("{name}.weight"), &[size])?,
            bias: self.get(&format!("{name}.bias"), &[size])?,
            eps,
        })
    }
}

impl Bert {
    /// Builds the model over `tensors` (Hugging Face names; `file` names their source in
    /// errors). The tensors are used as they are: f32, on their own device.
    pub fn from_tensors(cfg: &Config, tensors: &HashMap<String, Tensor>, file: &str) -> Result<Self> {
        let h = cfg.hidden_size;
        if cfg.num_attention_heads == 0 || h % cfg.num_attention_heads != 0 {
            return Err(ModelError::Field {
                file: file.into(),
                field: "num_attention_heads".into(),
                msg: format!("{} does not divide hidden_size {h}", cfg.num_attention_heads),
            });
        }
        let l = Lookup { tensors, file, read: Default::default() };
        let eps = cfg.layer_norm_eps;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let p = format!("encoder.layer.{i}");
                Ok(Layer {
                    query: l.linear(&format!("{p}.attention.self.query"), h, h)?,
                    key: l.linear(&format!("{p}.attention.self.key"), h, h)?,
                    value: l.linear(&format!("{p}.attention.self.value"), h, h)?,
                    attn_out: l.linear(&format!("{p}.attention.output.dense"), h, h)?,
                    attn_norm: l.norm(&format!("{p}.attention.output.LayerNorm"), h, eps)?,
                    up: l.linear(&format!("{p}.intermediate.dense"), cfg.intermediate_size, h)?,
                    down: l.linear(&format!("{p}.output.dense"), h, cfg.intermediate_size)?,
                    out_norm: l.norm(&format!("{p}.output.LayerNorm"), h, eps)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let token_type = l.get("embeddings.token_type_embeddings.weight", &[cfg.type_vocab_size, h])?;
        let word = l.get("embeddings.word_embeddings.weight", &[cfg.vocab_size, h])?;
        let position = l.get("embeddings.position_embeddings.weight", &[cfg.max_position_embeddings, h])?;
        let emb_norm = l.norm("embeddings.LayerNorm", h, eps)?;
        let mut named = l.read.into_inner();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self {
            word,
            position,
            token_type: token_type.narrow(0, 0, 1)?,
            emb_norm,
            layers,
            heads: cfg.num_attention_heads,
            head_dim: h / cfg.num_attention_heads,
            act: cfg.hidden_act,
            max_positions: cfg.max_position_embeddings,
            named,
        })
    }

    /// Reads every tensor of a safetensors file as f32 on `device`.
    pub fn read_tensors(path: &std::path::Path, device: &Device) -> Result<HashMap<String, Tensor>> {
        let file = path.display().to_string();
        let tensors = candle_core::safetensors::load(path, device).map_err(|e| ModelError::Tensor {
            file: file.clone(),
            tensor: "-".into(),
            msg: e.to_string(),
        })?;
        tensors
            .into_iter()
            .map(|(n, t)| {
                let t = t.to_dtype(DType::F32)?;
                Ok((n, t))
            })
            .collect()
    }

    /// Every tensor of the model under its canonical name (Hugging Face's), sorted by name:
    /// what a trainer makes variables of and a checkpoint saves.
    pub fn named_tensors(&self) -> &[(String, Tensor)] {
        &self.named
    }

    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// The last layer's hidden states `[b, l, h]` of token ids `[b, l]` (u32) with their
    /// attention mask `[b, l]` (u32, 1 = token, 0 = padding).
    pub fn forward(&self, ids: &Tensor, mask: &Tensor, differentiable: bool) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        if l > self.max_positions {
            return Err(ModelError::Input(format!("{l} tokens, the model has {} positions", self.max_positions)));
        }
        let h = self.word.dim(1)?;
        let words = self.word.index_select(&ids.flatten_all()?, 0)?.reshape((b, l, h))?;
        let x = words.broadcast_add(&self.position.narrow(0, 0, l)?)?.broadcast_add(&self.token_type)?;
        let mut x = self.emb_norm.forward(&x, differentiable)?;
        // 0 where a token is, the most negative f32 where padding is (as Hugging Face does).
        let mask = mask.to_dtype(DType::F32)?;
        let bias = ((mask.ones_like()? - &mask)? * f64::from(f32::MIN))?.reshape((b, 1, 1, l))?;
        for layer in &self.layers {
            x = self.layer(layer, &x, &bias, differentiable)?;
        }
        Ok(x)
    }

    fn layer(&self, layer: &Layer, x: &Tensor, bias: &Tensor, differentiable: bool) -> Result<Tensor> {
        let (b, l, h) = x.dims3()?;
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((b, l, self.heads, self.head_dim))?.transpose(1, 2)?.contiguous()
        };
        let q = split(layer.query.forward(x)?)?;
        let k = split(layer.key.forward(x)?)?;
        let v = split(layer.value.forward(x)?)?;
        let scores = (q.matmul(&k.t()?)? / (self.head_dim as f64).sqrt())?.broadcast_add(bias)?;
        let probs = if differentiable {
            candle_nn::ops::softmax(&scores, D::Minus1)?
        } else {
            candle_nn::ops::softmax_last_dim(&scores)?
        };
        let ctx = probs.matmul(&v)?.transpose(1, 2)?.contiguous()?.reshape((b, l, h))?;
        let x = layer.attn_norm.forward(&(layer.attn_out.forward(&ctx)? + x)?, differentiable)?;
        let up = layer.up.forward(&x)?;
        let up = match self.act {
            HiddenAct::Gelu => up.gelu_erf()?,
            HiddenAct::GeluApproximate => up.gelu()?,
            HiddenAct::Relu => up.relu()?,
        };
        Ok(layer.out_norm.forward(&(layer.down.forward(&up)? + x)?, differentiable)?)
    }
}

/// Mean of `hidden` `[b, l, h]` over the positions where `mask` `[b, l]` is 1 (a row without
/// any token is 0, as sentence-transformers' clamp of the count at 1e-9 makes it).
pub fn mean_pool(hidden: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let mask = mask.to_dtype(hidden.dtype())?.unsqueeze(2)?;
    let sum = hidden.broadcast_mul(&mask)?.sum(1)?;
    let count = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
    sum.broadcast_div(&count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_pool_by_hand() {
        // Two sequences, 3 positions, 2 dims; the second has one padded position.
        let h =
            Tensor::new(&[[[1f32, 2.], [3., 4.], [5., 6.]], [[1., 1.], [3., 3.], [100., 100.]]], &Device::Cpu).unwrap();
        let m = Tensor::new(&[[1u32, 1, 1], [1, 1, 0]], &Device::Cpu).unwrap();
        let p = mean_pool(&h, &m).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(p, vec![vec![3.0, 4.0], vec![2.0, 2.0]]);
        let none = Tensor::new(&[[0u32, 0, 0]], &Device::Cpu).unwrap();
        let p = mean_pool(&h.narrow(0, 0, 1).unwrap(), &none).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(p, vec![vec![0.0, 0.0]]);
    }

    #[test]
    fn differentiable_layer_norm_equals_the_fused_one() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 3.0, (2, 5, 8), &dev).unwrap();
        let n = Norm {
            weight: Tensor::randn(1f32, 0.1, 8, &dev).unwrap(),
            bias: Tensor::randn(0f32, 0.1, 8, &dev).unwrap(),
            eps: 1e-12,
        };
        let a = n.forward(&x, false).unwrap();
        let b = n.forward(&x, true).unwrap();
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "{diff}");
    }
}
