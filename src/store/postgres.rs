//! Postgres backend (production; selected by a `postgres://` / `postgresql://` `DATABASE_URL`).
//!
//! Every write transaction first increments the one-row `notellm_seq` counter. The row lock that
//! UPDATE takes is held until COMMIT, so writers allocate sequence numbers one at a time and
//! commit in that order; a transaction becomes visible before it releases its locks, so once a
//! reader can see seq `n`, every seq below `n` is visible too (see the module doc of `store`).
//! Statements are combined with data-modifying CTEs so that a write holds the counter lock for as
//! few round trips as possible.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgTransaction};

use super::codec::{self, ChangeRow, EmbeddingRow, NoteRow, ScanRow};
use super::migrations::{self, MigrationReport};
use super::{Change, NoteWrite, Result, StoreError, StoreOptions, StoredNote};
use crate::note::{Embedding, ModelVersion, NoteId};

/// A pooled Postgres store.
#[derive(Debug, Clone)]
pub(crate) struct PgStore {
    pool: PgPool,
}

/// Columns of a full note; `dim` and the timestamps are cast so that [`NoteRow`] fits both
/// backends.
const NOTE_COLUMNS: &str = "note_id, title, content, hashtags, category, content_hash, \
     embedding, dim::BIGINT AS dim, model_version, seq, \
     (EXTRACT(EPOCH FROM created_at) * 1000000)::BIGINT AS created_us, \
     (EXTRACT(EPOCH FROM updated_at) * 1000000)::BIGINT AS updated_us";

/// Takes `$1` sequence numbers; returns the last. Must be a write transaction's first statement.
const ALLOCATE_SEQS: &str = "UPDATE notellm_seq SET seq = seq + $1 WHERE id = 1 RETURNING seq";

/// Inserts or replaces a note, and clears any tombstone left by an earlier delete of its id.
const UPSERT: &str = "WITH untomb AS (DELETE FROM note_tombstones WHERE note_id = $1) \
     INSERT INTO notes (note_id, title, content, hashtags, category, content_hash, embedding, \
                        dim, model_version, seq) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
     ON CONFLICT (note_id) DO UPDATE SET title = EXCLUDED.title, content = EXCLUDED.content, \
         hashtags = EXCLUDED.hashtags, category = EXCLUDED.category, \
         content_hash = EXCLUDED.content_hash, embedding = EXCLUDED.embedding, \
         dim = EXCLUDED.dim, model_version = EXCLUDED.model_version, seq = EXCLUDED.seq, \
         updated_at = now()";

/// Deletes a note and leaves a tombstone; affects 0 rows when the note does not exist.
const DELETE: &str = "WITH gone AS (DELETE FROM notes WHERE note_id = $1 RETURNING note_id) \
     INSERT INTO note_tombstones (note_id, seq) SELECT note_id, $2 FROM gone \
     ON CONFLICT (note_id) DO UPDATE SET seq = EXCLUDED.seq, deleted_at = now()";

const CHANGES: &str = "SELECT note_id, seq, embedding, dim, model_version FROM ( \
         SELECT note_id, seq, embedding, dim::BIGINT AS dim, model_version \
           FROM notes WHERE seq > $1 \
         UNION ALL \
         SELECT note_id, seq, NULL::BYTEA, NULL::BIGINT, NULL::TEXT \
           FROM note_tombstones WHERE seq > $1 \
     ) AS c ORDER BY seq LIMIT $2";

impl PgStore {
    pub(crate) async fn connect(url: &str, opts: &StoreOptions) -> Result<(PgStore, MigrationReport)> {
        // sqlx's parse errors do not echo the URL, so no password reaches the logs.
        let mut options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Config(format!("DATABASE_URL is not a usable Postgres URL: {e}")))?;
        if options.get_application_name().is_none() {
            options = options.application_name("notellm");
        }
        if let Some(schema) = &opts.schema {
            options = options.options([("search_path", schema)]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(opts.max_connections)
            .min_connections(opts.min_connections)
            .acquire_timeout(opts.acquire_timeout)
            .connect_with(options)
            .await?;
        if let Some(schema) = &opts.schema {
            // The name was validated as a plain identifier by StoreOptions::validate.
            let created = sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}")).execute(&pool).await;
            // IF NOT EXISTS is not race-free: a concurrent creator can still win with a
            // unique violation, which means the schema exists, as wanted.
            match created {
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => {}
                other => {
                    other?;
                }
            }
        }
        let report = migrations::run_postgres(pool.acquire().await?).await?;
        Ok((PgStore { pool }, report))
    }

