//! Postgres backend (production; selected by a `postgres://` / `postgresql://` `DATABASE_URL`).
//!
//! Every write transaction first increments the one-row `notellm_seq` counter. The row lock that
//! UPDATE takes is held until COMMIT, so writers allocate sequence numbers one at a time and
//! commit in that order; a transaction becomes visible before it releases its locks, so once a
//! reader can see seq `n`, every seq below `n` is visible too (see the module doc of `store`).
//! Statements are combined with data-modifying CTEs so that a write holds the counter lock for as
//! few round trips as possible.
//!
//! A put reads the active model version after taking the counter (in the statement that queues
//! its notification). Under READ COMMITTED each statement sees what committed before it began,
//! and the re-index switch holds the counter row from its first statement to its COMMIT, so that
//! read sees the switch if the put commits after it, and the switch waits for the put otherwise.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgTransaction};

use super::codec::{self, ChangeRow, EmbeddingRow, LabelRow, NoteRow, ScanRow};
use super::images::{self, ImageRow, StoredImage};
use super::migrations::{self, MigrationReport};
use super::pgvector;
use super::staging::{ActiveRow, ReindexRow};
use super::{
    check_active_model, ActiveModel, Change, NoteLabels, NoteWrite, Promotion, ReindexNote, Result, StagedVector,
    StoreError, StoreOptions, StoredNote, Switch,
};
use notellm_note::{Embedding, ModelVersion, NoteId};

/// A pooled Postgres store.
#[derive(Debug, Clone)]
pub(crate) struct PgStore {
    pool: PgPool,
    /// [`upsert_sql`] and [`promote_sql`] for this store's columns.
    upsert: String,
    promote: String,
    /// Where every committed write announces its last seq ([`changes_channel`]).
    channel: String,
    /// The pgvector column exists: every write keeps it equal to `embedding` (`pgvector.rs`).
    vectors: bool,
}

/// The `NOTIFY` channel of a store in `schema` (`None`: the default search path). Every write
/// transaction that takes seqs (put, delete, the re-index switch) notifies it with the last seq
/// it took; Postgres delivers the notification at commit, in commit order, and never for a
/// rolled-back transaction. The payload is the seq alone (payloads are bounded at 8000 bytes).
pub fn changes_channel(schema: Option<&str>) -> String {
    match schema {
        Some(s) => format!("notellm_changes.{s}"),
        None => "notellm_changes".to_owned(),
    }
}

/// Columns of a full note; `dim` and the timestamps are cast so that [`NoteRow`] fits both
/// backends.
const NOTE_COLUMNS: &str = "note_id, title, content, hashtags, category, content_hash, \
     (SELECT i.image_hash FROM note_images AS i WHERE i.note_id = notes.note_id) AS image_hash, \
     embedding, dim::BIGINT AS dim, model_version, seq, \
     (EXTRACT(EPOCH FROM created_at) * 1000000)::BIGINT AS created_us, \
     (EXTRACT(EPOCH FROM updated_at) * 1000000)::BIGINT AS updated_us";

/// Takes `$1` sequence numbers; returns the last. Must be a write transaction's first statement.
const ALLOCATE_SEQS: &str = "UPDATE notellm_seq SET seq = seq + $1 WHERE id = 1 RETURNING seq";

/// Queues the notification of seq `$2` on channel `$1` and reads the active model version (NULL
/// before the first switch) in the same round trip. A statement of its own after
/// [`ALLOCATE_SEQS`]: its snapshot is taken once the counter row is this transaction's.
const NOTIFY_READING_ACTIVE: &str =
    "SELECT (SELECT model_version FROM notellm_active_model WHERE id = 1) AS active, pg_notify($1, $2)";

/// Inserts or replaces a note, and clears any tombstone left by an earlier delete of its id.
/// With the pgvector column (`vectors`), `vec` is written in the same statement as `dim`
/// (`$11`, pgvector's text form): a partial index over `vec::vector(dim)` must never see a row
/// whose `dim` and `vec` disagree.
fn upsert_sql(vectors: bool) -> String {
    let (col, val, set) = if vectors { (", vec", ", $11::vector", ", vec = EXCLUDED.vec") } else { ("", "", "") };
    format!(
        "WITH untomb AS (DELETE FROM note_tombstones WHERE note_id = $1) \
         INSERT INTO notes (note_id, title, content, hashtags, category, content_hash, embedding, \
                            dim, model_version, seq{col}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10{val}) \
         ON CONFLICT (note_id) DO UPDATE SET title = EXCLUDED.title, content = EXCLUDED.content, \
             hashtags = EXCLUDED.hashtags, category = EXCLUDED.category, \
             content_hash = EXCLUDED.content_hash, embedding = EXCLUDED.embedding, \
             dim = EXCLUDED.dim, model_version = EXCLUDED.model_version, seq = EXCLUDED.seq{set}, \
             updated_at = now()"
    )
}

