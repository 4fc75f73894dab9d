//! `notellm eval`: the paper's offline protocol on one part of a dataset's split, for the
//! baselines and any NoteLLM checkpoints, in one table.
//!
//! Every system embeds the same pool (the part's notes, in split-file order) and is ranked by
//! [`crate::eval::recall`]; NoteLLM checkpoints are also asked to generate hashtags and a
//! category for a seeded sample of the pool.
//!
//! Beside them, in the same table:
//! - with `fusion`, each NoteLLM checkpoint's ranking merged with TF-IDF's by reciprocal rank
//!   ([`crate::eval::fusion`]): is a hybrid channel worth serving?
//! - with a generation sample, the generation baselines ([`crate::eval::vote`]): the majority
//!   answer, and a vote of the `vote_k` nearest notes of a seeded sample of `vote_pool`
//!   training notes, by TF-IDF and by every dense system's own embeddings, once per vote rule
//!   (`vote_rules`: the plain similarity-weighted vote and the one `/suggest-tags` counts by
//!   default, or a grid to choose that default on validation notes).

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::data::{Dataset, Part};
use crate::eval::fusion::{RrfScorer, RRF_K};
use crate::eval::generation::{suggest_all, HashtagBudget};
use crate::eval::minilm::{fetch_minilm, MiniLm, MINILM_NAME};
use crate::eval::tfidf::TfIdf;
use crate::eval::vote::{vote_by, Majority};
use crate::eval::{evaluate, evaluate_dense, evaluate_generation, Buckets, EvalError, HashtagVocab, RecallOptions};
use crate::eval::{ResultsTable, Timing};
use notellm_model::vote::VoteRule;
use notellm_model::{GenerateOptions, NoteLlm, Suggestion};
use notellm_note::{Embedding, Note};

/// A system to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub enum System {
    TfIdf,
    /// A sentence encoder: all-MiniLM-L6-v2 zero-shot (`dir` `None`: fetched into the cache)
    /// or a checkpoint of `notellm train --objective encoder`.
    Encoder {
        name: String,
        dir: Option<PathBuf>,
    },
    /// A NoteLLM checkpoint (the zero-shot base counts: it is one without training).
    NoteLlm {
        name: String,
        dir: PathBuf,
    },
    /// The note's image as 16 x 16 raw pixels (the image-only control).
    Pixels,
    /// The note's image through a frozen image encoder: its normed CLS feature (image only).
    ImageEncoder {
        dir: PathBuf,
    },
}

impl System {
    /// all-MiniLM-L6-v2 zero-shot, the `minilm` baseline.
    pub fn minilm() -> Self {
        System::Encoder { name: MINILM_NAME.into(), dir: None }
    }

    /// A checkpoint given by path: an encoder when it is one
    /// ([`notellm_model::encoder::is_encoder_checkpoint`]), NoteLLM otherwise.
    pub fn checkpoint(name: String, dir: PathBuf) -> Self {
        if notellm_model::encoder::is_encoder_checkpoint(&dir) {
            System::Encoder { name, dir: Some(dir) }
        } else {
            System::NoteLlm { name, dir }
        }
    }

