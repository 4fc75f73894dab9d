//! `notellm train`: the NoteLLM recipe (GCL + CSFT) over a dataset directory's training pairs,
//! or (`--objective lm`, [`super::lm`]) causal-LM pre-training on its training-split notes.
//!
//! One optimizer step = `accumulation` micro-batches of `pairs_per_step` related pairs
//! (2B notes each, in-batch negatives within a micro-batch); in lm mode, of 2B notes. Batches
//! are cut deterministically from `(seed, epoch)`, never holding the same note twice (a
//! duplicate would be its own false negative), so a resumed run replays exactly the batches the
//! interrupted one would have seen and, on CPU, continues bit-identically.
//!
//! Validation: Recall@k on a seeded sample of validation pairs (NoteLLM), or the LM loss and
//! perplexity on a seeded sample of validation notes (lm).
//!
//! Output directory:
//! - the full checkpoint (`config.json`, `tokenizer.json`, `notellm.json`, `model.safetensors`),
//!   which the service loads unchanged;
//! - `trained.safetensors`: only the trained tensors (f16), what `models/` commits and
//!   [`notellm_artifacts::overlay`] puts back on the base;
//! - `train-state/`: variables, optimizer moments and the step, for `--resume`;
//! - `train.json`: the options and the validation history.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::examples::{self, Example};
use super::lm;
use super::loss;
use super::model::{ModelOptions, TrainableModel};
use super::optim::{self, AdamW, AdamWParams};
use crate::data::{Dataset, Pair, Part};
use notellm_model::prompt::Limits;
use notellm_model::{ModelError, NoteLlmConfig};
use notellm_note::NoteId;

pub const STATE_DIR: &str = "train-state";
pub use notellm_artifacts::overlay::TRAINED_FILE;
pub const LOG_FILE: &str = "train.json";

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

/// What a run optimises: `NoteLlm`, the NoteLLM recipe (GCL + CSFT over related pairs), or
/// `Lm`, causal-LM pre-training on the training-split notes ([`super::lm`]; every layer trains).
// (No doc comments on the variants: clap would print them as a list under `--objective` and
// switch all of `notellm train --help` to its long layout; the flag's help says it.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    #[default]
    #[value(name = "notellm")]
    NoteLlm,
    Lm,
}

/// Everything that decides what a run computes (saved with the state; a resume must match).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    /// Absent in states written before the lm objective existed: those were NoteLLM runs.
    #[serde(default)]
    pub objective: Objective,
    pub train_layers: usize,
    pub embedding_dim: usize,
    pub pairs_per_step: usize,
    pub accumulation: usize,
    pub epochs: f64,
    /// Use at most this many training pairs (in lm mode, notes; a seeded sample), e.g. to fit
    /// a CPU budget.
    pub max_pairs: Option<usize>,
    /// NoteLLM mode: train only on the pairs among this many training notes, chosen so that the
    /// pairs among them are dense ([`dense_notes`]); each note's frozen pass then serves many
    /// pairs. Applied before `max_pairs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_notes: Option<usize>,
    pub lr: f64,
    pub warmup_share: f64,
    pub weight_decay: f64,
    pub clip_norm: f64,
    pub alpha: f64,
    pub hashtag_share: f64,
    pub tau_init: f64,
    pub seed: u64,
    pub cache_frozen: bool,
    /// Validation every this many steps (and at the end); 0 = only at the end.
    pub val_every: u64,
    /// Validation pairs (in lm mode, validation notes).
    pub val_pairs: usize,
    pub val_pool: usize,
    pub recall_k: Vec<usize>,
    pub save_every: u64,
    pub model_version: String,
    /// Leave the checkpoint's hashtag vocabulary empty (free-form hashtag generation) instead of
    /// listing the training split's hashtags (closed-vocabulary decoding).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub open_hashtags: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            objective: Objective::NoteLlm,
            train_layers: 4,
            embedding_dim: 128,
            pairs_per_step: 16,
            accumulation: 1,
            epochs: 1.0,
            max_pairs: None,
            max_notes: None,
            lr: 5e-5,
            warmup_share: 0.1,
            weight_decay: 0.001,
            clip_norm: 1.0,
            alpha: 0.01,
            hashtag_share: 0.4,
            tau_init: 3.0,
            seed: 42,
            cache_frozen: true,
            val_every: 0,
            val_pairs: 200,
            val_pool: 600,
            recall_k: vec![10, 100],
            save_every: 50,
            model_version: "notellm".into(),
            open_hashtags: false,
        }
    }
}

/// One validation result: Recall@k (NoteLLM; `recall`, `pairs`, `pool`) or the LM loss (lm;
/// `lm`, the recall fields empty).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Validation {
    pub step: u64,
    pub recall: Vec<(usize, f64)>,
    pub pairs: usize,
    pub pool: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lm: Option<LmValidation>,
}

/// The LM loss on the validation notes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LmValidation {
    /// Mean next-token cross-entropy over every predicted token of the sample (nats).
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    pub notes: usize,
    pub tokens: usize,
}

/// Progress saved in `train-state/state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    step: u64,
    options: TrainOptions,
    history: Vec<Validation>,
    losses: Vec<(u64, f64)>,
    /// One entry per invocation (a resumed run adds one).
    #[serde(default)]
    runs: Vec<RunStats>,
}

