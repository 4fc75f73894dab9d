//! `notellm model import`: a llama.cpp GGUF (SmolLM2-135M-Instruct's Q4_1 file, or any Llama GGUF
//! with a GPT-2-style byte-level BPE tokenizer) turned into a checkpoint in the layout
//! [`notellm_model::checkpoint`] reads: `config.json`, `tokenizer.json`, `model.safetensors` and
//! `notellm.json`.
//!
//! Steps: open and check the file ([`source`]); build the tokenizer from the GGUF metadata and
//! add `[EMB]` ([`vocab`]); dequantize every tensor, give it back its Hugging Face name and undo
//! llama.cpp's Q/K row permutation ([`tensors`]); append the `[EMB]` embedding row; write.
//!
//! **Weights are stored as f32.** The CPU path computes in f32, so f32 weights are memory-mapped
//! and used as they are; bf16 would need a conversion of every tensor at every load there, and a
//! Q4_1 GGUF dequantized to bf16 would round its values a second time. On CUDA the loader
//! converts to bf16 once at load. The price is disk: 135M parameters are ~540 MB.
//!
//! **`[EMB]`** is a new special token with the next free id (49152 for SmolLM2), and its
//! embedding row is the mean of the existing rows: a neutral start that fine-tuning moves. The
//! embeddings of SmolLM2 are tied, so the same row is also the LM head's row for `[EMB]`: the
//! vocabulary (and `config.json`'s `vocab_size`) grows by one and the model can in principle
//! predict `[EMB]`, with a logit that is the hidden state's dot product with the mean embedding,
//! an average score, never the argmax in practice. An untied `output.weight` gets its mean row
//! appended as well.
//!
//! **Prompt tokens.** The prompt's `[BOS]` is the GGUF's BOS token (`<|im_start|>` for
//! SmolLM2). The GGUF says not to add a BOS by default (`add_bos_token = false`), but the NoteLLM
//! template has a `[BOS]` slot and something must fill it; measured on the imported SmolLM2 (mean
//! next-token NLL of two NoteLLM category prompts after the first token): `<|im_start|>` 4.963 /
//! 5.126 nats, `<|endoftext|>` (the pretraining document separator) 4.990 / 5.161, nothing 5.017
//! / 5.178. The instruct model reads `<|im_start|>` as the start of a turn, and the rule carries
//! over to other Llama GGUFs (`<s>`). [`ImportOptions::bos_token`] overrides it. EOS and PAD are
//! the GGUF's (`<|im_end|>` both). The zero-shot base has no embedding head: the
//! embedding is the hidden state (`embedding_dim` = hidden size); the training step adds a head.

pub mod source;
pub mod tensors;
pub mod vocab;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Tensor;

use self::source::GgufSource;
use self::tensors::{hf_name, permuted, unpermute, with_mean_row, Permuted};
use self::vocab::GgufVocab;
use notellm_model::checkpoint::{write_checkpoint, INDEX_FILE};
use notellm_model::config::{DecoderConfig, Family, NoteLlmConfig, RopeScaling, PROMPT_VERSION};
use notellm_model::error::{ModelError, Result};
use notellm_model::tokenizer::NoteTokenizer;

/// The compression token added by the import.
pub const EMB_TOKEN: &str = "[EMB]";

/// What the import writes into `notellm.json` beyond what the GGUF says.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportOptions {
    /// `notellm.json`'s `model_version`; `None` derives it from the file name
    /// (`SmolLM2-135M-Instruct.Q4_1.gguf` -> `smollm2-135m-instruct-q4_1-base`).
    pub model_version: Option<String>,
    /// Closed category vocabulary for constrained decoding; empty means free-form categories.
    pub categories: Vec<String>,
    /// The prompt's `[BOS]`: `None` takes the GGUF's `tokenizer.ggml.bos_token_id` (no BOS when
    /// it has none). `Some("")` means no BOS; any other string must be a control token.
    pub bos_token: Option<String>,
    /// `max_new_tokens` of `notellm.json`.
    pub max_new_tokens: usize,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self { model_version: None, categories: Vec::new(), bos_token: None, max_new_tokens: 32 }
    }
}

