//! What an objective is to the trainer: its training items and their batches, the loss of one
//! micro-batch, the work before the first step and the validation sample. The trainer
//! ([`super::trainer`]) owns what every objective shares: the model, the optimizer and its
//! schedule, gradient accumulation and clipping, the step loop, progress, saving and `--resume`.
//!
//! One type per objective: [`super::notellm::NoteLlmObjective`] (GCL + CSFT over related
//! pairs), [`super::lm::LmObjective`] (causal-LM pre-training on the training notes) and
//! [`super::micl::MiclObjective`] (NoteLLM-2 on notes with images).

use std::collections::HashSet;

use candle_core::backprop::GradStore;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::model::TrainableModel;
use super::trainer::{Objective, Result, TrainError, Validation};
use crate::data::{Dataset, Pair, Part};
use notellm_note::NoteId;

/// One objective of `notellm train`. Its training items (pairs, notes) are its own; the
/// trainer sees only micro-batches of item indices, cut deterministically from `(seed, epoch)`
/// so that a resumed run replays the batches the interrupted one would have seen.
pub trait TrainingObjective {
    /// Which objective this is (the `objective` of the saved options).
    fn kind(&self) -> Objective;

    /// How many items the run trains on and what they are (`"pairs"`, `"notes"`), for logs.
    fn training_items(&self) -> (usize, &'static str);

    /// The size of the validation sample (0 when there is none).
    fn validation_size(&self) -> usize;

    /// The micro-batches of `epoch`, as indices of this objective's training items.
    fn epoch_plan(&self, epoch: u64) -> Vec<Vec<usize>>;

    /// The notes of one micro-batch of [`Self::epoch_plan`], in order.
    fn batch_notes(&self, data: &Dataset, batch: &[usize]) -> Vec<NoteId>;

    /// Work done once before the first step (the frozen layers' pass); nothing by default.
    fn precompute(&mut self, _model: &mut TrainableModel, _data: &Dataset) -> Result<()> {
        Ok(())
    }

    /// The loss of one micro-batch and its gradients, taken of the loss divided by
    /// `accumulation` so that the step's summed gradients are of the mean loss.
    fn micro_step(
        &mut self,
        model: &mut TrainableModel,
        data: &Dataset,
        batch: &[usize],
        accumulation: usize,
    ) -> Result<Micro>;

    /// What the progress line and the step log show beside the loss, from the step's mean
    /// loss and the means of its parts ([`Micro::parts`]).
    fn describe_step(&self, model: &TrainableModel, loss: f64, parts: &[(&'static str, f64)]) -> Result<String>;

    /// The current model on the validation sample at `step`; `None` without a sample.
    fn validate(&mut self, model: &mut TrainableModel, step: u64) -> Result<Option<Validation>>;
}

/// One micro-batch's losses and gradients.
pub struct Micro {
    /// The micro-batch's loss (unscaled).
    pub loss: f64,
    /// Named parts of the loss (the contrastive and the generation loss), where there are.
    pub parts: Vec<(&'static str, f64)>,
    /// Notes through the trained layers.
    pub notes: usize,
    /// Items trained: pairs (NoteLLM) or notes (lm), for the run's `trained_per_second`.
    pub trained: usize,
    pub grads: GradStore,
}

/// Every training pair of the dataset, both ways, as note indices: the known partners that a
/// batch masks out of each other's negatives.
pub(crate) fn partner_set(data: &Dataset) -> HashSet<(usize, usize)> {
    data.pairs(Part::Train)
        .iter()
        .filter_map(|p| Some((*data.by_id.get(&p.a)?, *data.by_id.get(&p.b)?)))
        .flat_map(|(a, b)| [(a, b), (b, a)])
        .collect()
}

/// The rows of a batch (notes `a0, b0, a1, b1, ...`) that are known partners without being the
/// batch's own pair: what [`super::loss::contrastive_masked`] leaves out of the negatives.
pub(crate) fn known_partners(notes: &[usize], partners: &HashSet<(usize, usize)>) -> Vec<(usize, usize)> {
    let mut known = Vec::new();
    for i in 0..notes.len() {
        for j in i + 1..notes.len() {
            if j != (i ^ 1) && partners.contains(&(notes[i], notes[j])) {
                known.push((i, j));
            }
        }
    }
    known
}

/// The generator of `epoch`'s shuffle.
pub(crate) fn epoch_rng(seed: u64, epoch: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ (epoch + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Keeps a seeded sample of at most `max` of `items`, in sorted order (all of them when `max`
/// is `None` or not smaller).
pub(crate) fn seeded_sample<T: Ord>(items: &mut Vec<T>, max: Option<usize>, seed: u64) {
    if let Some(max) = max.filter(|&m| items.len() > m) {
        items.shuffle(&mut StdRng::seed_from_u64(seed));
        items.truncate(max);
        items.sort_unstable();
    }
}

/// The per-part means of a step's micro-batches, in the order the parts first appear; a part
/// is averaged over the micro-batches that have it.
pub(crate) fn mean_parts(micro: &[Vec<(&'static str, f64)>]) -> Vec<(&'static str, f64)> {
    let mut sums: Vec<(&'static str, f64, usize)> = Vec::new();
    for parts in micro {
        for &(name, v) in parts {
            match sums.iter_mut().find(|(n, _, _)| *n == name) {
                Some(s) => {
                    s.1 += v;
                    s.2 += 1;
                }
                None => sums.push((name, v, 1)),
            }
        }
    }
    sums.into_iter().map(|(n, s, c)| (n, s / c as f64)).collect()
}

/// A seeded sample of at most `max_pairs` validation pairs whose notes pass `keep`, and the
/// pool they are ranked in: their notes plus other validation notes that pass `keep`, up to
/// `pool_size`, sorted (`None` when no pair is left).
pub(crate) fn validation_pool(
    data: &Dataset,
    max_pairs: usize,
    pool_size: usize,
    seed: u64,
    keep: impl Fn(&NoteId) -> bool,
) -> Option<(Vec<NoteId>, Vec<Pair>)> {
    if max_pairs == 0 {
        return None;
    }
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(1));
    let mut pairs: Vec<Pair> = data.pairs(Part::Val).iter().filter(|p| keep(&p.a) && keep(&p.b)).cloned().collect();
    pairs.shuffle(&mut rng);
    pairs.truncate(max_pairs);
    if pairs.is_empty() {
        return None;
    }
    let mut pool: Vec<NoteId> = pairs.iter().flat_map(|p| [p.a.clone(), p.b.clone()]).collect();
    pool.sort();
    pool.dedup();
    let mut others: Vec<NoteId> =
        data.ids(Part::Val).iter().filter(|id| keep(id) && pool.binary_search(id).is_err()).cloned().collect();
    others.shuffle(&mut rng);
    let extra = pool_size.saturating_sub(pool.len());
    pool.extend(others.into_iter().take(extra));
    pool.sort();
    Some((pool, pairs))
}

/// Recall@k of `embs` (one per `pool` note) on `pairs`, as the validation of `step`, logged.
pub(crate) fn recall_validation(
    pool: &[NoteId],
    embs: &[notellm_note::Embedding],
    pairs: &[Pair],
    ks: &[usize],
    step: u64,
    started: std::time::Instant,
) -> Result<Validation> {
    let opts = crate::eval::RecallOptions { ks: ks.to_vec(), progress: false, ..Default::default() };
    let report = crate::eval::evaluate_dense(pool, embs, pairs, &opts)
        .map_err(|e| TrainError::Invalid(format!("validation: {e}")))?;
    let recall: Vec<(usize, f64)> = report.ks.iter().copied().zip(report.recall.iter().copied()).collect();
    let v = Validation { step, recall, pairs: pairs.len(), pool: pool.len(), lm: None };
    tracing::info!(
        step = v.step,
        recall = %v.recall.iter().map(|(k, r)| format!("R@{k}={:.2}%", r * 100.0)).collect::<Vec<_>>().join(" "),
        pairs = v.pairs,
        pool = v.pool,
        seconds = started.elapsed().as_secs_f64(),
        "validation"
    );
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_averaged_over_the_micro_batches_that_have_them() {
        let m = vec![vec![("cl", 1.0), ("gen", 4.0)], vec![("cl", 3.0)], vec![]];
        assert_eq!(mean_parts(&m), vec![("cl", 2.0), ("gen", 4.0)]);
        assert!(mean_parts(&[]).is_empty());
    }

    #[test]
    fn known_partners_are_found_across_pairs_but_not_within_one() {
        // Pairs (10, 11), (12, 13), (14, 15); 10 is also related to 13, and 15 to 12 (listed one
        // way only: the set holds both).
        let partners: HashSet<(usize, usize)> = [(10, 11), (12, 13), (14, 15), (10, 13), (15, 12)]
            .into_iter()
            .flat_map(|(a, b)| [(a, b), (b, a)])
            .collect();
        let notes = [10, 11, 12, 13, 14, 15];
        assert_eq!(known_partners(&notes, &partners), vec![(0, 3), (2, 5)]);
        // a stranger is never masked
        assert!(known_partners(&[10, 11, 20, 21], &partners).is_empty());
    }

    #[test]
    fn a_seeded_sample_is_sorted_and_repeatable() {
        let mut a: Vec<u32> = (0..50).collect();
        let mut b = a.clone();
        seeded_sample(&mut a, Some(10), 7);
        seeded_sample(&mut b, Some(10), 7);
        assert_eq!(a, b);
        assert_eq!(a.len(), 10);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        let mut all: Vec<u32> = (0..5).collect();
        seeded_sample(&mut all, Some(10), 7);
        assert_eq!(all, vec![0, 1, 2, 3, 4]);
    }
}
