//! The store of record: notes, embeddings and a change sequence (sqlx; Postgres or SQLite).
//!
//! The store is the source of truth; the HNSW index is a cache of it that can always be rebuilt
//! from [`Store::scan_embeddings`] and kept current with [`Store::changes_since`].
//!
//! # Backends
//!
//! [`Store::connect`] picks the backend from `DATABASE_URL`: `postgres://` or `postgresql://`
//! selects Postgres (production, shared by replicas); no URL selects an embedded SQLite file,
//! `<data_dir>/notellm.sqlite`, created on first use (an explicit `sqlite:` URL also works).
//! Migrations are embedded in the binary and applied at connect ([`migrate`] runs them alone,
//! for `notellm migrate`). SQLite runs in WAL mode with `synchronous = FULL` so that a write is
//! on disk when its call returns (see `sqlite.rs` for why not NORMAL).
//!
//! # Writes and the change sequence
//!
//! A write (put, batch put, delete) is ONE transaction that updates the note row (metadata,
//! hashtags, content hash, embedding, dim, model version) and stamps it with a new `seq`. A delete
//! removes the row and leaves a tombstone `(note_id, seq)`; a later put of the same id removes the
//! tombstone. `changes_since(s)` is the union of live notes and tombstones with `seq > s`, in seq
//! order: one entry per id, its latest state (a compacted log).
//!
//! A follower must never miss a change that commits after it read a position. Postgres
//! sequences do not give that (nextval order is not commit order: seq 7 can commit after a
//! reader has already seen seq 8). So seqs come from a one-row counter table, `notellm_seq`,
//! incremented as the first statement of each write transaction: the row lock is held until
//! COMMIT, so writers take numbers one at a time and commit in that order, and a transaction is
//! visible before it releases the lock. Hence seq order equals commit order, and once seq `n` is
//! visible all smaller seqs are too. An aborted write rolls its increment back, so seqs have no
//! gaps. On SQLite the same counter sits under `BEGIN IMMEDIATE`, which serialises writers. The
//! price is that writes are serialised (one commit at a time); batches amortise it, and the
//! publishing pipeline's write rate is far below one commit's latency.
//!
//! # Following protocol (index rebuild and replicas)
//!
//! 1. `let m = store.max_seq()`; 2. page through `scan_embeddings` and build the index;
//! 3. poll `changes_since(pos, limit)` from `pos = m`, applying each change and advancing `pos`
//!    to the last seq seen. A change made during the scan has a seq above `m` and is replayed.
//!
//! A replica (Postgres) also LISTENs ([`Store::listen`]) so that it reads the changes soon
//! after each commit rather than at the next poll; a notification only says when to read.
//!
//! # Re-indexing
//!
//! `note_vectors` holds vectors keyed by (note, model version) that a re-index stages while the
//! old version keeps serving from `notes`; [`Store::promote`] switches them in, in one
//! transaction (`staging.rs`).
//!
//! Once a switch is recorded, a put is accepted only with vectors of the active version: each
//! put reads the active version inside its transaction, after taking the counter, and fails with
//! [`StoreError::StaleModelVersion`] (writing nothing) when one of its writes is of another. The
//! switch takes the counter first too, so the version a put reads is the one in force when it
//! commits: no note committed under a replaced version outlives the switch (a process that
//! embedded with it, say a replica that has not followed the switch yet, embeds again).
//!
//! Tombstones older than a retention period can be dropped with
//! [`Store::purge_tombstones`]; a follower whose position predates a purged tombstone then gets
//! [`StoreError::ChangesPurged`] and must rebuild from a scan.

mod codec;
mod error;
mod migrations;
mod postgres;
mod sqlite;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use notellm_note::{Embedding, ModelVersion, Note, NoteId};

pub use codec::{content_hash, content_hash_with_image};
pub use error::StoreError;
pub use migrations::MigrationReport;
pub use postgres::changes_channel;

use postgres::PgStore;
use sqlite::{SqliteStore, SqliteTarget};

/// What the last health probe found: `Some(reason)` while the database is unreachable.
#[derive(Debug, Default)]
struct Health {
    down: Mutex<Option<String>>,
}