    pub fn name(&self) -> String {
        match self {
            System::TfIdf => "TF-IDF (title + content)".into(),
            System::Encoder { name, .. } | System::NoteLlm { name, .. } => name.clone(),
            System::Pixels => crate::eval::images::PIXELS_NAME.into(),
            System::ImageEncoder { .. } => "image encoder CLS (image only)".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub part: Part,
    pub ks: Vec<usize>,
    pub buckets: Buckets,
    pub batch_size: usize,
    /// Notes of the pool that NoteLLM systems generate for (0: none, and no vote baselines).
    pub generation_sample: usize,
    pub seed: u64,
    /// Also rank each NoteLLM checkpoint fused with TF-IDF (reciprocal rank fusion).
    pub fusion: bool,
    /// Training notes (a seeded sample; 0 = all) the vote baselines look up neighbours in.
    pub vote_pool: usize,
    /// Neighbours that vote.
    pub vote_k: usize,
    /// The vote rules measured, one row each per system.
    pub vote_rules: Vec<VoteRule>,
}

impl Default for EvalOptions {
    /// `notellm eval`'s defaults.
    fn default() -> Self {
        Self {
            part: Part::Test,
            ks: vec![10, 100, 1000],
            buckets: Buckets::default(),
            batch_size: 16,
            generation_sample: 50,
            seed: 42,
            fusion: true,
            vote_pool: 2000,
            vote_k: 10,
            vote_rules: vec![VoteRule::default(), notellm_model::vote::DEFAULT_SUGGEST_RULE],
        }
    }
}

/// Runs every system and returns the table (with the command line as context).
pub fn run(
    data_dir: &Path,
    systems: &[System],
    device: &Device,
    opts: &EvalOptions,
) -> Result<ResultsTable, EvalError> {
    let data = Dataset::load(data_dir)?;
    let (ids, notes) = crate::eval::pool(&data, opts.part)?;
    let pairs = data.pairs(opts.part);
    if pairs.is_empty() {
        return Err(EvalError::Input(format!("{} has no {} pairs", data_dir.display(), opts.part.name())));
    }
    let bucket_k = if opts.ks.contains(&100) { 100 } else { opts.ks[0] };
    let mut table = ResultsTable::new(&opts.ks, bucket_k)?;
    table.context.push(format!(
        "data: {} ({} split: {} notes, {} pairs)",
        data_dir.display(),
        opts.part.name(),
        ids.len(),
        pairs.len()
    ));
    let recall_opts = RecallOptions { ks: opts.ks.clone(), buckets: opts.buckets, progress: true };
    let train_notes: Vec<&Note> = data.ids(Part::Train).iter().filter_map(|id| data.note(id)).collect();
    let vocab = HashtagVocab::from_notes(train_notes.iter().copied());
    let sample = generation_sample(&notes, opts.generation_sample, opts.seed);
    let picked: Vec<Note> = sample.iter().map(|&i| notes[i].clone()).collect();
    // What a suggestion may look at: a dense vote embeds these, never the labelled note (its
    // hashtags and category are the answer).
    let drafts: Vec<Note> = picked.iter().map(Note::draft).collect();
    let budget = HashtagBudget::default();
    // The lookup pool of the vote baselines: training notes with something to vote.
    let voters: Vec<&Note> = {
        let mut v: Vec<&Note> =
            train_notes.iter().copied().filter(|n| n.category.is_some() || !n.hashtags.is_empty()).collect();
        if opts.vote_pool > 0 && v.len() > opts.vote_pool {
            v.shuffle(&mut StdRng::seed_from_u64(opts.seed.wrapping_add(7)));
            v.truncate(opts.vote_pool);
        }
        v
    };
    let voter_notes: Vec<Note> = voters.iter().map(|n| (*n).clone()).collect();
    let push_baseline = |table: &mut ResultsTable, name: &str, out: Vec<Suggestion>, seconds: f64| {
        let gen = evaluate_generation(picked.iter().zip(out.iter()), &data.categories, &vocab);
        table.push_generation(name, gen, seconds);
    };
    if !picked.is_empty() {
        let started = Instant::now();
        let majority = Majority::fit(train_notes.iter().copied());
        let out = picked.iter().map(|n| majority.suggest(budget.for_note(n))).collect();
        push_baseline(&mut table, "majority (category and hashtags)", out, started.elapsed().as_secs_f64());
        let started = Instant::now();
        let tfidf = TfIdf::fit(&voter_notes);
        let scores: Vec<Vec<f32>> = drafts
            .iter()
            .map(|draft| {
                let mut scores = vec![0f32; voters.len()];
                tfidf.score_into(&tfidf.transform(draft), &mut scores);
                scores
            })
            .collect();
        let seconds = started.elapsed().as_secs_f64();
        for rule in &opts.vote_rules {
            let out = picked
                .iter()
                .zip(&scores)
                .map(|(n, scores)| vote_by(*rule, &voters, scores, opts.vote_k, budget.for_note(n)))
                .collect();
            push_baseline(&mut table, &vote_row(opts, rule, "TF-IDF", voters.len()), out, seconds);
        }
    }
    // TF-IDF over the pool, kept for the fusion rows.
    let pool_tfidf = opts.fusion.then(|| TfIdf::fit(&notes));
    for system in systems {
        let name = system.name();
        tracing::info!(system = %name, notes = ids.len(), "evaluating");
        let started = Instant::now();
        // Each system yields its recall report and the seconds spent encoding the pool.
        let (report, encode) = match system {
            System::TfIdf => {
                let tfidf = TfIdf::fit(&notes);
                let encode = started.elapsed().as_secs_f64();
                (evaluate(&ids, &tfidf, pairs, &recall_opts)?, encode)
            }
            System::Encoder { dir, .. } => {
                let dir = match dir {
                    Some(d) => d.clone(),
                    None => fetch_minilm(&notellm_artifacts::fetch::default_cache_dir())?,
                };
                let minilm = MiniLm::load(&dir, device)?;
                let embs = minilm.embed_notes(&notes, opts.batch_size)?;
                let encode = started.elapsed().as_secs_f64();
                let report = evaluate_dense(&ids, &embs, pairs, &recall_opts)?;
                if !picked.is_empty() {
                    let vote_started = Instant::now();
                    let pool = minilm.embed_notes(&voter_notes, opts.batch_size)?;
                    let queries = minilm.embed_notes(&drafts, opts.batch_size)?;
                    let seconds = vote_started.elapsed().as_secs_f64();
                    for rule in &opts.vote_rules {
                        let out = dense_votes(*rule, &queries, &picked, &voters, &pool, opts.vote_k, budget);
                        push_baseline(&mut table, &vote_row(opts, rule, &name, voters.len()), out, seconds);
                    }
                }
                (report, encode)
            }
            System::Pixels => {
                let images = crate::eval::images::load_images(&data, &ids)?;
                let embs = crate::eval::images::pixel_embeddings(&images.iter().map(|i| &i.image).collect::<Vec<_>>())?;
                let encode = started.elapsed().as_secs_f64();
                (evaluate_dense(&ids, &embs, pairs, &recall_opts)?, encode)
            }
            System::ImageEncoder { dir } => {
                let encoder = notellm_model::vision::VisionEncoder::load(dir, device)?;
                let images = crate::eval::images::load_images(&data, &ids)?;
                let cache = notellm_artifacts::vision::feature_cache(&encoder)?;
                let embs = crate::eval::images::encoder_embeddings(&encoder, Some(&cache), &images, opts.batch_size)?;
                let encode = started.elapsed().as_secs_f64();
                (evaluate_dense(&ids, &embs, pairs, &recall_opts)?, encode)
            }
            System::NoteLlm { dir, .. } if notellm_model::CheckpointFiles::open(dir)?.notellm.multimodal.is_some() => {
                // NoteLLM-2: every pool note with its image; retrieval only.
                let model = notellm_model::multimodal::MultimodalNoteLlm::load(dir, device)?;
                let images = crate::eval::images::load_images(&data, &ids)?;
                let cache = notellm_artifacts::vision::feature_cache(model.encoder())?;
                let both =
                    crate::eval::images::multimodal_embeddings(&model, Some(&cache), &notes, &images, opts.batch_size)?;
                let (embs, image_embs): (Vec<_>, Vec<_>) = both.into_iter().map(|e| (e.note, e.image)).unzip();
                let encode = started.elapsed().as_secs_f64();
                // The image embedding, from the same pass: what the image alone says.
                let image_only = evaluate_dense(&ids, &image_embs, pairs, &recall_opts)?;
                let timing = Timing { notes: ids.len(), encode_seconds: encode, search_seconds: image_only.seconds };
                table.push(&format!("{name}, its image embedding (image only)"), &image_only, timing)?;
                (evaluate_dense(&ids, &embs, pairs, &recall_opts)?, encode)
            }
            System::NoteLlm { dir, .. } => {
                let model = NoteLlm::load(dir, device)?;
                let embs = crate::eval::embed_notellm(&model, &notes, opts.batch_size)?;
                let encode = started.elapsed().as_secs_f64();
                let report = evaluate_dense(&ids, &embs, pairs, &recall_opts)?;
                if let Some(tfidf) = &pool_tfidf {
                    let dense = crate::eval::DenseScorer::new(&embs)?;
                    let fused = RrfScorer::new(&dense, tfidf, RRF_K)?;
                    let fusion = evaluate(&ids, &fused, pairs, &recall_opts)?;
                    let timing = Timing { notes: ids.len(), encode_seconds: encode, search_seconds: fusion.seconds };
                    table.push(&format!("{name} + TF-IDF (RRF, k = {RRF_K})"), &fusion, timing)?;
                }
                if !picked.is_empty() && model.config().embedding_head {
                    let vote_started = Instant::now();
                    let pool = crate::eval::embed_notellm(&model, &voter_notes, opts.batch_size)?;
                    let queries = crate::eval::embed_notellm(&model, &drafts, opts.batch_size)?;
                    let seconds = vote_started.elapsed().as_secs_f64();
                    for rule in &opts.vote_rules {
                        let out = dense_votes(*rule, &queries, &picked, &voters, &pool, opts.vote_k, budget);
                        push_baseline(&mut table, &vote_row(opts, rule, &name, voters.len()), out, seconds);
                    }
                }
                if !sample.is_empty() {
                    let gen_started = Instant::now();
                    let out = suggest_all(&model, &picked, budget, &GenerateOptions::default())?;
                    let categories = if model.config().categories.is_empty() {
                        &data.categories
                    } else {
                        &model.config().categories
                    };
                    let gen = evaluate_generation(picked.iter().zip(out.iter()), categories, &vocab);
                    table.push_generation(&name, gen, gen_started.elapsed().as_secs_f64());
                }
                (report, encode)
            }
        };
        let timing = Timing { notes: ids.len(), encode_seconds: encode, search_seconds: report.seconds };
        table.push(&name, &report, timing)?;
        tracing::info!(system = %name, seconds = started.elapsed().as_secs_f64(), "evaluated");
    }
    Ok(table)
}

/// A vote row's name: `10-NN vote, SYSTEM (2000 training notes)` for the plain vote (the name
/// earlier tables used), the rule in parentheses after `vote` for any other.
fn vote_row(opts: &EvalOptions, rule: &VoteRule, system: &str, voters: usize) -> String {
    let how = if rule.is_plain() { String::new() } else { format!(" ({})", rule.label()) };
    format!("{}-NN vote{how}, {system} ({voters} training notes)", opts.vote_k)
}

/// The vote of the nearest `voters` (embedded as `pool`) for each sampled note `picked[i]`,
/// whose draft (no labels) is embedded as `queries[i]`, counted by `rule`.
fn dense_votes(
    rule: VoteRule,
    queries: &[Embedding],
    picked: &[Note],
    voters: &[&Note],
    pool: &[Embedding],
    k: usize,
    budget: HashtagBudget,
) -> Vec<Suggestion> {
    queries
        .iter()
        .zip(picked)
        .map(|(query, note)| {
            let scores: Vec<f32> = pool.iter().map(|p| query.cosine(p)).collect();
            vote_by(rule, voters, &scores, k, budget.for_note(note))
        })
        .collect()
}

/// A seeded sample of pool indices for the generation metrics.
fn generation_sample(notes: &[Note], n: usize, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..notes.len()).collect();
    idx.shuffle(&mut StdRng::seed_from_u64(seed));
    idx.truncate(n);
    idx.sort_unstable();
    idx
}
