//! Vectors keyed by (note, model version), for re-indexing with a new checkpoint.
//!
//! The `notes` table holds each note's vector of the serving model version. A re-index embeds
//! every note again with the new model and stages the result in `note_vectors`, keyed by
//! `(note_id, model_version)` and tagged with `source_seq`, the `notes.seq` of the content it
//! embedded: a staged vector is *current* while its note has not been written since. Nothing
//! reads staged vectors on the serving path, so the old model keeps serving untouched.
//!
//! [`Store::promote`] is the switch, ONE transaction: it checks that every note has a current
//! vector of the new version, copies those vectors into `notes` (so the rows carry the new model
//! version), gives every note a new seq (in the old order, above every seq before: a follower or
//! a snapshot of the old version sees every row change and drops the old vectors), empties
//! `note_vectors` (a staged vector's `source_seq` would be meaningless after the renumbering) and
//! records the new version, its checkpoint directory and the version it replaced in
//! `notellm_active_model`. Either all of that commits or none of it. From then on a put of any
//! other version is refused ([`StoreError::StaleModelVersion`]).
//!
//! The switch takes the change counter first, as every writer does. A re-index holds it from
//! before its last catch-up ([`Store::hold_for_switch`], on Postgres), so that no process's
//! write lands between the two.

use std::path::PathBuf;
use std::time::SystemTime;

use super::codec::{decode_embedding, decode_hashtags, parse_id, time_from_micros};
use super::{Backend, Result, Store, StoreError};
use notellm_note::{Embedding, ModelVersion, Note, NoteId};

/// A note as a re-index reads it: its text, the seq of that text, and its staged vector of the
/// target version when one is current (staged for exactly this seq).
#[derive(Debug, Clone, PartialEq)]
pub struct ReindexNote {
    pub id: NoteId,
    pub note: Note,
    pub seq: i64,
    /// The SHA-256 (hex) of the note's image, when it has one (its features: [`Store::image`]).
    pub image_hash: Option<String>,
    pub staged: Option<Embedding>,
}

/// One re-embedded vector to stage.
#[derive(Debug, Clone, Copy)]
pub struct StagedVector<'a> {
    pub id: &'a NoteId,
    pub embedding: &'a Embedding,
    /// The `seq` of the note content that was embedded.
    pub source_seq: i64,
}

/// The model version the stored vectors belong to since the last switch.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveModel {
    pub model_version: ModelVersion,
    /// The checkpoint directory the switch loaded (a path on the server that ran it).
    pub model_dir: PathBuf,
    /// The version this one replaced.
    pub previous_version: ModelVersion,
    /// Unique per switch: tells a committed switch from an earlier one with the same version.
    pub switch_token: String,
    pub switched_at: SystemTime,
}

/// What a switch wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Promotion {
    /// Notes now carrying the new version.
    pub notes: u64,
    /// The store's change sequence after the switch (every note got a new seq).
    pub max_seq: i64,
}

/// The store's change counter, held for a re-index switch ([`Store::hold_for_switch`]): on
/// Postgres no write of any process commits until it is promoted ([`Store::promote_held`]) or
/// dropped (which rolls back and changes nothing).
pub struct SwitchHold {
    /// Postgres: the transaction that holds the counter's row; SQLite: none.
    tx: Option<sqlx::postgres::PgTransaction<'static>>,
}

impl std::fmt::Debug for SwitchHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwitchHold").field("holds_counter", &self.tx.is_some()).finish()
    }
}

/// The switch's record, as [`Store::promote`] writes it.
#[derive(Debug, Clone, Copy)]
pub struct Switch<'a> {
    pub model_version: &'a ModelVersion,
    pub model_dir: &'a str,
    pub previous_version: &'a ModelVersion,
    pub switch_token: &'a str,
}

impl Store {
    /// Up to `limit` notes with id greater than `after` whose latest write is at most
    /// `max_seq`, in id order, each with its current staged vector of `version` if there is one.
    /// The seq bound keeps a scan finite under writes: what is written after the scan began is
    /// the change log's to deliver.
    pub async fn reindex_scan(
        &self,
        after: Option<&NoteId>,
        max_seq: i64,
        limit: usize,
        version: &ModelVersion,
    ) -> Result<Vec<ReindexNote>> {
        dispatch!(self, b => b.reindex_scan(after, max_seq, limit, version).await)
    }

