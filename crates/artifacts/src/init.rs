//! `notellm model init`: a checkpoint the project makes itself, with nothing downloaded. A
//! byte-level BPE tokenizer is trained on a corpus with the `tokenizers` crate (special tokens
//! BOS, EOS, PAD and `[EMB]`), the weights are random from a fixed seed, and the four files are
//! written in the layout the loader reads. Tests build one on the fly; the benches use the larger
//! presets.

use std::collections::{BTreeSet, HashMap};
use std::io::BufRead;
use std::path::Path;

use candle_core::{Device, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use notellm_model::checkpoint::write_checkpoint;
use notellm_model::config::{DecoderConfig, Family, NoteLlmConfig, EMB_HEAD_TENSOR, PROMPT_VERSION};
use notellm_model::error::{ModelError, Result};
use notellm_note::Note;

pub const BOS: &str = "<s>";
pub const EOS: &str = "</s>";
pub const PAD: &str = "<pad>";
pub const EMB: &str = "[EMB]";

/// Model sizes `init` can make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// ~0.2M decoder parameters: for tests (2 layers, hidden 64).
    Tiny,
    /// ~5M parameters (4 layers, hidden 256): a laptop-speed model.
    Small,
    /// ~100M parameters (12 layers, hidden 768, GQA 12/4): the size class of real bases.
    Base,
}

impl Preset {
    fn shape(self) -> (usize, usize, usize, usize, usize) {
        // (hidden, layers, heads, kv_heads, intermediate)
        match self {
            Preset::Tiny => (64, 2, 4, 2, 176),
            Preset::Small => (256, 4, 8, 4, 704),
            Preset::Base => (768, 12, 12, 4, 3072),
        }
    }
}

#[derive(Debug, Clone)]
pub struct InitOptions {
    pub preset: Preset,
    pub family: Family,
    pub vocab_size: usize,
    pub embedding_dim: usize,
    pub seed: u64,
    pub shards: usize,
    pub model_version: Option<String>,
}

impl Default for InitOptions {
    fn default() -> Self {
        Self {
            preset: Preset::Tiny,
            family: Family::Llama,
            vocab_size: 2000,
            embedding_dim: 32,
            seed: 42,
            shards: 1,
            model_version: None,
        }
    }
}

/// Texts and categories read from a corpus: JSONL notes (title/content/hashtags/category) or
/// plain text lines.
#[derive(Debug, Default)]
pub struct Corpus {
    pub texts: Vec<String>,
    pub categories: BTreeSet<String>,
}

impl Corpus {
    pub fn read(path: &Path) -> Result<Self> {
        let f = std::fs::File::open(path).map_err(|source| ModelError::Io { path: path.to_owned(), source })?;
        let mut c = Corpus::default();
        for line in std::io::BufReader::new(f).lines() {
            let line = line.map_err(|source| ModelError::Io { path: path.to_owned(), source })?;
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            match serde_json::from_str::<Note>(line) {
                Ok(n) if line.starts_with('{') => {
                    c.texts.push(format!("{} {} {}", n.title, n.content, n.hashtags.join(", ")));
                    if let Some(cat) = n.category.filter(|s| !s.trim().is_empty()) {
                        c.categories.insert(cat.trim().to_owned());
                    }
                }
                _ => c.texts.push(line.to_owned()),
            }
        }
        if c.texts.is_empty() {
            return Err(ModelError::Input(format!("{}: corpus has no text", path.display())));
        }
        Ok(c)
    }
}

/// Trains the byte-level BPE tokenizer; special tokens get ids 0..4.
pub fn train_tokenizer(texts: &[String], vocab_size: usize) -> Result<Tokenizer> {
    let specials: Vec<AddedToken> = [BOS, EOS, PAD, EMB].iter().map(|s| AddedToken::from(*s, true)).collect();
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(specials.clone())
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tok = Tokenizer::new(BPE::default());
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevel::default()));
    let mut trainer = TrainerWrapper::BpeTrainer(trainer);
    tok.train(&mut trainer, texts.iter().cloned())
        .map_err(|e| ModelError::Tokenizer(format!("training failed: {e}")))?;
    tok.add_special_tokens(&specials);
    Ok(tok)
}

/// A fixed-seed normal(0, std) tensor (Box-Muller over `StdRng`, independent of candle's RNG).
pub fn randn(rng: &mut StdRng, shape: &[usize], std: f32) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            let u1: f32 = rng.random::<f32>().max(f32::MIN_POSITIVE);
            let u2: f32 = rng.random::<f32>();
            std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        })
        .collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

