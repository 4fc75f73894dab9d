//! The model being trained: a checkpoint's decoder whose top `train_layers` layers (with the
//! final norm), the embedding head and the temperature are variables, the rest frozen.
//!
//! With `train_layers < num_layers` (the parameter-efficient mode), the frozen layers' output
//! for a sequence never changes, so it is computed once (fast, non-differentiable ops) and kept
//! in memory; every later visit runs only the trained layers. With `train_layers ==
//! num_layers` (full fine-tuning) the token embeddings train too and nothing is cached.
//!
//! [`TrainableModel::forward`] serves the NoteLLM recipe (embeddings and the generation logits);
//! [`TrainableModel::lm_forward`] the causal-LM objective (logits at every position).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor, Var, D};
use candle_nn::VarBuilder;
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::examples::Example;
use crate::model::checkpoint::write_checkpoint;
use crate::model::config::EMB_HEAD_TENSOR;
use crate::model::{
    CheckpointFiles, Decoder, KvCache, ModelError, NoteLlmConfig, NoteTokenizer, PaddedBatch, Padding, Result,
};
use crate::note::Embedding;

/// Name of the temperature variable in saved training state.
pub const TAU: &str = "notellm.tau";

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelOptions {
    /// How many of the top layers train (the rest are frozen); `>= num_layers` trains all.
    pub train_layers: usize,
    /// Rows of the embedding head (used when the base has no head of this size).
    pub embedding_dim: usize,
    /// Initial tau (log of the logit scale); the paper starts at 3.
    pub tau_init: f64,
    /// Seed of the head's initialisation.
    pub seed: u64,
    /// Keep the frozen layers' output per sequence in memory.
    pub cache_frozen: bool,
}

/// What one forward pass over a batch of examples gives.
#[derive(Debug)]
pub struct Forward {
    /// `[n, d]`, L2-normalised rows.
    pub embeddings: Tensor,
    /// Logits `[T, vocab]` at every labelled position and the `[T]` targets; `None` when no
    /// example has labels or logits were not asked for.
    pub generation: Option<(Tensor, Tensor)>,
}

#[derive(Debug)]
pub struct TrainableModel {
    decoder: Decoder,
    head: Var,
    tau: Var,
    /// Trainable variables sorted by name, with whether weight decay applies.
    vars: Vec<(String, Var, bool)>,
    /// Every base tensor (f32), for writing full checkpoints.
    base: HashMap<String, Tensor>,
    files: CheckpointFiles,
    tokenizer: NoteTokenizer,
    from: usize,
    cache: HashMap<Vec<u32>, Tensor>,
    cache_on: bool,
    cache_bytes: usize,
    device: Device,
}

impl TrainableModel {
    pub fn load(dir: &Path, device: &Device, opts: &ModelOptions) -> Result<Self> {
        let files = CheckpointFiles::open(dir)?;
        let cfg = files.decoder.clone();
        let mut base = HashMap::new();
        for w in &files.weights {
            for (name, t) in candle_core::safetensors::load(w, &Device::Cpu)? {
                base.insert(name, t.to_dtype(DType::F32)?);
            }
        }
        let from = cfg.num_layers.saturating_sub(opts.train_layers);
        let trainable = |name: &str| -> bool {
            (from == 0 && (name.starts_with("model.embed_tokens.") || name.starts_with("lm_head.")))
                || name.starts_with("model.norm.")
                || (from..cfg.num_layers).any(|i| name.starts_with(&format!("model.layers.{i}.")))
        };
        let mut vars = Vec::new();
        let mut overlay: HashMap<String, Tensor> = HashMap::with_capacity(base.len());
        for (name, t) in &base {
            if trainable(name) {
                let v = Var::from_tensor(&t.to_device(device)?)?;
                overlay.insert(name.clone(), v.as_tensor().clone());
                vars.push((name.clone(), v, t.rank() >= 2));
            } else if name != EMB_HEAD_TENSOR {
                overlay.insert(name.clone(), t.to_device(device)?);
            }
        }
        let vb = VarBuilder::from_backend(Box::new(overlay), DType::F32, device.clone());
        let mut decoder = Decoder::load(&cfg, vb)?;
        decoder.set_trainable_from(from);
        let h = cfg.hidden_size;
        let head = match base.get(EMB_HEAD_TENSOR) {
            Some(t) if t.dims() == [opts.embedding_dim, h] => t.to_device(device)?,
            _ => random_head(opts.embedding_dim, h, opts.seed, device)?,
        };
        let head = Var::from_tensor(&head)?;
        let tau = Var::from_tensor(&Tensor::new(opts.tau_init as f32, device)?)?;
        vars.push((EMB_HEAD_TENSOR.to_owned(), head.clone(), true));
        vars.push((TAU.to_owned(), tau.clone(), false));
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let tokenizer = NoteTokenizer::load(&files.tokenizer, &files.notellm, cfg.vocab_size)?;
        let params: usize = vars.iter().map(|(_, v, _)| v.elem_count()).sum();
        tracing::info!(
            dir = %dir.display(),
            layers = cfg.num_layers,
            trained_layers = cfg.num_layers - from,
            trainable_params_m = params as f64 / 1e6,
            cache_frozen = opts.cache_frozen && from > 0,
            "training model loaded"
        );
        Ok(Self {
            decoder,
            head,
            tau,
            vars,
            base,
            files,
            tokenizer,
            from,
            cache: HashMap::new(),
            cache_on: opts.cache_frozen && from > 0,
            cache_bytes: 0,
            device: device.clone(),
        })
    }

