//! Our Llama-family decoder (Llama, Mistral, Qwen2) on candle-nn.
//!
//! Why not candle-transformers' models: its llama returns only the last position's logits and its
//! qwen2 turns a padding mask into a bidirectional one. This decoder:
//! - takes a right- or left-padded batch; every sequence gets its own RoPE positions (counting its
//!   real tokens only) and a causal + padding mask, so a padded sequence computes exactly what it
//!   would alone;
//! - returns the final (post-norm) hidden states of every position;
//! - keeps a [`KvCache`] for decoding and for reusing a shared prompt prefix;
//! - is built from a `VarBuilder`, so the same code trains from a `VarMap`. candle's fused
//!   `rope`, `rms_norm` and `softmax_last_dim` have no backward pass, so layers at or above
//!   [`Decoder::set_trainable_from`] use the differentiable forms of those ops.

use candle_core::{DType, Device, IndexOp, Module, Tensor, D};
use candle_nn::VarBuilder;

use super::cache::KvCache;
use super::config::{DecoderConfig, RopeScaling};
use super::error::Result;

/// Longest position the RoPE tables cover; notes are a few hundred tokens, and a 128k-context
/// model would otherwise allocate its whole table.
const MAX_ROPE_POSITIONS: usize = 16_384;

/// A linear map `y = x W^T (+ b)` applied to `[.., in]` by flattening the leading dims into one
/// matmul (better GEMM shapes than candle-nn's broadcast-batched `Linear`).
#[derive(Debug, Clone)]
pub struct Proj {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Proj {
    fn load(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias { Some(vb.get(out_dim, "bias")?) } else { None };
        Ok(Self { weight, bias })
    }

    pub fn from_weight(weight: Tensor) -> Self {
        Self { weight, bias: None }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl Module for Proj {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = dims[dims.len() - 1];
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let y = x.reshape((rows, in_dim))?.matmul(&self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out = dims;
        let last = out.len() - 1;
        out[last] = self.weight.dim(0)?;
        y.reshape(out)
    }
}

#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn load(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self { weight: vb.get(size, "weight")?, eps })
    }

    fn forward(&self, x: &Tensor, differentiable: bool) -> candle_core::Result<Tensor> {
        if differentiable {
            candle_nn::ops::rms_norm_slow(x, &self.weight, self.eps as f32)
        } else {
            candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps as f32)
        }
    }
}

/// Precomputed RoPE cos/sin tables, `[positions, head_dim / 2]`.
#[derive(Debug, Clone)]
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    fn new(cfg: &DecoderConfig, dtype: DType, device: &Device) -> Result<Self> {
        let dim = cfg.head_dim;
        let mut inv_freq: Vec<f64> =
            (0..dim).step_by(2).map(|i| 1.0 / cfg.rope_theta.powf(i as f64 / dim as f64)).collect();
        match &cfg.rope_scaling {
            None => {}
            Some(RopeScaling::Linear { factor }) => inv_freq.iter_mut().for_each(|f| *f /= factor),
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let orig = *original_max_position_embeddings as f64;
                let low_wavelen = orig / low_freq_factor;
                let high_wavelen = orig / high_freq_factor;
                for f in inv_freq.iter_mut() {
                    let wavelen = 2.0 * std::f64::consts::PI / *f;
                    if wavelen > low_wavelen {
                        *f /= factor;
                    } else if wavelen >= high_wavelen {
                        let smooth = (orig / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
        }
        let n = cfg.max_position_embeddings.min(MAX_ROPE_POSITIONS);
        let half = inv_freq.len();
        let mut angles = Vec::with_capacity(n * half);
        for p in 0..n {
            angles.extend(inv_freq.iter().map(|f| (p as f64 * f) as f32));
        }
        let angles = Tensor::from_vec(angles, (n, half), device)?;
        Ok(Self { cos: angles.cos()?.to_dtype(dtype)?, sin: angles.sin()?.to_dtype(dtype)? })
    }

    /// cos/sin rows for the given positions, shaped `[b, t, head_dim / 2]`.
    fn gather(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, t) = positions.dims2()?;
        let flat = positions.flatten_all()?;
        let cos = self.cos.index_select(&flat, 0)?.reshape((b, t, ()))?;
        let sin = self.sin.index_select(&flat, 0)?.reshape((b, t, ()))?;
        Ok((cos, sin))
    }

    fn max_positions(&self) -> usize {
        self.cos.dim(0).unwrap_or(0)
    }
}

/// Half-split ("rotate_half") RoPE, as Hugging Face's Llama. `x: [b, h, t, d]`, cos/sin
/// `[b, t, d/2]`.
fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor, differentiable: bool) -> candle_core::Result<Tensor> {
    if !differentiable {
        return candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin);
    }
    let cos = Tensor::cat(&[cos, cos], D::Minus1)?.unsqueeze(1)?;
    let sin = Tensor::cat(&[sin, sin], D::Minus1)?.unsqueeze(1)?;
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
}

