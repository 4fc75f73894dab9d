//! Offline evaluation: Recall@k on the test split (the paper's protocol), generation quality,
//! and the baselines.
//!
//! - [`recall`]: exact Recall@k over a pool with any [`recall::Scorer`], split by exposure.
//! - [`generation`]: category accuracy / illusion, hashtag P/R/F1, ROUGE-L, invented hashtags.
//! - [`tfidf`]: the lexical baseline (sparse TF-IDF, a `Scorer`).
//! - [`minilm`]: the pretrained sentence-encoder baseline (all-MiniLM-L6-v2, zero-shot).
//! - [`fusion`]: reciprocal rank fusion of two scorers (NoteLLM + TF-IDF, a hybrid channel).
//! - [`vote`]: generation baselines (majority; a vote of the nearest training notes).
//! - [`report`]: the results table, Markdown and JSON.
//!
//! The pool of a split is its notes in the order of the split file ([`pool`]); every system
//! embeds that list, in that order, and [`recall::evaluate`] ranks it.

pub mod error;
pub mod fusion;
pub mod generation;
pub mod images;
pub mod minilm;
pub mod recall;
pub mod report;
pub mod tfidf;
pub mod vote;

pub use error::{EvalError, Result};
pub use generation::{evaluate_generation, GenerationReport, HashtagBudget, HashtagVocab};
pub use recall::{evaluate, evaluate_dense, Buckets, DenseScorer, RecallOptions, RecallReport, Scorer};
pub use report::{ResultsTable, Timing};

use crate::data::{Dataset, Part};
use notellm_model::NoteLlm;
use notellm_note::{Embedding, Note, NoteId};

/// The notes of one part of the split: ids and notes, in the order of the split file.
pub fn pool(dataset: &Dataset, part: Part) -> Result<(Vec<NoteId>, Vec<Note>)> {
    let ids = dataset.ids(part).to_vec();
    let notes = ids
        .iter()
        .map(|id| {
            dataset
                .note(id)
                .cloned()
                .ok_or_else(|| EvalError::Input(format!("{} lists unknown note {id}", part.name())))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((ids, notes))
}

/// Embeds `notes` with a NoteLLM checkpoint, `batch_size` prompts per forward pass, sorted by
/// prompt length so that batches carry little padding; with a progress bar. One embedding per
/// note, in order.
pub fn embed_notellm(model: &NoteLlm, notes: &[Note], batch_size: usize) -> Result<Vec<Embedding>> {
    let seqs = notes.iter().map(|n| model.embedding_ids(n)).collect::<std::result::Result<Vec<_>, _>>()?;
    embed_by_length(&seqs, batch_size, "NoteLLM embed", |batch| Ok(model.embed_ids(batch)?))
}

/// Embeds token sequences in batches of similar length, at most `batch_size` each
/// ([`notellm_model::batching`]), with a progress bar named `what`; returns one embedding per
/// sequence, in input order.
pub fn embed_by_length(
    seqs: &[Vec<u32>],
    batch_size: usize,
    what: &str,
    embed: impl FnMut(&[Vec<u32>]) -> Result<Vec<Embedding>>,
) -> Result<Vec<Embedding>> {
    let bar = crate::progress::bar(what, seqs.len() as u64);
    let out = notellm_model::batching::embed_by_length(seqs, batch_size, embed, |n| bar.inc(n as u64));
    bar.finish_and_clear();
    out
}