    pub fn tokenizer(&self) -> &NoteTokenizer {
        &self.tokenizer
    }

    pub fn base_config(&self) -> &NoteLlmConfig {
        &self.files.notellm
    }

    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    pub fn vars(&self) -> &[(String, Var, bool)] {
        &self.vars
    }

    /// Index of the first trained layer.
    pub fn first_trained_layer(&self) -> usize {
        self.from
    }

    pub fn tau(&self) -> Result<f64> {
        Ok(self.tau.as_tensor().to_dtype(DType::F64)?.to_scalar::<f64>()?)
    }

    /// Bytes held by the frozen-layer cache.
    pub fn cache_bytes(&self) -> usize {
        self.cache_bytes
    }

    /// Final hidden states `[b, t, hidden]` of right-padded `seqs`.
    fn hidden(&mut self, seqs: &[Vec<u32>]) -> Result<Tensor> {
        let pad = self.tokenizer.pad_id;
        let batch = PaddedBatch::new(seqs, Padding::Right, pad, &self.device)?;
        if self.from == 0 {
            return self.decoder.forward(&batch, &mut KvCache::new());
        }
        let mut fresh: HashMap<Vec<u32>, Tensor> = HashMap::new();
        let missing: Vec<Vec<u32>> = {
            let mut seen = std::collections::HashSet::new();
            seqs.iter().filter(|s| !self.cache.contains_key(*s) && seen.insert(s.to_vec())).cloned().collect()
        };
        // One sequence at a time: batched, the padded length changes the matmuls' blocking and
        // so the last bits of the result, which would make a note's cached states depend on
        // which notes it first met (and a resumed run differ from an uninterrupted one).
        for s in &missing {
            let b = PaddedBatch::new(std::slice::from_ref(s), Padding::Right, pad, &self.device)?;
            fresh.insert(s.clone(), self.decoder.hidden_before(&b, self.from)?.i(0)?);
        }
        let t = batch.seq_len();
        let h = self.decoder.config().hidden_size;
        let mut rows = Vec::with_capacity(seqs.len());
        for s in seqs {
            let states = match self.cache.get(s).or_else(|| fresh.get(s)) {
                Some(x) => x.clone(),
                None => return Err(ModelError::Input("frozen states missing for a sequence".into())),
            };
            let padded = if s.len() < t {
                Tensor::cat(&[&states, &Tensor::zeros((t - s.len(), h), DType::F32, &self.device)?], 0)?
            } else {
                states
            };
            rows.push(padded);
        }
        if self.cache_on {
            for (k, v) in fresh {
                self.cache_bytes += v.elem_count() * 4;
                self.cache.insert(k, v);
            }
        }
        let x = Tensor::stack(&rows, 0)?;
        self.decoder.forward_from(&x, &batch, self.from)
    }

    /// Embeddings (and, with `logits`, the generation logits and targets) of `examples`.
    pub fn forward(&mut self, examples: &[&Example], logits: bool) -> Result<Forward> {
        let seqs: Vec<Vec<u32>> = examples.iter().map(|e| e.ids.clone()).collect();
        let hidden = self.hidden(&seqs)?;
        let pos: Vec<usize> = examples.iter().map(|e| e.emb_pos).collect();
        let states = Decoder::gather(&hidden, &pos)?;
        let projected = states.matmul(&self.head.as_tensor().t()?)?;
        let norm = projected.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
        let embeddings = projected.broadcast_div(&norm)?;
        let generation = if logits {
            let labelled = examples.iter().map(|e| (e.ids.as_slice(), e.labels_from));
            self.next_token_logits(&hidden, labelled)?
        } else {
            None
        };
        Ok(Forward { embeddings, generation })
    }

