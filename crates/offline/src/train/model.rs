//! The model being trained: a checkpoint's decoder whose top `train_layers` layers (with the
//! final norm), the embedding head and the temperature are variables, the rest frozen.
//!
//! With `train_layers < num_layers` (the parameter-efficient mode), the frozen layers' output
//! for a sequence never changes, so it is computed once (fast, non-differentiable ops) and kept
//! ([`super::frozen`]: f16, in memory and optionally on disk); every later visit runs only the
//! trained layers. With `train_layers == num_layers` (full fine-tuning) the token embeddings
//! train too and nothing is cached.
//!
//! The frozen pass ([`TrainableModel::precompute`]) sorts the sequences it is given by length
//! and runs them in batches of [`FROZEN_BATCH`], the batch's shared token prefix (the
//! instruction) once and expanded over the batch, as the inference path does. The batches are
//! cut from the sorted list of everything asked for in one call that is not in memory yet (at a
//! run's start: all of its sequences), whether or not the disk cache holds it, so the bits a
//! note gets depend on the run's notes only: a run killed during the pass and resumed computes
//! what the uninterrupted one would.
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
use super::frozen::{self, DiskCache, FrozenCache, FrozenStats};
use notellm_model::checkpoint::write_checkpoint;
use notellm_model::config::EMB_HEAD_TENSOR;
use notellm_model::multimodal::{Connector, MiclPrompt, MultimodalConfig, CONNECTOR_WEIGHTS_FILE};
use notellm_model::vision::VisionEncoder;
use notellm_model::{
    CheckpointFiles, Decoder, KvCache, ModelError, NoteLlmConfig, NoteTokenizer, PaddedBatch, Padding, Result,
};
use notellm_note::Embedding;

/// Name of the temperature variable in saved training state.
pub const TAU: &str = "notellm.tau";

/// Sequences per batch of the frozen pass (length-sorted, so padding stays small).
pub const FROZEN_BATCH: usize = 8;

/// Examples per group of the trained layers' pass (see [`TrainableModel::forward`]).
pub const TRAIN_GROUP: usize = 8;

/// A shared prefix shorter than this is not worth a separate pass.
const MIN_SHARED_PREFIX: usize = 4;

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
    frozen: FrozenCache,
    cache_on: bool,
    device: Device,
    /// NoteLLM-2: the connector (trained) and the image encoder (frozen), when the base is a
    /// multimodal checkpoint.
    multimodal: Option<MultimodalParts>,
}

/// The multimodal half of a base checkpoint being trained.
#[derive(Debug)]
pub struct MultimodalParts {
    pub cfg: MultimodalConfig,
    /// The connector over this model's variables (its tensors are the `mm.*` vars).
    pub connector: Connector,
    pub encoder: VisionEncoder,
    pub prompt: MiclPrompt,
    /// The base checkpoint's directory (its encoder is copied from there).
    pub dir: std::path::PathBuf,
}

/// A trained variable: its name, the variable, whether weight decay applies.
pub type TrainedVar = (String, Var, bool);

