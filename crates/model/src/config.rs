//! The two JSON files of a checkpoint: Hugging Face's `config.json` (the decoder's shape) and our
//! `notellm.json` (prompt, special tokens, embedding head, category vocabulary, lengths).
//!
//! Both are parsed into raw serde structs first and then validated into types whose fields are
//! known to be consistent, so the decoder never sees, say, a head count that does not divide the
//! hidden size. Every error names the file and the field.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::ModelError;

/// Which Hugging Face architecture the weights follow. All three share the decoder block; they
/// differ in biases and defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
}

/// RoPE frequency scaling, as `rope_scaling` in `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Llama 3.x: piecewise wavelength scaling.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: usize },
    /// Position interpolation: every frequency divided by `factor`.
    Linear { factor: f64 },
}

/// A validated decoder configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Bias on the q/k/v projections (Qwen2 always; Llama when `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama `attention_bias`).
    pub o_bias: bool,
    /// Bias on the MLP projections (Llama `mlp_bias`).
    pub mlp_bias: bool,
    /// Mistral-style sliding window attention, if enabled.
    pub sliding_window: Option<usize>,
}

/// `config.json` as Hugging Face writes it (the subset we read).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RawHfConfig {
    pub model_type: Option<String>,
    pub vocab_size: Option<usize>,
    pub hidden_size: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub num_hidden_layers: Option<usize>,
    pub num_attention_heads: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    pub rms_norm_eps: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<serde_json::Value>,
    pub max_position_embeddings: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tie_word_embeddings: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_act: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_bias: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp_bias: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_sliding_window: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torch_dtype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architectures: Option<Vec<String>>,
}

pub const CONFIG_FILE: &str = "config.json";
pub const NOTELLM_FILE: &str = "notellm.json";

fn field_err(file: &str, field: &str, msg: impl Into<String>) -> ModelError {
    ModelError::Field { file: file.to_owned(), field: field.to_owned(), msg: msg.into() }
}

fn required<T: Copy>(v: Option<T>, field: &str) -> Result<T, ModelError> {
    v.ok_or_else(|| field_err(CONFIG_FILE, field, "is missing"))
}

fn positive(v: Option<usize>, field: &str) -> Result<usize, ModelError> {
    match required(v, field)? {
        0 => Err(field_err(CONFIG_FILE, field, "must be > 0")),
        n => Ok(n),
    }
}

