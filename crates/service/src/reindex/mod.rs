//! `notellm reindex`: re-embed every stored note with a new checkpoint into a new index while the
//! old model keeps serving, then switch atomically.
//!
//! The job runs inside the serving process (started by `POST /admin/reindex`):
//!
//! 1. **Load** the new checkpoint (checked up front: files, fields, a version other than the
//!    serving one) and start a background embedding thread for it (`embedder.rs`), which runs a
//!    chunk only when no live note waits for the model ([`crate::batcher::Foreground`]).
//! 2. **Embed**: note `start = max_seq`, then page through the notes written up to `start`, in
//!    id order (later writes are the catch-up's, so the scan ends under any write rate). A note whose
//!    vector of the new version is already staged for its current seq (an earlier attempt that
//!    crashed or failed) is reused; the others are embedded. Each vector goes into the new index
//!    and is staged in the store (`note_vectors`, keyed by note and version, tagged with the seq
//!    of the content it embedded).
//! 3. **Catch up**: apply `changes_since(start)` the same way (re-embed upserts, drop deletes),
//!    pass after pass, until a pass finds few changes. Writes keep being served meanwhile, by the
//!    old model, into the old index.
//! 4. **Switch**: start the new model's batcher, take the exclusive side of the write gate (new
//!    writes wait; in-flight ones finish first) and, on Postgres, the store's change counter
//!    (other replicas' writes wait too: [`notellm_store::Store::hold_for_switch`]), apply the
//!    last changes, then one store transaction ([`notellm_store::Store::promote_held`]) copies
//!    the staged vectors into `notes`, renumbers the change sequence and records the new model
//!    as active; then the serving [`Serving`](super::Serving) is swapped and the gate released.
//!    Writes that embedded with the old model and waited at the gate embed again with the new
//!    one; those another replica embedded with it are refused by the store and embedded again
//!    there once it follows the switch (`follow.rs`).
//!
//! A failure, a cancel or a crash before the switch's commit leaves the old model serving, its
//! rows and index untouched; the staged vectors stay for the next attempt. The switch's record
//! (`notellm_active_model`) also tells the next start which checkpoint to load (`startup.rs`).

mod embedder;
mod job;
mod run;
mod startup;

use std::path::PathBuf;
use std::sync::Arc;

use notellm_index::IndexError;
use notellm_model::served::ServedFiles;
use notellm_model::ModelError;
use notellm_store::StoreError;

use job::Slot;
pub use job::{ReindexState, ReindexStatus};
pub use startup::resolve_model_dir;

use crate::App;

/// Most notes a re-index embeds in one chunk.
pub const MAX_BATCH_NOTES: usize = 1024;
/// Notes per chunk when the request does not say: small, because a live batch that arrives
/// while a chunk runs waits for it (8 notes of SmolLM2-135M take ~1 s on 2 CPU cores).
pub const DEFAULT_BATCH_NOTES: usize = 8;

/// What `POST /admin/reindex` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReindexRequest {
    /// The new checkpoint, a directory on the server.
    pub model_dir: PathBuf,
    /// Notes per background chunk.
    pub batch_notes: usize,
}

