//! pgvector: the notes' vectors searched inside Postgres, for a corpus past one machine's memory
//! (`--index pgvector`).
//!
//! `migrations/pgvector/vectors.sql` (applied at connect when
//! [`StoreOptions::pgvector`](super::StoreOptions) is set) adds a `vec vector` column to `notes`
//! and `note_vectors`. From then on every writer keeps it equal to `embedding`, in the same
//! statement as `dim` (a put, the re-index switch) or transaction (a staged re-index vector),
//! whichever index backend serves: the column exists or it does not, never stale. Rows written
//! before it existed are filled by [`Store::backfill_vectors`].
//!
//! Search: one partial HNSW index per dimension, `USING hnsw ((vec::vector(d)) vector_cosine_ops)
//! WHERE dim = d` ([`Store::ensure_vector_index`]), and [`Store::nearest`] as
//! `ORDER BY vec::vector(d) <=> $1 LIMIT k` with `hnsw.ef_search` set for the query's
//! transaction and iterative scans on (so the model-version filter cannot starve the answer).

use sqlx::postgres::PgTransaction;

use super::{Backend, Result, Store, StoreError};
use notellm_note::{Embedding, ModelVersion, NoteId};

pub(crate) const MIGRATION: &str = include_str!("../../../migrations/pgvector/vectors.sql");

/// Most `ef_search` pgvector accepts.
pub const MAX_EF_SEARCH: usize = 1000;

/// Rows filled per statement by [`Store::backfill_vectors`].
const BACKFILL_PAGE: i64 = 500;

/// An embedding in pgvector's text form, `[x1,x2,...]` (each value printed so that it parses
/// back to the same f32).
pub(crate) fn vector_text(e: &Embedding) -> String {
    let mut s = String::with_capacity(e.dim() * 12 + 2);
    s.push('[');
    for (i, x) in e.as_slice().iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&x.to_string());
    }
    s.push(']');
    s
}

/// Sets `note_vectors.vec` of a staged vector inside its transaction.
pub(crate) async fn write_staged_vector(
    tx: &mut PgTransaction<'_>,
    id: &NoteId,
    version: &ModelVersion,
    e: &Embedding,
) -> Result<()> {
    sqlx::query("UPDATE note_vectors SET vec = $3::vector WHERE note_id = $1 AND model_version = $2")
        .bind(id.as_str())
        .bind(&version.0)
        .bind(vector_text(e))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn pg(store: &Store) -> Result<&super::postgres::PgStore> {
    match &store.backend {
        Backend::Postgres(pg) if pg.has_vectors() => Ok(pg),
        Backend::Postgres(_) => {
            Err(StoreError::Config("the pgvector column is missing: connect with the pgvector backend selected".into()))
        }
        Backend::Sqlite(_) => {
            Err(StoreError::Config("the pgvector index needs the Postgres store (DATABASE_URL=postgres://...)".into()))
        }
    }
}

impl Store {
    /// Creates the HNSW index for vectors of `dim` if it does not exist (builds it over the rows
    /// there: minutes for millions), with HNSW's `m` and `ef_construction`.
    pub async fn ensure_vector_index(&self, dim: usize, m: usize, ef_construction: usize) -> Result<()> {
        self.health.fail_fast()?;
        let pg = pg(self)?;
        // Integers only are formatted into the statement (DDL takes no bind parameters).
        let sql = format!(
            "CREATE INDEX IF NOT EXISTS notes_vec_hnsw_{dim} ON notes \
             USING hnsw ((vec::vector({dim})) vector_cosine_ops) WITH (m = {m}, ef_construction = {ef_construction}) \
             WHERE dim = {dim}"
        );
        sqlx::query(&sql).execute(pg.pool()).await?;
        Ok(())
    }

    /// Fills `vec` of rows written before the column existed; returns how many were filled.
    pub async fn backfill_vectors(&self) -> Result<u64> {
        self.health.fail_fast()?;
        let pg = pg(self)?;
        let mut filled = 0;
        loop {
            let rows: Vec<super::codec::ScanRow> = sqlx::query_as(
                "SELECT note_id, embedding, dim::BIGINT AS dim, model_version FROM notes \
                 WHERE vec IS NULL ORDER BY note_id LIMIT $1",
            )
            .bind(BACKFILL_PAGE)
            .fetch_all(pg.pool())
            .await?;
            if rows.is_empty() {
                return Ok(filled);
            }
            let rows = super::codec::decode_all(rows, super::codec::ScanRow::decode)?;
            let mut tx = pg.pool().begin().await?;
            for (id, e, _) in &rows {
                // A write that raced this one set vec itself: leave it.
                filled += sqlx::query("UPDATE notes SET vec = $2::vector WHERE note_id = $1 AND vec IS NULL")
                    .bind(id.as_str())
                    .bind(vector_text(e))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            tx.commit().await?;
        }
    }

    /// The `k` stored notes of `version` nearest to `query` by cosine similarity, best first,
    /// leaving out `exclude`: `(id, similarity)`. `ef_search` (at most [`MAX_EF_SEARCH`]) is
    /// the HNSW beam for this query.
    pub async fn nearest(
        &self,
        query: &Embedding,
        version: &ModelVersion,
        k: usize,
        exclude: Option<&NoteId>,
        ef_search: usize,
    ) -> Result<Vec<(NoteId, f32)>> {
        self.health.fail_fast()?;
        let pg = pg(self)?;
        if k == 0 {
            return Ok(Vec::new());
        }
        let dim = query.dim();
        let ef = ef_search.clamp(k.min(MAX_EF_SEARCH), MAX_EF_SEARCH);
        let mut tx = pg.pool().begin().await?;
        sqlx::query(&format!("SET LOCAL hnsw.ef_search = {ef}")).execute(&mut *tx).await?;
        sqlx::query("SET LOCAL hnsw.iterative_scan = relaxed_order").execute(&mut *tx).await?;
        let sql = format!(
            "SELECT note_id, (1 - (vec::vector({dim}) <=> $1::vector({dim})))::REAL AS score FROM notes \
             WHERE dim = {dim} AND model_version = $2 AND note_id <> $3 \
             ORDER BY vec::vector({dim}) <=> $1::vector({dim}) LIMIT $4"
        );
        let rows: Vec<(String, f32)> = sqlx::query_as(&sql)
            .bind(vector_text(query))
            .bind(&version.0)
            .bind(exclude.map_or("", NoteId::as_str))
            .bind(i64::try_from(k).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        // relaxed_order may return neighbours slightly out of order: sort them.
        let mut hits = rows
            .into_iter()
            .map(|(id, score)| Ok((super::codec::parse_id(&id)?, score)))
            .collect::<Result<Vec<_>>>()?;
        hits.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Ok(hits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_text_round_trips_every_value() {
        let e = Embedding::from_unit(vec![0.1, -0.333_333_34, 1e-7, 0.9]).unwrap();
        let text = vector_text(&e);
        assert!(text.starts_with('[') && text.ends_with(']'));
        let back: Vec<f32> = text[1..text.len() - 1].split(',').map(|x| x.parse().unwrap()).collect();
        assert_eq!(back, e.as_slice());
    }
}