#[derive(Debug, Clone)]
struct Attention {
    q: Proj,
    k: Proj,
    v: Proj,
    o: Proj,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(cfg: &DecoderConfig, vb: VarBuilder) -> Result<Self> {
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        Ok(Self {
            q: Proj::load(h, cfg.num_heads * d, cfg.qkv_bias, vb.pp("q_proj"))?,
            k: Proj::load(h, cfg.num_kv_heads * d, cfg.qkv_bias, vb.pp("k_proj"))?,
            v: Proj::load(h, cfg.num_kv_heads * d, cfg.qkv_bias, vb.pp("v_proj"))?,
            o: Proj::load(cfg.num_heads * d, h, cfg.o_bias, vb.pp("o_proj"))?,
            num_heads: cfg.num_heads,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: d,
        })
    }

    /// `x: [b, t, hidden]`; `mask: [b, 1, 1, t, s]` additive; returns `[b, t, hidden]`. With
    /// `rows`, only those query rows are computed (`[b, 1, hidden]` out); keys and values still
    /// cover every position.
    fn forward(
        &self,
        x: &Tensor,
        rope: &(Tensor, Tensor),
        mask: Option<&Tensor>,
        kv: &mut Option<(Tensor, Tensor)>,
        differentiable: bool,
        rows: Option<&Rows>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let k = self.k.forward(x)?.reshape((b, t, nkv, hd))?.transpose(1, 2)?;
        let v = self.v.forward(x)?.reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
        let k = apply_rope(&k.contiguous()?, &rope.0, &rope.1, differentiable)?;
        let (xq, rope_q, mask, t) = match rows {
            None => (x.clone(), rope.clone(), mask.cloned(), t),
            Some(r) => {
                let mask = match mask {
                    Some(m) => Some(r.pick(&m.reshape((b, t, ()))?)?.reshape((b, 1, 1, 1, ()))?),
                    None => None,
                };
                (r.pick(x)?, (r.pick(&rope.0)?.contiguous()?, r.pick(&rope.1)?.contiguous()?), mask, 1)
            }
        };
        let q = self.q.forward(&xq)?.reshape((b, t, nh, hd))?.transpose(1, 2)?;
        let q = apply_rope(&q.contiguous()?, &rope_q.0, &rope_q.1, differentiable)?;
        let mask = mask.as_ref();
        let (k, v) = match kv.take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
            None => (k, v),
        };
        *kv = Some((k.clone(), v.clone()));
        let s = k.dim(2)?;
        // Grouped-query attention without copying K/V: the `group` query heads that share a KV
        // head are stacked along the sequence axis of one matmul.
        let group = nh / nkv;
        let scale = 1.0 / (hd as f64).sqrt();
        let q = (q * scale)?.reshape((b, nkv, group * t, hd))?;
        let scores = q.matmul(&k.t()?)?.reshape((b, nkv, group, t, s))?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let dtype = scores.dtype();
        let scores = scores.to_dtype(DType::F32)?;
        let probs = if differentiable {
            candle_nn::ops::softmax(&scores, D::Minus1)?
        } else {
            candle_nn::ops::softmax_last_dim(&scores)?
        };
        let probs = probs.to_dtype(dtype)?.reshape((b, nkv, group * t, s))?;
        let out = probs.matmul(&v)?.reshape((b, nh, t, hd))?;
        let out = out.transpose(1, 2)?.reshape((b, t, nh * hd))?;
        Ok(self.o.forward(&out)?)
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    gate: Proj,
    up: Proj,
    down: Proj,
}

