//! Start-up: bring the index up to date with the store. Load the snapshot, check that the store
//! is the one it was taken from, and replay the changes committed after its seq; when the
//! snapshot is missing, corrupt, of another shape, contradicted by the store, or the changes it
//! needs were purged, rebuild the index from a full scan of the store. Vectors of another model
//! version never enter the index (they are counted and reported: `notellm reindex`).
//!
//! A snapshot the store contradicts: its seq is ahead of the store's (the store was restored
//! from a backup taken before the snapshot, or the manifest was edited), or the write its seq
//! names is not in the store as it was (a backup restored and then written to again). Replaying
//! from such a seq would skip changes for ever and keep serving notes the store no longer has.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{App, AppError};
use notellm_index::{IndexConfig, IndexError, NoteIndex, StorePosition, Witness};
use notellm_note::{Embedding, ModelVersion, NoteId};
use notellm_store::{Change, StoreError};

/// Changes or notes read from the store at a time.
pub(crate) const PAGE: usize = 2_000;

impl App {
    /// Restores the index and marks the service ready.
    pub async fn restore(&self) -> Result<(), AppError> {
        let started = Instant::now();
        // The switch the serving model belongs to (or that a deliberate other --model ignores):
        // a replica follows only switches recorded after it. One that replaced the serving
        // model is not known, whatever the order: it was recorded after the model was chosen
        // (`resolve_model_dir` would have loaded its checkpoint), or that checkpoint could not
        // be loaded; either way the store refuses this model's writes, so it is followed.
        let switch_token = if self.follow.is_enabled() {
            let mine = self.model_version();
            self.store
                .active_model()
                .await
                .map_err(|e| self.store_err("changes", e))?
                .filter(|a| a.model_version == mine || a.previous_version != mine)
                .map(|a| a.switch_token)
        } else {
            None
        };
        let serving = self.serving();
        let Some(current) = serving.hnsw() else { return self.open_pgvector(&serving).await };
        let cfg = current.config().clone();
        let dir = serving.snapshot_dir.clone();
        let loaded = tokio::task::spawn_blocking(move || NoteIndex::load_snapshot(&dir, cfg))
            .await
            .map_err(|e| AppError::Internal(format!("snapshot load task: {e}")))?;
        let ((index, seq), changed) = match loaded {
            Ok(Some((index, position))) => match self.contradiction(&position).await? {
                Some(reason) => {
                    tracing::warn!(seq = position.seq, %reason, "the store contradicts the index snapshot; rebuilding from the store");
                    self.metrics.snapshots_rejected.inc();
                    (self.rebuild_from_store().await?, true)
                }
                None => self.replay_onto(index, position.seq).await?,
            },
            Ok(None) => {
                tracing::info!(dir = %serving.snapshot_dir.display(), "no index snapshot; building the index from the store");
                (self.rebuild_from_store().await?, true)
            }
            Err(e) => {
                tracing::warn!(error = %e, "index snapshot unusable; rebuilding from the store");
                (self.rebuild_from_store().await?, true)
            }
        };
        let notes = index.len();
        let held = self.hold_writes().await;
        self.swap_serving(serving.with_index(index), &held);
        held.matches_snapshot(changed);
        self.follow.start_at(seq, switch_token);
        drop(held);
        self.refresh_snapshot_age();
        self.update_index_gauges();
        self.ready.store(true, Ordering::SeqCst);
        tracing::info!(notes, secs = started.elapsed().as_secs_f64(), "index restored; ready");
        Ok(())
    }

    /// The pgvector backend's start: the HNSW index of the serving dimension created in the
    /// store if missing (built over the rows there), the vectors of rows written before the
    /// column existed filled in; then ready. Nothing is loaded into memory.
    async fn open_pgvector(&self, serving: &super::Serving) -> Result<(), AppError> {
        let started = Instant::now();
        let super::Vectors::Pgvector { dim, .. } = serving.vectors else {
            return Err(AppError::Internal("open_pgvector on an in-process index".into()));
        };
        let filled = self.store.backfill_vectors().await.map_err(|e| self.store_err("migrate", e))?;
        if filled > 0 {
            tracing::info!(filled, "stored notes without a pgvector column value filled in");
        }
        let cfg = &self.template().index;
        self.store
            .ensure_vector_index(dim, cfg.m, cfg.ef_construction)
            .await
            .map_err(|e| self.store_err("migrate", e))?;
        let notes = self.store.count().await.map_err(|e| self.store_err("scan", e))?;
        self.metrics.notes_indexed.set(i64::try_from(notes).unwrap_or(i64::MAX));
        self.ready.store(true, Ordering::SeqCst);
        tracing::info!(notes, dim, secs = started.elapsed().as_secs_f64(), "pgvector index ready; ready");
        Ok(())
    }

    /// `Some(why)` when the store is not the one the snapshot at `position` was taken from
    /// (see the module doc); `None` when it is consistent with it.
    async fn contradiction(&self, position: &StorePosition) -> Result<Option<String>, AppError> {
        let max = self.store.max_seq().await.map_err(|e| self.store_err("changes", e))?;
        if position.seq > max {
            return Ok(Some(format!(
                "the snapshot holds changes up to seq {}, the store only up to {max}",
                position.seq
            )));
        }
        let Some(w) = &position.witness else { return Ok(None) };
        let now = self.store.current_seq(&w.note_id).await.map_err(|e| self.store_err("get", e))?;
        // The write the snapshot saw is still the note's latest, or a later write (after the
        // snapshot's seq) superseded it; anything else is another history.
        Ok(match now {
            Some(seq) if seq == w.seq || seq > position.seq => None,
            Some(seq) => Some(format!(
                "note {} was written at seq {} when the snapshot was taken, the store has it at seq {seq}",
                w.note_id, w.seq
            )),
            None => Some(format!("note {} (seq {}) is neither stored nor deleted in the store", w.note_id, w.seq)),
        })
    }

