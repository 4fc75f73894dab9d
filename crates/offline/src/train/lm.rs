//! The causal-LM objective of `notellm train --objective lm`: pre-training a from-scratch
//! checkpoint (`notellm model init`) on the notes before the NoteLLM recipe fine-tunes it.
//!
//! - **Data**: the dataset's training-split notes, one sequence per note. Validation notes only
//!   score the model; test notes (the cold-start set of `notellm eval`) are never read.
//! - **Sequence**: a plain rendering, not the Note Compression Prompt:
//!
//!   ```text
//!   [BOS]<title>\n<content>\n<hashtag>, <hashtag>\n<category>[EOS]
//!   ```
//!
//!   each field cut to the checkpoint's token budgets (title, content; hashtags and category to
//!   the topic budget), empty fields leaving an empty line so a field is always on its line.
//!   The prompt's instruction and template are several dozen tokens, the same in every note:
//!   predicting them teaches nothing about the notes and would dilute the loss and the
//!   perplexity, and the NoteLLM stage learns the template anyway. The hashtags are joined
//!   as the prompt's hashtag output joins them, so the generation stage builds on the format.
//!   User text that spells a special token is defused as in the prompt; BOS and EOS are added
//!   as ids.
//! - **Loss**: mean next-token cross-entropy over every real target position of a micro-batch
//!   (EOS included, right padding never), averaged over the micro-batches of a step under
//!   gradient accumulation; the embedding head and tau get no gradient and stay as they are.
//! - **Batches**: a seeded shuffle of the notes per epoch cut into full batches (a partial last
//!   batch is dropped), so a resumed run sees the same batches.
//! - **Items**: the training-split notes, a seeded sample of `max_pairs` (here: notes), in
//!   batches of `2 x pairs_per_step`; every layer trains (`--train-layers` at least the
//!   model's depth), so there is no frozen pass.
//! - **Validation**: the loss and perplexity on a seeded sample of `val_pairs` validation notes.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::DType;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::loss;
use super::model::TrainableModel;
use super::objective::{seeded_sample, Micro, TrainingObjective};
use super::trainer::{LmValidation, Objective, Result, TrainError, TrainOptions, Validation};
use crate::data::{Dataset, Part};
use notellm_model::prompt::{Limits, Specials, Truncate, HASHTAG_SEPARATOR};
use notellm_model::{ModelError, NoteTokenizer};
use notellm_note::{Note, NoteId};

/// The text of `note` between BOS and EOS (see the module doc), fields cut to `limits`.
pub fn render(note: &Note, limits: Limits, specials: &Specials, tok: &dyn Truncate) -> String {
    let field = |text: &str, max: usize| -> String {
        let clean = specials.defuse(text.trim());
        tok.truncate(&clean, max).trim_end().to_owned()
    };
    let tags = field(&note.hashtags.join(HASHTAG_SEPARATOR), limits.topic);
    // A list cut mid-way must not end in a dangling separator.
    let tags = tags.trim_end_matches(|c: char| c == ',' || c.is_whitespace());
    format!(
        "{}\n{}\n{tags}\n{}",
        field(&note.title, limits.title),
        field(&note.content, limits.content),
        field(note.category.as_deref().unwrap_or(""), limits.topic)
    )
}

/// The token ids of `note`: BOS (when the checkpoint has one), the rendered text, EOS.
pub fn sequence(tok: &NoteTokenizer, limits: Limits, note: &Note) -> Result<Vec<u32>, ModelError> {
    let body = tok.encode(&render(note, limits, tok.specials(), tok))?;
    let mut ids = Vec::with_capacity(body.len() + 2);
    ids.extend(tok.bos_id);
    ids.extend(body);
    ids.push(tok.eos_id);
    Ok(ids)
}