/// Where one invocation's time went.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunStats {
    /// Steps this invocation ran (`first_step..first_step + steps`).
    pub first_step: u64,
    pub steps: u64,
    /// Wall seconds of the whole invocation (frozen pass, steps, validation, saving).
    pub seconds: f64,
    /// Wall seconds inside optimizer steps (forward, backward, update; the frozen pass is done
    /// before the first one).
    pub step_seconds: f64,
    /// Related pairs (NoteLLM) or notes (lm) trained per second of `step_seconds`.
    pub trained_per_second: f64,
    /// The frozen layers' pass over the training and validation sequences.
    pub frozen: super::frozen::FrozenStats,
    /// `frozen.computed / frozen.seconds`.
    pub frozen_per_second: f64,
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub steps: u64,
    pub final_loss: f64,
    pub history: Vec<Validation>,
    pub losses: Vec<(u64, f64)>,
    pub seconds: f64,
    /// Notes through the trained layers per second of optimizer steps.
    pub notes_per_second: f64,
    /// This invocation's time split (also appended to `train.json`'s `runs`).
    pub run: RunStats,
}

/// The generator of `epoch`'s shuffle.
pub(crate) fn epoch_rng(seed: u64, epoch: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ (epoch + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Batches of pair indices for `epoch`: a seeded shuffle, then greedy filling that defers a
/// pair whose note is already in the batch to a later batch. Partial last batches are dropped.
pub fn epoch_batches(pairs: &[(usize, usize)], per_batch: usize, seed: u64, epoch: u64) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.shuffle(&mut epoch_rng(seed, epoch));
    let mut batches = Vec::new();
    let mut pending: std::collections::VecDeque<usize> = order.into();
    while pending.len() >= per_batch {
        let mut batch = Vec::with_capacity(per_batch);
        let mut notes = std::collections::HashSet::new();
        let mut deferred = Vec::new();
        while batch.len() < per_batch {
            let Some(p) = pending.pop_front() else { break };
            let (a, b) = pairs[p];
            if a != b && !notes.contains(&a) && !notes.contains(&b) {
                notes.insert(a);
                notes.insert(b);
                batch.push(p);
            } else {
                deferred.push(p);
            }
        }
        if batch.len() < per_batch {
            break;
        }
        // Deferred pairs go first into the next batch, in order.
        for p in deferred.into_iter().rev() {
            pending.push_front(p);
        }
        batches.push(batch);
        if batches.len() > pairs.len() {
            break;
        }
    }
    batches
}

/// The trainer: model, optimizer, data.
pub struct Trainer {
    pub model: TrainableModel,
    opt: AdamW,
    data: Dataset,
    opts: TrainOptions,
    /// Training pairs as note indices into `data.notes` (NoteLLM; empty in lm mode).
    pairs: Vec<(usize, usize)>,
    /// Training notes as indices into `data.notes` (lm; empty in NoteLLM mode).
    lm_notes: Vec<usize>,
    examples: HashMap<usize, Option<Example>>,
    sequences: HashMap<usize, Option<Vec<u32>>>,
    limits: Limits,
    out: PathBuf,
    state: State,
    val: Option<ValSet>,
}

/// The fixed validation sample.
enum ValSet {
    /// Pairs and the pool they are ranked in.
    Recall { pool: Vec<NoteId>, examples: Vec<Example>, pairs: Vec<Pair> },
    /// Validation notes' LM sequences.
    Lm { sequences: Vec<Vec<u32>> },
}

/// One micro-batch's losses and gradients.
struct Micro {
    loss: f64,
    cl: Option<f64>,
    gen: Option<f64>,
    notes: usize,
    grads: GradStore,
}

impl Trainer {
    pub fn new(data_dir: &Path, base: &Path, out: &Path, device: &Device, opts: TrainOptions) -> Result<Self> {
        if opts.objective == Objective::NoteLlm && opts.pairs_per_step < 2 {
            return Err(TrainError::Invalid("pairs_per_step must be at least 2 (in-batch negatives)".into()));
        }
        if opts.pairs_per_step == 0 {
            return Err(TrainError::Invalid("pairs_per_step must be at least 1".into()));
        }
        if opts.accumulation == 0 || opts.epochs <= 0.0 || opts.lr <= 0.0 {
            return Err(TrainError::Invalid("accumulation, epochs and lr must be positive".into()));
        }
        let data = Dataset::load(data_dir)?;
        let model = TrainableModel::load(
            base,
            device,
            &ModelOptions {
                train_layers: opts.train_layers,
                embedding_dim: opts.embedding_dim,
                tau_init: opts.tau_init,
                seed: opts.seed,
                cache_frozen: opts.cache_frozen,
            },
        )?;
        let layers = model.decoder().config().num_layers;
        if opts.objective == Objective::Lm && model.first_trained_layer() > 0 {
            return Err(TrainError::Invalid(format!(
                "--objective lm trains every layer: pass --train-layers {layers} or more (the model has \
                 {layers} layers, --train-layers is {})",
                opts.train_layers
            )));
        }
        let params = AdamWParams { weight_decay: opts.weight_decay, ..Default::default() };
        // In lm mode the head and tau get no gradient: the optimizer and the clipping skip them.
        let opt = AdamW::new(model.vars().to_vec(), params)?;
        let (pairs, lm_notes) = match opts.objective {
            Objective::NoteLlm => (training_pairs(&data, &opts)?, Vec::new()),
            Objective::Lm => (Vec::new(), training_notes(&data, &opts)?),
        };
        let limits = Limits {
            title: model.base_config().max_title_tokens,
            content: model.base_config().max_content_tokens,
            topic: model.base_config().max_topic_tokens,
        };
        let state = State { step: 0, options: opts.clone(), history: Vec::new(), losses: Vec::new(), runs: Vec::new() };
        let mut t = Self {
            model,
            opt,
            data,
            opts,
            pairs,
            lm_notes,
            examples: HashMap::new(),
            sequences: HashMap::new(),
            limits,
            out: out.to_owned(),
            state,
            val: None,
        };
        t.val = match t.opts.objective {
            Objective::NoteLlm => t.val_set()?,
            Objective::Lm => t.lm_val_set()?,
        };
        let val = match &t.val {
            None => 0,
            Some(ValSet::Recall { pairs, .. }) => pairs.len(),
            Some(ValSet::Lm { sequences }) => sequences.len(),
        };
        tracing::info!(
            objective = ?t.opts.objective,
            pairs = t.pairs.len(),
            notes = t.lm_notes.len(),
            steps = t.total_steps(),
            val,
            "training set ready"
        );
        Ok(t)
    }

    pub fn options(&self) -> &TrainOptions {
        &self.opts
    }

    /// Keeps the frozen layers' output on disk under `root` as well (reused by later runs on
    /// the same base and depth, and by `--resume`).
    pub fn set_frozen_cache(&mut self, root: &Path) -> Result<Option<PathBuf>> {
        Ok(self.model.set_disk_cache(root)?)
    }

    /// Runs the frozen layers over every training and validation sequence this run will use
    /// (NoteLLM mode with frozen layers; otherwise nothing to do).
    pub fn precompute_frozen(&mut self) -> Result<()> {
        if self.opts.objective != Objective::NoteLlm || self.model.first_trained_layer() == 0 || !self.opts.cache_frozen
        {
            return Ok(());
        }
        let mut notes: Vec<usize> = self.pairs.iter().flat_map(|&(a, b)| [a, b]).collect();
        notes.sort_unstable();
        notes.dedup();
        let mut seqs = Vec::with_capacity(notes.len());
        for n in notes {
            if let Some(e) = self.example(n)? {
                seqs.push(e.ids);
            }
        }
        if let Some(ValSet::Recall { examples, .. }) = &self.val {
            seqs.extend(examples.iter().map(|e| e.ids.clone()));
        }
        let started = Instant::now();
        self.model.precompute(&seqs)?;
        let st = self.model.frozen_stats();
        tracing::info!(
            sequences = seqs.len(),
            computed = st.computed,
            from_disk = st.from_disk,
            notes_per_s = st.per_second(),
            seconds = started.elapsed().as_secs_f64(),
            cached_mb = self.model.cache_bytes() >> 20,
            "frozen pass done"
        );
        Ok(())
    }

    pub fn step(&self) -> u64 {
        self.state.step
    }

    /// The micro-batches of `epoch`: pair indices (NoteLLM) or note indices (lm).
    fn epoch_plan(&self, epoch: u64) -> Vec<Vec<usize>> {
        match self.opts.objective {
            Objective::NoteLlm => epoch_batches(&self.pairs, self.opts.pairs_per_step, self.opts.seed, epoch),
            Objective::Lm => lm::epoch_batches(&self.lm_notes, 2 * self.opts.pairs_per_step, self.opts.seed, epoch),
        }
    }

    fn batches_per_epoch(&self) -> usize {
        self.epoch_plan(0).len()
    }

    /// The notes of each micro-batch of `epoch`, in order (what the run trains on).
    pub fn batch_notes(&self, epoch: u64) -> Vec<Vec<NoteId>> {
        let id = |i: usize| self.data.notes[i].note_id.clone();
        self.epoch_plan(epoch)
            .into_iter()
            .map(|batch| match self.opts.objective {
                Objective::NoteLlm => batch.iter().flat_map(|&p| [id(self.pairs[p].0), id(self.pairs[p].1)]).collect(),
                Objective::Lm => batch.into_iter().map(id).collect(),
            })
            .collect()
    }

    /// Optimizer steps in the whole run.
    pub fn total_steps(&self) -> u64 {
        let micro = (self.batches_per_epoch() as f64 * self.opts.epochs).floor() as u64;
        (micro / self.opts.accumulation as u64).max(1)
    }

    fn val_set(&self) -> Result<Option<ValSet>> {
        if self.opts.val_pairs == 0 {
            return Ok(None);
        }
        let mut rng = StdRng::seed_from_u64(self.opts.seed.wrapping_add(1));
        let mut pairs: Vec<Pair> = self.data.pairs(Part::Val).to_vec();
        pairs.shuffle(&mut rng);
        pairs.truncate(self.opts.val_pairs);
        if pairs.is_empty() {
            return Ok(None);
        }
        let mut pool: Vec<NoteId> = pairs.iter().flat_map(|p| [p.a.clone(), p.b.clone()]).collect();
        pool.sort();
        pool.dedup();
        let mut others: Vec<NoteId> =
            self.data.ids(Part::Val).iter().filter(|id| pool.binary_search(id).is_err()).cloned().collect();
        others.shuffle(&mut rng);
        let extra = self.opts.val_pool.saturating_sub(pool.len());
        pool.extend(others.into_iter().take(extra));
        pool.sort();
        let examples = pool
            .iter()
            .map(|id| {
                let note = self.data.note(id).ok_or_else(|| TrainError::Invalid(format!("unknown note {id}")))?;
                Ok(examples::for_embedding(self.model.tokenizer(), self.limits, note)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(ValSet::Recall { pool, examples, pairs }))
    }

    /// lm mode: a seeded sample of `val_pairs` validation notes.
    fn lm_val_set(&self) -> Result<Option<ValSet>> {
        let mut ids: Vec<NoteId> = self.data.ids(Part::Val).to_vec();
        ids.shuffle(&mut StdRng::seed_from_u64(self.opts.seed.wrapping_add(1)));
        ids.truncate(self.opts.val_pairs);
        let sequences = self.lm_sequences(&ids)?;
        Ok((!sequences.is_empty()).then_some(ValSet::Lm { sequences }))
    }

    /// The LM sequences of `ids` (those with a token to predict).
    fn lm_sequences(&self, ids: &[NoteId]) -> Result<Vec<Vec<u32>>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let note = self.data.note(id).ok_or_else(|| TrainError::Invalid(format!("unknown note {id}")))?;
            let seq = lm::sequence(self.model.tokenizer(), self.limits, note)?;
            if seq.len() >= 2 {
                out.push(seq);
            }
        }
        Ok(out)
    }

    /// Mean LM loss (nats per predicted token) of the model on the notes `ids`.
    pub fn lm_loss(&mut self, ids: &[NoteId]) -> Result<f64> {
        let seqs = self.lm_sequences(ids)?;
        Ok(lm_loss_of(&mut self.model, &seqs)?.0)
    }

    /// lm mode: the note's sequence, rendered once.
    fn sequence(&mut self, note: usize) -> Result<Option<Vec<u32>>> {
        if let Some(s) = self.sequences.get(&note) {
            return Ok(s.clone());
        }
        let line = &self.data.notes[note];
        let seq = match lm::sequence(self.model.tokenizer(), self.limits, &line.note) {
            Ok(s) if s.len() >= 2 => Some(s),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(note = %line.note_id, error = %e, "note left out of training");
                None
            }
        };
        self.sequences.insert(note, seq.clone());
        Ok(seq)
    }

    fn example(&mut self, note: usize) -> Result<Option<Example>> {
        if let Some(e) = self.examples.get(&note) {
            return Ok(e.clone());
        }
        let line = &self.data.notes[note];
        let (variant, output) =
            examples::choose_variant(&line.note, line.note_id.as_str(), self.opts.hashtag_share, self.opts.seed);
        let ex = match examples::build(self.model.tokenizer(), self.limits, &line.note, variant, output.as_deref()) {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::warn!(note = %line.note_id, error = %e, "note left out of training");
                None
            }
        };
        self.examples.insert(note, ex.clone());
        Ok(ex)
    }

    /// Loss of one micro-batch and its gradients.
    fn micro_step(&mut self, batch: &[usize]) -> Result<Micro> {
        match self.opts.objective {
            Objective::NoteLlm => self.notellm_micro_step(batch),
            Objective::Lm => self.lm_micro_step(batch),
        }
    }

    /// lm mode: `batch` holds note indices.
    fn lm_micro_step(&mut self, batch: &[usize]) -> Result<Micro> {
        let mut seqs = Vec::with_capacity(batch.len());
        for &n in batch {
            seqs.extend(self.sequence(n)?);
        }
        let Some((logits, targets)) = self.model.lm_forward(&seqs)? else {
            return Err(TrainError::Invalid("a batch has no note with a token to predict".into()));
        };
        let lm = loss::generation(&logits, &targets)?;
        let grads = (&lm / self.opts.accumulation as f64)?.backward()?;
        let loss = lm.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        Ok(Micro { loss, cl: None, gen: None, notes: seqs.len(), grads })
    }

    /// NoteLLM mode: `batch` holds pair indices.
    fn notellm_micro_step(&mut self, batch: &[usize]) -> Result<Micro> {
        let mut exs = Vec::with_capacity(batch.len() * 2);
        for &p in batch {
            let (a, b) = self.pairs[p];
            if let (Some(ea), Some(eb)) = (self.example(a)?, self.example(b)?) {
                exs.push(ea);
                exs.push(eb);
            }
        }
        if exs.len() < 4 {
            return Err(TrainError::Invalid("a batch has fewer than two usable pairs".into()));
        }
        let refs: Vec<&Example> = exs.iter().collect();
        let f = self.model.forward(&refs, self.opts.alpha > 0.0)?;
        let cl = loss::contrastive(&f.embeddings, self.model.tau_tensor())?;
        let gen = f.generation.as_ref().map(|(l, t)| loss::generation(l, t)).transpose()?;
        let total = loss::total(&cl, gen.as_ref(), self.opts.alpha)?;
        let scaled = (&total / self.opts.accumulation as f64)?;
        let grads = scaled.backward()?;
        let as_f64 = |t: &Tensor| -> Result<f64> { Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?) };
        Ok(Micro {
            loss: as_f64(&total)?,
            cl: Some(as_f64(&cl)?),
            gen: gen.as_ref().map(as_f64).transpose()?,
            notes: exs.len(),
            grads,
        })
    }

    /// Runs the remaining steps, validating and saving as configured, and writes the checkpoint
    /// of the last step. `stop_after` ends early after that many steps of this call (tests,
    /// budgets); the state is saved so that `--resume` continues.
    pub fn run(&mut self, stop_after: Option<u64>) -> Result<Summary> {
        let total = self.total_steps();
        let warmup = (total as f64 * self.opts.warmup_share).round() as u64;
        let per_epoch = self.batches_per_epoch().max(1);
        let started = Instant::now();
        let first_step = self.state.step;
        let frozen_before = self.model.frozen_stats().clone();
        if self.state.step < total && stop_after != Some(0) {
            self.precompute_frozen()?;
        }
        let mut step_seconds = 0.0f64;
        let mut trained = 0usize;
        let mut notes = 0usize;
        let pb = crate::progress::bar("training", total);
        pb.set_position(self.state.step);
        let vars: Vec<Var> = self.model.vars().iter().map(|(_, v, _)| v.clone()).collect();
        let mut last_loss = f64::NAN;
        let mut batches_epoch = u64::MAX;
        let mut batches: Vec<Vec<usize>> = Vec::new();
        let mut done_here = 0u64;
        while self.state.step < total {
            if stop_after.is_some_and(|n| done_here >= n) {
                break;
            }
            let step = self.state.step;
            let step_started = Instant::now();
            let lr = optim::learning_rate(step, warmup, total, self.opts.lr, 0.0);
            let mut acc: Option<GradStore> = None;
            let (mut l_sum, mut cl_sum, mut gen_sum, mut gen_n) = (0.0, 0.0, 0.0, 0usize);
            for m in 0..self.opts.accumulation {
                let micro = step as usize * self.opts.accumulation + m;
                let epoch = (micro / per_epoch) as u64;
                if epoch != batches_epoch {
                    batches = self.epoch_plan(epoch);
                    batches_epoch = epoch;
                }
                // The schedule counts epoch 0's batches; greedy packing can cut a later epoch
                // one or two batches shorter, so wrap within it (deterministic, so a resumed
                // run still replays the same batches) rather than index past its end.
                if batches.is_empty() {
                    return Err(TrainError::Invalid(format!("epoch {epoch} has no full batch")));
                }
                let batch = batches[(micro % per_epoch) % batches.len()].clone();
                let Micro { loss: l, cl, gen, notes: n, grads } = self.micro_step(&batch)?;
                notes += n;
                trained += match self.opts.objective {
                    Objective::NoteLlm => n / 2,
                    Objective::Lm => n,
                };
                l_sum += l;
                cl_sum += cl.unwrap_or(0.0);
                if let Some(g) = gen {
                    gen_sum += g;
                    gen_n += 1;
                }
                acc = Some(match acc {
                    None => grads,
                    Some(mut a) => {
                        for v in &vars {
                            if let Some(g) = grads.get(v.as_tensor()) {
                                let sum = match a.remove(v.as_tensor()) {
                                    Some(prev) => (prev + g)?,
                                    None => g.clone(),
                                };
                                a.insert(v.as_tensor(), sum);
                            }
                        }
                        a
                    }
                });
            }
            let mut grads = acc.ok_or_else(|| TrainError::Invalid("no micro-batches".into()))?;
            let norm = optim::clip_grad_norm(&mut grads, &vars, self.opts.clip_norm)?;
            self.opt.step(&grads, lr)?;
            step_seconds += step_started.elapsed().as_secs_f64();
            let k = self.opts.accumulation as f64;
            last_loss = l_sum / k;
            if !last_loss.is_finite() {
                return Err(TrainError::Invalid(format!("loss became {last_loss} at step {step}")));
            }
            self.state.step += 1;
            done_here += 1;
            self.state.losses.push((self.state.step, last_loss));
            let rate = notes as f64 / step_seconds.max(1e-9);
            let lm_mode = self.opts.objective == Objective::Lm;
            if lm_mode {
                pb.set_message(format!(
                    "training loss {last_loss:.4} (ppl {:.1}) |g| {norm:.2} lr {lr:.2e} {rate:.1} notes/s",
                    last_loss.exp()
                ));
            } else {
                let gen_msg = if gen_n > 0 { format!(" gen {:.3}", gen_sum / gen_n as f64) } else { String::new() };
                pb.set_message(format!(
                    "training loss {last_loss:.4} (cl {:.4}{gen_msg}) tau {:.3} |g| {norm:.2} lr {lr:.2e} {rate:.1} notes/s",
                    cl_sum / k,
                    self.model.tau()?
                ));
            }
            pb.set_position(self.state.step);
            // The bar is hidden when stderr is not a terminal: log every 10th step instead.
            if pb.is_hidden() && self.state.step % 10 == 0 {
                if lm_mode {
                    tracing::info!(
                        step = self.state.step,
                        of = total,
                        loss = last_loss,
                        perplexity = last_loss.exp(),
                        grad_norm = norm,
                        lr,
                        notes_per_s = rate,
                        "step"
                    );
                } else {
                    tracing::info!(
                        step = self.state.step,
                        of = total,
                        loss = last_loss,
                        cl = cl_sum / k,
                        tau = self.model.tau()?,
                        grad_norm = norm,
                        lr,
                        notes_per_s = rate,
                        cached_mb = self.model.cache_bytes() / (1 << 20),
                        "step"
                    );
                }
            }
            if self.opts.val_every > 0 && self.state.step % self.opts.val_every == 0 && self.state.step < total {
                self.validate()?;
            }
            if self.opts.save_every > 0 && self.state.step % self.opts.save_every == 0 {
                self.save_state()?;
            }
        }
        pb.finish_and_clear();
        // Every invocation ends with a usable checkpoint of where it got to (a stopped run can
        // be served, evaluated or resumed).
        if self.state.history.last().is_none_or(|v| v.step != self.state.step) {
            self.validate()?;
        }
        let now = self.model.frozen_stats();
        let frozen = super::frozen::FrozenStats {
            computed: now.computed - frozen_before.computed,
            tokens: now.tokens - frozen_before.tokens,
            from_disk: now.from_disk - frozen_before.from_disk,
            seconds: now.seconds - frozen_before.seconds,
        };
        self.state.runs.push(RunStats {
            first_step,
            steps: self.state.step - first_step,
            seconds: started.elapsed().as_secs_f64(),
            step_seconds,
            trained_per_second: if step_seconds > 0.0 { trained as f64 / step_seconds } else { 0.0 },
            frozen_per_second: frozen.per_second(),
            frozen,
        });
        self.save_state()?;
        self.save_outputs()?;
        let seconds = started.elapsed().as_secs_f64();
        Ok(Summary {
            steps: self.state.step,
            final_loss: last_loss,
            history: self.state.history.clone(),
            losses: self.state.losses.clone(),
            seconds,
            notes_per_second: notes as f64 / step_seconds.max(1e-9),
            run: self.state.runs.last().cloned().unwrap_or_default(),
        })
    }

    /// Recall@k (NoteLLM) or the LM loss (lm) of the current model on the validation sample.
    pub fn validate(&mut self) -> Result<Option<Validation>> {
        match &self.val {
            None => Ok(None),
            Some(ValSet::Lm { .. }) => self.validate_lm(),
            Some(ValSet::Recall { .. }) => self.validate_recall(),
        }
    }

    fn validate_lm(&mut self) -> Result<Option<Validation>> {
        // Disjoint fields: the sample is read while the model runs.
        let Some(ValSet::Lm { sequences }) = &self.val else { return Ok(None) };
        let started = Instant::now();
        let (loss, tokens) = lm_loss_of(&mut self.model, sequences)?;
        let lm = LmValidation { loss, perplexity: loss.exp(), notes: sequences.len(), tokens };
        tracing::info!(
            step = self.state.step,
            loss = lm.loss,
            perplexity = lm.perplexity,
            notes = lm.notes,
            tokens = lm.tokens,
            seconds = started.elapsed().as_secs_f64(),
            "validation"
        );
        let v = Validation { step: self.state.step, recall: Vec::new(), pairs: 0, pool: 0, lm: Some(lm) };
        self.state.history.push(v.clone());
        Ok(Some(v))
    }

    fn validate_recall(&mut self) -> Result<Option<Validation>> {
        // Disjoint fields: the sample is read while the model runs.
        let Some(ValSet::Recall { pool, examples, pairs }) = &self.val else { return Ok(None) };
        let started = Instant::now();
        let embs = self.model.embed(examples, 16)?;
        let opts = crate::eval::RecallOptions { ks: self.opts.recall_k.clone(), progress: false, ..Default::default() };
        let report = crate::eval::evaluate_dense(pool, &embs, pairs, &opts)
            .map_err(|e| TrainError::Invalid(format!("validation: {e}")))?;
        let recall: Vec<(usize, f64)> = report.ks.iter().copied().zip(report.recall.iter().copied()).collect();
        let v = Validation { step: self.state.step, recall, pairs: pairs.len(), pool: pool.len(), lm: None };
        tracing::info!(
            step = v.step,
            recall = %v.recall.iter().map(|(k, r)| format!("R@{k}={:.2}%", r * 100.0)).collect::<Vec<_>>().join(" "),
            pairs = v.pairs,
            pool = v.pool,
            seconds = started.elapsed().as_secs_f64(),
            "validation"
        );
        self.state.history.push(v.clone());
        Ok(Some(v))
    }

    fn state_dir(&self) -> PathBuf {
        self.out.join(STATE_DIR)
    }

    fn save_state(&self) -> Result<()> {
        let dir = self.state_dir();
        std::fs::create_dir_all(&dir).map_err(|source| TrainError::Io { path: dir.clone(), source })?;
        candle_core::safetensors::save(&self.model.var_state()?, dir.join("vars.safetensors"))?;
        candle_core::safetensors::save(&self.opt.state()?, dir.join("optimizer.safetensors"))?;
        write_json(&dir.join("state.json"), &self.state)
    }

    /// Loads `train-state/` from the output directory if it is there; returns whether it was.
    pub fn resume(&mut self) -> Result<bool> {
        let dir = self.state_dir();
        let path = dir.join("state.json");
        if !path.is_file() {
            return Ok(false);
        }
        let text = std::fs::read_to_string(&path).map_err(|source| TrainError::Io { path: path.clone(), source })?;
        let state: State =
            serde_json::from_str(&text).map_err(|e| TrainError::Invalid(format!("{}: {e}", path.display())))?;
        if state.options != self.opts {
            return Err(TrainError::Invalid(format!(
                "{} was made with other options; resume with the same options or use a new --out",
                path.display()
            )));
        }
        let vars = candle_core::safetensors::load(dir.join("vars.safetensors"), &Device::Cpu)?;
        self.model.load_var_state(&vars)?;
        let opt = candle_core::safetensors::load(dir.join("optimizer.safetensors"), &Device::Cpu)?;
        self.opt.load_state(&opt)?;
        tracing::info!(step = state.step, dir = %dir.display(), "resumed");
        self.state = state;
        Ok(true)
    }

    /// The checkpoint's `notellm.json`: the base's, with the head, the dataset's categories and
    /// this run's model version.
    pub fn output_config(&self) -> NoteLlmConfig {
        let mut cfg = self.model.base_config().clone();
        cfg.embedding_head = true;
        cfg.embedding_dim = self.opts.embedding_dim;
        cfg.model_version = self.opts.model_version.clone();
        cfg.categories = self.data.categories.clone();
        cfg.hashtags =
            if self.opts.open_hashtags { Vec::new() } else { hashtag_vocabulary(&self.data, HASHTAG_MIN_NOTES) };
        cfg
    }

    fn save_outputs(&self) -> Result<()> {
        let cfg = self.output_config();
        self.model.save_checkpoint(&self.out, &cfg)?;
        let trained: HashMap<String, Tensor> = self
            .model
            .trained_tensors()?
            .into_iter()
            .map(|(n, t)| Ok((n, t.to_dtype(DType::F16)?)))
            .collect::<Result<_>>()?;
        candle_core::safetensors::save(&trained, self.out.join(TRAINED_FILE))?;
        write_json(&self.out.join(LOG_FILE), &self.state)?;
        tracing::info!(out = %self.out.display(), version = %cfg.model_version, "checkpoint written");
        Ok(())
    }
}