    /// The causal-LM objective: next-token logits `[T, vocab]` at every real position of
    /// right-padded `seqs` that has a successor, and the `[T]` targets; `None` when no
    /// sequence has two tokens. The embedding head and tau take no part.
    pub fn lm_forward(&mut self, seqs: &[Vec<u32>]) -> Result<Option<(Tensor, Tensor)>> {
        let hidden = self.hidden(seqs)?;
        self.next_token_logits(&hidden, seqs.iter().map(|s| (s.as_slice(), 1)))
    }

    /// Logits and targets for tokens `ids[from..]` of each sequence (each predicted from the
    /// state one position earlier); `hidden` is `[b, t, h]` of the right-padded batch.
    fn next_token_logits<'a>(
        &self,
        hidden: &Tensor,
        seqs: impl Iterator<Item = (&'a [u32], usize)>,
    ) -> Result<Option<(Tensor, Tensor)>> {
        let (b, t, h) = hidden.dims3()?;
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        for (i, (ids, from)) in seqs.enumerate() {
            for (p, &id) in ids.iter().enumerate().skip(from.max(1)) {
                rows.push((i * t + p - 1) as u32);
                targets.push(id);
            }
        }
        if rows.is_empty() {
            return Ok(None);
        }
        let n = rows.len();
        let idx = Tensor::from_vec(rows, n, &self.device)?;
        let picked = hidden.reshape((b * t, h))?.index_select(&idx, 0)?;
        Ok(Some((self.decoder.logits(&picked)?, Tensor::from_vec(targets, n, &self.device)?)))
    }

    /// The contrastive temperature as a tensor (for the loss).
    pub fn tau_tensor(&self) -> &Tensor {
        self.tau.as_tensor()
    }

    /// Embeddings as the service would compute them (examples from
    /// [`super::examples::for_embedding`]), in chunks of `batch`.
    pub fn embed(&mut self, examples: &[Example], batch: usize) -> Result<Vec<Embedding>> {
        let mut out = Vec::with_capacity(examples.len());
        for chunk in examples.chunks(batch.max(1)) {
            let refs: Vec<&Example> = chunk.iter().collect();
            let f = self.forward(&refs, false)?;
            for row in f.embeddings.detach().to_device(&Device::Cpu)?.to_vec2::<f32>()? {
                out.push(Embedding::normalised(row).map_err(|e| ModelError::Input(format!("bad embedding: {e}")))?);
            }
        }
        Ok(out)
    }

    /// The trainable variables' values (and tau), for resuming.
    pub fn var_state(&self) -> Result<HashMap<String, Tensor>> {
        self.vars.iter().map(|(n, v, _)| Ok((n.clone(), v.as_tensor().to_device(&Device::Cpu)?))).collect()
    }

    /// Restores what [`TrainableModel::var_state`] saved.
    pub fn load_var_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        for (n, v, _) in &self.vars {
            let t = state.get(n).ok_or_else(|| ModelError::Input(format!("training state lacks {n}")))?;
            v.set(&t.to_device(&self.device)?)?;
        }
        // Trained layers changed: cached frozen states stay valid (they are below them).
        Ok(())
    }

    /// The trained tensors as a checkpoint would hold them (tau excluded).
    pub fn trained_tensors(&self) -> Result<HashMap<String, Tensor>> {
        self.vars
            .iter()
            .filter(|(n, _, _)| n != TAU)
            .map(|(n, v, _)| Ok((n.clone(), v.as_tensor().to_device(&Device::Cpu)?)))
            .collect()
    }

    /// Writes a full checkpoint (base tensors with the trained ones replaced, plus the head)
    /// that `NoteLlm::load` and the service read unchanged.
    pub fn save_checkpoint(&self, dir: &Path, notellm: &NoteLlmConfig) -> Result<()> {
        let mut tensors = self.base.clone();
        tensors.extend(self.trained_tensors()?);
        let tokenizer = std::fs::read_to_string(&self.files.tokenizer)
            .map_err(|source| ModelError::Io { path: self.files.tokenizer.clone(), source })?;
        write_checkpoint(dir, &self.files.decoder, notellm, &tokenizer, &tensors, 1)
    }
}

/// A random projection `[d, h]` with N(0, 1/h) entries: cosine-preserving in expectation, so
/// training starts from the base model's geometry.
fn random_head(d: usize, h: usize, seed: u64, device: &Device) -> Result<Tensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    Ok(crate::model::init::randn(&mut rng, &[d, h], (1.0 / h as f32).sqrt())?.to_device(device)?)
}