impl Mlp {
    fn load(cfg: &DecoderConfig, vb: VarBuilder) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate: Proj::load(h, i, cfg.mlp_bias, vb.pp("gate_proj"))?,
            up: Proj::load(h, i, cfg.mlp_bias, vb.pp("up_proj"))?,
            down: Proj::load(i, h, cfg.mlp_bias, vb.pp("down_proj"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let gate = candle_nn::ops::silu(&self.gate.forward(x)?)?;
        self.down.forward(&(gate * self.up.forward(x)?)?)
    }
}

#[derive(Debug, Clone)]
struct Block {
    attn: Attention,
    mlp: Mlp,
    input_norm: RmsNorm,
    post_attn_norm: RmsNorm,
}

impl Block {
    fn load(cfg: &DecoderConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            attn: Attention::load(cfg, vb.pp("self_attn"))?,
            mlp: Mlp::load(cfg, vb.pp("mlp"))?,
            input_norm: RmsNorm::load(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("input_layernorm"))?,
            post_attn_norm: RmsNorm::load(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("post_attention_layernorm"))?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        rope: &(Tensor, Tensor),
        mask: Option<&Tensor>,
        kv: &mut Option<(Tensor, Tensor)>,
        differentiable: bool,
        rows: Option<&Rows>,
    ) -> Result<Tensor> {
        let h = self.input_norm.forward(x, differentiable)?;
        let attn = self.attn.forward(&h, rope, mask, kv, differentiable, rows)?;
        let x = match rows {
            Some(r) => (r.pick(x)? + attn)?,
            None => (x + attn)?,
        };
        let h = self.post_attn_norm.forward(&x, differentiable)?;
        Ok((&x + self.mlp.forward(&h)?)?)
    }
}

/// One row (position) per sequence of a `[b, t, ..]` tensor: `index[b]` -> `[b, 1, ..]`.
#[derive(Debug, Clone)]
struct Rows {
    flat: Tensor,
}

impl Rows {
    fn new(index: &[usize], t: usize, device: &Device) -> Result<Self> {
        let flat: Vec<u32> = index.iter().enumerate().map(|(i, &j)| (i * t + j) as u32).collect();
        Ok(Self { flat: Tensor::from_vec(flat, index.len(), device)? })
    }

    fn pick(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let (b, t) = (dims[0], dims[1]);
        let rest: Vec<usize> = dims[2..].to_vec();
        let mut flat_shape = vec![b * t];
        flat_shape.extend(&rest);
        let mut out_shape = vec![b, 1];
        out_shape.extend(&rest);
        x.reshape(flat_shape)?.index_select(&self.flat, 0)?.reshape(out_shape)
    }
}

/// A batch of token ids, padded to one length, with which slots hold real tokens.
#[derive(Debug, Clone)]
pub struct PaddedBatch {
    /// `[b, t]` u32.
    pub ids: Tensor,
    /// `valid[b][t]`: whether slot t of sequence b is a real token.
    pub valid: Vec<Vec<bool>>,
    /// Index of each sequence's last real token in this batch (`None` for an empty sequence).
    pub last: Vec<Option<usize>>,
}

/// Which side padding goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    Left,
    Right,
}

impl PaddedBatch {
    pub fn new(seqs: &[Vec<u32>], padding: Padding, pad_id: u32, device: &Device) -> Result<Self> {
        let t = seqs.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(seqs.len() * t);
        let mut valid = Vec::with_capacity(seqs.len());
        let mut last = Vec::with_capacity(seqs.len());
        for s in seqs {
            let pad = t - s.len();
            let (row, v): (Vec<u32>, Vec<bool>) = match padding {
                Padding::Right => (
                    s.iter().copied().chain(std::iter::repeat_n(pad_id, pad)).collect(),
                    std::iter::repeat_n(true, s.len()).chain(std::iter::repeat_n(false, pad)).collect(),
                ),
                Padding::Left => (
                    std::iter::repeat_n(pad_id, pad).chain(s.iter().copied()).collect(),
                    std::iter::repeat_n(false, pad).chain(std::iter::repeat_n(true, s.len())).collect(),
                ),
            };
            last.push(match (s.is_empty(), padding) {
                (true, _) => None,
                (false, Padding::Right) => Some(s.len() - 1),
                (false, Padding::Left) => Some(t - 1),
            });
            ids.extend(row);
            valid.push(v);
        }
        Ok(Self { ids: Tensor::from_vec(ids, (seqs.len(), t), device)?, valid, last })
    }

