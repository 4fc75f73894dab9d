//! The model runtime: a NoteLLM checkpoint loaded into our decoder, turning notes into
//! L2-normalised embeddings (the hidden state right before `[EMB]`, through the linear head) and
//! generating hashtags and a category with the same prompt.
//!
//! Knows nothing of HTTP, SQL or the index. Layer rule: depends on `notellm-note` only; the
//! side effects of getting a checkpoint (downloads, imports, overlays) live in
//! `notellm-artifacts`, above it.

pub mod batching;
pub mod cache;
pub mod checkpoint;
pub mod config;
pub mod decoder;
pub mod device;
pub mod embed;
pub mod encoder;
pub mod error;
pub mod features;
pub mod generate;
pub mod image_input;
pub mod multimodal;
pub mod prompt;
pub mod served;
pub mod tokenizer;
pub mod vision;
pub mod vote;

use std::path::Path;

use candle_core::{DType, Device, Tensor};

pub use cache::KvCache;
pub use checkpoint::CheckpointFiles;
pub use config::{DecoderConfig, NoteLlmConfig};
pub use decoder::{Decoder, PaddedBatch, Padding};
pub use device::DeviceSpec;
pub use error::{ModelError, Result};
pub use generate::{GenerateOptions, Suggestion};
pub use served::ServedModel;
pub use tokenizer::NoteTokenizer;

use crate::prompt::Limits;
use notellm_note::ModelVersion;

/// A loaded NoteLLM checkpoint.
#[derive(Debug)]
pub struct NoteLlm {
    decoder: Decoder,
    /// `[embedding_dim, hidden]`, f32; `None` means the hidden state is the embedding.
    head: Option<Tensor>,
    tokenizer: NoteTokenizer,
    cfg: NoteLlmConfig,
    version: ModelVersion,
    /// The category prompt's constant beginning, run once: token ids and their KV cache.
    prefix: Option<embed::Prefix>,
    /// The closed hashtag vocabulary's decoder, built once at load (`None`: free-form).
    hashtags: Option<generate::HashtagDecoder>,
}

impl NoteLlm {
    /// Loads the checkpoint in `dir` on `device` (f32 on CPU, bf16 on CUDA).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let dtype = if device.is_cuda() { DType::BF16 } else { DType::F32 };
        Self::load_with(dir, device, dtype)
    }

    pub fn load_with(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let files = CheckpointFiles::open(dir)?;
        let vb = files.var_builder(dtype, device)?;
        let names = files.weights.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        let tensor_err = |e: ModelError| match e {
            ModelError::Candle(c) => ModelError::Tensor { file: names.clone(), tensor: "-".into(), msg: c.to_string() },
            other => other,
        };
        let decoder = Decoder::load(&files.decoder, vb.clone()).map_err(tensor_err)?;
        let head = if files.notellm.embedding_head {
            let h = vb
                .get((files.notellm.embedding_dim, files.decoder.hidden_size), config::EMB_HEAD_TENSOR)
                .map_err(|e| tensor_err(e.into()))?;
            Some(h.to_dtype(DType::F32)?)
        } else {
            None
        };
        let tokenizer = NoteTokenizer::load(&files.tokenizer, &files.notellm, files.decoder.vocab_size)?;
        let version = ModelVersion(files.notellm.model_version.clone());
        let mut model = Self { decoder, head, tokenizer, cfg: files.notellm, version, prefix: None, hashtags: None };
        model.prefix = embed::Prefix::compute(&model)?;
        model.hashtags =
            generate::HashtagDecoder::new(&model.cfg.hashtags, model.tokenizer.eos_id, |t| model.tokenizer.encode(t))?;
        tracing::info!(
            dir = %dir.display(),
            family = ?model.decoder.config().family,
            layers = model.decoder.config().num_layers,
            hidden = model.decoder.config().hidden_size,
            params_m = model.decoder.config().num_parameters() as f64 / 1e6,
            embedding_dim = model.embedding_dim(),
            ?dtype,
            version = %model.version,
            "model loaded"
        );
        Ok(model)
    }

    pub fn version(&self) -> &ModelVersion {
        &self.version
    }

    pub fn config(&self) -> &NoteLlmConfig {
        &self.cfg
    }

    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    pub fn tokenizer(&self) -> &NoteTokenizer {
        &self.tokenizer
    }

    pub fn device(&self) -> &Device {
        self.decoder.device()
    }

    pub fn embedding_dim(&self) -> usize {
        self.cfg.embedding_dim
    }

    pub fn limits(&self) -> Limits {
        self.cfg.limits()
    }

    /// Turns prefix reuse off (or back on); embeddings are the same either way.
    pub fn set_prefix_reuse(&mut self, on: bool) -> Result<()> {
        self.prefix = if on { embed::Prefix::compute(self)? } else { None };
        Ok(())
    }

    pub fn prefix_len(&self) -> usize {
        self.prefix.as_ref().map_or(0, |p| p.ids.len())
    }

    /// The reused prefix's token ids (empty when reuse is off): a batch runs from the prefix's
    /// cache only when every sequence starts with these ids and is longer.
    pub fn prefix_ids(&self) -> &[u32] {
        self.prefix.as_ref().map_or(&[], |p| &p.ids)
    }
}
