//! A Hugging Face `tokenizer.json` rebuilt from a GGUF's tokenizer metadata.
//!
//! llama.cpp keeps a GPT-2-style byte-level BPE as `tokenizer.ggml.model = "gpt2"`: the tokens
//! (already in byte-level form, `Ġ` for a space), the merges (`"Ġ t"`), a type per token (1 normal,
//! 3 control, 4 user-defined, ...) and a pre-tokenizer name. The `tokenizers` crate gets:
//! - a BPE model over exactly those tokens and merges (no unknown token: byte-level BPE covers
//!   every byte);
//! - the pre-tokenizer named by `tokenizer.ggml.pre`. For `smollm` llama.cpp splits with `\p{N}`
//!   first (every digit its own piece) and then the GPT-2 regex (`src/llama-vocab.cpp`), which is
//!   what Hugging Face's SmolLM tokenizer.json says too: `Sequence[Digits(individual_digits),
//!   ByteLevel(add_prefix_space=false, use_regex=true)]`. `gpt2` is the ByteLevel step alone;
//!   others are refused rather than guessed;
//! - control tokens (`<|im_start|>`, ...) as added special tokens, so text that spells them maps
//!   to their ids and decoding skips them; user-defined tokens as added non-special tokens;
//! - the ByteLevel decoder.
//!
//! No BOS/EOS is added by a post-processor: the GGUF says `add_bos_token = false`, and the
//! NoteLLM prompt spells its own special tokens.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, Tokenizer};

use super::source::GgufSource;
use notellm_model::error::Result;

/// llama.cpp token types (`llama_token_type`).
const TOKEN_NORMAL: i64 = 1;
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

/// The tokenizer half of a GGUF's metadata.
#[derive(Debug, Clone)]
pub struct GgufVocab {
    pub tokens: Vec<String>,
    pub types: Vec<i64>,
    pub merges: Vec<(String, String)>,
    pub pre: String,
    pub bos: Option<u32>,
    pub eos: u32,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
}

/// How llama.cpp's pre-tokenizer name maps to `tokenizers` pre-tokenizers.
fn pre_tokenizer(pre: &str) -> Option<PreTokenizerWrapper> {
    let byte_level = ByteLevel::new(false, true, true);
    match pre {
        "smollm" => Some(PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            PreTokenizerWrapper::ByteLevel(byte_level),
        ]))),
        "gpt2" | "gpt-2" => Some(PreTokenizerWrapper::ByteLevel(byte_level)),
        _ => None,
    }
}

impl GgufVocab {
    pub fn read(src: &GgufSource) -> Result<Self> {
        let model = src.string("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(src.err(format!(
                "tokenizer.ggml.model is {model:?}; only \"gpt2\" (byte-level BPE) tokenizers can be imported"
            )));
        }
        let pre = if src.has("tokenizer.ggml.pre") { src.string("tokenizer.ggml.pre")? } else { "gpt2".into() };
        if pre_tokenizer(&pre).is_none() {
            return Err(
                src.err(format!("tokenizer.ggml.pre is {pre:?}; supported pre-tokenizers are \"smollm\" and \"gpt2\""))
            );
        }
        let tokens = src.string_array("tokenizer.ggml.tokens")?;
        let types = if src.has("tokenizer.ggml.token_type") {
            src.int_array("tokenizer.ggml.token_type")?
        } else {
            vec![TOKEN_NORMAL; tokens.len()]
        };
        if types.len() != tokens.len() {
            return Err(src.err(format!(
                "tokenizer.ggml.token_type has {} entries for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        let merges = src
            .string_array("tokenizer.ggml.merges")?
            .into_iter()
            .enumerate()
            .map(|(i, m)| match m.split_once(' ') {
                Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(' ') => Ok((a.to_owned(), b.to_owned())),
                _ => Err(src.err(format!("tokenizer.ggml.merges[{i}] is {m:?}, not two tokens separated by a space"))),
            })
            .collect::<Result<Vec<_>>>()?;
        let id = |key: &str| -> Result<Option<u32>> {
            match src.opt_uint(key)? {
                None => Ok(None),
                Some(i) if (i as usize) < tokens.len() => Ok(Some(i as u32)),
                Some(i) => Err(src.err(format!("{key} is {i}, outside the {} tokens", tokens.len()))),
            }
        };
        let eos = id("tokenizer.ggml.eos_token_id")?
            .ok_or_else(|| src.err("metadata `tokenizer.ggml.eos_token_id` is missing"))?;
        Ok(Self {
            bos: id("tokenizer.ggml.bos_token_id")?,
            unk: id("tokenizer.ggml.unknown_token_id")?,
            pad: id("tokenizer.ggml.padding_token_id")?,
            eos,
            tokens,
            types,
            merges,
            pre,
        })
    }

    pub fn token(&self, id: u32) -> &str {
        &self.tokens[id as usize]
    }

    /// The tokenizer, plus `extra_specials` appended as new special tokens (ids after the
    /// GGUF's last one, in order).
    pub fn build(&self, src: &GgufSource, extra_specials: &[&str]) -> Result<Tokenizer> {
        let mut vocab = Vocab::default();
        for (i, t) in self.tokens.iter().enumerate() {
            if vocab.insert(t.clone(), i as u32).is_some() {
                return Err(src.err(format!("tokenizer.ggml.tokens lists {t:?} twice")));
            }
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, self.merges.clone())
            .build()
            .map_err(|e| src.err(format!("tokenizer.ggml.merges: {e}")))?;
        let mut tok = Tokenizer::new(bpe);
        tok.with_pre_tokenizer(pre_tokenizer(&self.pre));
        tok.with_decoder(Some(ByteLevelDecoder::default()));
        let added: Vec<AddedToken> = self
            .tokens
            .iter()
            .zip(&self.types)
            .filter(|(_, &ty)| ty == TOKEN_CONTROL || ty == TOKEN_USER_DEFINED)
            .map(|(t, &ty)| AddedToken::from(t.clone(), ty == TOKEN_CONTROL))
            .collect();
        let (specials, plain): (Vec<AddedToken>, Vec<AddedToken>) = added.into_iter().partition(|t| t.special);
        tok.add_special_tokens(&specials);
        tok.add_tokens(&plain);
        for (k, extra) in extra_specials.iter().enumerate() {
            let want = (self.tokens.len() + k) as u32;
            if tok.token_to_id(extra).is_some() {
                return Err(src.err(format!("the GGUF vocabulary already has a token {extra:?}")));
            }
            tok.add_special_tokens(&[AddedToken::from(*extra, true)]);
            if tok.token_to_id(extra) != Some(want) {
                return Err(src.err(format!("could not give {extra:?} the id {want}")));
            }
        }
        Ok(tok)
    }
}
