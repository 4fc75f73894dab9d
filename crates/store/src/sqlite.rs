//! Embedded SQLite backend (the zero-setup default: `<data_dir>/notellm.sqlite`).
//!
//! Two pools over one file: a single-connection writer and a pool of readers. WAL mode lets the
//! readers (GET /related's embedding lookups) run while a write is in progress; the lone writer
//! means our own writes never fight for SQLite's write lock. Every write transaction starts with
//! `BEGIN IMMEDIATE`, so another process writing the same file (`notellm ingest` beside
//! `notellm serve`) waits on the busy timeout instead of failing with SQLITE_BUSY mid-way.
//!
//! Durability: `synchronous = FULL`. In WAL mode, NORMAL syncs the WAL only at checkpoints, so a
//! power cut or OS crash can lose the last commits, which would break the promise that a PUT is
//! answered only once the note is durable. FULL fsyncs the WAL on every commit: one fsync per
//! write transaction, amortised by `put_notes` batches.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous, SqliteTransaction,
};

use super::codec::{self, ChangeRow, EmbeddingRow, LabelRow, NoteRow, ScanRow};
use super::images::{self, ImageRow, StoredImage};
use super::migrations::{self, MigrationReport};
use super::staging::{ActiveRow, ReindexRow};
use super::{
    check_active_model, ActiveModel, Change, NoteLabels, NoteWrite, Promotion, ReindexNote, Result, StagedVector,
    StoreError, StoreOptions, StoredNote, Switch,
};
use notellm_note::{Embedding, ModelVersion, NoteId};

/// Where the SQLite database lives.
#[derive(Debug, Clone)]
pub(crate) enum SqliteTarget {
    /// A file path (the default `<data_dir>/notellm.sqlite`); its directory is created.
    File(PathBuf),
    /// An explicit `sqlite:` URL (tests, unusual layouts).
    Url(String),
}

/// The writer and reader pools over one database file.
#[derive(Debug, Clone)]
pub(crate) struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

const NOTE_COLUMNS: &str = "note_id, title, content, hashtags, category, content_hash, \
     (SELECT i.image_hash FROM note_images AS i WHERE i.note_id = notes.note_id) AS image_hash, \
     embedding, dim, model_version, seq, created_at AS created_us, updated_at AS updated_us";

const ALLOCATE_SEQS: &str = "UPDATE notellm_seq SET seq = seq + $1 WHERE id = 1 RETURNING seq";

/// `$11` is "now" in microseconds: the creation time of a new note, the update time of both.
const UPSERT: &str = "INSERT INTO notes (note_id, title, content, hashtags, category, \
         content_hash, embedding, dim, model_version, seq, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) \
     ON CONFLICT (note_id) DO UPDATE SET title = excluded.title, content = excluded.content, \
         hashtags = excluded.hashtags, category = excluded.category, \
         content_hash = excluded.content_hash, embedding = excluded.embedding, \
         dim = excluded.dim, model_version = excluded.model_version, seq = excluded.seq, \
         updated_at = excluded.updated_at";

/// A note's text and seq with its current staged vector of version `$2` (re-index reads).
const REINDEX_SELECT: &str = "SELECT n.note_id, n.title, n.content, n.hashtags, n.category, n.seq, \
         (SELECT i.image_hash FROM note_images AS i WHERE i.note_id = n.note_id) AS image_hash, \
         v.embedding AS staged, v.dim AS staged_dim \
     FROM notes AS n LEFT JOIN note_vectors AS v \
         ON v.note_id = n.note_id AND v.model_version = $2 AND v.source_seq = n.seq";

const STAGE: &str = "INSERT INTO note_vectors (note_id, model_version, embedding, dim, source_seq) \
     VALUES ($1, $2, $3, $4, $5) \
     ON CONFLICT (note_id, model_version) DO UPDATE SET embedding = excluded.embedding, \
         dim = excluded.dim, source_seq = excluded.source_seq";