    pub fn batch_size(&self) -> usize {
        self.valid.len()
    }

    pub fn seq_len(&self) -> usize {
        self.valid.first().map_or(0, Vec::len)
    }
}

/// The decoder: embeddings, blocks, final norm and LM head.
#[derive(Debug, Clone)]
pub struct Decoder {
    embed: Tensor,
    blocks: Vec<Block>,
    norm: RmsNorm,
    lm_head: Proj,
    rope: Rope,
    cfg: DecoderConfig,
    dtype: DType,
    device: Device,
    trainable_from: usize,
}

impl Decoder {
    /// Builds the decoder from Hugging Face tensor names (`model.embed_tokens.weight`,
    /// `model.layers.N.self_attn.q_proj.weight`, ..., `lm_head.weight` unless tied).
    pub fn load(cfg: &DecoderConfig, vb: VarBuilder) -> Result<Self> {
        let m = vb.pp("model");
        let embed = m.pp("embed_tokens").get((cfg.vocab_size, cfg.hidden_size), "weight")?;
        let blocks =
            (0..cfg.num_layers).map(|i| Block::load(cfg, m.pp(format!("layers.{i}")))).collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(cfg.hidden_size, cfg.rms_norm_eps, m.pp("norm"))?;
        let lm_head = if cfg.tie_word_embeddings {
            Proj::from_weight(embed.clone())
        } else {
            Proj::load(cfg.hidden_size, cfg.vocab_size, false, vb.pp("lm_head"))?
        };
        let rope = Rope::new(cfg, vb.dtype(), vb.device())?;
        Ok(Self {
            embed,
            blocks,
            norm,
            lm_head,
            rope,
            cfg: cfg.clone(),
            dtype: vb.dtype(),
            device: vb.device().clone(),
            trainable_from: cfg.num_layers,
        })
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Layers `>= layer` (and the final norm when any layer is) use differentiable ops.
    pub fn set_trainable_from(&mut self, layer: usize) {
        self.trainable_from = layer.min(self.cfg.num_layers);
    }

    /// Runs `batch` after whatever `cache` already holds and returns the final-layer, post-norm
    /// hidden states `[b, t, hidden]`. The cache is extended with this batch's keys and values.
    pub fn forward(&self, batch: &PaddedBatch, cache: &mut KvCache) -> Result<Tensor> {
        self.run(batch, cache, None)
    }

    /// The final hidden state at one position per sequence (`index[b]`), `[b, hidden]`: what an
    /// embedding needs. Equal to `gather(forward(..), index)`, but the last layer computes its
    /// queries, attention output and MLP for those positions only.
    pub fn forward_at(&self, batch: &PaddedBatch, cache: &mut KvCache, index: &[usize]) -> Result<Tensor> {
        let t = batch.seq_len();
        if index.len() != batch.batch_size() || index.iter().any(|&i| i >= t) {
            return Err(super::error::ModelError::Input(format!("bad positions {index:?} for a batch of length {t}")));
        }
        let rows = Rows::new(index, t, &self.device)?;
        Ok(self.run(batch, cache, Some(&rows))?.squeeze(1)?)
    }

    /// The hidden states entering layer `layer` (`[b, t, hidden]`, before any norm): what the
    /// frozen lower layers hand to the trained upper ones. `layer == 0` gives the token
    /// embeddings.
    pub fn hidden_before(&self, batch: &PaddedBatch, layer: usize) -> Result<Tensor> {
        self.hidden_before_cached(batch, &mut KvCache::new(), layer)
    }

    /// [`Decoder::hidden_before`] after whatever `cache` holds (a shared prefix, say); the cache
    /// is extended with this batch's keys and values in layers `..layer`.
    pub fn hidden_before_cached(&self, batch: &PaddedBatch, cache: &mut KvCache, layer: usize) -> Result<Tensor> {
        let x = self.embed_ids(batch)?;
        self.run_span(x, batch, cache, 0..layer.min(self.cfg.num_layers), None, false)
    }

    /// Runs layers `layer..` and the final norm over `x`, the hidden states entering `layer`
    /// for `batch` (as [`Decoder::hidden_before`] gives them), and returns the final post-norm
    /// hidden states `[b, t, hidden]`. `forward_from(hidden_before(b, l), b, l) == forward(b)`.
    pub fn forward_from(&self, x: &Tensor, batch: &PaddedBatch, layer: usize) -> Result<Tensor> {
        let (b, t) = batch.ids.dims2()?;
        if x.dims() != [b, t, self.cfg.hidden_size] {
            return Err(super::error::ModelError::Input(format!(
                "hidden states {:?} do not match a batch of {b} x {t}",
                x.dims()
            )));
        }
        self.run_span(
            x.clone(),
            batch,
            &mut KvCache::new(),
            layer.min(self.cfg.num_layers)..self.cfg.num_layers,
            None,
            true,
        )
    }

    fn embed_ids(&self, batch: &PaddedBatch) -> Result<Tensor> {
        let (b, t) = batch.ids.dims2()?;
        Ok(self.embed.index_select(&batch.ids.flatten_all()?, 0)?.reshape((b, t, ()))?)
    }

    fn run(&self, batch: &PaddedBatch, cache: &mut KvCache, last_rows: Option<&Rows>) -> Result<Tensor> {
        let x = self.embed_ids(batch)?;
        self.run_span(x, batch, cache, 0..self.cfg.num_layers, last_rows, true)
    }

    /// Runs `layers` over `x` (the hidden states entering the first of them); the last layer
    /// of the model computes only `last_rows` when given; `norm` applies the final norm.
    fn run_span(
        &self,
        mut x: Tensor,
        batch: &PaddedBatch,
        cache: &mut KvCache,
        layers: std::ops::Range<usize>,
        last_rows: Option<&Rows>,
        norm: bool,
    ) -> Result<Tensor> {
        let (b, t) = batch.ids.dims2()?;
        cache.ensure_batch(b, self.cfg.num_layers)?;
        let positions = cache.push(&batch.valid);
        if let Some(&max) = positions.iter().flatten().max() {
            if max as usize >= self.rope.max_positions() {
                return Err(super::error::ModelError::Input(format!(
                    "sequence position {max} exceeds the model's {} positions",
                    self.rope.max_positions()
                )));
            }
        }
        let pos = Tensor::from_vec(positions.concat(), (b, t), &self.device)?;
        let rope = self.rope.gather(&pos)?;
        let mask = cache.mask(t, self.cfg.sliding_window, self.dtype, &self.device)?;
        let n = self.blocks.len();
        for i in layers {
            let kv = cache.layer_mut(i);
            let rows = if i + 1 == n { last_rows } else { None };
            x = self.blocks[i].forward(&x, &rope, mask.as_ref(), kv, i >= self.trainable_from, rows)?;
        }
        if !norm {
            return Ok(x);
        }
        Ok(self.norm.forward(&x, self.trainable_from < self.cfg.num_layers)?)
    }

    /// Picks one hidden state per sequence: `hidden[b, index[b]]` -> `[b, hidden]`.
    pub fn gather(hidden: &Tensor, index: &[usize]) -> Result<Tensor> {
        let (b, t, h) = hidden.dims3()?;
        let flat: Vec<u32> = index.iter().enumerate().map(|(i, &j)| (i * t + j) as u32).collect();
        let idx = Tensor::from_vec(flat, b, hidden.device())?;
        Ok(hidden.reshape((b * t, h))?.index_select(&idx, 0)?)
    }

    /// Next-token logits (f32) for hidden states `[.., hidden]`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(self.lm_head.forward(hidden)?.to_dtype(DType::F32)?)
    }

    /// The token embedding matrix `[vocab, hidden]`.
    pub fn token_embeddings(&self) -> &Tensor {
        &self.embed
    }

    /// Row 0 of the final hidden state for one unpadded sequence (used by tests).
    pub fn hidden_unbatched(&self, ids: &[u32]) -> Result<Tensor> {
        let batch = PaddedBatch::new(&[ids.to_vec()], Padding::Right, 0, &self.device)?;
        let mut cache = KvCache::new();
        Ok(self.forward(&batch, &mut cache)?.i(0)?)
    }
}