impl DecoderConfig {
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let raw: RawHfConfig = read_json(path)?;
        Self::from_raw(&raw)
    }

    pub fn from_raw(raw: &RawHfConfig) -> Result<Self, ModelError> {
        let family = match raw.model_type.as_deref() {
            Some("llama") => Family::Llama,
            Some("mistral") => Family::Mistral,
            Some("qwen2") => Family::Qwen2,
            Some(other) => {
                return Err(field_err(
                    CONFIG_FILE,
                    "model_type",
                    format!("{other:?} is not supported (llama, mistral, qwen2)"),
                ));
            }
            None => return Err(field_err(CONFIG_FILE, "model_type", "is missing")),
        };
        let hidden_size = positive(raw.hidden_size, "hidden_size")?;
        let num_heads = positive(raw.num_attention_heads, "num_attention_heads")?;
        let num_kv_heads = match raw.num_key_value_heads {
            Some(0) => return Err(field_err(CONFIG_FILE, "num_key_value_heads", "must be > 0")),
            Some(n) => n,
            None => num_heads,
        };
        if num_heads % num_kv_heads != 0 {
            return Err(field_err(
                CONFIG_FILE,
                "num_key_value_heads",
                format!("{num_kv_heads} does not divide num_attention_heads {num_heads}"),
            ));
        }
        let head_dim = match raw.head_dim {
            Some(d) => d,
            None if hidden_size % num_heads == 0 => hidden_size / num_heads,
            None => {
                return Err(field_err(
                    CONFIG_FILE,
                    "num_attention_heads",
                    format!("{num_heads} does not divide hidden_size {hidden_size}"),
                ));
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(field_err(CONFIG_FILE, "head_dim", format!("{head_dim} must be even and > 0")));
        }
        let rms_norm_eps = required(raw.rms_norm_eps, "rms_norm_eps")?;
        if !(rms_norm_eps > 0.0 && rms_norm_eps < 1.0) {
            return Err(field_err(CONFIG_FILE, "rms_norm_eps", format!("{rms_norm_eps} out of (0, 1)")));
        }
        let rope_theta = raw.rope_theta.unwrap_or(10_000.0);
        if rope_theta <= 1.0 {
            return Err(field_err(CONFIG_FILE, "rope_theta", format!("{rope_theta} must be > 1")));
        }
        if let Some(act) = raw.hidden_act.as_deref() {
            if act != "silu" {
                return Err(field_err(CONFIG_FILE, "hidden_act", format!("{act:?} is not supported (silu)")));
            }
        }
        let attention_bias = raw.attention_bias.unwrap_or(false);
        let (qkv_bias, o_bias) = match family {
            Family::Qwen2 => (true, false),
            Family::Llama | Family::Mistral => (attention_bias, attention_bias),
        };
        let sliding_window = match family {
            Family::Mistral => raw.sliding_window,
            Family::Qwen2 if raw.use_sliding_window == Some(true) => raw.sliding_window,
            _ => None,
        };
        Ok(Self {
            family,
            vocab_size: positive(raw.vocab_size, "vocab_size")?,
            hidden_size,
            intermediate_size: positive(raw.intermediate_size, "intermediate_size")?,
            num_layers: positive(raw.num_hidden_layers, "num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps,
            rope_theta,
            rope_scaling: parse_rope_scaling(raw.rope_scaling.as_ref())?,
            max_position_embeddings: positive(raw.max_position_embeddings, "max_position_embeddings")?,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            qkv_bias,
            o_bias,
            mlp_bias: raw.mlp_bias.unwrap_or(false),
            sliding_window,
        })
    }

    /// Back to the Hugging Face form (used when this project writes a checkpoint).
    pub fn to_raw(&self) -> RawHfConfig {
        let (model_type, arch) = match self.family {
            Family::Llama => ("llama", "LlamaForCausalLM"),
            Family::Mistral => ("mistral", "MistralForCausalLM"),
            Family::Qwen2 => ("qwen2", "Qwen2ForCausalLM"),
        };
        let rope_scaling = self.rope_scaling.as_ref().map(|s| match s {
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                serde_json::json!({
                    "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                    "high_freq_factor": high_freq_factor,
                    "original_max_position_embeddings": original_max_position_embeddings,
                })
            }
            RopeScaling::Linear { factor } => serde_json::json!({"rope_type": "linear", "factor": factor}),
        });
        RawHfConfig {
            model_type: Some(model_type.into()),
            architectures: Some(vec![arch.into()]),
            vocab_size: Some(self.vocab_size),
            hidden_size: Some(self.hidden_size),
            intermediate_size: Some(self.intermediate_size),
            num_hidden_layers: Some(self.num_layers),
            num_attention_heads: Some(self.num_heads),
            num_key_value_heads: Some(self.num_kv_heads),
            head_dim: Some(self.head_dim),
            rms_norm_eps: Some(self.rms_norm_eps),
            rope_theta: Some(self.rope_theta),
            rope_scaling,
            max_position_embeddings: Some(self.max_position_embeddings),
            tie_word_embeddings: Some(self.tie_word_embeddings),
            hidden_act: Some("silu".into()),
            attention_bias: match self.family {
                Family::Qwen2 => None,
                _ => Some(self.qkv_bias),
            },
            mlp_bias: Some(self.mlp_bias),
            sliding_window: self.sliding_window,
            use_sliding_window: None,
            bos_token_id: None,
            eos_token_id: None,
            torch_dtype: Some("float32".into()),
        }
    }

    /// The same shape as candle-transformers' qwen2 `Config`: the stock model our decoder is
    /// tested and benchmarked against (no sliding window, SiLU).
    pub fn to_candle_qwen2(&self) -> candle_transformers::models::qwen2::Config {
        candle_transformers::models::qwen2::Config {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_layers,
            num_attention_heads: self.num_heads,
            num_key_value_heads: self.num_kv_heads,
            max_position_embeddings: self.max_position_embeddings,
            sliding_window: self.sliding_window.unwrap_or(self.max_position_embeddings),
            max_window_layers: 0,
            tie_word_embeddings: self.tie_word_embeddings,
            rope_theta: self.rope_theta,
            rms_norm_eps: self.rms_norm_eps,
            use_sliding_window: false,
            hidden_act: candle_nn::Activation::Silu,
        }
    }

    /// Parameters of the decoder (embeddings counted once when tied).
    pub fn num_parameters(&self) -> usize {
        let h = self.hidden_size;
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        let attn = h * q + 2 * h * kv + q * h;
        let mlp = 3 * h * self.intermediate_size;
        let per_layer = attn + mlp + 2 * h;
        let emb = self.vocab_size * h * if self.tie_word_embeddings { 1 } else { 2 };
        self.num_layers * per_layer + emb + h
    }

    /// Forward FLOPs per token through the decoder blocks (2 per multiply-add; attention
    /// score/value products excluded, as they depend on sequence length).
    pub fn flops_per_token(&self) -> f64 {
        let h = self.hidden_size;
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        let per_layer = (h * q + 2 * h * kv + q * h + 3 * h * self.intermediate_size) as f64;
        2.0 * per_layer * self.num_layers as f64
    }
}