    /// One note as [`Store::reindex_scan`] reads it, or `None` when it does not exist.
    pub async fn reindex_note(&self, id: &NoteId, version: &ModelVersion) -> Result<Option<ReindexNote>> {
        dispatch!(self, b => b.reindex_note(id, version).await)
    }

    /// Stores vectors of `version` (replacing staged ones of the same note and version), in one
    /// transaction. Not a change of the notes: no seq is taken.
    pub async fn stage_vectors(&self, version: &ModelVersion, vectors: &[StagedVector<'_>]) -> Result<()> {
        dispatch!(self, b => b.stage_vectors(version, vectors).await)
    }

    /// Drops every staged vector of a note (its delete was seen after it was staged).
    pub async fn unstage(&self, id: &NoteId) -> Result<()> {
        dispatch!(self, b => b.unstage(id).await)
    }

    /// The switch (see the module doc). Fails with [`StoreError::Incomplete`], changing nothing,
    /// when some note has no current staged vector of the new version.
    pub async fn promote(&self, switch: &Switch<'_>) -> Result<Promotion> {
        dispatch!(self, b => b.promote(switch).await)
    }

    /// Holds every process's writes for a re-index switch: the switch takes this before its
    /// last catch-up, so that no write can land between that and [`Store::promote_held`]. On
    /// Postgres a transaction of its own takes the change counter, which every write needs
    /// first. On SQLite it holds nothing (staging the last vectors needs the one writer
    /// connection): a write of another process in between makes the switch fail with
    /// [`StoreError::Incomplete`], changing nothing, and it can be tried again.
    pub async fn hold_for_switch(&self) -> Result<SwitchHold> {
        self.health.fail_fast()?;
        Ok(SwitchHold {
            tx: match &self.backend {
                Backend::Postgres(b) => Some(b.hold_counter().await?),
                Backend::Sqlite(_) => None,
            },
        })
    }

    /// [`Store::promote`] under `hold` (its transaction, on Postgres), which it ends.
    pub async fn promote_held(&self, hold: SwitchHold, switch: &Switch<'_>) -> Result<Promotion> {
        match (&self.backend, hold.tx) {
            (Backend::Postgres(b), Some(tx)) => {
                self.health.fail_fast()?;
                b.promote_in(tx, switch).await
            }
            _ => self.promote(switch).await,
        }
    }

    /// The last switch's record, or `None` before the first one.
    pub async fn active_model(&self) -> Result<Option<ActiveModel>> {
        dispatch!(self, b => b.active_model().await)
    }
}

/// A row of the re-index reads: the note's text and seq, and its current staged vector.
#[derive(sqlx::FromRow)]
pub(crate) struct ReindexRow {
    note_id: String,
    title: String,
    content: String,
    hashtags: String,
    category: Option<String>,
    seq: i64,
    image_hash: Option<String>,
    staged: Option<Vec<u8>>,
    staged_dim: Option<i64>,
}

impl ReindexRow {
    pub(crate) fn decode(self) -> Result<ReindexNote> {
        let id = &self.note_id;
        let staged = match (self.staged, self.staged_dim) {
            (Some(bytes), Some(dim)) => Some(decode_embedding(id, &bytes, dim)?),
            (None, None) => None,
            _ => return Err(StoreError::corrupt(id, "partially NULL staged vector")),
        };
        Ok(ReindexNote {
            id: parse_id(id)?,
            note: Note {
                hashtags: decode_hashtags(id, &self.hashtags)?,
                title: self.title,
                content: self.content,
                category: self.category,
            },
            seq: self.seq,
            image_hash: self.image_hash,
            staged,
        })
    }
}

/// The `notellm_active_model` row.
#[derive(sqlx::FromRow)]
pub(crate) struct ActiveRow {
    model_version: String,
    model_dir: String,
    previous_version: String,
    switch_token: String,
    switched_us: i64,
}

impl ActiveRow {
    pub(crate) fn decode(self) -> Result<ActiveModel> {
        Ok(ActiveModel {
            switched_at: time_from_micros("notellm_active_model", self.switched_us)?,
            model_version: ModelVersion(self.model_version),
            model_dir: PathBuf::from(self.model_dir),
            previous_version: ModelVersion(self.previous_version),
            switch_token: self.switch_token,
        })
    }
}