/// Prefix of the connector's variables among the trained ones.
pub const MM_PREFIX: &str = "mm.";

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
        let tokenizer = NoteTokenizer::load(&files.tokenizer, &files.notellm, cfg.vocab_size)?;
        let multimodal = match &files.notellm.multimodal {
            Some(mm) => {
                // The visual tokens enter at layer 0: every layer's ops must pass gradients back
                // to them (only the top layers' weights are variables).
                decoder.set_trainable_from(0);
                let (parts, mm_vars) = load_multimodal(dir, mm, &files.notellm, &tokenizer, cfg.hidden_size, device)?;
                vars.extend(mm_vars);
                Some(parts)
            }
            None => None,
        };
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
        let params: usize = vars.iter().map(|(_, v, _)| v.elem_count()).sum();
        tracing::info!(
            dir = %dir.display(),
            layers = cfg.num_layers,
            trained_layers = cfg.num_layers - from,
            trainable_params_m = params as f64 / 1e6,
            cache_frozen = opts.cache_frozen && from > 0 && multimodal.is_none(),
            multimodal = multimodal.is_some(),
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
            frozen: FrozenCache::default(),
            // States after the visual tokens depend on the connector: nothing is frozen.
            cache_on: opts.cache_frozen && from > 0 && multimodal.is_none(),
            device: device.clone(),
            multimodal,
        })
    }

    /// The multimodal parts, when the base is a NoteLLM-2 checkpoint.
    pub fn multimodal(&self) -> Option<&MultimodalParts> {
        self.multimodal.as_ref()
    }

    /// The embedding head `[d, hidden]`.
    pub fn head(&self) -> &Tensor {
        self.head.as_tensor()
    }

    pub fn tokenizer(&self) -> &NoteTokenizer {
        &self.tokenizer
    }

    pub fn base_config(&self) -> &NoteLlmConfig {
        &self.files.notellm
    }

    /// The base checkpoint's prompt budgets.
    pub fn limits(&self) -> notellm_model::prompt::Limits {
        self.files.notellm.limits()
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
        self.frozen.bytes()
    }

    /// What the frozen pass has done so far.
    pub fn frozen_stats(&self) -> &FrozenStats {
        &self.frozen.stats
    }

    /// Keeps the frozen states on disk too, under `root/<fingerprint>/` (see [`super::frozen`]);
    /// returns the directory. Nothing to do (`None`) when no layer is frozen or caching is off.
    pub fn set_disk_cache(&mut self, root: &Path) -> Result<Option<std::path::PathBuf>> {
        if !self.cache_on {
            return Ok(None);
        }
        let fp = self.frozen_fingerprint()?;
        let disk = DiskCache::open(root, &fp, self.decoder.config().hidden_size)
            .map_err(|source| ModelError::Io { path: root.join(&fp), source })?;
        let dir = disk.dir().to_owned();
        tracing::info!(dir = %dir.display(), "frozen-state disk cache");
        self.frozen.set_disk(disk);
        Ok(Some(dir))
    }

    /// Hash of what the frozen states depend on: the token embeddings, the frozen layers'
    /// tensors, the decoder configuration and the depth.
    fn frozen_fingerprint(&self) -> Result<String> {
        let frozen_layer = |name: &str| {
            name.strip_prefix("model.layers.")
                .and_then(|r| r.split('.').next())
                .and_then(|i| i.parse::<usize>().ok())
                .is_some_and(|i| i < self.from)
        };
        let mut names: Vec<&String> =
            self.base.keys().filter(|n| n.starts_with("model.embed_tokens.") || frozen_layer(n)).collect();
        names.sort();
        let mut parts = Vec::with_capacity(names.len());
        for n in names {
            let t = &self.base[n];
            parts.push((n.as_str(), t.dims().to_vec(), t.flatten_all()?.to_vec1::<f32>()?));
        }
        let cfg = format!("{:?}", self.decoder.config());
        Ok(frozen::fingerprint(parts.iter().map(|(n, d, v)| (*n, d.as_slice(), v.as_slice())), &cfg, self.from))
    }

    /// Runs the frozen layers over every sequence of `seqs` not held yet (reading the disk
    /// cache first), in length-sorted batches; afterwards every one of them is held.
    pub fn precompute(&mut self, seqs: &[Vec<u32>]) -> Result<()> {
        if self.from == 0 {
            return Ok(());
        }
        let mut plan: Vec<&Vec<u32>> = seqs.iter().filter(|s| !self.frozen.contains(s)).collect();
        plan.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
        plan.dedup();
        let total = plan.len();
        if total == 0 {
            return Ok(());
        }
        let pb = crate::progress::bar("frozen pass", total as u64);
        let mut done = 0usize;
        for chunk in plan.chunks(FROZEN_BATCH) {
            let on_disk: Vec<Option<frozen::States>> =
                chunk.iter().map(|s| self.frozen.disk().and_then(|d| d.read(s))).collect();
            let states = if on_disk.iter().all(Option::is_some) {
                self.frozen.stats.from_disk += chunk.len();
                on_disk.into_iter().flatten().collect()
            } else {
                let started = std::time::Instant::now();
                let slices: Vec<&[u32]> = chunk.iter().map(|s| s.as_slice()).collect();
                let fresh = self.frozen_batch(&slices)?;
                self.frozen.stats.seconds += started.elapsed().as_secs_f64();
                let mut out = Vec::with_capacity(chunk.len());
                for ((s, fresh), disk) in chunk.iter().zip(fresh).zip(on_disk) {
                    match disk {
                        Some(d) => {
                            self.frozen.stats.from_disk += 1;
                            out.push(d);
                        }
                        None => {
                            self.frozen.stats.computed += 1;
                            self.frozen.stats.tokens += s.len();
                            if let Some(d) = self.frozen.disk() {
                                if let Err(e) = d.write(s, &fresh) {
                                    tracing::warn!(error = %e, "could not write a frozen-state cache entry");
                                }
                            }
                            out.push(fresh);
                        }
                    }
                }
                out
            };
            for (s, st) in chunk.iter().zip(states) {
                self.frozen.insert((*s).clone(), st);
            }
            done += chunk.len();
            pb.set_position(done as u64);
            if pb.is_hidden() && (done / FROZEN_BATCH) % 100 == 0 {
                let st = &self.frozen.stats;
                tracing::info!(
                    done,
                    of = total,
                    computed = st.computed,
                    from_disk = st.from_disk,
                    notes_per_s = st.per_second(),
                    cached_mb = self.frozen.bytes() >> 20,
                    "frozen pass"
                );
            }
        }
        pb.finish_and_clear();
        Ok(())
    }

    /// The frozen layers' output (f16, `[len, hidden]` each) for one batch of sequences: the
    /// shared prefix once, then the rest as one right-padded batch after it.
    fn frozen_batch(&self, seqs: &[&[u32]]) -> Result<Vec<frozen::States>> {
        let h = self.decoder.config().hidden_size;
        let pad = self.tokenizer.pad_id;
        let min_len = seqs.iter().map(|s| s.len()).min().unwrap_or(0);
        if min_len == 0 {
            return Err(ModelError::Input("an empty training sequence".into()));
        }
        let shared = frozen::common_prefix(seqs).min(min_len - 1);
        let (shared, prefix, mut cache) = if shared >= MIN_SHARED_PREFIX {
            let b = PaddedBatch::new(&[seqs[0][..shared].to_vec()], Padding::Right, pad, &self.device)?;
            let mut cache = KvCache::new();
            let states = self.decoder.hidden_before_cached(&b, &mut cache, self.from)?;
            let states = states.i(0)?.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
            (shared, states, cache.expand(seqs.len())?)
        } else {
            (0, Vec::new(), KvCache::new())
        };
        let rest: Vec<Vec<u32>> = seqs.iter().map(|s| s[shared..].to_vec()).collect();
        let batch = PaddedBatch::new(&rest, Padding::Right, pad, &self.device)?;
        let t = batch.seq_len();
        let states = self.decoder.hidden_before_cached(&batch, &mut cache, self.from)?;
        let states = states.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(seqs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut row = Vec::with_capacity(s.len() * h);
                row.extend_from_slice(&prefix);
                row.extend_from_slice(&states[i * t * h..(i * t + s.len() - shared) * h]);
                frozen::to_f16(&row)
            })
            .collect())
    }

    /// Final hidden states `[b, t, hidden]` of right-padded `seqs`.
    fn hidden(&mut self, seqs: &[Vec<u32>]) -> Result<Tensor> {
        let pad = self.tokenizer.pad_id;
        let batch = PaddedBatch::new(seqs, Padding::Right, pad, &self.device)?;
        if self.from == 0 {
            return self.decoder.forward(&batch, &mut KvCache::new());
        }
        // Sequences met for the first time (validation, or a caller that did not precompute) go
        // through the same batched pass; without caching they are dropped again afterwards.
        self.precompute(seqs)?;
        let t = batch.seq_len();
        let h = self.decoder.config().hidden_size;
        let mut x = vec![0f32; seqs.len() * t * h];
        for (i, s) in seqs.iter().enumerate() {
            let states =
                self.frozen.get(s).ok_or_else(|| ModelError::Input("frozen states missing for a sequence".into()))?;
            for (dst, src) in x[i * t * h..].iter_mut().zip(states.iter()) {
                *dst = src.to_f32();
            }
        }
        if !self.cache_on {
            self.frozen.clear_memory();
        }
        let x = Tensor::from_vec(x, (seqs.len(), t, h), &self.device)?;
        self.decoder.forward_from(&x, &batch, self.from)
    }

    /// Embeddings (and, with `logits`, the generation logits and targets) of `examples`.
    ///
    /// The trained layers run over length-sorted groups of [`TRAIN_GROUP`] examples, each
    /// padded to its own longest, instead of one batch padded to the longest of all: a
    /// contrastive batch mixes lengths, and the padding would otherwise cost about a third of
    /// the step. The rows come back in input order.
    pub fn forward(&mut self, examples: &[&Example], logits: bool) -> Result<Forward> {
        let n = examples.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| (examples[i].ids.len(), i));
        let mut states = Vec::new();
        let (mut gen_logits, mut gen_targets) = (Vec::new(), Vec::new());
        for group in order.chunks(TRAIN_GROUP) {
            let seqs: Vec<Vec<u32>> = group.iter().map(|&i| examples[i].ids.clone()).collect();
            let hidden = self.hidden(&seqs)?;
            let pos: Vec<usize> = group.iter().map(|&i| examples[i].emb_pos).collect();
            states.push(Decoder::gather(&hidden, &pos)?);
            if logits {
                let labelled = group.iter().map(|&i| (examples[i].ids.as_slice(), examples[i].labels_from));
                if let Some((l, t)) = self.next_token_logits(&hidden, labelled)? {
                    gen_logits.push(l);
                    gen_targets.push(t);
                }
            }
        }
        let mut inverse = vec![0u32; n];
        for (k, &i) in order.iter().enumerate() {
            inverse[i] = k as u32;
        }
        let states = Tensor::cat(&states, 0)?.index_select(&Tensor::from_vec(inverse, n, &self.device)?, 0)?;
        let projected = states.matmul(&self.head.as_tensor().t()?)?;
        let norm = projected.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
        let embeddings = projected.broadcast_div(&norm)?;
        let generation = if gen_logits.is_empty() {
            None
        } else {
            Some((Tensor::cat(&gen_logits, 0)?, Tensor::cat(&gen_targets, 0)?))
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
    /// A multimodal base also gets its connector (`multimodal.safetensors`) and a copy of its
    /// encoder directory.
    pub fn save_checkpoint(&self, dir: &Path, notellm: &NoteLlmConfig) -> Result<()> {
        let mut tensors = self.base.clone();
        let mut connector = HashMap::new();
        for (name, t) in self.trained_tensors()? {
            match name.strip_prefix(MM_PREFIX) {
                Some(inner) => {
                    connector.insert(inner.to_owned(), t);
                }
                None => {
                    tensors.insert(name, t);
                }
            }
        }
        let tokenizer = std::fs::read_to_string(&self.files.tokenizer)
            .map_err(|source| ModelError::Io { path: self.files.tokenizer.clone(), source })?;
        write_checkpoint(dir, &self.files.decoder, notellm, &tokenizer, &tensors, 1)?;
        if let Some(mm) = &self.multimodal {
            candle_core::safetensors::save(&connector, dir.join(CONNECTOR_WEIGHTS_FILE))?;
            let (from, to) = (mm.dir.join(&mm.cfg.vision), dir.join(&mm.cfg.vision));
            if from != to {
                notellm_artifacts::vision::copy_encoder(&from, &to)?;
            }
        }
        Ok(())
    }
}