fn parse_rope_scaling(v: Option<&serde_json::Value>) -> Result<Option<RopeScaling>, ModelError> {
    let Some(v) = v else { return Ok(None) };
    if v.is_null() {
        return Ok(None);
    }
    let field = "rope_scaling";
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(|t| t.as_str())
        .ok_or_else(|| field_err(CONFIG_FILE, field, "has no rope_type"))?;
    let num = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_f64())
            .ok_or_else(|| field_err(CONFIG_FILE, &format!("{field}.{k}"), "is missing or not a number"))
    };
    match kind {
        "default" => Ok(None),
        "linear" => Ok(Some(RopeScaling::Linear { factor: num("factor")? })),
        "llama3" => Ok(Some(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
        })),
        other => Err(field_err(
            CONFIG_FILE,
            "rope_scaling.rope_type",
            format!("{other:?} is not supported (default, linear, llama3)"),
        )),
    }
}

/// Version of the prompt templates in [`crate::prompt`]; a checkpoint trained with another
/// version would be fed prompts it never saw.
pub const PROMPT_VERSION: &str = "notellm-v1";

/// `notellm.json`: everything NoteLLM adds on top of a Hugging Face decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoteLlmConfig {
    /// Must equal [`PROMPT_VERSION`].
    pub prompt_version: String,
    /// Names this checkpoint; stored with every vector so two models never mix in one index.
    pub model_version: String,
    /// The compression token, added to the tokenizer as a special token.
    pub emb_token: String,
    /// Begin-of-sequence token prepended to every prompt, if the model uses one.
    pub bos_token: Option<String>,
    /// End of a generated output.
    pub eos_token: String,
    /// Padding token (never attended to; any id works, this one is used).
    pub pad_token: String,
    /// Output dimension: the head's rows, or the hidden size when there is no head.
    pub embedding_dim: usize,
    /// Whether `emb_head.weight` ([embedding_dim, hidden]) is in the weights.
    pub embedding_head: bool,
    /// j: hashtags asked for by the hashtag prompt variant at inference.
    pub hashtag_count: usize,
    /// Closed category vocabulary; empty means free-form categories.
    #[serde(default)]
    pub categories: Vec<String>,
    /// Closed hashtag vocabulary: when non-empty, generated hashtags are decoded through a token
    /// trie of these (none invented, none copied from the title); empty means free-form.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hashtags: Vec<String>,
    pub max_title_tokens: usize,
    pub max_content_tokens: usize,
    /// Limit on the hashtags ("topic") field inside the category prompt.
    pub max_topic_tokens: usize,
    /// Longest generated output (tokens).
    pub max_new_tokens: usize,
    /// NoteLLM-2: present when the checkpoint also embeds notes with an image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multimodal: Option<crate::multimodal::MultimodalConfig>,
}

/// Name of the embedding head tensor inside the weights.
pub const EMB_HEAD_TENSOR: &str = "emb_head.weight";