/// What an import wrote.
#[derive(Debug, Clone)]
pub struct ImportSummary {
    pub out: PathBuf,
    pub model_version: String,
    /// Including `[EMB]`.
    pub vocab_size: usize,
    pub emb_id: u32,
    pub num_parameters: usize,
    pub tensors: usize,
    pub seconds: f64,
}

/// Reads a category list: one category per line; blank lines and lines starting with `#` are
/// skipped, surrounding whitespace is trimmed, a duplicate is an error naming the file.
pub fn read_categories(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io { path: path.to_owned(), source })?;
    let mut out: Vec<String> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let c = line.trim();
        if c.is_empty() || c.starts_with('#') {
            continue;
        }
        if out.iter().any(|o| o == c) {
            return Err(ModelError::Input(format!(
                "{}: line {}: category {c:?} is listed twice",
                path.display(),
                i + 1
            )));
        }
        out.push(c.to_owned());
    }
    if out.is_empty() {
        return Err(ModelError::Input(format!("{}: no categories (one per line)", path.display())));
    }
    Ok(out)
}

/// `model_version` derived from the GGUF's file name.
pub fn default_model_version(gguf: &Path) -> String {
    let stem = gguf.file_stem().map(|s| s.to_string_lossy().to_lowercase()).unwrap_or_default();
    let mut v: String = stem.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '-' }).collect();
    while v.contains("--") {
        v = v.replace("--", "-");
    }
    let v = v.trim_matches('-');
    format!("{}-base", if v.is_empty() { "gguf" } else { v })
}

/// Imports `gguf` into the checkpoint directory `out` (created if needed; the four files are
/// overwritten).
pub fn import_gguf(gguf: &Path, out: &Path, opts: &ImportOptions) -> Result<ImportSummary> {
    let start = Instant::now();
    if out.join(INDEX_FILE).exists() {
        return Err(ModelError::Input(format!(
            "{} holds a sharded checkpoint ({INDEX_FILE}); import into an empty directory",
            out.display()
        )));
    }
    let mut src = GgufSource::open(gguf)?;
    let vocab = GgufVocab::read(&src)?;
    let tokenizer = vocab.build(&src, &[EMB_TOKEN])?;
    let emb_id = vocab.tokens.len() as u32;
    let decoder = decoder_config(&src, vocab.tokens.len() + 1)?;
    let notellm = notellm_config(gguf, &vocab, &decoder, opts)?;
    notellm.validate()?;
    // The same checks the loader makes, before anything is written.
    let checked = NoteTokenizer::new(tokenizer.clone(), &notellm, decoder.vocab_size)?;
    if checked.emb_id != emb_id {
        return Err(src.err(format!("{EMB_TOKEN} got id {} instead of {emb_id}", checked.emb_id)));
    }
    let weights = read_weights(&mut src, &decoder)?;
    let json = tokenizer.to_string(false).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    write_checkpoint(out, &decoder, &notellm, &json, &weights, 1)?;
    let summary = ImportSummary {
        out: out.to_owned(),
        model_version: notellm.model_version.clone(),
        vocab_size: decoder.vocab_size,
        emb_id,
        num_parameters: decoder.num_parameters(),
        tensors: weights.len(),
        seconds: start.elapsed().as_secs_f64(),
    };
    tracing::info!(
        gguf = %gguf.display(),
        out = %out.display(),
        version = %summary.model_version,
        vocab = summary.vocab_size,
        params_m = summary.num_parameters as f64 / 1e6,
        seconds = summary.seconds,
        "GGUF imported"
    );
    Ok(summary)
}