    pub(crate) async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }

    pub(crate) async fn content_hash(&self, id: &NoteId) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT content_hash FROM notes WHERE note_id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?)
    }

    pub(crate) async fn put_notes(&self, batch: &[NoteWrite<'_>]) -> Result<Vec<i64>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        let first = allocate_seqs(&mut tx, batch.len()).await?;
        let mut seqs = Vec::with_capacity(batch.len());
        for (w, seq) in batch.iter().zip(first..) {
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
                .execute(&mut *tx)
                .await?;
            seqs.push(seq);
        }
        tx.commit().await?;
        Ok(seqs)
    }

    pub(crate) async fn get_note(&self, id: &NoteId) -> Result<Option<StoredNote>> {
        let sql = format!("SELECT {NOTE_COLUMNS} FROM notes WHERE note_id = $1");
        let row: Option<NoteRow> = sqlx::query_as(&sql).bind(id.as_str()).fetch_optional(&self.pool).await?;
        row.map(NoteRow::decode).transpose()
    }

    pub(crate) async fn get_embedding(&self, id: &NoteId) -> Result<Option<(Embedding, ModelVersion)>> {
        let row: Option<EmbeddingRow> =
            sqlx::query_as("SELECT embedding, dim::BIGINT AS dim, model_version FROM notes WHERE note_id = $1")
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await?;
        row.map(|r| r.decode(id)).transpose()
    }

    pub(crate) async fn delete_note(&self, id: &NoteId) -> Result<Option<i64>> {
        let mut tx = self.pool.begin().await?;
        let seq = allocate_seqs(&mut tx, 1).await?;
        let done = sqlx::query(DELETE).bind(id.as_str()).bind(seq).execute(&mut *tx).await?.rows_affected();
        if done == 0 {
            // Unknown note: give the sequence number back so that seqs stay gap-free.
            tx.rollback().await?;
            return Ok(None);
        }
        tx.commit().await?;
        Ok(Some(seq))
    }

    pub(crate) async fn changes_since(&self, since: i64, limit: usize) -> Result<Vec<Change>> {
        let rows: Vec<ChangeRow> = sqlx::query_as(CHANGES)
            .bind(since)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        // Checked after reading: a purge that committed before the read is seen here.
        let purged_through: i64 =
            sqlx::query_scalar("SELECT purged_through FROM notellm_seq WHERE id = 1").fetch_one(&self.pool).await?;
        if since < purged_through {
            return Err(StoreError::ChangesPurged { since, purged_through });
        }
        codec::decode_all(rows, ChangeRow::decode)
    }

    pub(crate) async fn max_seq(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT seq FROM notellm_seq WHERE id = 1").fetch_one(&self.pool).await?)
    }

    pub(crate) async fn count(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM notes").fetch_one(&self.pool).await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    pub(crate) async fn scan_embeddings(
        &self,
        after: Option<&NoteId>,
        limit: usize,
    ) -> Result<Vec<(NoteId, Embedding, ModelVersion)>> {
        let rows: Vec<ScanRow> = sqlx::query_as(
            "SELECT note_id, embedding, dim::BIGINT AS dim, model_version FROM notes \
             WHERE note_id > $1 ORDER BY note_id LIMIT $2",
        )
        .bind(after.map_or("", NoteId::as_str))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        codec::decode_all(rows, ScanRow::decode)
    }

    pub(crate) async fn purge_tombstones(&self, older_than: Duration) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        // Lock order as in every writer: the counter row first, then note/tombstone rows.
        sqlx::query("SELECT seq FROM notellm_seq WHERE id = 1 FOR UPDATE").execute(&mut *tx).await?;
        let (purged, max_seq): (i64, Option<i64>) = sqlx::query_as(
            "WITH p AS (DELETE FROM note_tombstones \
                        WHERE deleted_at < now() - make_interval(secs => $1) RETURNING seq) \
             SELECT count(*), max(seq) FROM p",
        )
        .bind(older_than.as_secs_f64())
        .fetch_one(&mut *tx)
        .await?;
        if let Some(max_seq) = max_seq {
            sqlx::query("UPDATE notellm_seq SET purged_through = GREATEST(purged_through, $1) WHERE id = 1")
                .bind(max_seq)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(u64::try_from(purged).unwrap_or(0))
    }
}

/// Allocates `n` consecutive sequence numbers inside `tx` and returns the first. The counter
/// row stays locked until `tx` ends, which is what makes seq order equal commit order.
async fn allocate_seqs(tx: &mut PgTransaction<'_>, n: usize) -> Result<i64> {
    let n = i64::try_from(n).map_err(|_| StoreError::Config("batch too large".into()))?;
    let last: i64 = sqlx::query_scalar(ALLOCATE_SEQS).bind(n).fetch_one(&mut **tx).await?;
    Ok(last - n + 1)
}