/// Why a re-index could not start, or failed.
#[derive(Debug, thiserror::Error)]
pub enum ReindexError {
    #[error("a re-index to {0} is already running; wait for it, or cancel it with DELETE /admin/reindex")]
    Running(String),
    #[error("no re-index is running")]
    NotRunning,
    #[error("checkpoint {path}: {reason}")]
    BadModel { path: String, reason: String },
    #[error("this service already serves model {0}; nothing to re-index")]
    AlreadyServing(String),
    #[error("batch_notes must be between 1 and {MAX_BATCH_NOTES}, got {0}")]
    BadBatch(usize),
    #[error("the index is being restored; retry once /readyz answers 200")]
    NotReady,
    #[error("loading the model: {0}")]
    Model(#[from] ModelError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("index: {0}")]
    Index(#[from] IndexError),
    #[error("embedding the chunk that starts at note {id}: {reason}")]
    Embed { id: String, reason: String },
    #[error("cancelled")]
    Cancelled,
    #[error("{0}")]
    Internal(String),
}

impl ReindexError {
    /// What a client of `/admin/reindex` is told: the error itself when it is about the request
    /// or the checkpoint it named, a pointer to the log when it is the server's own failure
    /// (store, index, embedding, internal), whose text holds server paths and process ids.
    pub fn public_message(&self) -> String {
        match self {
            ReindexError::Store(_)
            | ReindexError::Index(_)
            | ReindexError::Embed { .. }
            | ReindexError::Internal(_) => {
                "the re-index failed on the server's side; its log has the details (\"re-index failed\")".into()
            }
            other => other.to_string(),
        }
    }
}

/// Starts, follows and cancels the re-indexes of one [`App`] (one at a time), which it drives
/// through the app's methods only: what serves, the write gate, the store.
pub struct Reindexer {
    app: Arc<App>,
    /// The running or last re-index.
    slot: Slot,
}

impl Reindexer {
    pub fn new(app: Arc<App>) -> Self {
        Self { app, slot: Slot::default() }
    }

    /// Checks the request and the checkpoint's files, then starts the job in the background.
    /// The answer is the job's first status; [`Reindexer::status`] follows it.
    pub async fn start(&self, req: ReindexRequest) -> Result<ReindexStatus, ReindexError> {
        if !self.app.is_ready() {
            return Err(ReindexError::NotReady);
        }
        if req.batch_notes == 0 || req.batch_notes > MAX_BATCH_NOTES {
            return Err(ReindexError::BadBatch(req.batch_notes));
        }
        let given = req.model_dir.display().to_string();
        let dir = req.model_dir.clone();
        let files = tokio::task::spawn_blocking(move || {
            let canonical =
                std::fs::canonicalize(&dir).map_err(|e| (None, ModelError::Io { path: dir.clone(), source: e }))?;
            ServedFiles::open(&canonical).map_err(|e| (Some(canonical), e))
        })
        .await
        .map_err(|e| ReindexError::Internal(format!("checkpoint check task: {e}")))?
        .map_err(|(canonical, e)| {
            // Name the checkpoint as the client did, not as the server resolved it.
            let mut reason = e.to_string();
            if let Some(c) = canonical {
                reason = reason.replace(&c.display().to_string(), &given);
            }
            ReindexError::BadModel { path: given.clone(), reason }
        })?;
        let from = self.app.model_version();
        let to = files.version.clone();
        if to == from {
            return Err(ReindexError::AlreadyServing(to.0));
        }
        if let Some(vision) = files.vision.clone() {
            let fingerprint = tokio::task::spawn_blocking(move || notellm_model::vision::dir_fingerprint(&vision))
                .await
                .map_err(|e| ReindexError::Internal(format!("encoder fingerprint task: {e}")))?
                .map_err(|e| ReindexError::BadModel { path: given.clone(), reason: e.to_string() })?;
            self.check_image_encoder(&fingerprint, &given).await?;
        }
        let job = self.slot.begin(&files.dir, &from, &to, req.batch_notes, &self.app.metrics)?;
        let span = tracing::info_span!("reindex", job = %job.id(), from = %from, to = %to);
        tracing::info!(parent: &span, model = %files.dir.display(), batch_notes = req.batch_notes, "re-index started");
        let (app, job2) = (self.app.clone(), job.clone());
        tokio::spawn(tracing::Instrument::instrument(
            async move { run::run(app, job2, files.dir, to, req.batch_notes).await },
            span,
        ));
        Ok(job.status())
    }

    /// A multimodal checkpoint must share the image encoder of every stored image's features
    /// (`fingerprint`, [`notellm_model::vision::dir_fingerprint`]): the store keeps the
    /// features, not the images, so another encoder would need them sent again. Checked before
    /// the job starts, so the refusal is the request's answer.
    async fn check_image_encoder(&self, fingerprint: &str, given: &str) -> Result<(), ReindexError> {
        let other: Vec<(String, u64)> =
            self.app.store.image_encoders().await?.into_iter().filter(|(e, _)| e != fingerprint).collect();
        if let Some((encoder, _)) = other.first() {
            let images: u64 = other.iter().map(|(_, n)| n).sum();
            return Err(ReindexError::BadModel {
                path: given.to_owned(),
                reason: format!(
                    "{images} stored images have features of another image encoder ({}...) than this checkpoint's \
                     ({}...); the store keeps features, not images, so re-index with a checkpoint of the same \
                     encoder, or PUT those notes with their images again",
                    &encoder[..encoder.len().min(12)],
                    &fingerprint[..fingerprint.len().min(12)]
                ),
            });
        }
        Ok(())
    }

    /// The running re-index, else the last one since this process started.
    pub fn status(&self) -> Option<ReindexStatus> {
        self.slot.current().map(|j| j.status())
    }

    /// Asks the running re-index to stop at its next chunk (before the switch; a switch in
    /// progress completes). Nothing it staged is lost: a later re-index reuses it.
    pub fn cancel(&self) -> Result<ReindexStatus, ReindexError> {
        match self.slot.current() {
            Some(job) if !job.status().state.is_finished() => {
                job.cancel();
                Ok(job.status())
            }
            _ => Err(ReindexError::NotRunning),
        }
    }

    /// Resolves once no re-index runs.
    pub async fn finished(&self) {
        if let Some(job) = self.slot.current() {
            job.finished().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_side_failures_do_not_reach_the_client() {
        let path = "/var/lib/notellm/index/v2/index-12-4242-99.tmp";
        let index = ReindexError::Index(IndexError::io(path, std::io::Error::other("permission denied")));
        assert!(index.to_string().contains("4242"), "the log keeps the details");
        for e in [
            index,
            ReindexError::Internal(format!("task {path}")),
            ReindexError::Embed { id: "n1".into(), reason: path.into() },
        ] {
            let public = e.public_message();
            assert!(!public.contains("4242") && !public.contains("/var/lib"), "{public}");
        }
        let bad = ReindexError::BadModel { path: "models/v2".into(), reason: "config.json missing".into() };
        assert_eq!(bad.public_message(), bad.to_string(), "a problem with the request is the client's to see");
    }
}