/// Token-weighted mean LM loss of `seqs` under `model` and the number of predicted tokens.
fn lm_loss_of(model: &mut TrainableModel, seqs: &[Vec<u32>]) -> Result<(f64, usize)> {
    let (mut sum, mut tokens) = (0.0, 0usize);
    for chunk in seqs.chunks(16) {
        let Some((logits, targets)) = model.lm_forward(chunk)? else { continue };
        let n = targets.dim(0)?;
        let mean = loss::generation(&logits, &targets)?;
        sum += mean.to_dtype(DType::F64)?.to_scalar::<f64>()? * n as f64;
        tokens += n;
    }
    if tokens == 0 {
        return Err(TrainError::Invalid("no note has a token to predict".into()));
    }
    Ok((sum / tokens as f64, tokens))
}

/// Keeps a seeded sample of at most `max` of `items`, in sorted order (all of them when `max`
/// is `None` or not smaller).
fn seeded_sample<T: Ord>(items: &mut Vec<T>, max: Option<usize>, seed: u64) {
    if let Some(max) = max.filter(|&m| items.len() > m) {
        items.shuffle(&mut StdRng::seed_from_u64(seed));
        items.truncate(max);
        items.sort_unstable();
    }
}

/// NoteLLM mode: the training pairs as note indices (a seeded sample of `max_pairs`).
fn training_pairs(data: &Dataset, opts: &TrainOptions) -> Result<Vec<(usize, usize)>> {
    let mut pairs: Vec<(usize, usize)> = data
        .pairs(Part::Train)
        .iter()
        .filter_map(|p| Some((*data.by_id.get(&p.a)?, *data.by_id.get(&p.b)?)))
        .filter(|(a, b)| a != b)
        .collect();
    if let Some(n) = opts.max_notes {
        let keep = dense_notes(&pairs, n);
        pairs.retain(|(a, b)| keep.binary_search(a).is_ok() && keep.binary_search(b).is_ok());
    }
    seeded_sample(&mut pairs, opts.max_pairs, opts.seed);
    if pairs.len() < opts.pairs_per_step {
        return Err(TrainError::Invalid(format!(
            "{} training pairs is fewer than one batch of {}",
            pairs.len(),
            opts.pairs_per_step
        )));
    }
    Ok(pairs)
}

