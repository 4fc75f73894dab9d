//! `notellm train --objective encoder`: the paper's online baseline, a sentence encoder
//! (all-MiniLM-L6-v2 by default) fine-tuned on the related pairs with the in-batch contrastive
//! loss, every weight training (token embeddings included), as sentence-transformers'
//! MultipleNegativesRankingLoss recipe does.
//!
//! - **Model**: the base's BERT built over candle variables ([`notellm_model::encoder::Bert`]
//!   on the variables' tensors, the differentiable forward), mean pooling, L2 normalisation.
//! - **Batches**: `pairs_per_step` training pairs (the NoteLLM objective's plan: a seeded
//!   shuffle per epoch, no note twice in a batch), texts cut at `max_len` tokens, run through
//!   the model in length-sorted groups padded to their own longest.
//! - **Loss**: GCL over the 2B rows (both directions, every other note a negative) at a fixed
//!   logit scale `e^tau` (tau 3: scale 20, sentence-transformers' default), with the known
//!   partners of any note of the batch (every training pair) masked out of its negatives.
//! - **Optimizer**: the trainer's AdamW (no decay on biases and layer norms), warm-up + cosine,
//!   global-norm clipping, gradient accumulation.
//! - **Validation**: Recall@k of the validation sample, ranked in its pool, by the inference
//!   forward at the checkpoint's serving budget.
//! - **Output**: an encoder checkpoint (`config.json`, `tokenizer.json`, `1_Pooling/`,
//!   `model.safetensors` in f32, `encoder.json`), `train-state/` for `--resume` (bit-identical
//!   on CPU) and `train.json`, as the NoteLLM trainer writes them.

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};

use super::loss;
use super::notellm::{epoch_batches, pair_batch_notes, training_pairs};
use super::objective::{known_partners, partner_set, recall_validation, validation_pool};
use super::optim::{self, AdamW, AdamWParams};
use super::trainer::{
    load_train_state, save_train_state, write_json, Objective, Result, RunStats, State, Summary, TrainError,
    TrainOptions, Validation, LOG_FILE, STATE_DIR,
};
use crate::data::Dataset;
use notellm_model::encoder::{self, Bert, EncoderFiles, EncoderMeta, SentenceEncoder};
use notellm_note::NoteId;

/// Texts per forward group inside a micro-batch: sorted by length, each group padded to its own
/// longest, so a batch of short notes pays for no long one.
const GROUP: usize = 16;

/// The fine-tuning of a sentence encoder.
pub struct EncoderTrainer {
    /// The model at the training token budget (`max_len`).
    encoder: SentenceEncoder,
    /// The same weights at the checkpoint's serving budget: validation and [`Self::embed_notes`].
    serve: SentenceEncoder,
    /// Name, variable, weight decay; sorted by name (the optimizer's order).
    vars: Vec<(String, Var, bool)>,
    tau: Tensor,
    opt: AdamW,
    data: Dataset,
    opts: TrainOptions,
    /// Training pairs as note indices.
    pairs: Vec<(usize, usize)>,
    /// Every training pair, both ways: partners masked out of each other's negatives.
    partners: HashSet<(usize, usize)>,
    ids: HashMap<usize, Vec<u32>>,
    val: Option<ValSample>,
    out: PathBuf,
    state: State,
}

struct ValSample {
    pool: Vec<NoteId>,
    pairs: Vec<crate::data::Pair>,
    seqs: Vec<Vec<u32>>,
}

