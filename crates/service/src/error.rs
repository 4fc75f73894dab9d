//! The service core's one error type. Its variants are meanings (what a caller can do about
//! it), not origins: the lower layers' errors ([`BatchError`], [`StoreError`], [`IndexError`],
//! [`ReindexError`](crate::ReindexError)) are translated here, once, and `notellm-http` maps
//! each meaning to a status and a code in one exhaustive match.
//!
//! Every variant keeps its detail for the log and for the offline commands that print it; the
//! HTTP layer decides which details a client may see (none of a 5xx's).

use crate::batcher::{BatchError, Queue};
use crate::reindex::ReindexError;
use notellm_index::IndexError;
use notellm_store::StoreError;

/// Which rule a conflicting request ran into (each has its own code for clients).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict {
    /// The note's stored vector is of another model version than the one serving.
    ModelVersion,
    /// A re-index is already running.
    ReindexRunning,
    /// The checkpoint named for a re-index is the one serving.
    AlreadyServing,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The note (or the re-index job) the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request breaks a rule of the API; the message says which.
    #[error("{0}")]
    Invalid(String),
    /// The note is longer than a batch holds.
    #[error("{0}")]
    NoteTooLong(String),
    /// The checkpoint named for a re-index cannot be used.
    #[error("{0}")]
    InvalidModel(String),
    #[error("{1}")]
    Conflict(Conflict, String),
    /// Not serving yet (the index is being restored).
    #[error("{0}")]
    NotReady(String),
    /// A bounded queue is full: retry soon.
    #[error("the {0} queue is full")]
    Overloaded(Queue),
    /// The model's worker threads have stopped.
    #[error("{0}")]
    ModelStopped(String),
    /// The store is unreachable or failed the operation; retrying later may succeed.
    #[error("{0}")]
    StoreUnavailable(String),
    /// The store is out of space: writes fail until space is freed.
    #[error("{0}")]
    StorageFull(String),
    /// Stored data cannot be decoded: the same read fails until someone repairs it.
    #[error("{0}")]
    Corrupt(String),
    /// A fault of this service (a failed task, inference error, index fault).
    #[error("{0}")]
    Internal(String),
}

impl From<BatchError> for AppError {
    fn from(e: BatchError) -> Self {
        let msg = e.to_string();
        match e {
            BatchError::QueueFull { queue } => AppError::Overloaded(queue),
            BatchError::TooLong { .. } => AppError::NoteTooLong(msg),
            BatchError::Input(_) => AppError::Invalid(msg),
            BatchError::Closed => AppError::ModelStopped(msg),
            BatchError::Model(_) => AppError::Internal(msg),
        }
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        let msg = format!("store: {e}");
        if e.is_storage_full() {
            return AppError::StorageFull(msg);
        }
        match e {
            StoreError::Corrupt { .. } => AppError::Corrupt(msg),
            // Another process switched the store's model: retryable once this one serves it
            // (the write path handles it itself; this is the meaning anywhere else).
            StoreError::StaleModelVersion { .. } => AppError::NotReady(msg),
            StoreError::Db(_)
            | StoreError::Unreachable(_)
            | StoreError::ChangesPurged { .. }
            | StoreError::Incomplete { .. } => AppError::StoreUnavailable(msg),
            // Raised only while connecting: a service that runs has passed them.
            StoreError::Config(_) | StoreError::DataDir { .. } | StoreError::Migrate(_) => AppError::Internal(msg),
        }
    }
}

impl From<IndexError> for AppError {
    fn from(e: IndexError) -> Self {
        AppError::Internal(format!("index: {e}"))
    }
}

impl From<ReindexError> for AppError {
    fn from(e: ReindexError) -> Self {
        let msg = e.to_string();
        match e {
            ReindexError::Running(_) => AppError::Conflict(Conflict::ReindexRunning, msg),
            ReindexError::AlreadyServing(_) => AppError::Conflict(Conflict::AlreadyServing, msg),
            ReindexError::NotRunning => AppError::NotFound(msg),
            ReindexError::BadModel { .. } => AppError::InvalidModel(msg),
            ReindexError::BadBatch(_) => AppError::Invalid(msg),
            ReindexError::NotReady => AppError::NotReady(msg),
            ReindexError::Store(e) => e.into(),
            ReindexError::Index(e) => e.into(),
            // The job's own failures: what a client sees of them is the job status's message.
            ReindexError::Model(_)
            | ReindexError::Embed { .. }
            | ReindexError::Cancelled
            | ReindexError::Internal(_) => AppError::Internal(format!("re-index: {msg}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_keep_their_meaning() {
        assert!(matches!(AppError::from(StoreError::corrupt("n1", "bad embedding")), AppError::Corrupt(_)));
        assert!(matches!(
            AppError::from(StoreError::ChangesPurged { since: 1, purged_through: 2 }),
            AppError::StoreUnavailable(_)
        ));
        assert!(matches!(AppError::from(StoreError::Unreachable("down".into())), AppError::StoreUnavailable(_)));
        assert!(matches!(AppError::from(StoreError::Config("bad url".into())), AppError::Internal(_)));
        let stale = StoreError::StaleModelVersion { written: "v1".into(), active: "v2".into() };
        assert!(matches!(AppError::from(stale), AppError::NotReady(m) if m.contains("v2")));
    }

    #[test]
    fn batch_errors_keep_their_meaning() {
        assert!(matches!(
            AppError::from(BatchError::QueueFull { queue: Queue::Generate }),
            AppError::Overloaded(Queue::Generate)
        ));
        assert!(matches!(AppError::from(BatchError::TooLong { tokens: 9, max: 8 }), AppError::NoteTooLong(_)));
        assert!(matches!(AppError::from(BatchError::Input("x".into())), AppError::Invalid(_)));
        assert!(matches!(AppError::from(BatchError::Closed), AppError::ModelStopped(_)));
        assert!(matches!(AppError::from(BatchError::Model("nan".into())), AppError::Internal(_)));
    }
}