/// Deletes a note and any staged vector of it and leaves a tombstone; affects 0 rows when the
/// note does not exist.
const DELETE: &str = "WITH gone AS (DELETE FROM notes WHERE note_id = $1 RETURNING note_id), \
          unstaged AS (DELETE FROM note_vectors WHERE note_id = $1), \
          unimaged AS (DELETE FROM note_images WHERE note_id = $1) \
     INSERT INTO note_tombstones (note_id, seq) SELECT note_id, $2 FROM gone \
     ON CONFLICT (note_id) DO UPDATE SET seq = EXCLUDED.seq, deleted_at = now()";

/// A note's text and seq with its current staged vector of version `$2` (re-index reads).
const REINDEX_SELECT: &str = "SELECT n.note_id, n.title, n.content, n.hashtags, n.category, n.seq, \
         (SELECT i.image_hash FROM note_images AS i WHERE i.note_id = n.note_id) AS image_hash, \
         v.embedding AS staged, v.dim::BIGINT AS staged_dim \
     FROM notes AS n LEFT JOIN note_vectors AS v \
         ON v.note_id = n.note_id AND v.model_version = $2 AND v.source_seq = n.seq";

const STAGE: &str = "INSERT INTO note_vectors (note_id, model_version, embedding, dim, source_seq) \
     VALUES ($1, $2, $3, $4, $5) \
     ON CONFLICT (note_id, model_version) DO UPDATE SET embedding = EXCLUDED.embedding, \
         dim = EXCLUDED.dim, source_seq = EXCLUDED.source_seq";