const CHANGES: &str = "SELECT note_id, seq, embedding, dim, model_version FROM ( \
         SELECT note_id, seq, embedding, dim, model_version FROM notes WHERE seq > $1 \
         UNION ALL \
         SELECT note_id, seq, NULL, NULL, NULL FROM note_tombstones WHERE seq > $1 \
     ) ORDER BY seq LIMIT $2";

impl SqliteStore {
    pub(crate) async fn connect(target: &SqliteTarget, opts: &StoreOptions) -> Result<(SqliteStore, MigrationReport)> {
        let base = match target {
            SqliteTarget::File(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    tokio::fs::create_dir_all(dir)
                        .await
                        .map_err(|source| StoreError::DataDir { path: dir.to_path_buf(), source })?;
                }
                SqliteConnectOptions::new().filename(path)
            }
            SqliteTarget::Url(url) => {
                // Two pools over an in-memory database would see two different databases.
                if url.contains(":memory:") || url.contains("mode=memory") {
                    return Err(StoreError::Config(
                        "an in-memory SQLite database cannot back the store; use a file".into(),
                    ));
                }
                SqliteConnectOptions::from_str(url)
                    .map_err(|e| StoreError::Config(format!("DATABASE_URL is not a usable SQLite URL: {e}")))?
            }
        };
        let base = base
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(opts.busy_timeout)
            .foreign_keys(true);

        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(opts.acquire_timeout)
            .after_release(|conn, _| Box::pin(discard_if_stuck(conn)))
            .connect_with(base.clone().create_if_missing(true))
            .await?;
        let report = migrations::run_sqlite(writer.acquire().await?).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(opts.max_connections)
            .min_connections(opts.min_connections)
            .acquire_timeout(opts.acquire_timeout)
            .connect_with(base.create_if_missing(false))
            .await?;
        Ok((SqliteStore { writer, reader }, report))
    }

    pub(crate) async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    pub(crate) async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    pub(crate) async fn content_hash(&self, id: &NoteId) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT content_hash FROM notes WHERE note_id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.reader)
            .await?)
    }

    pub(crate) async fn put_notes(&self, batch: &[NoteWrite<'_>]) -> Result<Vec<i64>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let now = codec::now_micros();
        let mut tx = self.begin_write().await?;
        let first = allocate_seqs(&mut tx, batch.len()).await?;
        // Under BEGIN IMMEDIATE no switch can commit before this write does: the version read
        // here is the one in force at its commit.
        let active: Option<String> = sqlx::query_scalar("SELECT model_version FROM notellm_active_model WHERE id = 1")
            .fetch_optional(&mut *tx)
            .await?;
        if let Err(e) = check_active_model(batch, active.as_deref()) {
            tx.rollback().await?;
            return Err(e);
        }
        let mut seqs = Vec::with_capacity(batch.len());
        for (w, seq) in batch.iter().zip(first..) {
            sqlx::query("DELETE FROM note_tombstones WHERE note_id = $1").bind(w.id.as_str()).execute(&mut *tx).await?;
            sqlx::query(UPSERT)
                .bind(w.id.as_str())
                .bind(&w.note.title)
                .bind(&w.note.content)
                .bind(codec::encode_hashtags(&w.note.hashtags))
                .bind(w.note.category.as_deref())
                .bind(w.content_hash)
                .bind(codec::encode_embedding(w.embedding))
                .bind(codec::embedding_dim(w.embedding)?)
                .bind(&w.model_version.0)
                .bind(seq)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            write_image(&mut tx, w).await?;
            seqs.push(seq);
        }
        tx.commit().await?;
        Ok(seqs)
    }

    pub(crate) async fn get_note(&self, id: &NoteId) -> Result<Option<StoredNote>> {
        let sql = format!("SELECT {NOTE_COLUMNS} FROM notes WHERE note_id = $1");
        let row: Option<NoteRow> = sqlx::query_as(&sql).bind(id.as_str()).fetch_optional(&self.reader).await?;
        row.map(NoteRow::decode).transpose()
    }

    pub(crate) async fn labels(&self, ids: &[NoteId]) -> Result<Vec<(NoteId, NoteLabels)>> {
        let sql = codec::select_by_ids("note_id, hashtags, category", ids.len());
        let mut q = sqlx::query_as::<_, LabelRow>(&sql);
        for id in ids {
            q = q.bind(id.as_str());
        }
        q.fetch_all(&self.reader).await?.into_iter().map(LabelRow::decode).collect()
    }

    pub(crate) async fn get_embedding(&self, id: &NoteId) -> Result<Option<(Embedding, ModelVersion)>> {
        let row: Option<EmbeddingRow> =
            sqlx::query_as("SELECT embedding, dim, model_version FROM notes WHERE note_id = $1")
                .bind(id.as_str())
                .fetch_optional(&self.reader)
                .await?;
        row.map(|r| r.decode(id)).transpose()
    }

    pub(crate) async fn delete_note(&self, id: &NoteId) -> Result<Option<i64>> {
        let mut tx = self.begin_write().await?;
        let seq = allocate_seqs(&mut tx, 1).await?;
        let done = sqlx::query("DELETE FROM notes WHERE note_id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if done == 0 {
            // Unknown note: give the sequence number back so that seqs stay gap-free.
            tx.rollback().await?;
            return Ok(None);
        }
        sqlx::query("DELETE FROM note_vectors WHERE note_id = $1").bind(id.as_str()).execute(&mut *tx).await?;
        sqlx::query(images::DELETE_IMAGE).bind(id.as_str()).execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO note_tombstones (note_id, seq, deleted_at) VALUES ($1, $2, $3) \
             ON CONFLICT (note_id) DO UPDATE SET seq = excluded.seq, deleted_at = excluded.deleted_at",
        )
        .bind(id.as_str())
        .bind(seq)
        .bind(codec::now_micros())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(seq))
    }

    pub(crate) async fn image(&self, id: &NoteId) -> Result<Option<StoredImage>> {
        let row: Option<ImageRow> =
            sqlx::query_as(images::IMAGE_OF).bind(id.as_str()).fetch_optional(&self.reader).await?;
        row.map(ImageRow::decode).transpose()
    }

    pub(crate) async fn image_by_hash(&self, encoder: &str, image_hash: &str) -> Result<Option<StoredImage>> {
        let row: Option<ImageRow> =
            sqlx::query_as(images::IMAGE_BY_HASH).bind(encoder).bind(image_hash).fetch_optional(&self.reader).await?;
        row.map(ImageRow::decode).transpose()
    }

    pub(crate) async fn image_encoders(&self) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(images::IMAGE_ENCODERS).fetch_all(&self.reader).await?)
    }

    pub(crate) async fn changes_since(&self, since: i64, limit: usize) -> Result<Vec<Change>> {
        let rows: Vec<ChangeRow> = sqlx::query_as(CHANGES)
            .bind(since)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.reader)
            .await?;
        // Checked after reading: a purge that committed before the read is seen here.
        let purged_through: i64 =
            sqlx::query_scalar("SELECT purged_through FROM notellm_seq WHERE id = 1").fetch_one(&self.reader).await?;
        if since < purged_through {
            return Err(StoreError::ChangesPurged { since, purged_through });
        }
        codec::decode_all(rows, ChangeRow::decode)
    }

    pub(crate) async fn max_seq(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT seq FROM notellm_seq WHERE id = 1").fetch_one(&self.reader).await?)
    }

    pub(crate) async fn witness(&self, at: i64) -> Result<Option<(NoteId, i64)>> {
        let mut rows = Vec::with_capacity(codec::WITNESS.len());
        for sql in codec::WITNESS {
            rows.push(sqlx::query_as(sql).bind(at).fetch_optional(&self.reader).await?);
        }
        codec::later_witness(rows)
    }

    pub(crate) async fn current_seq(&self, id: &NoteId) -> Result<Option<i64>> {
        for sql in codec::CURRENT_SEQ {
            let seq: Option<i64> = sqlx::query_scalar(sql).bind(id.as_str()).fetch_optional(&self.reader).await?;
            if seq.is_some() {
                return Ok(seq);
            }
        }
        Ok(None)
    }

    pub(crate) async fn count(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM notes").fetch_one(&self.reader).await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    pub(crate) async fn scan_embeddings(
        &self,
        after: Option<&NoteId>,
        limit: usize,
    ) -> Result<Vec<(NoteId, Embedding, ModelVersion)>> {
        let rows: Vec<ScanRow> = sqlx::query_as(
            "SELECT note_id, embedding, dim, model_version FROM notes \
             WHERE note_id > $1 ORDER BY note_id LIMIT $2",
        )
        .bind(after.map_or("", NoteId::as_str))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.reader)
        .await?;
        codec::decode_all(rows, ScanRow::decode)
    }

    pub(crate) async fn purge_tombstones(&self, older_than: Duration) -> Result<u64> {
        let cutoff = codec::now_micros().saturating_sub(i64::try_from(older_than.as_micros()).unwrap_or(i64::MAX));
        let mut tx = self.begin_write().await?;
        let max_seq: Option<i64> = sqlx::query_scalar("SELECT max(seq) FROM note_tombstones WHERE deleted_at < $1")
            .bind(cutoff)
            .fetch_one(&mut *tx)
            .await?;
        let purged = sqlx::query("DELETE FROM note_tombstones WHERE deleted_at < $1")
            .bind(cutoff)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if let Some(max_seq) = max_seq {
            sqlx::query("UPDATE notellm_seq SET purged_through = max(purged_through, $1) WHERE id = 1")
                .bind(max_seq)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(purged)
    }

    pub(crate) async fn reindex_scan(
        &self,
        after: Option<&NoteId>,
        max_seq: i64,
        limit: usize,
        version: &ModelVersion,
    ) -> Result<Vec<ReindexNote>> {
        let sql = format!("{REINDEX_SELECT} WHERE n.note_id > $1 AND n.seq <= $4 ORDER BY n.note_id LIMIT $3");
        let rows: Vec<ReindexRow> = sqlx::query_as(&sql)
            .bind(after.map_or("", NoteId::as_str))
            .bind(&version.0)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(max_seq)
            .fetch_all(&self.reader)
            .await?;
        codec::decode_all(rows, ReindexRow::decode)
    }

    pub(crate) async fn reindex_note(&self, id: &NoteId, version: &ModelVersion) -> Result<Option<ReindexNote>> {
        let sql = format!("{REINDEX_SELECT} WHERE n.note_id = $1");
        let row: Option<ReindexRow> =
            sqlx::query_as(&sql).bind(id.as_str()).bind(&version.0).fetch_optional(&self.reader).await?;
        row.map(ReindexRow::decode).transpose()
    }

    pub(crate) async fn stage_vectors(&self, version: &ModelVersion, vectors: &[StagedVector<'_>]) -> Result<()> {
        if vectors.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for v in vectors {
            sqlx::query(STAGE)
                .bind(v.id.as_str())
                .bind(&version.0)
                .bind(codec::encode_embedding(v.embedding))
                .bind(codec::embedding_dim(v.embedding)?)
                .bind(v.source_seq)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn unstage(&self, id: &NoteId) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM note_vectors WHERE note_id = $1").bind(id.as_str()).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn promote(&self, s: &Switch<'_>) -> Result<Promotion> {
        let mut tx = self.begin_write().await?;
        let total: i64 = sqlx::query_scalar("SELECT count(*) FROM notes").fetch_one(&mut *tx).await?;
        let missing: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM notes AS n WHERE NOT EXISTS (SELECT 1 FROM note_vectors AS v \
             WHERE v.note_id = n.note_id AND v.model_version = $1 AND v.source_seq = n.seq)",
        )
        .bind(&s.model_version.0)
        .fetch_one(&mut *tx)
        .await?;
        if missing > 0 {
            tx.rollback().await?;
            return Err(StoreError::Incomplete {
                version: s.model_version.0.clone(),
                missing: u64::try_from(missing).unwrap_or(0),
            });
        }
        let last: i64 = sqlx::query_scalar(ALLOCATE_SEQS).bind(total).fetch_one(&mut *tx).await?;
        // New seqs in the old order, all above every old one (so the unique index on seq never
        // sees a duplicate mid-update). Numbered into a temporary table first: the UPDATE then
        // reads only tables it does not write.
        sqlx::query("CREATE TEMP TABLE IF NOT EXISTS notellm_renumber (note_id TEXT PRIMARY KEY, seq INTEGER)")
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM temp.notellm_renumber").execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO temp.notellm_renumber (note_id, seq) \
             SELECT note_id, $1 + row_number() OVER (ORDER BY seq) FROM notes",
        )
        .bind(last - total)
        .execute(&mut *tx)
        .await?;
        let updated = sqlx::query(
            "UPDATE notes SET embedding = v.embedding, dim = v.dim, model_version = v.model_version, seq = r.seq \
             FROM temp.notellm_renumber AS r, note_vectors AS v \
             WHERE r.note_id = notes.note_id AND v.note_id = notes.note_id AND v.model_version = $1",
        )
        .bind(&s.model_version.0)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let missing = u64::try_from(total).unwrap_or(0).saturating_sub(updated);
        if missing > 0 {
            tx.rollback().await?;
            return Err(StoreError::Incomplete { version: s.model_version.0.clone(), missing });
        }
        sqlx::query("DELETE FROM temp.notellm_renumber").execute(&mut *tx).await?;
        sqlx::query("DELETE FROM note_vectors").execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO notellm_active_model \
                 (id, model_version, model_dir, previous_version, switch_token, switched_at) \
             VALUES (1, $1, $2, $3, $4, $5) \
             ON CONFLICT (id) DO UPDATE SET model_version = excluded.model_version, \
                 model_dir = excluded.model_dir, previous_version = excluded.previous_version, \
                 switch_token = excluded.switch_token, switched_at = excluded.switched_at",
        )
        .bind(&s.model_version.0)
        .bind(s.model_dir)
        .bind(&s.previous_version.0)
        .bind(s.switch_token)
        .bind(codec::now_micros())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Promotion { notes: u64::try_from(total).unwrap_or(0), max_seq: last })
    }

    pub(crate) async fn active_model(&self) -> Result<Option<ActiveModel>> {
        let row: Option<ActiveRow> = sqlx::query_as(
            "SELECT model_version, model_dir, previous_version, switch_token, switched_at AS switched_us \
             FROM notellm_active_model WHERE id = 1",
        )
        .fetch_optional(&self.reader)
        .await?;
        row.map(ActiveRow::decode).transpose()
    }

    /// A write transaction that holds SQLite's write lock from its first statement.
    async fn begin_write(&self) -> Result<SqliteTransaction<'static>> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }
}