/// Micro-batches of `per_batch` notes (values of `notes`) for `epoch`: a seeded shuffle cut into
/// full batches; every note at most once per epoch.
pub fn epoch_batches(notes: &[usize], per_batch: usize, seed: u64, epoch: u64) -> Vec<Vec<usize>> {
    if per_batch == 0 {
        return Vec::new();
    }
    let mut order = notes.to_vec();
    order.shuffle(&mut super::objective::epoch_rng(seed, epoch));
    order.chunks_exact(per_batch).map(<[usize]>::to_vec).collect()
}

/// Causal-LM pre-training on the training-split notes.
pub struct LmObjective {
    per_batch: usize,
    seed: u64,
    limits: Limits,
    /// Training notes as indices into the dataset's notes.
    notes: Vec<usize>,
    /// Each note's sequence, rendered once (`None`: nothing to predict or not renderable).
    sequences: HashMap<usize, Option<Vec<u32>>>,
    /// The validation notes' sequences.
    val: Vec<Vec<u32>>,
}

impl LmObjective {
    pub fn new(data: &Dataset, model: &TrainableModel, opts: &TrainOptions) -> Result<Self> {
        if opts.pairs_per_step == 0 {
            return Err(TrainError::Invalid("pairs_per_step must be at least 1".into()));
        }
        if model.first_trained_layer() > 0 {
            let layers = model.decoder().config().num_layers;
            return Err(TrainError::Invalid(format!(
                "--objective lm trains every layer: pass --train-layers {layers} or more (the model has \
                 {layers} layers, --train-layers is {})",
                opts.train_layers
            )));
        }
        let limits = model.limits();
        let mut val_ids: Vec<NoteId> = data.ids(Part::Val).to_vec();
        val_ids.shuffle(&mut StdRng::seed_from_u64(opts.seed.wrapping_add(1)));
        val_ids.truncate(opts.val_pairs);
        Ok(Self {
            per_batch: 2 * opts.pairs_per_step,
            seed: opts.seed,
            limits,
            notes: training_notes(data, opts)?,
            sequences: HashMap::new(),
            val: sequences(model.tokenizer(), limits, data, &val_ids)?,
        })
    }

    /// The note's sequence, rendered once.
    fn sequence(&mut self, data: &Dataset, tok: &NoteTokenizer, note: usize) -> Option<Vec<u32>> {
        if let Some(s) = self.sequences.get(&note) {
            return s.clone();
        }
        let line = &data.notes[note];
        let seq = match sequence(tok, self.limits, &line.note) {
            Ok(s) if s.len() >= 2 => Some(s),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(note = %line.note_id, error = %e, "note left out of training");
                None
            }
        };
        self.sequences.insert(note, seq.clone());
        seq
    }
}

impl TrainingObjective for LmObjective {
    fn kind(&self) -> Objective {
        Objective::Lm
    }

    fn training_items(&self) -> (usize, &'static str) {
        (self.notes.len(), "notes")
    }

    fn validation_size(&self) -> usize {
        self.val.len()
    }

    fn epoch_plan(&self, epoch: u64) -> Vec<Vec<usize>> {
        epoch_batches(&self.notes, self.per_batch, self.seed, epoch)
    }

    fn batch_notes(&self, data: &Dataset, batch: &[usize]) -> Vec<NoteId> {
        batch.iter().map(|&i| data.notes[i].note_id.clone()).collect()
    }

    fn micro_step(
        &mut self,
        model: &mut TrainableModel,
        data: &Dataset,
        batch: &[usize],
        accumulation: usize,
    ) -> Result<Micro> {
        let mut seqs = Vec::with_capacity(batch.len());
        for &n in batch {
            seqs.extend(self.sequence(data, model.tokenizer(), n));
        }
        let Some((logits, targets)) = model.lm_forward(&seqs)? else {
            return Err(TrainError::Invalid("a batch has no note with a token to predict".into()));
        };
        let lm = loss::generation(&logits, &targets)?;
        let grads = (&lm / accumulation as f64)?.backward()?;
        let loss = lm.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        Ok(Micro { loss, parts: Vec::new(), notes: seqs.len(), trained: seqs.len(), grads })
    }

