//! `notellm eval`: the paper's offline protocol on one part of a dataset's split, for the
//! baselines and any NoteLLM checkpoints, in one table.
//!
//! Every system embeds the same pool (the part's notes, in split-file order) and is ranked by
//! [`crate::eval::recall`]; NoteLLM checkpoints are also asked to generate hashtags and a
//! category for a seeded sample of the pool.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::data::{Dataset, Part};
use crate::eval::generation::{suggest_all, HashtagBudget};
use crate::eval::minilm::{fetch_minilm, MiniLm, MINILM_NAME};
use crate::eval::tfidf::TfIdf;
use crate::eval::{evaluate, evaluate_dense, evaluate_generation, Buckets, EvalError, HashtagVocab, RecallOptions};
use crate::eval::{ResultsTable, Timing};
use crate::model::{GenerateOptions, NoteLlm};
use crate::note::Note;

/// A system to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub enum System {
    TfIdf,
    MiniLm,
    /// A NoteLLM checkpoint (the zero-shot base counts: it is one without training).
    NoteLlm {
        name: String,
        dir: PathBuf,
    },
}

impl System {
    pub fn name(&self) -> String {
        match self {
            System::TfIdf => "TF-IDF (title + content)".into(),
            System::MiniLm => MINILM_NAME.into(),
            System::NoteLlm { name, .. } => name.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub part: Part,
    pub ks: Vec<usize>,
    pub buckets: Buckets,
    pub batch_size: usize,
    /// Notes of the pool that NoteLLM systems generate for (0: none).
    pub generation_sample: usize,
    pub seed: u64,
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
            System::MiniLm => {
                let dir = fetch_minilm(&crate::model::fetch::default_cache_dir())?;
                let embs = MiniLm::load(&dir, device)?.embed_notes(&notes, opts.batch_size)?;
                let encode = started.elapsed().as_secs_f64();
                (evaluate_dense(&ids, &embs, pairs, &recall_opts)?, encode)
            }
            System::NoteLlm { dir, .. } => {
                let model = NoteLlm::load(dir, device)?;
                let embs = crate::eval::embed_notellm(&model, &notes, opts.batch_size)?;
                let encode = started.elapsed().as_secs_f64();
                let report = evaluate_dense(&ids, &embs, pairs, &recall_opts)?;
                if !sample.is_empty() {
                    let gen_started = Instant::now();
                    let picked: Vec<Note> = sample.iter().map(|&i| notes[i].clone()).collect();
                    let out = suggest_all(&model, &picked, HashtagBudget::default(), &GenerateOptions::default())?;
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

/// A seeded sample of pool indices for the generation metrics.
fn generation_sample(notes: &[Note], n: usize, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..notes.len()).collect();
    idx.shuffle(&mut StdRng::seed_from_u64(seed));
    idx.truncate(n);
    idx.sort_unstable();
    idx
}
