//! The KV cache: per layer, the keys and values of every slot seen so far, plus which slots hold
//! real tokens and at which RoPE position. From these it builds the causal + padding mask of the
//! next chunk, so a cache can hold a padded batch, a shared prompt prefix, or a generation's past.

use candle_core::{DType, Device, Tensor};

use super::error::{ModelError, Result};

#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// `[b][slot]`: whether the slot holds a real token.
    key_valid: Vec<Vec<bool>>,
    /// `[b][slot]`: the slot's RoPE position (meaningless for padding).
    key_pos: Vec<Vec<u32>>,
    /// Per sequence: the position its next real token gets.
    next_pos: Vec<u32>,
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of slots held (including padding).
    pub fn len(&self) -> usize {
        self.key_valid.first().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn batch_size(&self) -> usize {
        self.key_valid.len()
    }

    /// Real tokens held for sequence `b`.
    pub fn real_len(&self, b: usize) -> usize {
        self.next_pos.get(b).copied().unwrap_or(0) as usize
    }

    pub(crate) fn ensure_batch(&mut self, b: usize, num_layers: usize) -> Result<()> {
        if self.key_valid.is_empty() {
            self.key_valid = vec![Vec::new(); b];
            self.key_pos = vec![Vec::new(); b];
            self.next_pos = vec![0; b];
        } else if self.key_valid.len() != b {
            return Err(ModelError::Input(format!("KV cache holds {} sequences, batch has {b}", self.key_valid.len())));
        }
        if self.layers.len() != num_layers {
            if self.layers.iter().any(Option::is_some) {
                return Err(ModelError::Input(format!(
                    "KV cache has {} layers, model has {num_layers}",
                    self.layers.len()
                )));
            }
            self.layers = vec![None; num_layers];
        }
        Ok(())
    }

    /// Appends a chunk's slots and returns their positions `[b][t]`.
    pub(crate) fn push(&mut self, valid: &[Vec<bool>]) -> Vec<Vec<u32>> {
        valid
            .iter()
            .enumerate()
            .map(|(b, row)| {
                let pos: Vec<u32> = row
                    .iter()
                    .map(|&v| {
                        let p = self.next_pos[b];
                        if v {
                            self.next_pos[b] += 1;
                            p
                        } else {
                            0
                        }
                    })
                    .collect();
                self.key_valid[b].extend_from_slice(row);
                self.key_pos[b].extend_from_slice(&pos);
                pos
            })
            .collect()
    }

    /// Additive mask `[b, 1, 1, t, s]` for the last `t` slots as queries over all `s` slots, or
    /// `None` when nothing needs masking. A query always sees itself, so a padding query has
    /// one finite score and its (unused) output stays finite instead of NaN.
    pub(crate) fn mask(
        &self,
        t: usize,
        window: Option<usize>,
        dtype: DType,
        device: &Device,
    ) -> Result<Option<Tensor>> {
        let s = self.len();
        let b = self.batch_size();
        let all_valid = self.key_valid.iter().all(|r| r.iter().all(|&v| v));
        let window_bites = window.is_some_and(|w| s > w);
        if t == 1 && all_valid && !window_bites {
            return Ok(None);
        }
        let mut m = Vec::with_capacity(b * t * s);
        for bi in 0..b {
            let valid = &self.key_valid[bi];
            let pos = &self.key_pos[bi];
            for qi in 0..t {
                let q = s - t + qi;
                for k in 0..s {
                    let in_window = window.is_none_or(|w| pos[q].saturating_sub(pos[k]) < w as u32);
                    let visible = k == q || (valid[k] && k <= q && in_window);
                    m.push(if visible { 0f32 } else { f32::NEG_INFINITY });
                }
            }
        }
        Ok(Some(Tensor::from_vec(m, (b, 1, 1, t, s), device)?.to_dtype(dtype)?))
    }

    pub(crate) fn layer_mut(&mut self, i: usize) -> &mut Option<(Tensor, Tensor)> {
        &mut self.layers[i]
    }

    /// This cache (of batch 1) repeated for a batch of `b`: how a shared prompt prefix computed
    /// once serves every note of a batch.
    pub fn expand(&self, b: usize) -> Result<Self> {
        if self.batch_size() != 1 {
            return Err(ModelError::Input(format!("can only expand a batch-1 cache, not {}", self.batch_size())));
        }
        let layers = self
            .layers
            .iter()
            .map(|l| match l {
                Some((k, v)) => {
                    let grow = |x: &Tensor| -> Result<Tensor> {
                        let mut dims = x.dims().to_vec();
                        dims[0] = b;
                        Ok(x.broadcast_as(dims)?.contiguous()?)
                    };
                    Ok(Some((grow(k)?, grow(v)?)))
                }
                None => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            key_valid: vec![self.key_valid[0].clone(); b],
            key_pos: vec![self.key_pos[0].clone(); b],
            next_pos: vec![self.next_pos[0]; b],
        })
    }

    /// Keeps only the sequences in `rows` (in that order): drops finished generations.
    pub fn select(&mut self, rows: &[usize]) -> Result<()> {
        let idx = Tensor::from_vec(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), rows.len(), &Device::Cpu)?;
        for l in self.layers.iter_mut().flatten() {
            let i = idx.to_device(l.0.device())?;
            *l = (l.0.index_select(&i, 0)?, l.1.index_select(&i, 0)?);
        }
        self.key_valid = rows.iter().map(|&r| self.key_valid[r].clone()).collect();
        self.key_pos = rows.iter().map(|&r| self.key_pos[r].clone()).collect();
        self.next_pos = rows.iter().map(|&r| self.next_pos[r]).collect();
        Ok(())
    }
}