/// `config.json` from the `llama.*` metadata. `vocab_size` includes the added `[EMB]`.
fn decoder_config(src: &GgufSource, vocab_size: usize) -> Result<DecoderConfig> {
    let n = |k: &str| -> Result<usize> { Ok(src.uint(&format!("llama.{k}"))? as usize) };
    let hidden = n("embedding_length")?;
    let heads = n("attention.head_count")?;
    let kv_heads = if src.has("llama.attention.head_count_kv") { n("attention.head_count_kv")? } else { heads };
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
        return Err(src.err(format!("llama.attention.head_count {heads} / head_count_kv {kv_heads} do not fit")));
    }
    let head_dim = match src.opt_uint("llama.attention.key_length")? {
        Some(d) => d as usize,
        None if hidden % heads == 0 => hidden / heads,
        None => {
            return Err(src.err(format!("llama.attention.head_count {heads} does not divide embedding_length {hidden}")))
        }
    };
    if let Some(rot) = src.opt_uint("llama.rope.dimension_count")? {
        if rot as usize != head_dim {
            return Err(src.err(format!(
                "llama.rope.dimension_count {rot} != head dim {head_dim}: partial RoPE is not supported"
            )));
        }
    }
    let rope_scaling =
        match src.has("llama.rope.scaling.type").then(|| src.string("llama.rope.scaling.type")).transpose()? {
            None => None,
            Some(t) if t == "none" => None,
            Some(t) if t == "linear" => Some(RopeScaling::Linear { factor: src.float("llama.rope.scaling.factor")? }),
            Some(t) => return Err(src.err(format!("llama.rope.scaling.type {t:?} is not supported (none, linear)"))),
        };
    if src.has_tensor("rope_freqs.weight") {
        return Err(src.err("tensor `rope_freqs.weight` (Llama 3 RoPE frequency factors) is not supported"));
    }
    let embd_rows = src.tensor_dims("token_embd.weight").and_then(|d| d.first().copied());
    if embd_rows != Some(vocab_size - 1) {
        return Err(src.err(format!(
            "token_embd.weight has {embd_rows:?} rows but tokenizer.ggml.tokens has {} tokens",
            vocab_size - 1
        )));
    }
    if let Some(v) = src.opt_uint("llama.vocab_size")? {
        if v as usize != vocab_size - 1 {
            return Err(src.err(format!("llama.vocab_size {v} != {} tokens", vocab_size - 1)));
        }
    }
    let cfg = DecoderConfig {
        family: Family::Llama,
        vocab_size,
        hidden_size: hidden,
        intermediate_size: n("feed_forward_length")?,
        num_layers: n("block_count")?,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim,
        rms_norm_eps: src.float("llama.attention.layer_norm_rms_epsilon")?,
        rope_theta: if src.has("llama.rope.freq_base") { src.float("llama.rope.freq_base")? } else { 10_000.0 },
        rope_scaling,
        max_position_embeddings: n("context_length")?,
        tie_word_embeddings: !src.has_tensor("output.weight"),
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
        sliding_window: None,
    };
    // Same validation as a loaded config.json, so a bad GGUF fails here, naming the GGUF.
    DecoderConfig::from_raw(&cfg.to_raw()).map_err(|e| src.err(format!("metadata gives an invalid config: {e}")))
}

fn notellm_config(
    gguf: &Path,
    vocab: &GgufVocab,
    decoder: &DecoderConfig,
    opts: &ImportOptions,
) -> Result<NoteLlmConfig> {
    let bos_token = match opts.bos_token.as_deref() {
        None => vocab.bos.map(|b| vocab.token(b).to_owned()),
        Some("") => None,
        Some(b) => Some(b.to_owned()),
    };
    let eos_token = vocab.token(vocab.eos).to_owned();
    let pad_token = vocab.pad.map_or_else(|| eos_token.clone(), |p| vocab.token(p).to_owned());
    Ok(NoteLlmConfig {
        prompt_version: PROMPT_VERSION.into(),
        model_version: opts.model_version.clone().unwrap_or_else(|| default_model_version(gguf)),
        emb_token: EMB_TOKEN.into(),
        bos_token,
        eos_token,
        pad_token,
        embedding_dim: decoder.hidden_size,
        embedding_head: false,
        hashtag_count: 3,
        categories: opts.categories.clone(),
        hashtags: Vec::new(),
        max_title_tokens: 20,
        max_content_tokens: 80,
        max_topic_tokens: 30,
        max_new_tokens: opts.max_new_tokens,
        multimodal: None,
    })
}