impl Health {
    fn down(&self) -> Option<String> {
        self.down.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn fail_fast(&self) -> Result<()> {
        match self.down() {
            Some(reason) => Err(StoreError::Unreachable(reason)),
            None => Ok(()),
        }
    }

    fn record(&self, outcome: &Result<()>) {
        let mut down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        match (outcome, down.is_some()) {
            (Ok(()), true) => tracing::info!("the store answers again"),
            (Err(e), false) => tracing::error!(error = %e, "the store is unreachable; failing store operations fast"),
            _ => {}
        }
        *down = outcome.as_ref().err().map(|e| match e {
            StoreError::Unreachable(reason) => reason.clone(),
            other => other.to_string(),
        });
    }
}

/// Results of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The embedded database's file name inside the data directory.
pub const SQLITE_FILE_NAME: &str = "notellm.sqlite";

/// Pool and connection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// Most pooled connections (Postgres), or most reader connections (SQLite, which also keeps
    /// one writer connection).
    pub max_connections: u32,
    /// Connections kept open while idle.
    pub min_connections: u32,
    /// How long an operation waits for a free connection before failing.
    pub acquire_timeout: Duration,
    /// SQLite only: how long a write waits for the file's write lock held by another process.
    pub busy_timeout: Duration,
    /// Postgres only: a schema to create if missing and put first on `search_path` (a plain
    /// lower-case identifier). Isolates tests; also lets several deployments share a database.
    pub schema: Option<String>,
    /// Postgres only: apply the pgvector backend's migration (`pgvector.rs`).
    pub pgvector: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            min_connections: 1,
            acquire_timeout: Duration::from_secs(3),
            busy_timeout: Duration::from_secs(5),
            schema: None,
            pgvector: false,
        }
    }
}

impl StoreOptions {
    fn validate(&self) -> Result<()> {
        if self.max_connections == 0 || self.min_connections > self.max_connections {
            return Err(StoreError::Config(format!(
                "pool sizes must satisfy 0 <= min ({}) <= max ({}) and max >= 1",
                self.min_connections, self.max_connections
            )));
        }
        if let Some(schema) = &self.schema {
            let ok = schema.len() <= 63
                && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && schema.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !ok {
                return Err(StoreError::Config(format!(
                    "schema must be 1-63 characters of [a-z0-9_] not starting with a digit, \
                     got {schema:?}"
                )));
            }
        }
        Ok(())
    }
}

/// One note to write: its text, the content hash of that text, and its embedding.
#[derive(Debug, Clone, Copy)]
pub struct NoteWrite<'a> {
    pub id: &'a NoteId,
    pub note: &'a Note,
    /// Normally [`content_hash`]`(note)`.
    pub content_hash: &'a str,
    pub embedding: &'a Embedding,
    pub model_version: &'a ModelVersion,
    /// The note's image (it replaces the stored one); `None` leaves the note without one.
    pub image: Option<&'a StoredImage>,
}

/// Refuses `batch` unless every write in it is of the store's active model version (`active`,
/// read inside the write's transaction after it took the change-sequence counter; `None` before
/// the first re-index switch, when any version is accepted).
fn check_active_model(batch: &[NoteWrite<'_>], active: Option<&str>) -> Result<()> {
    let Some(active) = active else { return Ok(()) };
    match batch.iter().find(|w| w.model_version.0 != active) {
        Some(w) => Err(StoreError::StaleModelVersion { written: w.model_version.0.clone(), active: active.to_owned() }),
        None => Ok(()),
    }
}

/// A note as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredNote {
    pub id: NoteId,
    pub note: Note,
    pub content_hash: String,
    pub embedding: Embedding,
    pub model_version: ModelVersion,
    /// The SHA-256 (hex) of the note's image, when it has one.
    pub image_hash: Option<String>,
    /// The change sequence of the note's latest write.
    pub seq: i64,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

/// A note's hashtags and category, without its text or vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteLabels {
    pub hashtags: Vec<String>,
    pub category: Option<String>,
}

/// Most ids [`Store::labels`] reads in one query (bound parameters stay far below SQLite's
/// limit).
const LABEL_IDS_PER_QUERY: usize = 500;

/// One entry of the change log: the latest state of a note changed after some seq.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Upsert { id: NoteId, embedding: Embedding, model_version: ModelVersion, seq: i64 },
    Delete { id: NoteId, seq: i64 },
}

impl Change {
    pub fn seq(&self) -> i64 {
        match self {
            Change::Upsert { seq, .. } | Change::Delete { seq, .. } => *seq,
        }
    }

    pub fn id(&self) -> &NoteId {
        match self {
            Change::Upsert { id, .. } | Change::Delete { id, .. } => id,
        }
    }
}

/// The store: a cheap-to-clone handle over a connection pool.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
    health: Arc<Health>,
}

#[derive(Debug, Clone)]
enum Backend {
    Postgres(PgStore),
    Sqlite(SqliteStore),
}

