//! The NoteLLM objective of `notellm train` (the default): GCL, the in-batch contrastive loss
//! over related pairs, plus `alpha` times CSFT, the generation loss of the note's hashtags or
//! category, on the Note Compression Prompt.
//!
//! - **Items**: the training pairs (note indices), optionally only those among the `max_notes`
//!   notes where they are densest ([`dense_notes`]), then a seeded sample of `max_pairs`.
//! - **Batches**: `pairs_per_step` pairs (2B notes, in-batch negatives), a seeded shuffle per
//!   epoch filled greedily so that no note is twice in a batch (it would be its own false
//!   negative); partial last batches are dropped. A note's other known partners in the batch
//!   (any training pair) are masked out of its negatives.
//! - **Before the first step**: the frozen layers' pass over every training and validation note
//!   the run uses, cached in memory (and on disk when the trainer has a cache directory).
//! - **Distillation** (`--distill DIR`): a sentence encoder embeds every training note once
//!   before the first step; each batch adds `distill_weight` times the KL divergence from its
//!   in-batch similarity distribution (at scale [`TEACHER_SCALE`]) to the student's.
//! - **Validation**: Recall@k of a seeded sample of validation pairs, ranked in a pool of their
//!   notes plus other validation notes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

use candle_core::{DType, Tensor};
use rand::seq::SliceRandom;

use super::examples::{self, Example};
use super::loss;
use super::model::TrainableModel;
use super::objective::{
    epoch_rng, known_partners, partner_set, recall_validation, seeded_sample, validation_pool, Micro, TrainingObjective,
};
use super::trainer::{Objective, Result, TrainError, TrainOptions, Validation};
use crate::data::{Dataset, Pair, Part};
use notellm_model::encoder::SentenceEncoder;
use notellm_model::prompt::Limits;
use notellm_note::{Embedding, NoteId};

/// GCL + CSFT over related pairs.
pub struct NoteLlmObjective {
    pairs_per_step: usize,
    seed: u64,
    alpha: f64,
    hashtag_share: f64,
    cache_frozen: bool,
    recall_k: Vec<usize>,
    limits: Limits,
    /// Training pairs as note indices into the dataset's notes.
    pairs: Vec<(usize, usize)>,
    /// Every training pair, both ways: known partners masked out of each other's negatives.
    partners: HashSet<(usize, usize)>,
    /// Each note's example, built once (`None`: the note could not be rendered).
    examples: HashMap<usize, Option<Example>>,
    val: Option<RecallSample>,
    /// `--distill`: the teacher, and its embedding of every training note (made before the
    /// first step).
    teacher: Option<Teacher>,
}

/// A sentence encoder distilled into the student ([`loss::distillation`]).
struct Teacher {
    encoder: Option<SentenceEncoder>,
    embeddings: HashMap<usize, Embedding>,
    weight: f64,
}

/// The teacher's logit scale: the scale its contrastive training used (sentence-transformers'
/// 20, `notellm train --objective encoder`'s default).
pub const TEACHER_SCALE: f64 = 20.0;

/// The fixed validation sample: pairs and the pool they are ranked in.
struct RecallSample {
    pool: Vec<NoteId>,
    examples: Vec<Example>,
    pairs: Vec<Pair>,
}

impl NoteLlmObjective {
    pub fn new(data: &Dataset, model: &TrainableModel, opts: &TrainOptions) -> Result<Self> {
        if opts.pairs_per_step < 2 {
            return Err(TrainError::Invalid("pairs_per_step must be at least 2 (in-batch negatives)".into()));
        }
        let limits = model.limits();
        Ok(Self {
            pairs_per_step: opts.pairs_per_step,
            seed: opts.seed,
            alpha: opts.alpha,
            hashtag_share: opts.hashtag_share,
            cache_frozen: opts.cache_frozen,
            recall_k: opts.recall_k.clone(),
            limits,
            pairs: training_pairs(data, opts)?,
            partners: partner_set(data),
            examples: HashMap::new(),
            val: recall_sample(data, model, limits, opts)?,
            teacher: match &opts.distill {
                None => None,
                Some(dir) => Some(Teacher {
                    encoder: Some(SentenceEncoder::load(dir, &candle_core::Device::Cpu)?),
                    embeddings: HashMap::new(),
                    weight: opts.distill_weight,
                }),
            },
        })
    }

    fn example(&mut self, data: &Dataset, model: &TrainableModel, note: usize) -> Option<Example> {
        if let Some(e) = self.examples.get(&note) {
            return e.clone();
        }
        let line = &data.notes[note];
        let (variant, output) =
            examples::choose_variant(&line.note, line.note_id.as_str(), self.hashtag_share, self.seed);
        let ex = match examples::build(model.tokenizer(), self.limits, &line.note, variant, output.as_deref()) {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::warn!(note = %line.note_id, error = %e, "note left out of training");
                None
            }
        };
        self.examples.insert(note, ex.clone());
        ex
    }
}

