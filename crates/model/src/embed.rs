//! Note embeddings: the category prompt up to (not including) `[EMB]`, one forward pass over a
//! right-padded batch, the final hidden state of the last real token (the token right before
//! `[EMB]`), the linear head, L2 normalisation. Only that token's state is needed, so the last
//! layer computes nothing else (`Decoder::forward_at`).
//!
//! Prefix reuse: every category prompt starts with the same instruction. Its KV cache is computed
//! once at load ([`Prefix`]) and expanded over each batch, so only the note-specific tokens are
//! run. A sequence whose tokenisation does not start with exactly the prefix ids is run whole, so
//! reuse can never change a result.

use candle_core::{DType, Tensor};

use super::decoder::{PaddedBatch, Padding};
use super::error::{ModelError, Result};
use super::{KvCache, NoteLlm};
use crate::prompt::{self, Variant};
use notellm_note::{Embedding, Note};

/// The shared beginning of every category prompt, already run through the decoder.
#[derive(Debug, Clone)]
pub struct Prefix {
    pub ids: Vec<u32>,
    cache: KvCache,
}

impl Prefix {
    pub(crate) fn compute(model: &NoteLlm) -> Result<Option<Self>> {
        let bos = model.cfg.bos_token.as_deref().unwrap_or("");
        let text = format!("{bos}{} {{'title':", prompt::CATEGORY_INSTRUCTION);
        let mut ids = model.tokenizer.encode(&text)?;
        // The last token could merge differently with what follows; leave it to the note part.
        ids.pop();
        if ids.len() < 2 {
            return Ok(None);
        }
        let batch =
            PaddedBatch::new(std::slice::from_ref(&ids), Padding::Right, model.tokenizer.pad_id, model.device())?;
        let mut cache = KvCache::new();
        model.decoder.forward(&batch, &mut cache)?;
        Ok(Some(Self { ids, cache }))
    }
}

impl NoteLlm {
    /// Token ids of `note`'s category prompt, ending right before `[EMB]`.
    pub fn embedding_ids(&self, note: &Note) -> Result<Vec<u32>> {
        let p = prompt::render(note, Variant::Category, self.limits(), self.tokenizer.specials(), &self.tokenizer);
        let mut ids = self.tokenizer.encode(&p.through_emb)?;
        match ids.iter().rposition(|&t| t == self.tokenizer.emb_id) {
            Some(pos) if pos > 0 => {
                ids.truncate(pos);
                Ok(ids)
            }
            _ => Err(ModelError::Tokenizer(format!(
                "the tokenizer did not produce the {} token for the prompt",
                self.cfg.emb_token
            ))),
        }
    }

    /// Embeds a batch of notes (one forward pass).
    pub fn embed(&self, notes: &[Note]) -> Result<Vec<Embedding>> {
        let seqs = notes.iter().map(|n| self.embedding_ids(n)).collect::<Result<Vec<_>>>()?;
        self.embed_ids(&seqs)
    }

    /// Embeds already-tokenised prompts (each ending right before `[EMB]`).
    pub fn embed_ids(&self, seqs: &[Vec<u32>]) -> Result<Vec<Embedding>> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(i) = seqs.iter().position(Vec::is_empty) {
            return Err(ModelError::Input(format!("sequence {i} is empty")));
        }
        let tokens: usize = seqs.iter().map(Vec::len).sum();
        let _span = tracing::debug_span!("embed_batch", size = seqs.len(), tokens).entered();
        let reuse =
            self.prefix.as_ref().filter(|p| seqs.iter().all(|s| s.len() > p.ids.len() && s.starts_with(&p.ids)));
        let (suffixes, mut cache): (Vec<Vec<u32>>, KvCache) = match reuse {
            Some(p) => (seqs.iter().map(|s| s[p.ids.len()..].to_vec()).collect(), p.cache.expand(seqs.len())?),
            None => (seqs.to_vec(), KvCache::new()),
        };
        let batch = PaddedBatch::new(&suffixes, Padding::Right, self.tokenizer.pad_id, self.device())?;
        let last: Vec<usize> = batch.last.iter().map(|l| l.unwrap_or(0)).collect();
        let states = self.decoder.forward_at(&batch, &mut cache, &last)?.to_dtype(DType::F32)?;
        self.project(&states)
    }

    /// Head + L2 normalisation of hidden states `[b, hidden]` (f32).
    pub fn project(&self, states: &Tensor) -> Result<Vec<Embedding>> {
        let out = match &self.head {
            Some(w) => states.matmul(&w.t()?)?,
            None => states.clone(),
        };
        out.to_device(&candle_core::Device::Cpu)?
            .to_vec2::<f32>()?
            .into_iter()
            .map(|v| {
                Embedding::normalised(v).map_err(|e| ModelError::Input(format!("model produced a bad embedding: {e}")))
            })
            .collect()
    }
}
