//! What a service serves, chosen by what the checkpoint directory holds:
//! - a NoteLLM text checkpoint ([`NoteLlm`]);
//! - a multimodal one (the same text model plus the frozen image encoder and the connector),
//!   when its `notellm.json` has a `multimodal` section;
//! - a sentence encoder ([`SentenceEncoder`], the paper's online baseline), when the directory
//!   is one ([`crate::encoder::is_encoder_checkpoint`]).
//!
//! The batcher, the re-index and the follower see one narrow interface: a note's token ids
//! within the model's budget, a batch of them to L2-normalised embeddings, the model version
//! and the embedding dimension. Generation needs the LLM ([`ServedModel::text`]); an encoder
//! has none, so its `/suggest-tags` answers come from the neighbours' vote only.

use std::path::{Path, PathBuf};

use candle_core::Device;

use crate::encoder::{self, SentenceEncoder};
use crate::error::{ModelError, Result};
use crate::multimodal::MultimodalNoteLlm;
use crate::NoteLlm;
use notellm_note::{Embedding, ModelVersion, Note};

/// How many hashtags a suggestion asks for by default when the checkpoint does not say (an
/// encoder's `notellm.json`-less directory).
pub const DEFAULT_HASHTAG_COUNT: usize = 3;

/// A checkpoint directory read and checked without loading its weights: what a re-index
/// checks before it starts.
#[derive(Debug, Clone)]
pub struct ServedFiles {
    pub dir: PathBuf,
    pub version: ModelVersion,
    /// A multimodal checkpoint's image-encoder directory.
    pub vision: Option<PathBuf>,
}

/// Which family the checkpoint in `dir` is, from its files alone: a sentence encoder
/// (`1_Pooling/config.json`) or NoteLLM (`notellm.json`); anything else is refused naming both.
fn is_encoder(dir: &Path) -> Result<bool> {
    if !dir.is_dir() {
        return Err(ModelError::Io {
            path: dir.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "checkpoint directory not found"),
        });
    }
    if encoder::is_encoder_checkpoint(dir) {
        return Ok(true);
    }
    if dir.join(crate::config::NOTELLM_FILE).is_file() {
        return Ok(false);
    }
    Err(ModelError::Input(format!(
        "{} is not a checkpoint of a known family: a NoteLLM checkpoint has {}, a sentence encoder \
         (sentence-transformers' layout) has {}",
        dir.display(),
        crate::config::NOTELLM_FILE,
        encoder::POOLING_FILE
    )))
}

impl ServedFiles {
    pub fn open(dir: &Path) -> Result<Self> {
        if is_encoder(dir)? {
            let files = encoder::EncoderFiles::open(dir)?;
            return Ok(Self { dir: dir.to_owned(), version: ModelVersion(files.meta.model_version), vision: None });
        }
        let files = crate::CheckpointFiles::open(dir)?;
        let vision = files.notellm.multimodal.as_ref().map(|mm| dir.join(&mm.vision));
        Ok(Self { dir: files.dir, version: ModelVersion(files.notellm.model_version), vision })
    }
}

// One per served model version, behind an `Arc`: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum ServedModel {
    Text(NoteLlm),
    Multimodal(MultimodalNoteLlm),
    Encoder(SentenceEncoder),
}

