//! The service core's one error type; `api/error.rs` maps it to HTTP in one place.

use crate::batcher::BatchError;
use notellm_index::IndexError;
use notellm_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("note not found")]
    NotFound,
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("index: {0}")]
    Index(#[from] IndexError),
    #[error("{0}")]
    Internal(String),
}