impl EncoderTrainer {
    /// Loads the dataset and the base encoder checkpoint (`base`, e.g. the fetched
    /// all-MiniLM-L6-v2) and plans the run.
    pub fn new(data_dir: &Path, base: &Path, out: &Path, device: &Device, opts: TrainOptions) -> Result<Self> {
        if opts.objective != Objective::Encoder {
            return Err(TrainError::Invalid("the encoder trainer runs --objective encoder only".into()));
        }
        if opts.accumulation == 0 || opts.epochs <= 0.0 || opts.lr <= 0.0 {
            return Err(TrainError::Invalid("accumulation, epochs and lr must be positive".into()));
        }
        if opts.pairs_per_step < 2 {
            return Err(TrainError::Invalid("pairs_per_step must be at least 2 (in-batch negatives)".into()));
        }
        if !encoder::is_encoder_checkpoint(base) {
            return Err(TrainError::Invalid(format!(
                "--objective encoder needs an encoder checkpoint as --base (a sentence-transformers directory with {}); {} is not one",
                encoder::POOLING_FILE,
                base.display()
            )));
        }
        let data = Dataset::load(data_dir)?;
        let files = EncoderFiles::open(base)?;
        let weights = base.join(encoder::WEIGHTS_FILE);
        let tensors = Bert::read_tensors(&weights, device)?;
        // Every tensor the model reads becomes a variable (sorted by name: the optimizer's
        // order); anything else in the file (a pooler) is left out of the checkpoint.
        let base_model = Bert::from_tensors(&files.config, &tensors, &weights.display().to_string())?;
        let mut vars = Vec::new();
        let mut var_tensors = HashMap::new();
        for (name, t) in base_model.named_tensors() {
            let var = Var::from_tensor(&t.to_dtype(DType::F32)?)?;
            let decay = !(name.ends_with(".bias") || name.contains("LayerNorm"));
            var_tensors.insert(name.clone(), var.as_tensor().clone());
            vars.push((name.clone(), var, decay));
        }
        let bert = Bert::from_tensors(&files.config, &var_tensors, &weights.display().to_string())?;
        let mut encoder = SentenceEncoder::with_model(files, bert, device)?;
        encoder.set_max_tokens(opts.max_len)?;
        let tau = Tensor::new(opts.tau_init as f32, device)?;
        let params = AdamWParams { weight_decay: opts.weight_decay, ..Default::default() };
        let opt = AdamW::new(vars.clone(), params)?;
        let pairs = training_pairs(&data, &opts)?;
        let partners = partner_set(&data);
        // Ranked as served: the same variables at the checkpoint's own token budget.
        let serve = SentenceEncoder::with_model(encoder.files().clone(), encoder.bert().clone(), device)?;
        let val = match validation_pool(&data, opts.val_pairs, opts.val_pool, opts.seed, |_| true) {
            None => None,
            Some((pool, pairs)) => {
                let seqs = pool
                    .iter()
                    .map(|id| {
                        let note = data.note(id).ok_or_else(|| TrainError::Invalid(format!("unknown note {id}")))?;
                        Ok(serve.note_ids(note)?)
                    })
                    .collect::<Result<Vec<_>>>()?;
                Some(ValSample { pool, pairs, seqs })
            }
        };
        let state = State { step: 0, options: opts.clone(), history: Vec::new(), losses: Vec::new(), runs: Vec::new() };
        let t = Self {
            encoder,
            serve,
            vars,
            tau,
            opt,
            data,
            opts,
            pairs,
            partners,
            ids: HashMap::new(),
            val,
            out: out.to_owned(),
            state,
        };
        tracing::info!(
            pairs = t.pairs.len(),
            steps = t.total_steps(),
            val = t.val.as_ref().map_or(0, |v| v.pairs.len()),
            max_len = t.opts.max_len,
            "encoder training set ready"
        );
        Ok(t)
    }

    pub fn step(&self) -> u64 {
        self.state.step
    }

    pub fn options(&self) -> &TrainOptions {
        &self.opts
    }

    fn batches_per_epoch(&self) -> usize {
        epoch_batches(&self.pairs, self.opts.pairs_per_step, self.opts.seed, 0).len()
    }

    /// Optimizer steps in the whole run.
    pub fn total_steps(&self) -> u64 {
        let micro = (self.batches_per_epoch() as f64 * self.opts.epochs).floor() as u64;
        (micro / self.opts.accumulation as u64).max(1)
    }

    /// The notes of each micro-batch of `epoch`, in order.
    pub fn batch_notes(&self, epoch: u64) -> Vec<Vec<NoteId>> {
        epoch_batches(&self.pairs, self.opts.pairs_per_step, self.opts.seed, epoch)
            .iter()
            .map(|b| pair_batch_notes(&self.data, &self.pairs, b))
            .collect()
    }

    fn note_ids(&mut self, note: usize) -> Result<&[u32]> {
        if !self.ids.contains_key(&note) {
            let ids = self.encoder.note_ids(&self.data.notes[note].note)?;
            self.ids.insert(note, ids);
        }
        Ok(&self.ids[&note])
    }

    /// The L2-normalised embeddings `[n, dim]` of `notes`, in order, by the differentiable
    /// forward over length-sorted groups.
    fn embed_for_loss(&mut self, notes: &[usize]) -> Result<Tensor> {
        let mut seqs: Vec<Vec<u32>> = Vec::with_capacity(notes.len());
        for &n in notes {
            seqs.push(self.note_ids(n)?.to_vec());
        }
        let mut order: Vec<usize> = (0..notes.len()).collect();
        order.sort_by_key(|&i| (Reverse(seqs[i].len()), i));
        let mut parts = Vec::new();
        for group in order.chunks(GROUP) {
            let refs: Vec<&[u32]> = group.iter().map(|&i| seqs[i].as_slice()).collect();
            parts.push(self.encoder.pooled(&refs, true)?);
        }
        let sorted = Tensor::cat(&parts, 0)?;
        // Row i of the result is row position[i] of the sorted embeddings.
        let mut position = vec![0u32; notes.len()];
        for (p, &i) in order.iter().enumerate() {
            position[i] = p as u32;
        }
        let position = Tensor::from_vec(position, notes.len(), sorted.device())?;
        Ok(sorted.index_select(&position, 0)?)
    }

