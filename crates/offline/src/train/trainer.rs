//! `notellm train`: the machinery every objective shares. The objective itself (its items,
//! batches, loss and validation) is a [`TrainingObjective`]: the NoteLLM recipe (GCL + CSFT
//! over a dataset directory's training pairs, [`super::notellm`]) or, with `--objective lm`,
//! causal-LM pre-training on its training-split notes ([`super::lm`]).
//!
//! One optimizer step = `accumulation` micro-batches of the objective (NoteLLM: `pairs_per_step`
//! related pairs, 2B notes with in-batch negatives; lm: 2B notes), their gradients summed,
//! clipped and applied by AdamW under a warm-up + cosine schedule. Batches are cut
//! deterministically from `(seed, epoch)`, so a resumed run replays exactly the batches the
//! interrupted one would have seen and, on CPU, continues bit-identically.
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
use serde::{Deserialize, Serialize};

use super::lm::{self, LmObjective};
use super::model::{ModelOptions, TrainableModel};
use super::notellm::NoteLlmObjective;
use super::objective::{self, TrainingObjective};
use super::optim::{self, AdamW, AdamWParams};
use crate::data::{Dataset, Part};
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
    Micl,
    Encoder,
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
    /// pairs among them are dense ([`super::notellm::dense_notes`]); each note's frozen pass then serves many
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
    /// The mICL objective's weight of the image embeddings' contrastive loss: the total is
    /// `(1 - w) L_note + w L_img` (the paper's 9:1 is 0.1; 0 trains the note embedding alone).
    #[serde(default = "default_image_weight")]
    pub image_weight: f64,
    /// The encoder objective's token budget per note text, `[CLS]` and `[SEP]` included.
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    /// NoteLLM objective: a sentence-encoder checkpoint whose in-batch similarity distribution
    /// the student is pulled towards (`loss::distillation`), with weight `distill_weight`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill: Option<PathBuf>,
    #[serde(default = "default_distill_weight")]
    pub distill_weight: f64,
}

fn default_distill_weight() -> f64 {
    1.0
}

fn default_max_len() -> usize {
    128
}