impl ServedModel {
    /// Loads the checkpoint in `dir`: an encoder when it is one, else a NoteLLM checkpoint,
    /// multimodal when its `notellm.json` has a `multimodal` section.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        if is_encoder(dir)? {
            return Ok(ServedModel::Encoder(SentenceEncoder::load(dir, device)?));
        }
        let text = NoteLlm::load(dir, device)?;
        Ok(if text.config().multimodal.is_some() {
            ServedModel::Multimodal(MultimodalNoteLlm::with_text(text, dir, device)?)
        } else {
            ServedModel::Text(text)
        })
    }

    /// The family, for logs and the build-info metric: `notellm`, `notellm-2` or `encoder`.
    pub fn family(&self) -> &'static str {
        match self {
            ServedModel::Text(_) => "notellm",
            ServedModel::Multimodal(_) => "notellm-2",
            ServedModel::Encoder(_) => "encoder",
        }
    }

    /// The LLM, when the checkpoint has one (generation, the text prompt).
    pub fn text(&self) -> Option<&NoteLlm> {
        match self {
            ServedModel::Text(m) => Some(m),
            ServedModel::Multimodal(m) => Some(m.text()),
            ServedModel::Encoder(_) => None,
        }
    }

    /// The multimodal parts, when the checkpoint has them.
    pub fn multimodal(&self) -> Option<&MultimodalNoteLlm> {
        match self {
            ServedModel::Multimodal(m) => Some(m),
            _ => None,
        }
    }

    /// The image encoder's fingerprint ([`crate::vision::VisionEncoder::fingerprint`]): stored
    /// image features are reusable by this model exactly when they carry it.
    pub fn encoder_fingerprint(&self) -> Option<&str> {
        self.multimodal().and_then(|m| m.encoder().fingerprint())
    }

    pub fn version(&self) -> &ModelVersion {
        match self.embedder() {
            Embedder::Encoder(e) => e.version(),
            Embedder::Llm(m) => m.version(),
        }
    }

    /// Dimension of the embeddings.
    pub fn embedding_dim(&self) -> usize {
        match self.embedder() {
            Embedder::Encoder(e) => e.dim(),
            Embedder::Llm(m) => m.embedding_dim(),
        }
    }

    /// How many hashtags a suggestion asks for when the request does not say.
    pub fn hashtag_count(&self) -> usize {
        self.text().map_or(DEFAULT_HASHTAG_COUNT, |m| m.config().hashtag_count)
    }

    /// A note's token ids for embedding (the NoteLLM prompt, or the encoder's text), within the
    /// model's token budget.
    pub fn embedding_ids(&self, note: &Note) -> Result<Vec<u32>> {
        match self.embedder() {
            Embedder::Encoder(e) => e.note_ids(note),
            Embedder::Llm(m) => m.embedding_ids(note),
        }
    }

    /// Embeds sequences of [`Self::embedding_ids`] as one batch.
    pub fn embed_ids(&self, seqs: &[Vec<u32>]) -> Result<Vec<Embedding>> {
        match self.embedder() {
            Embedder::Encoder(e) => e.embed_ids(seqs),
            Embedder::Llm(m) => m.embed_ids(seqs),
        }
    }

    /// Embeds notes (text only), batched by length.
    pub fn embed(&self, notes: &[Note]) -> Result<Vec<Embedding>> {
        match self.embedder() {
            Embedder::Encoder(e) => e.embed_notes(notes, 16),
            Embedder::Llm(m) => m.embed(notes),
        }
    }

    /// What embeds a text note: the LLM (both NoteLLM variants) or the encoder.
    fn embedder(&self) -> Embedder<'_> {
        match self {
            ServedModel::Text(m) => Embedder::Llm(m),
            ServedModel::Multimodal(m) => Embedder::Llm(m.text()),
            ServedModel::Encoder(e) => Embedder::Encoder(e),
        }
    }
}

enum Embedder<'a> {
    Llm(&'a NoteLlm),
    Encoder(&'a SentenceEncoder),
}

impl From<NoteLlm> for ServedModel {
    fn from(m: NoteLlm) -> Self {
        ServedModel::Text(m)
    }
}

impl From<MultimodalNoteLlm> for ServedModel {
    fn from(m: MultimodalNoteLlm) -> Self {
        ServedModel::Multimodal(m)
    }
}

impl From<SentenceEncoder> for ServedModel {
    fn from(m: SentenceEncoder) -> Self {
        ServedModel::Encoder(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_of_no_known_family_is_refused_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), r#"{"model_type": "t5"}"#).unwrap();
        let e = ServedFiles::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a checkpoint of a known family") && e.contains("notellm.json"), "{e}");
        assert!(e.contains("1_Pooling/config.json"), "{e}");
        let e = ServedModel::load(dir.path(), &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("known family"), "{e}");
        let e = ServedFiles::open(&dir.path().join("missing")).unwrap_err().to_string();
        assert!(e.contains("not found"), "{e}");
        // An encoder directory that pools otherwise is refused by its own check.
        std::fs::create_dir_all(dir.path().join("1_Pooling")).unwrap();
        for f in ["tokenizer.json", "model.safetensors"] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
                "intermediate_size": 16, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
                "max_position_embeddings": 32, "type_vocab_size": 2, "initializer_range": 0.02,
                "layer_norm_eps": 1e-12, "pad_token_id": 0}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("1_Pooling/config.json"),
            r#"{"word_embedding_dimension": 8, "pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}"#,
        )
        .unwrap();
        let e = ServedFiles::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("only mean pooling"), "{e}");
    }
}