    /// The store position the index holds every change of (called with the write gate shut):
    /// the store's seq (a replica's: the seq it has applied; other replicas' later writes are
    /// not in its index yet) and its witness.
    pub(super) async fn store_position(&self) -> Result<StorePosition, AppError> {
        let seq = if self.follow.is_enabled() {
            self.follow.applied()
        } else {
            self.store.max_seq().await.map_err(|e| self.store_err("changes", e))?
        };
        let witness = self.store.witness(seq).await.map_err(|e| self.store_err("changes", e))?;
        Ok(StorePosition { seq, witness: witness.map(|(note_id, seq)| Witness { note_id, seq }) })
    }

    /// The loaded snapshot brought up to date: the changes after `seq` replayed, or a rebuild
    /// when they were purged. Returns the index, the seq it holds every change up to, and
    /// whether it differs from the snapshot.
    async fn replay_onto(&self, index: NoteIndex, seq: i64) -> Result<((NoteIndex, i64), bool), AppError> {
        tracing::info!(seq, notes = index.len(), "index snapshot loaded; replaying newer changes");
        match self.replay(&index, seq).await? {
            Some((n, last)) => Ok(((index, last), n > 0)),
            None => {
                tracing::warn!("changes after the snapshot were purged; rebuilding from the store");
                Ok((self.rebuild_from_store().await?, true))
            }
        }
    }

    /// Applies every change after `seq` to `index`; returns how many were applied and the last
    /// seq, or `None` when some of them were purged (then only a rebuild is right).
    async fn replay(&self, index: &NoteIndex, mut seq: i64) -> Result<Option<(usize, i64)>, AppError> {
        let mine = self.model_version();
        let mut applied = 0;
        loop {
            let changes = match self.store.changes_since(seq, PAGE).await {
                Ok(changes) => changes,
                Err(StoreError::ChangesPurged { .. }) => return Ok(None),
                Err(e) => return Err(self.store_err("changes", e)),
            };
            let Some(last) = changes.last() else { break };
            seq = last.seq();
            applied += apply_changes(index, &mine, changes)?;
            tracing::info!(applied, seq, "replaying changes");
        }
        Ok(Some((applied, seq)))
    }

    /// A fresh index holding every stored vector of this model version, and the seq it holds
    /// every change up to.
    async fn rebuild_from_store(&self) -> Result<(NoteIndex, i64), AppError> {
        self.scan_store(self.template().index_config(&self.serving()), &self.model_version()).await
    }

    /// A fresh index (`cfg`) of every stored vector of `mine`, and the seq it holds every
    /// change up to: the store's seq read before the scan (a change committed during the scan
    /// has a higher seq and is replayed after it; the store's following protocol).
    pub(crate) async fn scan_store(&self, cfg: IndexConfig, mine: &ModelVersion) -> Result<(NoteIndex, i64), AppError> {
        let index = NoteIndex::new(cfg)?;
        let from = self.store.max_seq().await.map_err(|e| self.store_err("changes", e))?;
        let total = self.store.count().await.map_err(|e| self.store_err("scan", e))?;
        let mut after: Option<NoteId> = None;
        let (mut seen, mut other_versions) = (0u64, 0u64);
        let started = Instant::now();
        loop {
            let page = self.store.scan_embeddings(after.as_ref(), PAGE).await.map_err(|e| self.store_err("scan", e))?;
            let Some((last, _, _)) = page.last() else { break };
            after = Some(last.clone());
            seen += page.len() as u64;
            let batch: Vec<_> = page
                .into_iter()
                .filter(|(_, _, v)| {
                    let ok = v == mine;
                    other_versions += u64::from(!ok);
                    ok
                })
                .map(|(id, e, _)| (id, e))
                .collect();
            index.upsert_batch(&batch)?;
            tracing::info!(
                done = seen,
                total,
                rate = seen as f64 / started.elapsed().as_secs_f64().max(1e-9),
                "building index from the store"
            );
        }
        if other_versions > 0 {
            tracing::warn!(
                other_versions,
                model_version = %mine,
                "stored notes embedded by another model version are not served; run `notellm reindex`"
            );
        }
        Ok((index, from))
    }
}

/// Applies `changes` (the store's latest state of each note) to `index`: vectors of `mine` go
/// in, deletes and vectors of any other model version go out. Returns how many were applied.
pub(crate) fn apply_changes(index: &NoteIndex, mine: &ModelVersion, changes: Vec<Change>) -> Result<usize, IndexError> {
    let n = changes.len();
    let mut upserts: Vec<(NoteId, Embedding)> = Vec::new();
    for c in changes {
        match c {
            Change::Upsert { id, embedding, model_version, .. } if model_version == *mine => {
                upserts.push((id, embedding))
            }
            Change::Upsert { id, .. } | Change::Delete { id, .. } => {
                index.remove(&id);
            }
        }
    }
    index.upsert_batch(&upserts)?;
    Ok(n)
}
