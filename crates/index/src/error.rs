//! The index layer's one error type.

use std::path::PathBuf;

/// Why an index operation failed. Snapshot errors mean "rebuild from the store", never "crash".
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("invalid index config: {0}")]
    Config(String),
    #[error("embedding has dimension {got}, the index expects {expected}")]
    Dimension { expected: usize, got: usize },
    #[error("snapshot I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("snapshot {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("snapshot {path} is incompatible: {reason}")]
    Incompatible { path: PathBuf, reason: String },
}

impl IndexError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Corrupt { path: path.into(), reason: reason.into() }
    }

    pub(crate) fn incompatible(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Incompatible { path: path.into(), reason: reason.into() }
    }
}
