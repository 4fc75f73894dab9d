//! Errors of the model runtime. Checkpoint problems name the file and the field at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: invalid JSON: {msg}", path.display())]
    Json { path: PathBuf, msg: String },
    #[error("{file}: field `{field}` {msg}")]
    Field { file: String, field: String, msg: String },
    #[error("checkpoint {}: missing file {file}", dir.display())]
    MissingFile { dir: PathBuf, file: String },
    #[error("{file}: tensor `{tensor}`: {msg}")]
    Tensor { file: String, tensor: String, msg: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("device: {0}")]
    Device(String),
    #[error("input: {0}")]
    Input(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A GGUF file that cannot be imported: not GGUF, truncated, another architecture, or
    /// metadata/tensors missing or inconsistent.
    #[error("{}: {msg}", path.display())]
    Gguf { path: PathBuf, msg: String },
    /// Obtaining a pretrained base failed; the message says what to do about it.
    #[error("fetch {what}: {msg}")]
    Fetch { what: String, msg: String },
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
