//! The mICL objective of `notellm train` (NoteLLM-2), for a multimodal base
//! (`notellm model init-multimodal`) on a dataset whose notes have images
//! (`notellm data appstream`).
//!
//! - **Items**: the training pairs whose two notes both have an image (as [`super::notellm`]
//!   picks them: `max_notes`, then `max_pairs`).
//! - **Before the first step**: every image the run uses (training and validation notes)
//!   through the frozen encoder once, the features cached on disk per image
//!   (`$NOTELLM_CACHE/image-features`, [`notellm_model::features`]); the mICL prompt's note half
//!   tokenised once per note.
//! - **A step**: `pairs_per_step` pairs as 2B notes, each its mICL prompt with its image's visual
//!   tokens; the note embeddings (state before `[EMB]`) and the image embeddings (state before
//!   `<IMG_EMB>`), both late-fused and through the head, L2-normalised; GCL over the notes and
//!   GCL over the images, `(1 - w) L_note + w L_img` with `w = image_weight` (the paper's 9:1).
//!   The gradients reach the connector through every layer of the LLM; the LLM's top
//!   `train_layers`, the head, tau and the whole connector train, the encoder never.
//! - **Validation**: Recall@k of the note embeddings on a seeded sample of validation pairs with
//!   images, in a pool of their notes plus other validation notes with images.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};

use super::loss;
use super::model::TrainableModel;
use super::notellm::{epoch_batches, pair_batch_notes, training_pairs};
use super::objective::{recall_validation, validation_pool, Micro, TrainingObjective};
use super::trainer::{Objective, Result, TrainError, TrainOptions, Validation};
use crate::data::{Dataset, Pair};
use notellm_model::features::features_of;
use notellm_model::image_input::ImageHash;
use notellm_model::multimodal::micl_forward;
use notellm_note::{Embedding, NoteId};

/// Images per encoder pass in the precompute.
const ENCODE_BATCH: usize = 8;

/// Notes per forward pass in validation.
const VAL_BATCH: usize = 8;

pub struct MiclObjective {
    pairs_per_step: usize,
    seed: u64,
    image_weight: f64,
    recall_k: Vec<usize>,
    pairs: Vec<(usize, usize)>,
    /// Note index -> its mICL note-half token ids and its image's features `[tokens, width]`.
    inputs: HashMap<usize, (Vec<u32>, Tensor)>,
    val: Option<(Vec<NoteId>, Vec<usize>, Vec<Pair>)>,
}

impl MiclObjective {
    pub fn new(data: &Dataset, model: &TrainableModel, opts: &TrainOptions) -> Result<Self> {
        if model.multimodal().is_none() {
            return Err(TrainError::Invalid("the mICL objective needs a multimodal base".into()));
        }
        if !(0.0..=1.0).contains(&opts.image_weight) {
            return Err(TrainError::Invalid(format!("image_weight {} must be in [0, 1]", opts.image_weight)));
        }
        if opts.pairs_per_step < 2 {
            return Err(TrainError::Invalid("pairs_per_step must be at least 2 (in-batch negatives)".into()));
        }
        let has_image = |i: usize| data.image_path(&data.notes[i].note_id).is_some();
        let all = training_pairs(data, opts)?;
        let pairs: Vec<(usize, usize)> = all.iter().copied().filter(|&(a, b)| has_image(a) && has_image(b)).collect();
        if pairs.len() < opts.pairs_per_step {
            return Err(TrainError::Invalid(format!(
                "{} of {} training pairs have an image on both notes: fewer than one batch of {}",
                pairs.len(),
                all.len(),
                opts.pairs_per_step
            )));
        }
        Ok(Self {
            pairs_per_step: opts.pairs_per_step,
            seed: opts.seed,
            image_weight: opts.image_weight,
            recall_k: opts.recall_k.clone(),
            pairs,
            inputs: HashMap::new(),
            val: val_sample(data, opts),
        })
    }

    /// Embeddings of `notes` (indices), note side and image side, L2-normalised rows.
    fn embed(&self, model: &TrainableModel, notes: &[usize]) -> Result<(Tensor, Tensor)> {
        let mm = model.multimodal().ok_or_else(|| TrainError::Invalid("no multimodal parts".into()))?;
        let mut ids = Vec::with_capacity(notes.len());
        let mut feats = Vec::with_capacity(notes.len());
        for n in notes {
            let (i, f) = self.inputs.get(n).ok_or_else(|| TrainError::Invalid(format!("note {n} was not prepared")))?;
            ids.push(i.clone());
            feats.push(f.to_device(model.decoder().device())?);
        }
        let image = Tensor::stack(&feats, 0)?;
        let states = micl_forward(model.decoder(), &mm.prompt, &mm.connector, &ids, &image, model.tokenizer().pad_id)?;
        let head = model.head();
        Ok((normalise(&states.note.matmul(&head.t()?)?)?, normalise(&states.image.matmul(&head.t()?)?)?))
    }
}

fn normalise(x: &Tensor) -> Result<Tensor> {
    let norm = (x.sqr()?.sum_keepdim(D::Minus1)? + 1e-12)?.sqrt()?;
    Ok(x.broadcast_div(&norm)?)
}