impl NoteLlmConfig {
    /// The prompt's token budgets per field.
    pub fn limits(&self) -> crate::prompt::Limits {
        crate::prompt::Limits {
            title: self.max_title_tokens,
            content: self.max_content_tokens,
            topic: self.max_topic_tokens,
        }
    }

    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let cfg: Self = read_json(path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ModelError> {
        let e = |field: &str, msg: String| Err(field_err(NOTELLM_FILE, field, msg));
        if self.prompt_version != PROMPT_VERSION {
            return e(
                "prompt_version",
                format!("{:?} is not supported (this build speaks {PROMPT_VERSION:?})", self.prompt_version),
            );
        }
        if self.model_version.trim().is_empty() {
            return e("model_version", "must not be empty".into());
        }
        for (field, v) in
            [("emb_token", &self.emb_token), ("eos_token", &self.eos_token), ("pad_token", &self.pad_token)]
        {
            if v.is_empty() {
                return e(field, "must not be empty".into());
            }
        }
        if self.embedding_dim == 0 {
            return e("embedding_dim", "must be > 0".into());
        }
        if self.hashtag_count == 0 {
            return e("hashtag_count", "must be > 0".into());
        }
        if self.max_new_tokens == 0 {
            return e("max_new_tokens", "must be > 0".into());
        }
        let mut seen = std::collections::HashSet::new();
        for t in &self.hashtags {
            if t.trim().is_empty() || t.trim() != t || t.contains(crate::prompt::HASHTAG_SEPARATOR.trim()) {
                return e("hashtags", format!("{t:?} is empty, has surrounding whitespace or holds the separator"));
            }
            if !seen.insert(t) {
                return e("hashtags", format!("{t:?} is listed twice"));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for c in &self.categories {
            if c.trim().is_empty() || c.trim() != c {
                return e("categories", format!("{c:?} is empty or has surrounding whitespace"));
            }
            if !seen.insert(c) {
                return e("categories", format!("{c:?} is listed twice"));
            }
        }
        if let Some(m) = &self.multimodal {
            m.validate().map_err(|err| field_err(NOTELLM_FILE, "multimodal", err.to_string()))?;
        }
        Ok(())
    }
}

/// The most bytes a checkpoint's JSON file may hold: real ones are kilobytes (`notellm.json`
/// with a hashtag vocabulary of thousands of tags well under 1 MiB), so anything near this is
/// not a checkpoint file, and it is refused before it is read into memory.
pub const MAX_JSON_BYTES: u64 = 16 << 20;

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ModelError> {
    use std::io::Read;
    let io = |source| ModelError::Io { path: path.to_owned(), source };
    let mut text = String::new();
    let file = std::fs::File::open(path).map_err(io)?;
    file.take(MAX_JSON_BYTES + 1).read_to_string(&mut text).map_err(io)?;
    if text.len() as u64 > MAX_JSON_BYTES {
        return Err(ModelError::Json { path: path.to_owned(), msg: format!("larger than {MAX_JSON_BYTES} bytes") });
    }
    serde_json::from_str(&text).map_err(|e| ModelError::Json { path: path.to_owned(), msg: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oversized_json_file_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONFIG_FILE);
        let file = std::fs::File::create(&path).unwrap();
        // Sparse: the size is there without writing it.
        file.set_len(MAX_JSON_BYTES + 1).unwrap();
        let err = read_json::<serde_json::Value>(&path).unwrap_err().to_string();
        assert!(err.contains("larger than"), "{err}");
        std::fs::write(&path, b"{\"a\": 1}").unwrap();
        assert_eq!(read_json::<serde_json::Value>(&path).unwrap()["a"], 1);
    }

    fn raw(json: serde_json::Value) -> RawHfConfig {
        serde_json::from_value(json).unwrap()
    }

    fn smollm() -> serde_json::Value {
        serde_json::json!({
            "model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
            "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
            "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "max_position_embeddings": 8192,
            "tie_word_embeddings": true, "hidden_act": "silu"
        })
    }

    #[test]
    fn llama_gqa() {
        let c = DecoderConfig::from_raw(&raw(smollm())).unwrap();
        assert_eq!((c.head_dim, c.num_kv_heads, c.family), (64, 3, Family::Llama));
        assert!(!c.qkv_bias && c.tie_word_embeddings);
        // SmolLM2-135M has ~134.5M parameters.
        let p = c.num_parameters() as f64 / 1e6;
        assert!((130.0..140.0).contains(&p), "{p}");
        // and the round trip through the HF form is lossless
        assert_eq!(DecoderConfig::from_raw(&c.to_raw()).unwrap(), c);
    }

    #[test]
    fn qwen2_has_qkv_bias() {
        let mut j = smollm();
        j["model_type"] = "qwen2".into();
        let c = DecoderConfig::from_raw(&raw(j)).unwrap();
        assert!(c.qkv_bias && !c.o_bias);
    }

    #[test]
    fn errors_name_the_field() {
        let mut j = smollm();
        j.as_object_mut().unwrap().remove("hidden_size");
        let err = DecoderConfig::from_raw(&raw(j)).unwrap_err().to_string();
        assert!(err.contains("config.json") && err.contains("hidden_size"), "{err}");

        let mut j = smollm();
        j["num_key_value_heads"] = 4.into();
        let err = DecoderConfig::from_raw(&raw(j)).unwrap_err().to_string();
        assert!(err.contains("num_key_value_heads"), "{err}");

        let mut j = smollm();
        j["model_type"] = "gpt2".into();
        assert!(DecoderConfig::from_raw(&raw(j)).unwrap_err().to_string().contains("model_type"));

        let mut j = smollm();
        j["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 2.0});
        assert!(DecoderConfig::from_raw(&raw(j)).unwrap_err().to_string().contains("rope_scaling"));
    }

    #[test]
    fn llama3_rope_scaling_parses() {
        let mut j = smollm();
        j["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let c = DecoderConfig::from_raw(&raw(j)).unwrap();
        assert!(matches!(c.rope_scaling, Some(RopeScaling::Llama3 { .. })));
        assert_eq!(DecoderConfig::from_raw(&c.to_raw()).unwrap(), c);
    }
}