    fn describe_step(&self, _model: &TrainableModel, loss: f64, _parts: &[(&'static str, f64)]) -> Result<String> {
        Ok(format!("ppl {:.1}", loss.exp()))
    }

    fn validate(&mut self, model: &mut TrainableModel, step: u64) -> Result<Option<Validation>> {
        if self.val.is_empty() {
            return Ok(None);
        }
        let started = Instant::now();
        let (loss, tokens) = loss_of(model, &self.val)?;
        let lm = LmValidation { loss, perplexity: loss.exp(), notes: self.val.len(), tokens };
        tracing::info!(
            step,
            loss = lm.loss,
            perplexity = lm.perplexity,
            notes = lm.notes,
            tokens = lm.tokens,
            seconds = started.elapsed().as_secs_f64(),
            "validation"
        );
        Ok(Some(Validation { step, recall: Vec::new(), pairs: 0, pool: 0, lm: Some(lm) }))
    }
}

/// The sequences of the notes `ids` that have a token to predict.
pub fn sequences(tok: &NoteTokenizer, limits: Limits, data: &Dataset, ids: &[NoteId]) -> Result<Vec<Vec<u32>>> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let note = data.note(id).ok_or_else(|| TrainError::Invalid(format!("unknown note {id}")))?;
        let seq = sequence(tok, limits, note)?;
        if seq.len() >= 2 {
            out.push(seq);
        }
    }
    Ok(out)
}

/// Token-weighted mean LM loss of `seqs` under `model` and the number of predicted tokens.
pub fn loss_of(model: &mut TrainableModel, seqs: &[Vec<u32>]) -> Result<(f64, usize)> {
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

/// The training-split notes as note indices (a seeded sample of `max_pairs`).
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

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    /// Counts whitespace-separated words as tokens.
    struct Words;
    impl Truncate for Words {
        fn truncate<'a>(&self, text: &'a str, max: usize) -> Cow<'a, str> {
            Cow::Owned(text.split_whitespace().take(max).collect::<Vec<_>>().join(" "))
        }
    }

    fn specials() -> Specials {
        Specials { bos: Some("<s>".into()), emb: "[EMB]".into(), eos: "</s>".into(), others: vec![] }
    }

    #[test]
    fn renders_every_field_on_its_line_within_the_budgets() {
        let note = Note {
            title: " Autumn hike ".into(),
            content: "Maple leaves everywhere </s> and more words".into(),
            hashtags: vec!["travel".into(), "autumn".into(), "leaves".into()],
            category: Some("Travel".into()),
        };
        let limits = Limits { title: 1, content: 5, topic: 2 };
        assert_eq!(
            render(&note, limits, &specials(), &Words),
            "Autumn\nMaple leaves everywhere < /s>\ntravel, autumn\nTravel"
        );
        let bare = Note { title: "t".into(), ..Note::default() };
        assert_eq!(render(&bare, Limits::default(), &specials(), &Words), "t\n\n\n");
    }

    #[test]
    fn batches_are_seeded_full_and_hold_each_note_once() {
        let notes: Vec<usize> = (100..137).collect();
        let a = epoch_batches(&notes, 8, 3, 0);
        assert_eq!(a, epoch_batches(&notes, 8, 3, 0));
        assert_ne!(a, epoch_batches(&notes, 8, 3, 1));
        assert_ne!(a, epoch_batches(&notes, 8, 4, 0));
        assert_eq!(a.len(), 4);
        assert!(a.iter().all(|b| b.len() == 8));
        let mut used = a.concat();
        used.sort_unstable();
        used.dedup();
        assert_eq!(used.len(), 32);
        assert!(used.iter().all(|n| notes.contains(n)));
        assert!(epoch_batches(&notes, 0, 3, 0).is_empty());
    }
}