    /// The loss of micro-batch `index` of `epoch` under the current weights (no update).
    pub fn batch_loss(&mut self, epoch: u64, index: usize) -> Result<f64> {
        let batches = epoch_batches(&self.pairs, self.opts.pairs_per_step, self.opts.seed, epoch);
        let batch =
            batches.get(index).ok_or_else(|| TrainError::Invalid(format!("epoch {epoch} has no batch {index}")))?;
        let notes: Vec<usize> = batch.iter().flat_map(|&p| [self.pairs[p].0, self.pairs[p].1]).collect();
        let emb = self.embed_for_loss(&notes)?;
        let loss = loss::contrastive_masked(&emb, &self.tau, &known_partners(&notes, &self.partners))?;
        Ok(loss.to_dtype(DType::F64)?.to_scalar::<f64>()?)
    }

    /// One micro-batch: loss and gradients of the loss divided by `accumulation`.
    fn micro_step(&mut self, batch: &[usize], accumulation: usize) -> Result<(f64, usize, GradStore)> {
        let notes: Vec<usize> = batch.iter().flat_map(|&p| [self.pairs[p].0, self.pairs[p].1]).collect();
        let emb = self.embed_for_loss(&notes)?;
        let known = known_partners(&notes, &self.partners);
        let loss = loss::contrastive_masked(&emb, &self.tau, &known)?;
        let grads = (&loss / accumulation as f64)?.backward()?;
        Ok((loss.to_dtype(DType::F64)?.to_scalar::<f64>()?, known.len(), grads))
    }

