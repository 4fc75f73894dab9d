//! The store's one error type. A missing note is never an error (lookups return `Option`);
//! everything here is a failure the caller reports, counts by [`StoreError::kind`] and maps to
//! a 5xx (or, for `ChangesPurged`, answers by rebuilding its index from a full scan).

use std::path::PathBuf;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL, schema name or another setting is unusable. Raised at connect time.
    #[error("store configuration: {0}")]
    Config(String),

    /// The data directory for the embedded SQLite file could not be created.
    #[error("cannot create data directory {}: {source}", path.display())]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The database could not be reached or a statement failed (includes pool timeouts).
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),

    /// Applying or validating the schema migrations failed.
    #[error("schema migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),

    /// The health probe finds the database unreachable: the operation was not tried.
    #[error("the database is unreachable ({0}); not tried")]
    Unreachable(String),

    /// A stored row cannot be decoded (wrong embedding length, non-finite values, bad JSON...).
    /// The row was written by something other than this store, or damaged.
    #[error("corrupt stored row for note {id:?}: {reason}")]
    Corrupt { id: String, reason: String },

    /// A re-index switch found notes without a current vector of the new version (they were
    /// written after it last caught up, or by another process): nothing was changed.
    #[error("{missing} notes have no current vector of model {version}; nothing was switched")]
    Incomplete { version: String, missing: u64 },

    /// A write embedded by another model version than the one the store's last re-index switch
    /// made active (another process switched while it was embedded): nothing was written. The
    /// write must be embedded again by the active model.
    #[error(
        "the write was embedded by model {written}, but the store was re-indexed to model {active}; \
         nothing was written"
    )]
    StaleModelVersion { written: String, active: String },

    /// Tombstones a follower would need were purged: it must rebuild from a full scan.
    #[error(
        "changes after seq {since} can no longer be replayed (tombstones up to seq \
         {purged_through} were purged); rebuild from a full scan"
    )]
    ChangesPurged { since: i64, purged_through: i64 },
}

impl StoreError {
    /// A short, stable label for metrics (`notellm_store_errors_total{kind=...}`).
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Config(_) => "config",
            StoreError::DataDir { .. } => "data_dir",
            StoreError::Db(_) => "db",
            StoreError::Unreachable(_) => "unreachable",
            StoreError::Migrate(_) => "migrate",
            StoreError::Corrupt { .. } => "corrupt",
            StoreError::ChangesPurged { .. } => "changes_purged",
            StoreError::Incomplete { .. } => "incomplete",
            StoreError::StaleModelVersion { .. } => "stale_model_version",
        }
    }

    /// The database is out of space: SQLite's `SQLITE_FULL` ("database or disk is full") or
    /// Postgres' `disk_full` (SQLSTATE 53100). Not retryable at once; space must be freed.
    pub fn is_storage_full(&self) -> bool {
        match self {
            StoreError::Db(sqlx::Error::Database(db)) => matches!(db.code().as_deref(), Some("13" | "53100")),
            _ => false,
        }
    }

    pub fn corrupt(id: &str, reason: impl Into<String>) -> Self {
        StoreError::Corrupt { id: id.to_owned(), reason: reason.into() }
    }
}