/// Calls the same method on whichever backend is in use; fails fast, without waiting for a connection, while the
/// health probe finds the database unreachable (see [`Store::probe`]).
macro_rules! dispatch {
    ($self:ident, $b:ident => $call:expr) => {{
        $self.health.fail_fast()?;
        dispatch_always!($self, $b => $call)
    }};
}

/// [`dispatch`] without the fail-fast check (the probe itself, closing).
macro_rules! dispatch_always {
    ($self:ident, $b:ident => $call:expr) => {
        match &$self.backend {
            Backend::Postgres($b) => $call,
            Backend::Sqlite($b) => $call,
        }
    };
}

// After the macro: `staging` and `images` dispatch with it.
mod images;
mod listen;
mod pgvector;
mod staging;

pub use images::StoredImage;
pub use listen::{ChangeListener, Notice, HEARTBEAT_SQL};
pub use pgvector::MAX_EF_SEARCH;

pub use staging::{ActiveModel, Promotion, ReindexNote, StagedVector, Switch, SwitchHold};

/// Where `DATABASE_URL` points.
enum Target<'a> {
    Postgres(&'a str),
    Sqlite(SqliteTarget),
}

fn target<'a>(database_url: Option<&'a str>, data_dir: &Path) -> Result<Target<'a>> {
    let Some(url) = database_url.map(str::trim).filter(|u| !u.is_empty()) else {
        return Ok(Target::Sqlite(SqliteTarget::File(data_dir.join(SQLITE_FILE_NAME))));
    };
    let scheme = url.split(':').next().unwrap_or_default().to_ascii_lowercase();
    match scheme.as_str() {
        "postgres" | "postgresql" if url[scheme.len()..].starts_with("://") => Ok(Target::Postgres(url)),
        "sqlite" => Ok(Target::Sqlite(SqliteTarget::Url(url.to_owned()))),
        // Only the scheme is echoed: the rest of the URL may hold a password.
        _ => Err(StoreError::Config(format!(
            "DATABASE_URL must be a postgres:// or postgresql:// URL (or unset for the embedded \
             SQLite store), got scheme {scheme:?}"
        ))),
    }
}

/// Applies pending migrations and closes the connection (`notellm migrate`).
pub async fn migrate(database_url: Option<&str>, data_dir: &Path, opts: &StoreOptions) -> Result<MigrationReport> {
    let (store, report) = Store::open(database_url, data_dir, opts).await?;
    store.close().await;
    Ok(report)
}

impl Store {
    /// Connects with default pool settings and applies pending migrations.
    pub async fn connect(database_url: Option<&str>, data_dir: &Path) -> Result<Store> {
        Self::connect_with(database_url, data_dir, &StoreOptions::default()).await
    }

    /// Connects with explicit pool settings and applies pending migrations.
    pub async fn connect_with(database_url: Option<&str>, data_dir: &Path, opts: &StoreOptions) -> Result<Store> {
        Ok(Self::open(database_url, data_dir, opts).await?.0)
    }

    async fn open(
        database_url: Option<&str>,
        data_dir: &Path,
        opts: &StoreOptions,
    ) -> Result<(Store, MigrationReport)> {
        opts.validate()?;
        let (backend, report) = match target(database_url, data_dir)? {
            Target::Postgres(url) => {
                let (s, r) = PgStore::connect(url, opts).await?;
                (Backend::Postgres(s), r)
            }
            Target::Sqlite(_) if opts.pgvector => {
                return Err(StoreError::Config(
                    "the pgvector index needs the Postgres store: set DATABASE_URL to a postgres:// URL".into(),
                ))
            }
            Target::Sqlite(t) => {
                let (s, r) = SqliteStore::connect(&t, opts).await?;
                (Backend::Sqlite(s), r)
            }
        };
        let store = Store { backend, health: Arc::default() };
        tracing::info!(backend = store.backend(), schema_version = report.latest, "store connected");
        Ok((store, report))
    }