/// A hashtag enters the closed vocabulary when at least this many training notes carry it.
pub const HASHTAG_MIN_NOTES: usize = 2;

/// The hashtags (trimmed, sorted) that at least `min_notes` training-split notes carry; ones
/// holding the separator `,` are left out (they could not be told apart in an output).
pub fn hashtag_vocabulary(data: &Dataset, min_notes: usize) -> Vec<String> {
    let mut count: HashMap<String, usize> = HashMap::new();
    for id in data.ids(Part::Train) {
        let Some(note) = data.note(id) else { continue };
        let mut tags: Vec<&str> = note.hashtags.iter().map(|t| t.trim()).filter(|t| !t.is_empty()).collect();
        tags.sort_unstable();
        tags.dedup();
        for t in tags {
            *count.entry(t.to_owned()).or_default() += 1;
        }
    }
    let mut vocab: Vec<String> =
        count.into_iter().filter(|(t, c)| *c >= min_notes && !t.contains(',')).map(|(t, _)| t).collect();
    vocab.sort();
    vocab
}

/// At most `n` notes (sorted) among which `pairs` are dense: greedy peeling, which repeatedly
/// drops a note of the fewest remaining pairs (ties: the larger index) until `n` are left, so
/// the kept notes are the ones most connected to each other rather than to the notes dropped.
pub fn dense_notes(pairs: &[(usize, usize)], n: usize) -> Vec<usize> {
    let mut adj: HashMap<usize, Vec<usize>> = HashMap::new();
    for &(a, b) in pairs {
        adj.entry(a).or_default().push(b);
        adj.entry(b).or_default().push(a);
    }
    let mut degree: HashMap<usize, usize> = adj.iter().map(|(&k, v)| (k, v.len())).collect();
    let mut heap: std::collections::BinaryHeap<std::cmp::Reverse<(usize, std::cmp::Reverse<usize>)>> =
        degree.iter().map(|(&k, &d)| std::cmp::Reverse((d, std::cmp::Reverse(k)))).collect();
    let mut left = degree.len();
    while left > n {
        let Some(std::cmp::Reverse((d, std::cmp::Reverse(k)))) = heap.pop() else { break };
        if degree.get(&k) != Some(&d) {
            continue; // stale entry
        }
        degree.remove(&k);
        left -= 1;
        for m in &adj[&k] {
            if let Some(dm) = degree.get_mut(m) {
                *dm -= 1;
                heap.push(std::cmp::Reverse((*dm, std::cmp::Reverse(*m))));
            }
        }
    }
    let mut keep: Vec<usize> = degree.into_keys().collect();
    keep.sort_unstable();
    keep
}