/// Keeps the writer connection only when no transaction is left open on it. SQLite rolls a
/// transaction back by itself when its COMMIT fails with `database or disk is full` (or an I/O
/// error); sqlx still counts it, its rollback on drop then fails, and every later `BEGIN
/// IMMEDIATE` on that connection would be refused ("non-zero transaction depth") until a
/// restart. The ping first lets the rollback queued by a dropped transaction run.
async fn discard_if_stuck(conn: &mut sqlx::SqliteConnection) -> std::result::Result<bool, sqlx::Error> {
    use sqlx::Connection;
    conn.ping().await?;
    let stuck = conn.is_in_transaction();
    if stuck {
        tracing::warn!("the SQLite writer connection was left inside a transaction; opening a new one");
    }
    Ok(!stuck)
}

/// Replaces the image row of the note `w` writes (none when it has no image).
async fn write_image(tx: &mut SqliteTransaction<'_>, w: &NoteWrite<'_>) -> Result<()> {
    sqlx::query(images::DELETE_IMAGE).bind(w.id.as_str()).execute(&mut **tx).await?;
    if let Some(image) = w.image {
        image.check(w.id.as_str())?;
        sqlx::query(images::INSERT_IMAGE)
            .bind(w.id.as_str())
            .bind(&image.image_hash)
            .bind(&image.encoder)
            .bind(i64::from(image.tokens))
            .bind(i64::from(image.width))
            .bind(&image.features)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Allocates `n` consecutive sequence numbers inside `tx` and returns the first.
async fn allocate_seqs(tx: &mut SqliteTransaction<'_>, n: usize) -> Result<i64> {
    let n = i64::try_from(n).map_err(|_| StoreError::Config("batch too large".into()))?;
    let last: i64 = sqlx::query_scalar(ALLOCATE_SEQS).bind(n).fetch_one(&mut **tx).await?;
    Ok(last - n + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transaction that SQLite ended behind sqlx's back (as after a COMMIT that failed with
    /// a full disk) must not leave the writer unusable: the next write gets a fresh connection.
    #[tokio::test]
    async fn a_transaction_sqlite_rolled_back_itself_does_not_wedge_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let target = SqliteTarget::File(dir.path().join("t.sqlite"));
        let (store, _) = SqliteStore::connect(&target, &StoreOptions::default()).await.unwrap();
        for _ in 0..2 {
            let mut tx = store.begin_write().await.unwrap();
            sqlx::query("ROLLBACK").execute(&mut *tx).await.unwrap();
            drop(tx); // sqlx's own rollback now fails: no transaction is active
            let mut tx = store.begin_write().await.expect("the writer is usable again");
            allocate_seqs(&mut tx, 1).await.unwrap();
            tx.commit().await.unwrap();
        }
        assert_eq!(store.max_seq().await.unwrap(), 2);
        store.close().await;
    }

    /// A real `database or disk is full` (the file capped with `max_page_count`) is classified
    /// as such, so that the API answers 507 rather than a retryable 503.
    #[tokio::test]
    async fn a_full_database_is_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let target = SqliteTarget::File(dir.path().join("t.sqlite"));
        let (store, _) = SqliteStore::connect(&target, &StoreOptions::default()).await.unwrap();
        let mut conn = store.writer.acquire().await.unwrap();
        sqlx::query("CREATE TABLE filler (b BLOB)").execute(&mut *conn).await.unwrap();
        // The cap cannot go below the current size: this pins the file at its size now.
        sqlx::query("PRAGMA max_page_count = 1").execute(&mut *conn).await.unwrap();
        let full: StoreError =
            sqlx::query("INSERT INTO filler VALUES (zeroblob(1048576))").execute(&mut *conn).await.unwrap_err().into();
        assert!(full.is_storage_full(), "{full}");
        assert!(full.to_string().contains("full"), "{full}");
        assert!(!StoreError::Config("x".into()).is_storage_full());
        drop(conn);
        store.close().await;
    }

    /// Every connection, writer and readers, runs WAL with synchronous = FULL (2).
    #[tokio::test]
    async fn connections_use_wal_and_full_sync() {
        let dir = tempfile::tempdir().unwrap();
        let target = SqliteTarget::File(dir.path().join("t.sqlite"));
        let opts = StoreOptions { min_connections: 2, ..StoreOptions::default() };
        let (store, report) = SqliteStore::connect(&target, &opts).await.unwrap();
        assert_eq!(report.applied_now, vec![1, 2, 3]);
        for pool in [&store.writer, &store.reader] {
            let sync: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(pool).await.unwrap();
            assert_eq!(sync, 2, "synchronous = FULL");
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(pool).await.unwrap();
            assert_eq!(mode, "wal");
        }
        store.close().await;
    }
}