    /// Runs the remaining steps (at most `stop_after` in this call), validating and saving as
    /// configured, and writes the checkpoint of where it got to.
    pub fn run(&mut self, stop_after: Option<u64>) -> Result<Summary> {
        let total = self.total_steps();
        let warmup = (total as f64 * self.opts.warmup_share).round() as u64;
        let per_epoch = self.batches_per_epoch().max(1);
        let started = Instant::now();
        let first_step = self.state.step;
        let vars: Vec<Var> = self.vars.iter().map(|(_, v, _)| v.clone()).collect();
        let pb = crate::progress::bar("training", total);
        pb.set_position(self.state.step);
        let (mut step_seconds, mut trained, mut done_here) = (0.0f64, 0usize, 0u64);
        let mut last_loss = f64::NAN;
        let (mut batches_epoch, mut batches) = (u64::MAX, Vec::new());
        while self.state.step < total && stop_after.is_none_or(|n| done_here < n) {
            let step = self.state.step;
            let step_started = Instant::now();
            let lr = optim::learning_rate(step, warmup, total, self.opts.lr, 0.0);
            let mut acc: Option<GradStore> = None;
            let (mut l_sum, mut masked) = (0.0, 0usize);
            for m in 0..self.opts.accumulation {
                let micro = step as usize * self.opts.accumulation + m;
                let epoch = (micro / per_epoch) as u64;
                if epoch != batches_epoch {
                    batches = epoch_batches(&self.pairs, self.opts.pairs_per_step, self.opts.seed, epoch);
                    batches_epoch = epoch;
                }
                if batches.is_empty() {
                    return Err(TrainError::Invalid(format!("epoch {epoch} has no full batch")));
                }
                let batch: Vec<usize> = batches[(micro % per_epoch) % batches.len()].clone();
                let (loss, known, grads) = self.micro_step(&batch, self.opts.accumulation)?;
                l_sum += loss;
                masked += known;
                trained += batch.len();
                acc = Some(match acc {
                    None => grads,
                    Some(a) => optim::add_grads(a, grads, &vars)?,
                });
            }
            let mut grads = acc.ok_or_else(|| TrainError::Invalid("no micro-batches".into()))?;
            let norm = optim::clip_grad_norm(&mut grads, &vars, self.opts.clip_norm)?;
            self.opt.step(&grads, lr)?;
            step_seconds += step_started.elapsed().as_secs_f64();
            last_loss = l_sum / self.opts.accumulation as f64;
            if !last_loss.is_finite() {
                return Err(TrainError::Invalid(format!("loss became {last_loss} at step {step}")));
            }
            self.state.step += 1;
            done_here += 1;
            self.state.losses.push((self.state.step, last_loss));
            let rate = trained as f64 / step_seconds.max(1e-9);
            pb.set_message(format!(
                "training loss {last_loss:.4} (partners masked {masked}) |g| {norm:.2} lr {lr:.2e} {rate:.2} pairs/s"
            ));
            pb.set_position(self.state.step);
            if pb.is_hidden() && self.state.step % 10 == 0 {
                tracing::info!(
                    step = self.state.step,
                    of = total,
                    loss = last_loss,
                    masked,
                    grad_norm = norm,
                    lr,
                    pairs_per_s = rate,
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
        if self.state.history.last().is_none_or(|v| v.step != self.state.step) {
            self.validate()?;
        }
        self.state.runs.push(RunStats {
            first_step,
            steps: self.state.step - first_step,
            seconds: started.elapsed().as_secs_f64(),
            step_seconds,
            trained_per_second: if step_seconds > 0.0 { trained as f64 / step_seconds } else { 0.0 },
            ..RunStats::default()
        });
        self.save_state()?;
        self.save_outputs()?;
        let run = self.state.runs.last().cloned().unwrap_or_default();
        Ok(Summary {
            steps: self.state.step,
            final_loss: last_loss,
            history: self.state.history.clone(),
            losses: self.state.losses.clone(),
            seconds: started.elapsed().as_secs_f64(),
            notes_per_second: 2.0 * run.trained_per_second,
            run,
        })
    }

    /// The current embeddings of `seqs` (inference forward, length-sorted batches of 32).
    fn embed_seqs(&self, seqs: &[Vec<u32>]) -> Result<Vec<notellm_note::Embedding>> {
        Ok(notellm_model::batching::embed_by_length(seqs, 32, |b| self.serve.embed_ids(b), |_| {})?)
    }

    /// Recall@k of the current model on the validation sample, added to the history.
    pub fn validate(&mut self) -> Result<Option<Validation>> {
        let Some(val) = &self.val else { return Ok(None) };
        let started = Instant::now();
        let embs = self.embed_seqs(&val.seqs)?;
        let v = recall_validation(&val.pool, &embs, &val.pairs, &self.opts.recall_k, self.state.step, started)?;
        self.state.history.push(v.clone());
        Ok(Some(v))
    }

    /// Embeddings of notes by the current weights at the checkpoint's serving budget (tests).
    pub fn embed_notes(&self, notes: &[notellm_note::Note]) -> Result<Vec<notellm_note::Embedding>> {
        Ok(self.serve.embed_notes(notes, 32)?)
    }

    fn state_dir(&self) -> PathBuf {
        self.out.join(STATE_DIR)
    }

    fn var_state(&self) -> HashMap<String, Tensor> {
        self.vars.iter().map(|(n, v, _)| (n.clone(), v.as_tensor().clone())).collect()
    }

    fn save_state(&self) -> Result<()> {
        save_train_state(&self.state_dir(), &self.var_state(), &self.opt, &self.state)
    }

    /// Loads `train-state/` from the output directory if it is there; returns whether it was.
    pub fn resume(&mut self) -> Result<bool> {
        let dir = self.state_dir();
        let Some((state, saved)) = load_train_state(&dir, &self.opts, &mut self.opt)? else { return Ok(false) };
        for (name, var, _) in &self.vars {
            let t = saved.get(name).ok_or_else(|| TrainError::Invalid(format!("{}: lacks {name}", dir.display())))?;
            var.set(&t.to_device(var.device())?.to_dtype(var.dtype())?)?;
        }
        self.state = state;
        Ok(true)
    }

    /// Writes the encoder checkpoint: the base's config, tokenizer and pooling config, the
    /// trained weights (f32) and `encoder.json` with this run's model version.
    fn save_outputs(&self) -> Result<()> {
        let out = &self.out;
        let base = &self.encoder.files().dir;
        std::fs::create_dir_all(out.join("1_Pooling"))
            .map_err(|source| TrainError::Io { path: out.clone(), source })?;
        for f in [encoder::CONFIG_FILE, encoder::TOKENIZER_FILE, encoder::POOLING_FILE] {
            std::fs::copy(base.join(f), out.join(f)).map_err(|source| TrainError::Io { path: out.join(f), source })?;
        }
        candle_core::safetensors::save(&self.var_state(), out.join(encoder::WEIGHTS_FILE))?;
        let meta = EncoderMeta {
            model_version: self.opts.model_version.clone(),
            max_tokens: self.encoder.files().meta.max_tokens,
        };
        write_json(&out.join(encoder::META_FILE), &meta)?;
        write_json(&out.join(LOG_FILE), &self.state)?;
        tracing::info!(out = %out.display(), version = %meta.model_version, "encoder checkpoint written");
        Ok(())
    }
}