/// Every tensor dequantized to f32 under its Hugging Face name, Q/K rows restored, `[EMB]` rows
/// appended; shapes checked against `cfg`.
fn read_weights(src: &mut GgufSource, cfg: &DecoderConfig) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for name in src.tensor_names() {
        let hf = hf_name(&name)
            .ok_or_else(|| src.err(format!("tensor `{name}` is not a Llama tensor this importer knows")))?;
        let mut t = src.tensor_f32(&name)?;
        match permuted(&name) {
            Some(Permuted::Query) => t = unpermute(&t, cfg.num_heads)?,
            Some(Permuted::Key) => t = unpermute(&t, cfg.num_kv_heads)?,
            None => {}
        }
        if hf == "model.embed_tokens.weight" || hf == "lm_head.weight" {
            t = with_mean_row(&t)?;
        }
        if let Some(want) = expected_shape(&hf, cfg) {
            if t.dims() != want.as_slice() {
                return Err(src.err(format!("tensor `{name}` has shape {:?}, config says {want:?}", t.dims())));
            }
        }
        out.insert(hf, t);
    }
    let mut missing = Vec::new();
    let mut need = vec!["model.embed_tokens.weight".to_owned(), "model.norm.weight".to_owned()];
    for i in 0..cfg.num_layers {
        for p in [
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
            "input_layernorm",
            "post_attention_layernorm",
        ] {
            need.push(format!("model.layers.{i}.{p}.weight"));
        }
    }
    for n in need {
        if !out.contains_key(&n) {
            missing.push(n);
        }
    }
    if !missing.is_empty() {
        return Err(src.err(format!("missing tensors (Hugging Face names): {}", missing.join(", "))));
    }
    Ok(out)
}

fn expected_shape(hf: &str, c: &DecoderConfig) -> Option<Vec<usize>> {
    let (h, d, i) = (c.hidden_size, c.head_dim, c.intermediate_size);
    Some(match hf {
        "model.embed_tokens.weight" | "lm_head.weight" => vec![c.vocab_size, h],
        "model.norm.weight" => vec![h],
        _ => {
            let part = hf.strip_prefix("model.layers.")?.split_once('.')?.1;
            match part {
                "self_attn.q_proj.weight" => vec![c.num_heads * d, h],
                "self_attn.k_proj.weight" | "self_attn.v_proj.weight" => vec![c.num_kv_heads * d, h],
                "self_attn.o_proj.weight" => vec![h, c.num_heads * d],
                "mlp.gate_proj.weight" | "mlp.up_proj.weight" => vec![i, h],
                "mlp.down_proj.weight" => vec![h, i],
                "input_layernorm.weight" | "post_attention_layernorm.weight" => vec![h],
                _ => return None,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_version_from_file_name() {
        assert_eq!(
            default_model_version(Path::new("/x/SmolLM2-135M-Instruct.Q4_1.gguf")),
            "smollm2-135m-instruct-q4_1-base"
        );
        assert_eq!(default_model_version(Path::new("..gguf")), "gguf-base");
    }

    #[test]
    fn categories_file() {
        let dir = std::env::temp_dir().join(format!("notellm-cats-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.txt");
        std::fs::write(&p, "# comment\n travel \n\nfood\n").unwrap();
        assert_eq!(read_categories(&p).unwrap(), vec!["travel", "food"]);
        std::fs::write(&p, "a\nb\na\n").unwrap();
        let e = read_categories(&p).unwrap_err().to_string();
        assert!(e.contains("c.txt") && e.contains("twice"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
