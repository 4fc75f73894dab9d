//! A re-index job's state and progress: what `GET /admin/reindex` shows, mirrored into the
//! `notellm_reindex_*` metrics on every change.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::ReindexError;
use crate::metrics::Metrics;
use notellm_note::ModelVersion;

/// Where a re-index is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReindexState {
    /// Loading the new checkpoint.
    Loading,
    /// Re-embedding every stored note.
    Embedding,
    /// Applying the writes made since the embedding began.
    CatchingUp,
    /// Writes held: last changes, the store's switch, the swap.
    Switching,
    /// The new model serves.
    Done,
    /// Stopped by an error; the old model serves.
    Failed,
    /// Stopped on request; the old model serves.
    Cancelled,
}

impl ReindexState {
    pub const ALL: [ReindexState; 7] = [
        ReindexState::Loading,
        ReindexState::Embedding,
        ReindexState::CatchingUp,
        ReindexState::Switching,
        ReindexState::Done,
        ReindexState::Failed,
        ReindexState::Cancelled,
    ];

    pub fn is_finished(self) -> bool {
        matches!(self, ReindexState::Done | ReindexState::Failed | ReindexState::Cancelled)
    }

    /// The `state` label of `notellm_reindex_state`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReindexState::Loading => "loading",
            ReindexState::Embedding => "embedding",
            ReindexState::CatchingUp => "catching_up",
            ReindexState::Switching => "switching",
            ReindexState::Done => "done",
            ReindexState::Failed => "failed",
            ReindexState::Cancelled => "cancelled",
        }
    }
}

/// A re-index as `GET /admin/reindex` reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReindexStatus {
    pub job_id: String,
    pub state: ReindexState,
    /// The new checkpoint (absolute path on the server).
    pub model_dir: String,
    pub from_version: ModelVersion,
    pub to_version: ModelVersion,
    pub batch_notes: usize,
    /// Notes in the store when the embedding began.
    pub notes_total: u64,
    /// Notes with a current vector of the new version so far (embedded or reused).
    pub notes_done: u64,
    /// Of those, vectors staged by an earlier attempt and reused.
    pub notes_reused: u64,
    /// Changes written during the re-index and applied to the new index.
    pub changes_applied: u64,
    /// How long writes were held for the switch.
    #[serde(default)]
    pub write_hold_secs: Option<f64>,
    pub started_at_unix: u64,
    pub elapsed_secs: f64,
    #[serde(default)]
    pub error: Option<String>,
}

/// One re-index: its status, its cancel flag, and the metrics it keeps current.
pub(crate) struct Job {
    started: Instant,
    cancel: AtomicBool,
    /// `true` once the job has ended (whoever waits for that subscribes).
    finished: watch::Sender<bool>,
    status: Mutex<ReindexStatus>,
    metrics: Metrics,
}

impl Job {
    pub(crate) fn id(&self) -> String {
        self.lock().job_id.clone()
    }

    fn lock(&self) -> MutexGuard<'_, ReindexStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The status now (elapsed time counted up to now while running).
    pub(crate) fn status(&self) -> ReindexStatus {
        let mut s = self.lock().clone();
        if !s.state.is_finished() {
            s.elapsed_secs = self.started.elapsed().as_secs_f64();
        }
        s
    }

    pub(crate) fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// Fails with `Cancelled` once a cancel was asked for.
    pub(crate) fn check_cancel(&self) -> Result<(), ReindexError> {
        if self.cancel.load(Ordering::SeqCst) {
            Err(ReindexError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Changes the status and publishes it to the metrics.
    pub(crate) fn update(&self, f: impl FnOnce(&mut ReindexStatus)) {
        let mut s = self.lock();
        f(&mut s);
        let m = &self.metrics;
        for (kind, v) in [
            ("total", s.notes_total),
            ("done", s.notes_done),
            ("reused", s.notes_reused),
            ("caught_up", s.changes_applied),
        ] {
            m.reindex_notes.with_label_values(&[kind]).set(i64::try_from(v).unwrap_or(i64::MAX));
        }
        for state in ReindexState::ALL {
            m.reindex_state.with_label_values(&[state.as_str()]).set(i64::from(state == s.state));
        }
        m.reindex_running.set(i64::from(!s.state.is_finished()));
    }

    pub(crate) fn set_state(&self, state: ReindexState) {
        self.update(|s| s.state = state);
        tracing::info!(state = state.as_str(), "re-index state");
    }

    /// Ends the job: `Done`, or `Failed`/`Cancelled` after `err`.
    pub(crate) fn finish(&self, err: Option<&ReindexError>) {
        let secs = self.started.elapsed().as_secs_f64();
        let state = match err {
            None => ReindexState::Done,
            Some(ReindexError::Cancelled) => ReindexState::Cancelled,
            Some(_) => ReindexState::Failed,
        };
        self.update(|s| {
            s.state = state;
            s.elapsed_secs = secs;
            s.error = err.map(ReindexError::public_message);
        });
        self.metrics.reindex_runs.with_label_values(&[state.as_str()]).inc();
        self.metrics.reindex_duration.observe(secs);
        self.finished.send_replace(true);
    }

    /// Resolves once the job has ended.
    pub(crate) async fn finished(&self) {
        let mut rx = self.finished.subscribe();
        // The sender lives as long as the job; a wait on a dropped one has nothing to wait for.
        let _ = rx.wait_for(|&done| done).await;
    }
}

/// The running or last re-index of this process.
#[derive(Default)]
pub(crate) struct Slot {
    current: Mutex<Option<Arc<Job>>>,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, Option<Arc<Job>>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn current(&self) -> Option<Arc<Job>> {
        self.lock().clone()
    }

    /// A new job, unless one is running.
    pub(crate) fn begin(
        &self,
        model_dir: &Path,
        from: &ModelVersion,
        to: &ModelVersion,
        batch_notes: usize,
        metrics: &Metrics,
    ) -> Result<Arc<Job>, ReindexError> {
        let mut current = self.lock();
        if let Some(running) = current.as_ref().map(|j| j.status()).filter(|s| !s.state.is_finished()) {
            return Err(ReindexError::Running(running.to_version.0));
        }
        let started_at_unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let job = Arc::new(Job {
            started: Instant::now(),
            cancel: AtomicBool::new(false),
            finished: watch::Sender::new(false),
            status: Mutex::new(ReindexStatus {
                job_id: format!("{:016x}", rand::random::<u64>()),
                state: ReindexState::Loading,
                model_dir: model_dir.display().to_string(),
                from_version: from.clone(),
                to_version: to.clone(),
                batch_notes,
                notes_total: 0,
                notes_done: 0,
                notes_reused: 0,
                changes_applied: 0,
                write_hold_secs: None,
                started_at_unix,
                elapsed_secs: 0.0,
                error: None,
            }),
            metrics: metrics.clone(),
        });
        job.update(|_| {});
        *current = Some(job.clone());
        Ok(job)
    }
}
