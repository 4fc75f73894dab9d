//! A checkpoint directory in Hugging Face layout, plus `notellm.json`:
//! `config.json`, `tokenizer.json`, `notellm.json`, and either `model.safetensors` or sharded
//! `model-0000x-of-0000y.safetensors` with `model.safetensors.index.json`. Weights are
//! memory-mapped. Writing is here too, so that every checkpoint this project makes has exactly
//! the layout the loader reads.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::config::{read_json, DecoderConfig, NoteLlmConfig, CONFIG_FILE, NOTELLM_FILE};
use super::error::{ModelError, Result};
use super::tokenizer::TOKENIZER_FILE;

pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// The files of a checkpoint, located and parsed but not yet turned into a model.
#[derive(Debug, Clone)]
pub struct CheckpointFiles {
    pub dir: PathBuf,
    pub decoder: DecoderConfig,
    pub notellm: NoteLlmConfig,
    pub tokenizer: PathBuf,
    pub weights: Vec<PathBuf>,
}

fn must_exist(dir: &Path, file: &str) -> Result<PathBuf> {
    let p = dir.join(file);
    if p.is_file() {
        Ok(p)
    } else {
        Err(ModelError::MissingFile { dir: dir.to_owned(), file: file.to_owned() })
    }
}

impl CheckpointFiles {
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(ModelError::Io {
                path: dir.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "checkpoint directory not found"),
            });
        }
        let decoder = DecoderConfig::from_file(&must_exist(dir, CONFIG_FILE)?)?;
        let notellm = NoteLlmConfig::from_file(&must_exist(dir, NOTELLM_FILE)?)?;
        let tokenizer = must_exist(dir, TOKENIZER_FILE)?;
        let weights = weight_files(dir)?;
        if !notellm.embedding_head && notellm.embedding_dim != decoder.hidden_size {
            return Err(ModelError::Field {
                file: NOTELLM_FILE.into(),
                field: "embedding_dim".into(),
                msg: format!(
                    "is {} but there is no embedding head, so it must equal config.json hidden_size {}",
                    notellm.embedding_dim, decoder.hidden_size
                ),
            });
        }
        Ok(Self { dir: dir.to_owned(), decoder, notellm, tokenizer, weights })
    }

    /// A `VarBuilder` over the memory-mapped weights, converting to `dtype` on `device`.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
        for w in &self.weights {
            // Fail early, naming the file, on a file that is not safetensors at all.
            let f = std::fs::File::open(w).map_err(|source| ModelError::Io { path: w.clone(), source })?;
            let len = f.metadata().map_err(|source| ModelError::Io { path: w.clone(), source })?.len();
            if len < 8 {
                return Err(ModelError::Tensor {
                    file: file_name(w),
                    tensor: "-".into(),
                    msg: "file is too short to be safetensors".into(),
                });
            }
        }
        // SAFETY: the files are memory-mapped read-only; they must not be modified while the
        // model is loaded, which is the contract for a checkpoint directory.
        unsafe { VarBuilder::from_mmaped_safetensors(&self.weights, dtype, device) }.map_err(|e| ModelError::Tensor {
            file: self.weights.iter().map(|w| file_name(w)).collect::<Vec<_>>().join(", "),
            tensor: "-".into(),
            msg: format!("cannot read safetensors: {e}"),
        })
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The weight files: the single file, or the shards named by the index.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join(WEIGHTS_FILE);
    let index = dir.join(INDEX_FILE);
    if index.is_file() {
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: BTreeMap<String, String>,
        }
        let idx: Index = read_json(&index)?;
        if idx.weight_map.is_empty() {
            return Err(ModelError::Field {
                file: INDEX_FILE.into(),
                field: "weight_map".into(),
                msg: "is empty".into(),
            });
        }
        let mut files: Vec<&String> = idx.weight_map.values().collect::<HashSet<_>>().into_iter().collect();
        files.sort();
        files
            .into_iter()
            .map(|f| {
                if f.contains('/') || f.contains("..") {
                    return Err(ModelError::Field {
                        file: INDEX_FILE.into(),
                        field: "weight_map".into(),
                        msg: format!("shard {f:?} is not a plain file name"),
                    });
                }
                must_exist(dir, f)
            })
            .collect()
    } else if single.is_file() {
        Ok(vec![single])
    } else {
        Err(ModelError::MissingFile { dir: dir.to_owned(), file: format!("{WEIGHTS_FILE} (or {INDEX_FILE})") })
    }
}

/// Writes the four files of a checkpoint. `shards > 1` splits the tensors over that many files
/// with an index, as Hugging Face does for large models.
pub fn write_checkpoint(
    dir: &Path,
    decoder: &DecoderConfig,
    notellm: &NoteLlmConfig,
    tokenizer_json: &str,
    tensors: &HashMap<String, Tensor>,
    shards: usize,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| ModelError::Io { path: dir.to_owned(), source })?;
    let write = |name: &str, text: String| -> Result<()> {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|source| ModelError::Io { path: p, source })
    };
    let pretty = |v: serde_json::Value| serde_json::to_string_pretty(&v).unwrap_or_default();
    write(CONFIG_FILE, pretty(serde_json::to_value(decoder.to_raw()).unwrap_or_default()))?;
    write(NOTELLM_FILE, pretty(serde_json::to_value(notellm).unwrap_or_default()))?;
    write(TOKENIZER_FILE, tokenizer_json.to_owned())?;
    let shards = shards.max(1);
    if shards == 1 {
        let p = dir.join(WEIGHTS_FILE);
        candle_core::safetensors::save(tensors, &p)?;
        return Ok(());
    }
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let per = names.len().div_ceil(shards);
    let mut weight_map = BTreeMap::new();
    let mut total = 0usize;
    for (i, chunk) in names.chunks(per.max(1)).enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, shards);
        let part: HashMap<String, Tensor> = chunk.iter().map(|n| ((*n).clone(), tensors[*n].clone())).collect();
        for (n, t) in &part {
            total += t.elem_count() * t.dtype().size_in_bytes();
            weight_map.insert(n.clone(), file.clone());
        }
        candle_core::safetensors::save(&part, dir.join(&file))?;
    }
    write(INDEX_FILE, pretty(serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map })))
}