/// Random weights for `cfg` under Hugging Face names, plus the embedding head when `emb_dim`.
pub fn random_weights(cfg: &DecoderConfig, emb_dim: Option<usize>, seed: u64) -> Result<HashMap<String, Tensor>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let std = 0.02;
    let (h, d) = (cfg.hidden_size, cfg.head_dim);
    let mut t = HashMap::new();
    let ones = |n: usize| Tensor::ones(n, candle_core::DType::F32, &Device::Cpu);
    t.insert("model.embed_tokens.weight".into(), randn(&mut rng, &[cfg.vocab_size, h], std)?);
    for i in 0..cfg.num_layers {
        let p = format!("model.layers.{i}");
        let projs = [
            ("self_attn.q_proj", cfg.num_heads * d, h, cfg.qkv_bias),
            ("self_attn.k_proj", cfg.num_kv_heads * d, h, cfg.qkv_bias),
            ("self_attn.v_proj", cfg.num_kv_heads * d, h, cfg.qkv_bias),
            ("self_attn.o_proj", h, cfg.num_heads * d, cfg.o_bias),
            ("mlp.gate_proj", cfg.intermediate_size, h, cfg.mlp_bias),
            ("mlp.up_proj", cfg.intermediate_size, h, cfg.mlp_bias),
            ("mlp.down_proj", h, cfg.intermediate_size, cfg.mlp_bias),
        ];
        for (name, out, inp, bias) in projs {
            t.insert(format!("{p}.{name}.weight"), randn(&mut rng, &[out, inp], std)?);
            if bias {
                t.insert(format!("{p}.{name}.bias"), randn(&mut rng, &[out], std)?);
            }
        }
        t.insert(format!("{p}.input_layernorm.weight"), ones(h)?);
        t.insert(format!("{p}.post_attention_layernorm.weight"), ones(h)?);
    }
    t.insert("model.norm.weight".into(), ones(h)?);
    if !cfg.tie_word_embeddings {
        t.insert("lm_head.weight".into(), randn(&mut rng, &[cfg.vocab_size, h], std)?);
    }
    if let Some(e) = emb_dim {
        t.insert(EMB_HEAD_TENSOR.into(), randn(&mut rng, &[e, h], (1.0 / h as f32).sqrt())?);
    }
    Ok(t)
}

/// Builds a fresh checkpoint in `out` from `corpus`.
pub fn init_model(corpus: &Path, out: &Path, opts: &InitOptions) -> Result<()> {
    let corpus = Corpus::read(corpus)?;
    let tok = train_tokenizer(&corpus.texts, opts.vocab_size)?;
    let vocab = tok.get_vocab_size(true);
    let (hidden, layers, heads, kv_heads, inter) = opts.preset.shape();
    let decoder = DecoderConfig {
        family: opts.family,
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: inter,
        num_layers: layers,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim: hidden / heads,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_scaling: None,
        max_position_embeddings: 2048,
        tie_word_embeddings: true,
        qkv_bias: opts.family == Family::Qwen2,
        o_bias: false,
        mlp_bias: false,
        sliding_window: None,
    };
    let notellm = NoteLlmConfig {
        prompt_version: PROMPT_VERSION.into(),
        model_version: opts
            .model_version
            .clone()
            .unwrap_or_else(|| format!("init-{:?}-seed{}", opts.preset, opts.seed).to_lowercase()),
        emb_token: EMB.into(),
        bos_token: Some(BOS.into()),
        eos_token: EOS.into(),
        pad_token: PAD.into(),
        embedding_dim: opts.embedding_dim,
        embedding_head: true,
        hashtag_count: 3,
        categories: corpus.categories.into_iter().collect(),
        hashtags: Vec::new(),
        max_title_tokens: 20,
        max_content_tokens: 80,
        max_topic_tokens: 30,
        max_new_tokens: 24,
        multimodal: None,
    };
    let weights = random_weights(&decoder, Some(opts.embedding_dim), opts.seed)?;
    let json = tok.to_string(false).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    write_checkpoint(out, &decoder, &notellm, &json, &weights, opts.shards)?;
    tracing::info!(out = %out.display(), params_m = decoder.num_parameters() as f64 / 1e6, vocab, "checkpoint written");
    Ok(())
}
