//! Start-up: bring the index up to date with the store. Load the snapshot and replay the changes
//! committed after its seq; when the snapshot is missing, corrupt, of another shape, or the
//! changes it needs were purged, rebuild the index from a full scan of the store. Vectors of
//! another model version never enter the index (they are counted and reported: `notellm reindex`).

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{App, AppError};
use crate::index::NoteIndex;
use crate::note::NoteId;
use crate::store::{Change, StoreError};

const PAGE: usize = 2_000;

impl App {
    /// Restores the index and marks the service ready.
    pub async fn restore(&self) -> Result<(), AppError> {
        let started = Instant::now();
        let serving = self.serving();
        let cfg = serving.index.config().clone();
        let dir = serving.snapshot_dir.clone();
        let loaded = tokio::task::spawn_blocking(move || NoteIndex::load_snapshot(&dir, cfg))
            .await
            .map_err(|e| AppError::Internal(format!("snapshot load task: {e}")))?;
        let (index, changed) = match loaded {
            Ok(Some((index, seq))) => {
                tracing::info!(seq, notes = index.len(), "index snapshot loaded; replaying newer changes");
                match self.replay(&index, seq).await {
                    Ok(n) => (index, n > 0),
                    Err(AppError::Store(StoreError::ChangesPurged { .. })) => {
                        tracing::warn!("changes after the snapshot were purged; rebuilding from the store");
                        (self.rebuild_from_store().await?, true)
                    }
                    Err(e) => return Err(e),
                }
            }
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
        self.set_serving(serving.with_index(index));
        self.dirty.store(changed, Ordering::SeqCst);
        self.mark_snapshot();
        self.update_index_gauges();
        self.ready.store(true, Ordering::SeqCst);
        tracing::info!(notes, secs = started.elapsed().as_secs_f64(), "index restored; ready");
        Ok(())
    }

    /// Applies every change after `seq` to `index`; returns how many were applied.
    async fn replay(&self, index: &NoteIndex, mut seq: i64) -> Result<usize, AppError> {
        let mine = self.model_version();
        let mut applied = 0;
        loop {
            let changes = self.store.changes_since(seq, PAGE).await.map_err(|e| self.store_err("changes", e))?;
            let Some(last) = changes.last() else { break };
            seq = last.seq();
            for c in changes {
                match c {
                    Change::Upsert { id, embedding, model_version, .. } if model_version == mine => {
                        index.upsert(&id, &embedding)?
                    }
                    Change::Upsert { id, .. } | Change::Delete { id, .. } => {
                        index.remove(&id);
                    }
                }
                applied += 1;
            }
            tracing::info!(applied, seq, "replaying changes");
        }
        Ok(applied)
    }

    /// A fresh index holding every stored vector of this model version.
    async fn rebuild_from_store(&self) -> Result<NoteIndex, AppError> {
        let mine = self.model_version();
        let index = NoteIndex::new(self.index().config().clone())?;
        let total = self.store.count().await.map_err(|e| self.store_err("scan", e))?;
        let mut after: Option<NoteId> = None;
        let (mut seen, mut other_versions) = (0u64, 0u64);
        let started = Instant::now();
        loop {
            let page = self.store.scan_embeddings(after.as_ref(), PAGE).await.map_err(|e| self.store_err("scan", e))?;
            let Some((last, _, _)) = page.last() else { break };
            after = Some(last.clone());
            seen += page.len() as u64;
            let mine: Vec<_> = page
                .into_iter()
                .filter(|(_, _, v)| {
                    let ok = *v == mine;
                    other_versions += u64::from(!ok);
                    ok
                })
                .map(|(id, e, _)| (id, e))
                .collect();
            index.upsert_batch(&mine)?;
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
        Ok(index)
    }
}