    /// `"postgres"` or `"sqlite"`.
    pub fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Postgres(_) => "postgres",
            Backend::Sqlite(_) => "sqlite",
        }
    }

    /// A round trip to the database.
    pub async fn ping(&self) -> Result<()> {
        dispatch_always!(self, b => b.ping().await)
    }

    /// The health probe: a round trip within `timeout`. While one fails, every other operation
    /// of this store (and its clones) fails at once with [`StoreError::Unreachable`] instead of
    /// waiting for a connection; the first that succeeds lifts that. Run by the service on an
    /// interval; offline commands never probe, so they never fail fast.
    pub async fn probe(&self, timeout: Duration) -> Result<()> {
        let outcome = match tokio::time::timeout(timeout, self.ping()).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unreachable(format!("no answer to a ping within {timeout:?}"))),
        };
        self.health.record(&outcome);
        outcome
    }

    /// `Some(reason)` while the last probe failed.
    pub fn unreachable(&self) -> Option<String> {
        self.health.down()
    }

    /// Closes the pools, waiting for checked-out connections to come back (graceful shutdown).
    pub async fn close(&self) {
        dispatch_always!(self, b => b.close().await)
    }

    /// The stored content hash of a note, to skip re-embedding an unchanged re-PUT.
    pub async fn content_hash(&self, id: &NoteId) -> Result<Option<String>> {
        dispatch!(self, b => b.content_hash(id).await)
    }

    /// Inserts or replaces one note; returns its new seq once the write is durable.
    pub async fn put_note(
        &self,
        id: &NoteId,
        note: &Note,
        content_hash: &str,
        embedding: &Embedding,
        model_version: &ModelVersion,
    ) -> Result<i64> {
        let write = NoteWrite { id, note, content_hash, embedding, model_version, image: None };
        let seqs = self.put_notes(std::slice::from_ref(&write)).await?;
        seqs.first().copied().ok_or_else(|| StoreError::corrupt(id.as_str(), "no seq returned"))
    }

    /// Inserts or replaces a batch of notes in one transaction (all or nothing). Returns one seq
    /// per input, in input order; if an id repeats, the later entry wins. Fails with
    /// [`StoreError::StaleModelVersion`], writing nothing, when a re-index switch has made
    /// another model version active than one of the writes' (see the module doc).
    pub async fn put_notes(&self, batch: &[NoteWrite<'_>]) -> Result<Vec<i64>> {
        dispatch!(self, b => b.put_notes(batch).await)
    }

    /// The full stored note, or `None` when unknown.
    pub async fn get_note(&self, id: &NoteId) -> Result<Option<StoredNote>> {
        dispatch!(self, b => b.get_note(id).await)
    }

    /// The labels of those of `ids` that are stored (in no particular order); unknown ids are
    /// left out. One query per [`LABEL_IDS_PER_QUERY`] ids.
    pub async fn labels(&self, ids: &[NoteId]) -> Result<Vec<(NoteId, NoteLabels)>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(LABEL_IDS_PER_QUERY) {
            out.extend(dispatch!(self, b => b.labels(chunk).await)?);
        }
        Ok(out)
    }

    /// A note's embedding and model version (GET /related's hot path: one primary-key lookup).
    pub async fn get_embedding(&self, id: &NoteId) -> Result<Option<(Embedding, ModelVersion)>> {
        dispatch!(self, b => b.get_embedding(id).await)
    }

    /// Deletes a note (its image, and any vector of it staged by a re-index); returns the delete's seq, or
    /// `None` when the note is unknown (no change).
    pub async fn delete_note(&self, id: &NoteId) -> Result<Option<i64>> {
        dispatch!(self, b => b.delete_note(id).await)
    }

    /// Up to `limit` changes with `seq > since`, in increasing seq order, one per note (its
    /// latest state). Fails with [`StoreError::ChangesPurged`] when tombstones after `since`
    /// were purged.
    pub async fn changes_since(&self, since: i64, limit: usize) -> Result<Vec<Change>> {
        dispatch!(self, b => b.changes_since(since, limit).await)
    }

    /// The seq of the latest committed change (0 for an empty store).
    pub async fn max_seq(&self) -> Result<i64> {
        dispatch!(self, b => b.max_seq().await)
    }

    /// The latest write (a note row or a tombstone) with a seq at or below `at`, as
    /// `(note id, seq)`: the witness an index snapshot records of the store position it holds.
    pub async fn witness(&self, at: i64) -> Result<Option<(NoteId, i64)>> {
        dispatch!(self, b => b.witness(at).await)
    }

    /// The seq of `id`'s latest write: its row's, or its tombstone's; `None` when the store has
    /// neither (never written, or the tombstone was purged).
    pub async fn current_seq(&self, id: &NoteId) -> Result<Option<i64>> {
        dispatch!(self, b => b.current_seq(id).await)
    }

    /// Number of live notes.
    pub async fn count(&self) -> Result<u64> {
        dispatch!(self, b => b.count().await)
    }

    /// Up to `limit` embeddings of notes with id greater than `after`, in id (byte) order:
    /// keyset pagination for a full index rebuild or a re-index.
    pub async fn scan_embeddings(
        &self,
        after: Option<&NoteId>,
        limit: usize,
    ) -> Result<Vec<(NoteId, Embedding, ModelVersion)>> {
        dispatch!(self, b => b.scan_embeddings(after, limit).await)
    }

    /// Drops tombstones older than `older_than` and records the highest purged seq; returns how
    /// many were dropped. Choose a retention longer than any follower may lag.
    pub async fn purge_tombstones(&self, older_than: Duration) -> Result<u64> {
        dispatch!(self, b => b.purge_tombstones(older_than).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_selects_backend() {
        let dir = Path::new("/data");
        assert!(matches!(
            target(None, dir),
            Ok(Target::Sqlite(SqliteTarget::File(p))) if p == dir.join("notellm.sqlite")
        ));
        assert!(matches!(target(Some("  "), dir), Ok(Target::Sqlite(SqliteTarget::File(_)))));
        assert!(matches!(target(Some("postgres://u@h/db"), dir), Ok(Target::Postgres(_))));
        assert!(matches!(target(Some("PostgreSQL://u@h/db"), dir), Ok(Target::Postgres(_))));
        assert!(matches!(target(Some("sqlite:/tmp/x.db"), dir), Ok(Target::Sqlite(_))));
        let err = target(Some("mysql://root:hunter2@h/db"), dir).err().unwrap().to_string();
        assert!(err.contains("\"mysql\"") && !err.contains("hunter2"), "{err}");
        assert!(target(Some("postgres:/nope"), dir).is_err());
    }

    /// Handlers and background tasks spawn these futures: each must be `Send` for any borrow
    /// (rustc's higher-ranked `Send` check only fails inside spawned blocks like these).
    #[allow(dead_code)]
    fn store_futures_are_spawnable(store: Store, id: NoteId, note: Note, e: Embedding) {
        let mv = ModelVersion("m".into());
        let dir = std::path::PathBuf::from("x");
        let opts = StoreOptions::default();
        tokio::spawn(async move { Store::connect_with(None, &dir, &opts).await.map(|_| ()) });
        tokio::spawn({
            let s = store.clone();
            async move { migrate(None, Path::new("x"), &StoreOptions::default()).await.map(|_| ()).and(s.ping().await) }
        });
        let s = store.clone();
        let i = id.clone();
        tokio::spawn(async move { s.get_note(&i).await.map(|_| ()) });
        let s = store.clone();
        let i = id.clone();
        tokio::spawn(async move { s.get_embedding(&i).await.map(|_| ()) });
        let s = store.clone();
        let i = id.clone();
        tokio::spawn(async move { s.content_hash(&i).await.map(|_| ()) });
        let s = store.clone();
        let i = id.clone();
        tokio::spawn(async move { s.delete_note(&i).await.map(|_| ()) });
        let s = store.clone();
        let i = id.clone();
        tokio::spawn(async move { s.scan_embeddings(Some(&i), 1).await.map(|_| ()) });
        let s = store.clone();
        tokio::spawn(async move { s.changes_since(0, 1).await.map(|_| ()) });
        let s = store.clone();
        tokio::spawn(async move { s.count().await.map(|_| ()) });
        let s = store.clone();
        tokio::spawn(async move { s.max_seq().await.map(|_| ()) });
        let s = store.clone();
        tokio::spawn(async move { s.witness(1).await.map(|_| ()) });
        let s = store.clone();
        let i = id.clone();
        tokio::spawn(async move { s.current_seq(&i).await.map(|_| ()) });
        let s = store.clone();
        tokio::spawn(async move { s.purge_tombstones(Duration::ZERO).await.map(|_| ()) });
        let s = store.clone();
        tokio::spawn(async move {
            let v = ModelVersion("m2".into());
            let switch = Switch { model_version: &v, model_dir: "d", previous_version: &v, switch_token: "t" };
            let hold = s.hold_for_switch().await?;
            s.promote_held(hold, &switch).await.map(|_| ())
        });
        let s = store.clone();
        tokio::spawn(async move { s.close().await });
        tokio::spawn(async move {
            let h = content_hash(&note);
            store.put_note(&id, &note, &h, &e, &mv).await.map(|_| ())
        });
    }

    #[test]
    fn options_are_validated() {
        assert!(StoreOptions::default().validate().is_ok());
        let bad_pool = StoreOptions { max_connections: 0, ..Default::default() };
        assert!(bad_pool.validate().is_err());
        for s in ["nl_test_1", "_x"] {
            let o = StoreOptions { schema: Some(s.into()), ..Default::default() };
            assert!(o.validate().is_ok(), "{s}");
        }
        for s in ["", "1x", "a-b", "A", "x; DROP TABLE notes", &"a".repeat(64)] {
            let o = StoreOptions { schema: Some(s.into()), ..Default::default() };
            assert!(o.validate().is_err(), "{s}");
        }
    }
}