/// The connector of a multimodal base as variables (named `mm.<tensor>`), the frozen encoder
/// and the mICL prompt.
fn load_multimodal(
    dir: &Path,
    cfg: &MultimodalConfig,
    notellm: &NoteLlmConfig,
    tokenizer: &NoteTokenizer,
    hidden: usize,
    device: &Device,
) -> Result<(MultimodalParts, Vec<TrainedVar>)> {
    let encoder = VisionEncoder::load(&dir.join(&cfg.vision), device)?;
    let weights = dir.join(CONNECTOR_WEIGHTS_FILE);
    let mut vars = Vec::new();
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (name, t) in candle_core::safetensors::load(&weights, &Device::Cpu)? {
        let v = Var::from_tensor(&t.to_dtype(DType::F32)?.to_device(device)?)?;
        tensors.insert(name.clone(), v.as_tensor().clone());
        let decay = t.rank() >= 2;
        vars.push((format!("{MM_PREFIX}{name}"), v, decay));
    }
    let vb = VarBuilder::from_backend(Box::new(tensors), DType::F32, device.clone());
    let connector = Connector::new(cfg, encoder.config().width, hidden, vb).map_err(|e| ModelError::Tensor {
        file: weights.display().to_string(),
        tensor: "-".into(),
        msg: e.to_string(),
    })?;
    let prompt = MiclPrompt::new(tokenizer, notellm)?;
    Ok((MultimodalParts { cfg: cfg.clone(), connector, encoder, prompt, dir: dir.to_owned() }, vars))
}

/// A random projection `[d, h]` with N(0, 1/h) entries: cosine-preserving in expectation, so
/// training starts from the base model's geometry.
fn random_head(d: usize, h: usize, seed: u64, device: &Device) -> Result<Tensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    Ok(notellm_artifacts::init::randn(&mut rng, &[d, h], (1.0 / h as f32).sqrt())?.to_device(device)?)
}