impl TrainingObjective for NoteLlmObjective {
    fn kind(&self) -> Objective {
        Objective::NoteLlm
    }

    fn training_items(&self) -> (usize, &'static str) {
        (self.pairs.len(), "pairs")
    }

    fn validation_size(&self) -> usize {
        self.val.as_ref().map_or(0, |v| v.pairs.len())
    }

    fn epoch_plan(&self, epoch: u64) -> Vec<Vec<usize>> {
        epoch_batches(&self.pairs, self.pairs_per_step, self.seed, epoch)
    }

    fn batch_notes(&self, data: &Dataset, batch: &[usize]) -> Vec<NoteId> {
        pair_batch_notes(data, &self.pairs, batch)
    }

    /// The frozen layers over every training and validation sequence this run will use (when
    /// there are frozen layers and their output is cached).
    fn precompute(&mut self, model: &mut TrainableModel, data: &Dataset) -> Result<()> {
        let mut notes: Vec<usize> = self.pairs.iter().flat_map(|&(a, b)| [a, b]).collect();
        notes.sort_unstable();
        notes.dedup();
        if let Some(teacher) = &mut self.teacher {
            teacher.embed(data, &notes)?;
        }
        if model.first_trained_layer() == 0 || !self.cache_frozen {
            return Ok(());
        }
        let mut seqs = Vec::with_capacity(notes.len());
        for n in notes {
            if let Some(e) = self.example(data, model, n) {
                seqs.push(e.ids);
            }
        }
        if let Some(v) = &self.val {
            seqs.extend(v.examples.iter().map(|e| e.ids.clone()));
        }
        let started = Instant::now();
        model.precompute(&seqs)?;
        let st = model.frozen_stats();
        tracing::info!(
            sequences = seqs.len(),
            computed = st.computed,
            from_disk = st.from_disk,
            notes_per_s = st.per_second(),
            seconds = started.elapsed().as_secs_f64(),
            cached_mb = model.cache_bytes() >> 20,
            "frozen pass done"
        );
        Ok(())
    }