/// A seeded sample of validation pairs with images and their pool (ids and note indices).
fn val_sample(data: &Dataset, opts: &TrainOptions) -> Option<(Vec<NoteId>, Vec<usize>, Vec<Pair>)> {
    let has_image = |id: &NoteId| data.image_path(id).is_some();
    let (pool, pairs) = validation_pool(data, opts.val_pairs, opts.val_pool, opts.seed, has_image)?;
    let idx = pool.iter().filter_map(|id| data.by_id.get(id).copied()).collect();
    Some((pool, idx, pairs))
}

impl TrainingObjective for MiclObjective {
    fn kind(&self) -> Objective {
        Objective::Micl
    }

    fn training_items(&self) -> (usize, &'static str) {
        (self.pairs.len(), "pairs")
    }

    fn validation_size(&self) -> usize {
        self.val.as_ref().map_or(0, |v| v.2.len())
    }

    fn epoch_plan(&self, epoch: u64) -> Vec<Vec<usize>> {
        epoch_batches(&self.pairs, self.pairs_per_step, self.seed, epoch)
    }

    fn batch_notes(&self, data: &Dataset, batch: &[usize]) -> Vec<NoteId> {
        pair_batch_notes(data, &self.pairs, batch)
    }

    /// Every image the run uses through the frozen encoder (cached on disk), and every note's
    /// mICL tokens.
    fn precompute(&mut self, model: &mut TrainableModel, data: &Dataset) -> Result<()> {
        let mm = model.multimodal().ok_or_else(|| TrainError::Invalid("no multimodal parts".into()))?;
        let mut notes: Vec<usize> = self.pairs.iter().flat_map(|&(a, b)| [a, b]).collect();
        if let Some((_, idx, _)) = &self.val {
            notes.extend(idx);
        }
        notes.sort_unstable();
        notes.dedup();
        let started = Instant::now();
        let images = notes.iter().map(|&n| Ok(data.image(&data.notes[n].note_id)?)).collect::<Result<Vec<_>>>()?;
        let cache = notellm_artifacts::vision::feature_cache(&mm.encoder)?;
        let named: Vec<(ImageHash, &image::DynamicImage)> = images.iter().map(|i| (i.hash, &i.image)).collect();
        let (feats, encoded) = features_of(&mm.encoder, Some(&cache), &named, ENCODE_BATCH)?;
        let (tok, cfg) = (model.tokenizer(), model.base_config());
        for (row, &n) in notes.iter().enumerate() {
            let ids = mm.prompt.note_ids(tok, cfg, &data.notes[n].note)?;
            self.inputs.insert(n, (ids, feats.get(row)?.to_device(&Device::Cpu)?));
        }
        tracing::info!(
            notes = notes.len(),
            encoded,
            cached = notes.len() - encoded,
            seconds = started.elapsed().as_secs_f64(),
            "image features ready"
        );
        Ok(())
    }

    fn micro_step(
        &mut self,
        model: &mut TrainableModel,
        _data: &Dataset,
        batch: &[usize],
        accumulation: usize,
    ) -> Result<Micro> {
        // Rows 2i and 2i + 1 are a pair, as the contrastive loss reads them.
        let notes: Vec<usize> = batch.iter().flat_map(|&p| [self.pairs[p].0, self.pairs[p].1]).collect();
        let (note, image) = self.embed(model, &notes)?;
        let l_note = loss::contrastive(&note, model.tau_tensor())?;
        let l_img = loss::contrastive(&image, model.tau_tensor())?;
        let w = self.image_weight;
        let total = ((&l_note * (1.0 - w))? + (&l_img * w)?)?;
        let grads = (&total / accumulation as f64)?.backward()?;
        let as_f64 = |t: &Tensor| -> Result<f64> { Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?) };
        Ok(Micro {
            loss: as_f64(&total)?,
            parts: vec![("note", as_f64(&l_note)?), ("img", as_f64(&l_img)?)],
            notes: notes.len(),
            trained: batch.len(),
            grads,
        })
    }

    fn describe_step(&self, model: &TrainableModel, _loss: f64, parts: &[(&'static str, f64)]) -> Result<String> {
        let part = |name: &str| parts.iter().find(|(n, _)| *n == name).map_or(f64::NAN, |&(_, v)| v);
        Ok(format!("note {:.4} img {:.4}, tau {:.3}", part("note"), part("img"), model.tau()?))
    }

    fn validate(&mut self, model: &mut TrainableModel, step: u64) -> Result<Option<Validation>> {
        let Some((pool, idx, pairs)) = &self.val else { return Ok(None) };
        let started = Instant::now();
        let mut embs = Vec::with_capacity(idx.len());
        for chunk in idx.chunks(VAL_BATCH) {
            let (note, _) = self.embed(model, chunk)?;
            for row in note.detach().to_device(&Device::Cpu)?.to_vec2::<f32>()? {
                embs.push(Embedding::normalised(row).map_err(|e| TrainError::Invalid(format!("validation: {e}")))?);
            }
        }
        Ok(Some(recall_validation(pool, &embs, pairs, &self.recall_k, step, started)?))
    }
}
