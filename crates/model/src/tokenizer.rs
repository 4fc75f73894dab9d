//! The checkpoint's `tokenizer.json`, checked against `notellm.json`: the `[EMB]`, EOS, PAD and
//! (optional) BOS tokens must exist as added special tokens with ids inside the model's vocabulary.

use std::borrow::Cow;
use std::path::Path;

use tokenizers::Tokenizer;

use super::config::NoteLlmConfig;
use super::error::{ModelError, Result};
use crate::prompt::{Specials, Truncate};

pub const TOKENIZER_FILE: &str = "tokenizer.json";

#[derive(Debug, Clone)]
pub struct NoteTokenizer {
    inner: Tokenizer,
    pub emb_id: u32,
    pub eos_id: u32,
    pub pad_id: u32,
    pub bos_id: Option<u32>,
    specials: Specials,
}

fn tok_err(field: &str, msg: String) -> ModelError {
    ModelError::Field { file: TOKENIZER_FILE.into(), field: field.into(), msg }
}

impl NoteTokenizer {
    pub fn load(path: &Path, cfg: &NoteLlmConfig, vocab_size: usize) -> Result<Self> {
        let inner = Tokenizer::from_file(path)
            .map_err(|e| ModelError::Json { path: path.to_owned(), msg: format!("not a tokenizer: {e}") })?;
        Self::new(inner, cfg, vocab_size)
    }

    pub fn new(inner: Tokenizer, cfg: &NoteLlmConfig, vocab_size: usize) -> Result<Self> {
        let added = inner.get_added_tokens_decoder();
        let special_id = |what: &str, token: &str| -> Result<u32> {
            let id = inner.token_to_id(token).ok_or_else(|| {
                tok_err("added_tokens", format!("has no {what} token {token:?} (notellm.json `{what}_token`)"))
            })?;
            if !added.get(&id).is_some_and(|t| t.special) {
                return Err(tok_err("added_tokens", format!("{what} token {token:?} is not an added special token")));
            }
            if id as usize >= vocab_size {
                return Err(tok_err(
                    "added_tokens",
                    format!("{what} token {token:?} has id {id} >= config.json vocab_size {vocab_size}"),
                ));
            }
            Ok(id)
        };
        let emb_id = special_id("emb", &cfg.emb_token)?;
        let eos_id = special_id("eos", &cfg.eos_token)?;
        let pad_id = special_id("pad", &cfg.pad_token)?;
        let bos_id = cfg.bos_token.as_deref().map(|b| special_id("bos", b)).transpose()?;
        let size = inner.get_vocab_size(true);
        if size > vocab_size {
            return Err(tok_err(
                "model.vocab",
                format!("has {size} tokens, more than config.json vocab_size {vocab_size}"),
            ));
        }
        let mut others: Vec<String> = added.values().filter(|t| t.special).map(|t| t.content.clone()).collect();
        others.sort();
        let specials =
            Specials { bos: cfg.bos_token.clone(), emb: cfg.emb_token.clone(), eos: cfg.eos_token.clone(), others };
        Ok(Self { inner, emb_id, eos_id, pad_id, bos_id, specials })
    }

    pub fn specials(&self) -> &Specials {
        &self.specials
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Token ids of `text`; special tokens spelled in it are recognised, nothing is added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

impl Truncate for NoteTokenizer {
    /// Keeps the text covered by the first `max_tokens` tokens (cut at a char boundary).
    fn truncate<'a>(&self, text: &'a str, max_tokens: usize) -> Cow<'a, str> {
        let Ok(enc) = self.inner.encode(text, false) else {
            // Encoding plain text does not fail in practice; fall back to a char budget.
            return Cow::Owned(text.chars().take(max_tokens * 4).collect());
        };
        if enc.get_ids().len() <= max_tokens {
            return Cow::Borrowed(text);
        }
        if max_tokens == 0 {
            return Cow::Borrowed("");
        }
        let mut end = enc.get_offsets()[max_tokens - 1].1.min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Cow::Borrowed(&text[..end])
    }
}