    fn micro_step(
        &mut self,
        model: &mut TrainableModel,
        data: &Dataset,
        batch: &[usize],
        accumulation: usize,
    ) -> Result<Micro> {
        let mut exs = Vec::with_capacity(batch.len() * 2);
        let mut notes = Vec::with_capacity(batch.len() * 2);
        for &p in batch {
            let (a, b) = self.pairs[p];
            if let (Some(ea), Some(eb)) = (self.example(data, model, a), self.example(data, model, b)) {
                exs.push(ea);
                exs.push(eb);
                notes.extend([a, b]);
            }
        }
        if exs.len() < 4 {
            return Err(TrainError::Invalid("a batch has fewer than two usable pairs".into()));
        }
        let refs: Vec<&Example> = exs.iter().collect();
        let f = model.forward(&refs, self.alpha > 0.0)?;
        let cl = loss::contrastive_masked(&f.embeddings, model.tau_tensor(), &known_partners(&notes, &self.partners))?;
        let gen = f.generation.as_ref().map(|(l, t)| loss::generation(l, t)).transpose()?;
        let mut total = loss::total(&cl, gen.as_ref(), self.alpha)?;
        let kd = match &self.teacher {
            Some(t) => {
                let kd = loss::distillation(
                    &f.embeddings,
                    model.tau_tensor(),
                    &t.batch(&notes, f.embeddings.device())?,
                    TEACHER_SCALE,
                )?;
                total = (total + (&kd * t.weight)?)?;
                Some(kd)
            }
            None => None,
        };
        let grads = (&total / accumulation as f64)?.backward()?;
        let as_f64 = |t: &Tensor| -> Result<f64> { Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?) };
        let mut parts = vec![("cl", as_f64(&cl)?)];
        if let Some(g) = &gen {
            parts.push(("gen", as_f64(g)?));
        }
        if let Some(k) = &kd {
            parts.push(("kd", as_f64(k)?));
        }
        Ok(Micro { loss: as_f64(&total)?, parts, notes: exs.len(), trained: exs.len() / 2, grads })
    }

    fn describe_step(&self, model: &TrainableModel, _loss: f64, parts: &[(&'static str, f64)]) -> Result<String> {
        let part = |name: &str| parts.iter().find(|(n, _)| *n == name).map(|&(_, v)| v);
        let gen = part("gen").map(|g| format!(" gen {g:.3}")).unwrap_or_default();
        let kd = part("kd").map(|k| format!(" kd {k:.4}")).unwrap_or_default();
        Ok(format!(
            "cl {:.4}{gen}{kd}, tau {:.3}, cached {} MB",
            part("cl").unwrap_or(f64::NAN),
            model.tau()?,
            model.cache_bytes() >> 20
        ))
    }

    fn validate(&mut self, model: &mut TrainableModel, step: u64) -> Result<Option<Validation>> {
        let Some(RecallSample { pool, examples, pairs }) = &self.val else { return Ok(None) };
        let started = Instant::now();
        let embs = model.embed(examples, 16)?;
        Ok(Some(recall_validation(pool, &embs, pairs, &self.recall_k, step, started)?))
    }
}

impl Teacher {
    /// The teacher's embedding of every note in `notes` it has not embedded yet; the encoder is
    /// dropped afterwards.
    fn embed(&mut self, data: &Dataset, notes: &[usize]) -> Result<()> {
        let Some(encoder) = self.encoder.take() else { return Ok(()) };
        let started = Instant::now();
        let todo: Vec<usize> = notes.iter().copied().filter(|n| !self.embeddings.contains_key(n)).collect();
        let embs = encoder.embed_notes(todo.iter().map(|&n| &data.notes[n].note), 32)?;
        self.embeddings.extend(todo.into_iter().zip(embs));
        tracing::info!(
            notes = self.embeddings.len(),
            seconds = started.elapsed().as_secs_f64(),
            "teacher embeddings ready"
        );
        Ok(())
    }

    /// The teacher's embeddings of a batch's notes, `[n, d]`.
    fn batch(&self, notes: &[usize], device: &candle_core::Device) -> Result<Tensor> {
        let mut flat = Vec::new();
        for n in notes {
            let e = self
                .embeddings
                .get(n)
                .ok_or_else(|| TrainError::Invalid(format!("the teacher has not embedded note {n}")))?;
            flat.extend_from_slice(e.as_slice());
        }
        let d = flat.len() / notes.len().max(1);
        Ok(Tensor::from_vec(flat, (notes.len(), d), device)?)
    }
}

/// A seeded sample of `val_pairs` validation pairs and a pool of `val_pool` notes: the pairs'
/// notes plus other validation notes (`None` when there is no pair to rank).
fn recall_sample(
    data: &Dataset,
    model: &TrainableModel,
    limits: Limits,
    opts: &TrainOptions,
) -> Result<Option<RecallSample>> {
    let Some((pool, pairs)) = validation_pool(data, opts.val_pairs, opts.val_pool, opts.seed, |_| true) else {
        return Ok(None);
    };
    let examples = pool
        .iter()
        .map(|id| {
            let note = data.note(id).ok_or_else(|| TrainError::Invalid(format!("unknown note {id}")))?;
            Ok(examples::for_embedding(model.tokenizer(), limits, note)?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(RecallSample { pool, examples, pairs }))
}

/// The training pairs as note indices (those among `max_notes` dense notes, then a seeded
/// sample of `max_pairs`).
pub(crate) fn training_pairs(data: &Dataset, opts: &TrainOptions) -> Result<Vec<(usize, usize)>> {
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

/// The notes of a batch of pair indices, `a` then `b` of each pair.
pub(crate) fn pair_batch_notes(data: &Dataset, pairs: &[(usize, usize)], batch: &[usize]) -> Vec<NoteId> {
    let id = |i: usize| data.notes[i].note_id.clone();
    batch.iter().flat_map(|&p| [id(pairs[p].0), id(pairs[p].1)]).collect()
}

/// Batches of pair indices for `epoch`: a seeded shuffle, then greedy filling that defers a
/// pair whose note is already in the batch to a later batch. Partial last batches are dropped.
pub fn epoch_batches(pairs: &[(usize, usize)], per_batch: usize, seed: u64, epoch: u64) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.shuffle(&mut epoch_rng(seed, epoch));
    let mut batches = Vec::new();
    let mut pending: VecDeque<usize> = order.into();
    while pending.len() >= per_batch {
        let mut batch = Vec::with_capacity(per_batch);
        let mut notes = HashSet::new();
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

/// At most `n` notes (sorted) among which `pairs` are dense: greedy peeling, which repeatedly
/// drops a note of the fewest remaining pairs (ties: the larger index) until `n` are left, so
/// the kept notes are the ones most connected to each other rather than to the notes dropped.
pub fn dense_notes(pairs: &[(usize, usize)], n: usize) -> Vec<usize> {
    use std::cmp::Reverse;
    let mut adj: HashMap<usize, Vec<usize>> = HashMap::new();
    for &(a, b) in pairs {
        adj.entry(a).or_default().push(b);
        adj.entry(b).or_default().push(a);
    }
    let mut degree: HashMap<usize, usize> = adj.iter().map(|(&k, v)| (k, v.len())).collect();
    let mut heap: std::collections::BinaryHeap<Reverse<(usize, Reverse<usize>)>> =
        degree.iter().map(|(&k, &d)| Reverse((d, Reverse(k)))).collect();
    let mut left = degree.len();
    while left > n {
        let Some(Reverse((d, Reverse(k)))) = heap.pop() else { break };
        if degree.get(&k) != Some(&d) {
            continue; // stale entry
        }
        degree.remove(&k);
        left -= 1;
        for m in &adj[&k] {
            if let Some(dm) = degree.get_mut(m) {
                *dm -= 1;
                heap.push(Reverse((*dm, Reverse(*m))));
            }
        }
    }
    let mut keep: Vec<usize> = degree.into_keys().collect();
    keep.sort_unstable();
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

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