/// lm mode: the training-split notes as note indices (a seeded sample of `max_pairs`).
fn training_notes(data: &Dataset, opts: &TrainOptions) -> Result<Vec<usize>> {
    let mut notes: Vec<usize> = data.ids(Part::Train).iter().filter_map(|id| data.by_id.get(id).copied()).collect();
    notes.sort_unstable();
    notes.dedup();
    seeded_sample(&mut notes, opts.max_pairs, opts.seed);
    let per_batch = 2 * opts.pairs_per_step;
    if notes.len() < per_batch {
        return Err(TrainError::Invalid(format!(
            "{} training notes is fewer than one batch of {per_batch} (2 x pairs_per_step)",
            notes.len()
        )));
    }
    Ok(notes)
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| TrainError::Invalid(e.to_string()))?;
    std::fs::write(path, text).map_err(|source| TrainError::Io { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_written_before_the_lm_objective_still_parse() {
        let mut opts = serde_json::to_value(TrainOptions::default()).unwrap();
        opts.as_object_mut().unwrap().remove("objective");
        let parsed: TrainOptions = serde_json::from_value(opts).unwrap();
        assert_eq!(parsed, TrainOptions::default());
        assert_eq!(parsed.objective, Objective::NoteLlm);
        let v: Validation = serde_json::from_str(r#"{"step":3,"recall":[[10,0.5]],"pairs":2,"pool":4}"#).unwrap();
        assert!(v.lm.is_none());
        // and the new field is written only when there is one
        assert!(!serde_json::to_string(&v).unwrap().contains("lm"));
        let lm = TrainOptions { objective: Objective::Lm, ..TrainOptions::default() };
        assert!(serde_json::to_string(&lm).unwrap().contains(r#""objective":"lm""#));
    }

    #[test]
    fn dense_notes_keeps_the_most_connected_group() {
        // A 4-clique (0-3) plus a path 4-5-6 hanging off note 3, and a stray pair 7-8.
        let pairs = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3), (3, 4), (4, 5), (5, 6), (7, 8)];
        assert_eq!(dense_notes(&pairs, 4), vec![0, 1, 2, 3]);
        assert_eq!(dense_notes(&pairs, 100), (0..9).collect::<Vec<_>>());
        assert_eq!(dense_notes(&pairs, 0), Vec::<usize>::new());
        // duplicate pairs count twice; the result is deterministic
        assert_eq!(dense_notes(&pairs, 5), dense_notes(&pairs, 5));
    }

    #[test]
    fn batches_are_deterministic_full_and_free_of_duplicate_notes() {
        let pairs: Vec<(usize, usize)> = (0..100).map(|i| (i % 30, (i * 7 + 1) % 30)).collect();
        let a = epoch_batches(&pairs, 4, 1, 0);
        assert_eq!(a, epoch_batches(&pairs, 4, 1, 0));
        assert_ne!(a, epoch_batches(&pairs, 4, 1, 1));
        assert!(!a.is_empty());
        for b in &a {
            assert_eq!(b.len(), 4);
            let mut notes: Vec<usize> = b.iter().flat_map(|&p| [pairs[p].0, pairs[p].1]).collect();
            notes.sort_unstable();
            let n = notes.len();
            notes.dedup();
            assert_eq!(notes.len(), n, "a note twice in {b:?}");
        }
        let mut used: Vec<usize> = a.concat();
        used.sort_unstable();
        used.dedup();
        assert_eq!(used.len(), a.len() * 4, "a pair used twice in one epoch");
    }
}
