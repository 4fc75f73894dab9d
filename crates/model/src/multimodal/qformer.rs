//! The Q-Former: a fixed number of learned queries that read the image tokens through
//! cross-attention, as BLIP-2 and NoteLLM-2 build it (randomly initialised, BERT-style post-norm
//! layers). Each layer: self-attention over the queries; every `cross_every`-th layer (the
//! first included) cross-attention to all image tokens; a feed-forward block; each sub-block
//! residual and then LayerNorm. The image tokens get a LayerNorm of their own first
//! (`ln_vision`), because the encoder's features come before its final norm.
//!
//! Weight names, under the connector's `qformer.` prefix: `query_tokens` (`[queries, hidden]`),
//! `query_norm`, `ln_vision`, `layers.N.{self_attn,self_norm,cross_attn,cross_norm,ffn,ffn_norm}`.

use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use super::layers::{Attention, FeedForward, Norm};
use crate::error::{ModelError, Result};

/// The Q-Former's shape (`notellm.json` `multimodal.qformer`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QFormerConfig {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub ffn: usize,
    /// Learned queries: the visual tokens each image becomes in the prompt.
    pub queries: usize,
    /// Layer i cross-attends to the image when `i % cross_every == 0`.
    pub cross_every: usize,
    pub layer_norm_eps: f64,
}

impl QFormerConfig {
    /// The official code's Q-Former: 6 layers, hidden 768, 12 heads, FFN 3072, 16 queries,
    /// cross-attention every second layer.
    pub fn paper() -> Self {
        Self { hidden: 768, layers: 6, heads: 12, ffn: 3072, queries: 16, cross_every: 2, layer_norm_eps: 1e-12 }
    }

    /// Sized to a CPU and to an encoder of width `width` (ViT-S/14: 384): hidden = width, two
    /// layers (one with cross-attention), FFN 4x, 16 queries.
    pub fn small(width: usize, heads: usize) -> Self {
        Self { hidden: width, layers: 2, heads, ffn: 4 * width, queries: 16, cross_every: 2, layer_norm_eps: 1e-12 }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(ModelError::Input(format!("multimodal.qformer: {msg}")));
        if self.hidden == 0 || self.heads == 0 || self.hidden % self.heads != 0 {
            return bad(format!("hidden {} must be a positive multiple of heads {}", self.hidden, self.heads));
        }
        if self.layers == 0 || self.queries == 0 || self.ffn == 0 || self.cross_every == 0 {
            return bad("layers, queries, ffn and cross_every must be positive".into());
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps < 1.0) {
            return bad(format!("layer_norm_eps {} must be in (0, 1)", self.layer_norm_eps));
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct Layer {
    self_attn: Attention,
    self_norm: Norm,
    cross: Option<(Attention, Norm)>,
    ffn: FeedForward,
    ffn_norm: Norm,
}

/// A loaded (or freshly initialised) Q-Former.
#[derive(Debug, Clone)]
pub struct QFormer {
    cfg: QFormerConfig,
    queries: Tensor,
    query_norm: Norm,
    ln_vision: Norm,
    layers: Vec<Layer>,
}

impl QFormer {
    /// Reads image tokens of width `vision_width`.
    pub fn new(cfg: &QFormerConfig, vision_width: usize, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let (h, eps) = (cfg.hidden, cfg.layer_norm_eps);
        let queries = vb.get_with_hints((cfg.queries, h), "query_tokens", Init::Randn { mean: 0.0, stdev: 0.02 })?;
        let layers = (0..cfg.layers)
            .map(|i| {
                let vb = vb.pp("layers").pp(i);
                let cross = if i % cfg.cross_every == 0 {
                    Some((
                        Attention::new(h, vision_width, cfg.heads, vb.pp("cross_attn"))?,
                        Norm::new(h, eps, vb.pp("cross_norm"))?,
                    ))
                } else {
                    None
                };
                Ok(Layer {
                    self_attn: Attention::new(h, h, cfg.heads, vb.pp("self_attn"))?,
                    self_norm: Norm::new(h, eps, vb.pp("self_norm"))?,
                    cross,
                    ffn: FeedForward::new(h, cfg.ffn, h, vb.pp("ffn"))?,
                    ffn_norm: Norm::new(h, eps, vb.pp("ffn_norm"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            queries,
            query_norm: Norm::new(h, eps, vb.pp("query_norm"))?,
            ln_vision: Norm::new(vision_width, 1e-6, vb.pp("ln_vision"))?,
            layers,
        })
    }

    pub fn config(&self) -> &QFormerConfig {
        &self.cfg
    }

    /// Image tokens `[b, tokens, vision_width]` -> query states `[b, queries, hidden]`.
    pub fn forward(&self, image: &Tensor) -> Result<Tensor> {
        let b = image.dim(0)?;
        let image = self.ln_vision.forward(image)?;
        let mut x =
            self.query_norm.forward(&self.queries.unsqueeze(0)?.expand((b, self.cfg.queries, self.cfg.hidden))?)?;
        for layer in &self.layers {
            x = layer.self_norm.forward(&(&x + layer.self_attn.forward(&x, &x)?)?)?;
            if let Some((attn, norm)) = &layer.cross {
                x = norm.forward(&(&x + attn.forward(&x, &image)?)?)?;
            }
            x = layer.ffn_norm.forward(&(&x + layer.ffn.forward(&x)?)?)?;
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    fn small() -> QFormerConfig {
        QFormerConfig { hidden: 8, layers: 3, heads: 2, ffn: 16, queries: 4, cross_every: 2, layer_norm_eps: 1e-12 }
    }

    #[test]
    fn cross_attention_sits_on_every_second_layer_and_the_output_has_one_row_per_query() {
        let vm = VarMap::new();
        let qf = QFormer::new(&small(), 6, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
        let crossing: Vec<bool> = qf.layers.iter().map(|l| l.cross.is_some()).collect();
        assert_eq!(crossing, [true, false, true]);
        let names: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
        assert!(names.iter().any(|n| n == "layers.2.cross_attn.key.weight"));
        assert!(!names.iter().any(|n| n.starts_with("layers.1.cross_attn")));
        let image = Tensor::randn(0f32, 1.0, (3, 10, 6), &Device::Cpu).unwrap();
        assert_eq!(qf.forward(&image).unwrap().dims(), [3, 4, 8]);
    }

    #[test]
    fn each_image_is_read_on_its_own_and_the_output_depends_on_it() {
        let vm = VarMap::new();
        let qf = QFormer::new(&small(), 6, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
        let image = Tensor::randn(0f32, 1.0, (2, 10, 6), &Device::Cpu).unwrap();
        let both = qf.forward(&image).unwrap();
        let first = qf.forward(&image.narrow(0, 0, 1).unwrap()).unwrap();
        let diff = (both.narrow(0, 0, 1).unwrap() - &first).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
        let other = (both.narrow(0, 1, 1).unwrap() - &first).unwrap().abs().unwrap().max_all().unwrap();
        assert!(other.to_scalar::<f32>().unwrap() > 1e-3, "two images gave the same queries");
    }

    #[test]
    fn bad_shapes_are_refused() {
        let mut cfg = small();
        cfg.heads = 3;
        assert!(cfg.validate().is_err());
        let mut cfg = small();
        cfg.cross_every = 0;
        assert!(cfg.validate().is_err());
        assert!(QFormerConfig::paper().validate().is_ok());
    }
}