/// The switch's row update: the staged vectors of `$1` into `notes` (with `vec`, in the same
/// statement as `dim`, when the pgvector column exists), and new seqs from `$2 + 1` in the old
/// order. Postgres evaluates the FROM list on the statement's snapshot, so the numbering reads
/// the rows as they were before the update.
fn promote_sql(vectors: bool) -> String {
    let vec = if vectors { ", vec = v.vec" } else { "" };
    format!(
        "UPDATE notes AS n SET embedding = v.embedding, dim = v.dim{vec}, \
             model_version = v.model_version, seq = $2 + r.rn \
         FROM (SELECT note_id, row_number() OVER (ORDER BY seq) AS rn FROM notes) AS r, note_vectors AS v \
         WHERE r.note_id = n.note_id AND v.note_id = n.note_id AND v.model_version = $1"
    )
}

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
            // `public` after it: where the pgvector extension's type and operators live.
            options = options.options([("search_path", format!("{schema},public"))]);
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
        if opts.pgvector {
            migrations::run_pgvector(pool.acquire().await?).await?;
        }
        let vectors: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = 'notes' AND column_name = 'vec')",
        )
        .fetch_one(&pool)
        .await?;
        let channel = changes_channel(opts.schema.as_deref());
        let (upsert, promote) = (upsert_sql(vectors), promote_sql(vectors));
        Ok((PgStore { pool, upsert, promote, channel, vectors }, report))
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub(crate) fn channel(&self) -> &str {
        &self.channel
    }

    pub(crate) fn has_vectors(&self) -> bool {
        self.vectors
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
        let (first, active) = allocate_seqs_reading_active(&mut tx, batch.len(), &self.channel).await?;
        if let Err(e) = check_active_model(batch, active.as_deref()) {
            tx.rollback().await?;
            return Err(e);
        }
        let mut seqs = Vec::with_capacity(batch.len());
        for (w, seq) in batch.iter().zip(first..) {
            let q = sqlx::query(&self.upsert)
                .bind(w.id.as_str())
                .bind(&w.note.title)
                .bind(&w.note.content)
                .bind(codec::encode_hashtags(&w.note.hashtags))
                .bind(w.note.category.as_deref())
                .bind(w.content_hash)
                .bind(codec::encode_embedding(w.embedding))
                .bind(codec::embedding_dim(w.embedding)?)
                .bind(&w.model_version.0)
                .bind(seq);
            let q = if self.vectors { q.bind(pgvector::vector_text(w.embedding)) } else { q };
            q.execute(&mut *tx).await?;
            write_image(&mut tx, w).await?;
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

    pub(crate) async fn labels(&self, ids: &[NoteId]) -> Result<Vec<(NoteId, NoteLabels)>> {
        let sql = codec::select_by_ids("note_id, hashtags, category", ids.len());
        let mut q = sqlx::query_as::<_, LabelRow>(&sql);
        for id in ids {
            q = q.bind(id.as_str());
        }
        q.fetch_all(&self.pool).await?.into_iter().map(LabelRow::decode).collect()
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
        let seq = allocate_seqs(&mut tx, 1, &self.channel).await?;
        let done = sqlx::query(DELETE).bind(id.as_str()).bind(seq).execute(&mut *tx).await?.rows_affected();
        if done == 0 {
            // Unknown note: give the sequence number back so that seqs stay gap-free.
            tx.rollback().await?;
            return Ok(None);
        }
        tx.commit().await?;
        Ok(Some(seq))
    }

    pub(crate) async fn image(&self, id: &NoteId) -> Result<Option<StoredImage>> {
        let row: Option<ImageRow> =
            sqlx::query_as(images::IMAGE_OF).bind(id.as_str()).fetch_optional(&self.pool).await?;
        row.map(ImageRow::decode).transpose()
    }

    pub(crate) async fn image_by_hash(&self, encoder: &str, image_hash: &str) -> Result<Option<StoredImage>> {
        let row: Option<ImageRow> =
            sqlx::query_as(images::IMAGE_BY_HASH).bind(encoder).bind(image_hash).fetch_optional(&self.pool).await?;
        row.map(ImageRow::decode).transpose()
    }

    pub(crate) async fn image_encoders(&self) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(images::IMAGE_ENCODERS).fetch_all(&self.pool).await?)
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

    pub(crate) async fn witness(&self, at: i64) -> Result<Option<(NoteId, i64)>> {
        let mut rows = Vec::with_capacity(codec::WITNESS.len());
        for sql in codec::WITNESS {
            rows.push(sqlx::query_as(sql).bind(at).fetch_optional(&self.pool).await?);
        }
        codec::later_witness(rows)
    }

    pub(crate) async fn current_seq(&self, id: &NoteId) -> Result<Option<i64>> {
        for sql in codec::CURRENT_SEQ {
            let seq: Option<i64> = sqlx::query_scalar(sql).bind(id.as_str()).fetch_optional(&self.pool).await?;
            if seq.is_some() {
                return Ok(seq);
            }
        }
        Ok(None)
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

impl PgStore {
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
            .fetch_all(&self.pool)
            .await?;
        codec::decode_all(rows, ReindexRow::decode)
    }

    pub(crate) async fn reindex_note(&self, id: &NoteId, version: &ModelVersion) -> Result<Option<ReindexNote>> {
        let sql = format!("{REINDEX_SELECT} WHERE n.note_id = $1");
        let row: Option<ReindexRow> =
            sqlx::query_as(&sql).bind(id.as_str()).bind(&version.0).fetch_optional(&self.pool).await?;
        row.map(ReindexRow::decode).transpose()
    }

    pub(crate) async fn stage_vectors(&self, version: &ModelVersion, vectors: &[StagedVector<'_>]) -> Result<()> {
        if vectors.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for v in vectors {
            sqlx::query(STAGE)
                .bind(v.id.as_str())
                .bind(&version.0)
                .bind(codec::encode_embedding(v.embedding))
                .bind(codec::embedding_dim(v.embedding)?)
                .bind(v.source_seq)
                .execute(&mut *tx)
                .await?;
            if self.vectors {
                pgvector::write_staged_vector(&mut tx, v.id, version, v.embedding).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn unstage(&self, id: &NoteId) -> Result<()> {
        sqlx::query("DELETE FROM note_vectors WHERE note_id = $1").bind(id.as_str()).execute(&self.pool).await?;
        Ok(())
    }

    /// A transaction holding the change counter's row: no write commits until it ends.
    pub(crate) async fn hold_counter(&self) -> Result<PgTransaction<'static>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT seq FROM notellm_seq WHERE id = 1 FOR UPDATE").execute(&mut *tx).await?;
        Ok(tx)
    }

    pub(crate) async fn promote(&self, s: &Switch<'_>) -> Result<Promotion> {
        let tx = self.hold_counter().await?;
        self.promote_in(tx, s).await
    }

    /// The switch, in `tx`, which may hold the counter's row already (`hold_counter`).
    pub(crate) async fn promote_in(&self, mut tx: PgTransaction<'static>, s: &Switch<'_>) -> Result<Promotion> {
        // The counter row first, as every writer: no write can commit while the switch runs, and
        // a put that takes the row after it reads the version it records.
        let before: i64 =
            sqlx::query_scalar("SELECT seq FROM notellm_seq WHERE id = 1 FOR UPDATE").fetch_one(&mut *tx).await?;
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
        notify(&mut tx, &self.channel, last).await?;
        let updated =
            sqlx::query(&self.promote).bind(&s.model_version.0).bind(before).execute(&mut *tx).await?.rows_affected();
        let missing = u64::try_from(total).unwrap_or(0).saturating_sub(updated);
        if missing > 0 {
            tx.rollback().await?;
            return Err(StoreError::Incomplete { version: s.model_version.0.clone(), missing });
        }
        sqlx::query("DELETE FROM note_vectors").execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO notellm_active_model (id, model_version, model_dir, previous_version, switch_token) \
             VALUES (1, $1, $2, $3, $4) \
             ON CONFLICT (id) DO UPDATE SET model_version = EXCLUDED.model_version, \
                 model_dir = EXCLUDED.model_dir, previous_version = EXCLUDED.previous_version, \
                 switch_token = EXCLUDED.switch_token, switched_at = now()",
        )
        .bind(&s.model_version.0)
        .bind(s.model_dir)
        .bind(&s.previous_version.0)
        .bind(s.switch_token)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Promotion { notes: u64::try_from(total).unwrap_or(0), max_seq: last })
    }

    pub(crate) async fn active_model(&self) -> Result<Option<ActiveModel>> {
        let row: Option<ActiveRow> = sqlx::query_as(
            "SELECT model_version, model_dir, previous_version, switch_token, \
                 (EXTRACT(EPOCH FROM switched_at) * 1000000)::BIGINT AS switched_us \
             FROM notellm_active_model WHERE id = 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        row.map(ActiveRow::decode).transpose()
    }
}

/// Replaces the image row of the note `w` writes (none when it has no image).
async fn write_image(tx: &mut PgTransaction<'_>, w: &NoteWrite<'_>) -> Result<()> {
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

/// Allocates `n` consecutive sequence numbers inside `tx` and returns the first. The counter
/// row stays locked until `tx` ends, which is what makes seq order equal commit order; the
/// last seq is announced on `channel` when `tx` commits.
async fn allocate_seqs(tx: &mut PgTransaction<'_>, n: usize, channel: &str) -> Result<i64> {
    let n = i64::try_from(n).map_err(|_| StoreError::Config("batch too large".into()))?;
    let last: i64 = sqlx::query_scalar(ALLOCATE_SEQS).bind(n).fetch_one(&mut **tx).await?;
    notify(tx, channel, last).await?;
    Ok(last - n + 1)
}

/// [`allocate_seqs`] for a put: also reads the store's active model version (`None` before the
/// first switch) in the round trip that queues the notification, after the counter row is
/// `tx`'s (see the module doc).
async fn allocate_seqs_reading_active(
    tx: &mut PgTransaction<'_>,
    n: usize,
    channel: &str,
) -> Result<(i64, Option<String>)> {
    let n = i64::try_from(n).map_err(|_| StoreError::Config("batch too large".into()))?;
    let last: i64 = sqlx::query_scalar(ALLOCATE_SEQS).bind(n).fetch_one(&mut **tx).await?;
    let active: Option<String> =
        sqlx::query_scalar(NOTIFY_READING_ACTIVE).bind(channel).bind(last.to_string()).fetch_one(&mut **tx).await?;
    Ok((last - n + 1, active))
}

/// Queues the notification of `seq` on `channel`; Postgres sends it if and when `tx` commits.
async fn notify(tx: &mut PgTransaction<'_>, channel: &str, seq: i64) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)").bind(channel).bind(seq.to_string()).execute(&mut **tx).await?;
    Ok(())
}