fn default_image_weight() -> f64 {
    0.1
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
            image_weight: default_image_weight(),
            max_len: default_max_len(),
            distill: None,
            distill_weight: default_distill_weight(),
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
pub(crate) struct State {
    pub(crate) step: u64,
    pub(crate) options: TrainOptions,
    pub(crate) history: Vec<Validation>,
    pub(crate) losses: Vec<(u64, f64)>,
    /// One entry per invocation (a resumed run adds one).
    #[serde(default)]
    pub(crate) runs: Vec<RunStats>,
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

/// The trainer: the model, the optimizer and the step loop, over one objective
/// ([`TrainingObjective`]) chosen by [`TrainOptions::objective`].
pub struct Trainer {
    pub model: TrainableModel,
    objective: Box<dyn TrainingObjective>,
    opt: AdamW,
    data: Dataset,
    opts: TrainOptions,
    out: PathBuf,
    state: State,
}

impl Trainer {
    pub fn new(data_dir: &Path, base: &Path, out: &Path, device: &Device, opts: TrainOptions) -> Result<Self> {
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
        match (opts.objective, model.multimodal().is_some()) {
            (Objective::Micl, false) => {
                return Err(TrainError::Invalid(format!(
                    "--objective micl needs a multimodal base (notellm model init-multimodal); {} is text-only",
                    base.display()
                )))
            }
            (Objective::NoteLlm | Objective::Lm, true) => {
                return Err(TrainError::Invalid(format!(
                    "{} is a multimodal checkpoint: train it with --objective micl",
                    base.display()
                )))
            }
            _ => {}
        }
        let objective: Box<dyn TrainingObjective> = match opts.objective {
            Objective::NoteLlm => Box::new(NoteLlmObjective::new(&data, &model, &opts)?),
            Objective::Lm => Box::new(LmObjective::new(&data, &model, &opts)?),
            Objective::Micl => Box::new(super::micl::MiclObjective::new(&data, &model, &opts)?),
            Objective::Encoder => {
                return Err(TrainError::Invalid(
                    "--objective encoder trains a sentence encoder (train::encoder::EncoderTrainer), not a NoteLLM checkpoint"
                        .into(),
                ))
            }
        };
        let params = AdamWParams { weight_decay: opts.weight_decay, ..Default::default() };
        // Variables an objective gives no gradient (lm: the head and tau) stay as they are: the
        // optimizer and the clipping skip them.
        let opt = AdamW::new(model.vars().to_vec(), params)?;
        let state = State { step: 0, options: opts.clone(), history: Vec::new(), losses: Vec::new(), runs: Vec::new() };
        let t = Self { model, objective, opt, data, opts, out: out.to_owned(), state };
        let (items, unit) = t.objective.training_items();
        tracing::info!(
            objective = ?t.objective.kind(),
            items,
            unit,
            steps = t.total_steps(),
            val = t.objective.validation_size(),
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

    /// The objective's work before the first step (NoteLLM: the frozen layers' pass over every
    /// training and validation sequence this run will use).
    pub fn precompute_frozen(&mut self) -> Result<()> {
        self.objective.precompute(&mut self.model, &self.data)
    }

    pub fn step(&self) -> u64 {
        self.state.step
    }

    fn batches_per_epoch(&self) -> usize {
        self.objective.epoch_plan(0).len()
    }

    /// The notes of each micro-batch of `epoch`, in order (what the run trains on).
    pub fn batch_notes(&self, epoch: u64) -> Vec<Vec<NoteId>> {
        self.objective.epoch_plan(epoch).iter().map(|b| self.objective.batch_notes(&self.data, b)).collect()
    }

    /// Optimizer steps in the whole run.
    pub fn total_steps(&self) -> u64 {
        let micro = (self.batches_per_epoch() as f64 * self.opts.epochs).floor() as u64;
        (micro / self.opts.accumulation as u64).max(1)
    }

    /// Mean LM loss (nats per predicted token) of the model on the notes `ids`.
    pub fn lm_loss(&mut self, ids: &[NoteId]) -> Result<f64> {
        let seqs = lm::sequences(self.model.tokenizer(), self.model.limits(), &self.data, ids)?;
        Ok(lm::loss_of(&mut self.model, &seqs)?.0)
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
            let mut l_sum = 0.0;
            let mut parts = Vec::with_capacity(self.opts.accumulation);
            for m in 0..self.opts.accumulation {
                let micro = step as usize * self.opts.accumulation + m;
                let epoch = (micro / per_epoch) as u64;
                if epoch != batches_epoch {
                    batches = self.objective.epoch_plan(epoch);
                    batches_epoch = epoch;
                }
                // The schedule counts epoch 0's batches; greedy packing can cut a later epoch
                // one or two batches shorter, so wrap within it (deterministic, so a resumed
                // run still replays the same batches) rather than index past its end.
                if batches.is_empty() {
                    return Err(TrainError::Invalid(format!("epoch {epoch} has no full batch")));
                }
                let batch = &batches[(micro % per_epoch) % batches.len()];
                let m = self.objective.micro_step(&mut self.model, &self.data, batch, self.opts.accumulation)?;
                notes += m.notes;
                trained += m.trained;
                l_sum += m.loss;
                parts.push(m.parts);
                let grads = m.grads;
                acc = Some(match acc {
                    None => grads,
                    Some(a) => optim::add_grads(a, grads, &vars)?,
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
            let detail = self.objective.describe_step(&self.model, last_loss, &objective::mean_parts(&parts))?;
            pb.set_message(format!(
                "training loss {last_loss:.4} ({detail}) |g| {norm:.2} lr {lr:.2e} {rate:.1} notes/s"
            ));
            pb.set_position(self.state.step);
            // The bar is hidden when stderr is not a terminal: log every 10th step instead.
            if pb.is_hidden() && self.state.step % 10 == 0 {
                tracing::info!(
                    step = self.state.step,
                    of = total,
                    loss = last_loss,
                    %detail,
                    grad_norm = norm,
                    lr,
                    notes_per_s = rate,
                    "step"
                );
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

    /// Recall@k (NoteLLM) or the LM loss (lm) of the current model on the validation sample,
    /// added to the run's history.
    pub fn validate(&mut self) -> Result<Option<Validation>> {
        let v = self.objective.validate(&mut self.model, self.state.step)?;
        if let Some(v) = &v {
            self.state.history.push(v.clone());
        }
        Ok(v)
    }

    fn state_dir(&self) -> PathBuf {
        self.out.join(STATE_DIR)
    }

    fn save_state(&self) -> Result<()> {
        save_train_state(&self.state_dir(), &self.model.var_state()?, &self.opt, &self.state)
    }

    /// Loads `train-state/` from the output directory if it is there; returns whether it was.
    pub fn resume(&mut self) -> Result<bool> {
        let Some((state, vars)) = load_train_state(&self.state_dir(), &self.opts, &mut self.opt)? else {
            return Ok(false);
        };
        self.model.load_var_state(&vars)?;
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

/// Writes a run's resumable state into `dir` (`train-state/`): the variables, the optimizer's
/// moments and `state.json`.
pub(crate) fn save_train_state(dir: &Path, vars: &HashMap<String, Tensor>, opt: &AdamW, state: &State) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| TrainError::Io { path: dir.to_owned(), source })?;
    candle_core::safetensors::save(vars, dir.join("vars.safetensors"))?;
    candle_core::safetensors::save(&opt.state()?, dir.join("optimizer.safetensors"))?;
    write_json(&dir.join("state.json"), state)
}

/// Reads the state [`save_train_state`] wrote into `dir`, if it is there: the optimizer's
/// moments go into `opt`; the progress and the variables (on the CPU) are returned. Refused when
/// it was made with other options than `opts`.
pub(crate) fn load_train_state(
    dir: &Path,
    opts: &TrainOptions,
    opt: &mut AdamW,
) -> Result<Option<(State, HashMap<String, Tensor>)>> {
    let path = dir.join("state.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|source| TrainError::Io { path: path.clone(), source })?;
    let state: State =
        serde_json::from_str(&text).map_err(|e| TrainError::Invalid(format!("{}: {e}", path.display())))?;
    if state.options != *opts {
        return Err(TrainError::Invalid(format!(
            "{} was made with other options; resume with the same options or use a new --out",
            path.display()
        )));
    }
    let vars = candle_core::safetensors::load(dir.join("vars.safetensors"), &Device::Cpu)?;
    opt.load_state(&candle_core::safetensors::load(dir.join("optimizer.safetensors"), &Device::Cpu)?)?;
    tracing::info!(step = state.step, dir = %dir.display(), "resumed");
    Ok(Some((state, vars)))
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

pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
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
}
