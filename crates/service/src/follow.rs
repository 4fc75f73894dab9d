//! Replica mode: any number of processes serve one Postgres store, and each keeps its index
//! current with the writes the others accept.
//!
//! A write is accepted by whichever replica receives it: it embeds, commits and indexes locally
//! as always. Every replica also **follows the store**: it LISTENs for the seq each commit
//! announces, and reads `changes_since(applied)` when one arrives, after every (re)connect of the
//! listener (notifications sent while it was down are lost) and every `--follow-interval`
//! anyway. A heartbeat over the listening connection, under a timeout, finds a silent dead link
//! and rebuilds the listener. Changes are applied with the stored vectors, never re-embedded,
//! and with the write gate held (so no local write is between store and index meanwhile: the
//! index then holds the store's latest state of every note read). A replica's own writes come
//! back through the change log too; their seqs are remembered so they are not applied twice.
//!
//! The index's version moves with every applied change, so the `/related` answer cache never
//! serves what a new search would not give.
//!
//! Readiness: a replica that is behind the store for longer than `--max-follow-lag` turns
//! not-ready (the reason and the lag in `/readyz` and the metrics) rather than serving stale
//! answers silently; a store it cannot reach does already (the health probe).
//!
//! A re-index switch recorded in the store by another replica (`notellm_active_model`, with a
//! token of its own) is followed: this replica loads the recorded checkpoint, builds its index
//! from the store's vectors of the new version, and swaps both in at once, so its answers never
//! mix versions. Until that is done (or while it cannot be: the checkpoint is missing on this
//! host, say) the replica is not ready and refuses writes with the reason, and it keeps
//! answering reads from the old version's index, untouched.
//!
//! A write this replica embedded with the old model while the switch committed is refused by
//! the store (`StoreError::StaleModelVersion`: the version is checked in the write's
//! transaction). The write wakes the follow loop, which reads the store's switch record at once
//! (even when no row changed: a switch of an empty store), and waits a bounded time for the new
//! model to serve; then it is embedded again by it. So no write is ever stored under the old
//! version, and none acknowledged by a replica is missing from the new version's indexes.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Notify;

use crate::restore::{apply_changes, PAGE};
use crate::{App, AppError, Serving};
use notellm_model::ServedModel;
use notellm_note::ModelVersion;
use notellm_store::{ActiveModel, Change, ChangeListener, Notice, StoreError};

/// How long a heartbeat over the listening connection may take before the listener counts as
/// dead and is rebuilt.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a write the store refused as embedded by a replaced model waits for this replica to
/// follow the switch (load the new model and index) before it is answered 503.
const STALE_WRITE_WAIT: Duration = Duration::from_secs(10);

/// Replica mode's settings (`--follow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowConfig {
    /// How often the store is read even without a notification (and the listener checked).
    pub interval: Duration,
    /// How long the replica may stay behind the store before it turns not-ready.
    pub max_lag: Duration,
}

impl Default for FollowConfig {
    fn default() -> Self {
        Self { interval: Duration::from_secs(2), max_lag: Duration::from_secs(30) }
    }
}

impl FollowConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.interval.is_zero() {
            return Err("--follow-interval must be positive".into());
        }
        if self.max_lag <= self.interval {
            return Err(format!(
                "--max-follow-lag ({}s) must be longer than --follow-interval ({}s): a replica is up to one \
                 interval behind whenever a notification is lost",
                self.max_lag.as_secs_f64(),
                self.interval.as_secs_f64()
            ));
        }
        Ok(())
    }
}

/// Where a replica stands (`/readyz`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FollowStatus {
    /// The seq up to which the index holds every change of the store.
    pub applied_seq: i64,
    /// Seqs committed (as last seen) and not applied yet.
    pub lag_seq: i64,
    /// How long the replica has been behind (0 when caught up).
    pub lag_seconds: f64,
}

/// The follower's position and what it knows, behind one lock (held only for bookkeeping).
pub(crate) struct Follow {
    config: Option<FollowConfig>,
    state: Mutex<State>,
    /// Wakes the follow loop to read the store's switch record now (a write found the store
    /// switched to another model). A wake while the loop is busy is kept for its next turn.
    wake: Notify,
}

#[derive(Default)]
struct State {
    /// Every change with a seq up to this is in the index.
    applied: i64,
    /// The highest seq known to be committed.
    head: i64,
    /// Since when `head > applied`.
    behind_since: Option<Instant>,
    /// Seqs above `applied` that this process wrote itself (already in its index).
    local: BTreeSet<i64>,
    /// The token of the store's re-index switch this replica serves (or knew at start).
    switch_token: Option<String>,
    /// Why writes are refused and readiness fails: a switch being followed, or one that cannot be.
    blocked: Option<String>,
    /// When following a switch was last tried (it is retried at most once an interval).
    switch_tried: Option<Instant>,
}

impl Follow {
    pub(crate) fn new(config: Option<FollowConfig>) -> Self {
        Self { config, state: Mutex::default(), wake: Notify::new() }
    }

    pub(crate) fn config(&self) -> Option<FollowConfig> {
        self.config
    }

    pub(crate) fn is_enabled(&self) -> bool {
        self.config.is_some()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The index holds every change up to `seq` (a restore or a rebuild); `switch_token`
    /// names the store's switch the serving model belongs to.
    pub(crate) fn start_at(&self, seq: i64, switch_token: Option<String>) {
        let mut s = self.lock();
        s.applied = seq;
        s.head = s.head.max(seq);
        s.local.clear();
        if switch_token.is_some() {
            s.switch_token = switch_token;
        }
    }

    pub(crate) fn applied(&self) -> i64 {
        self.lock().applied
    }

    /// This process committed and indexed `seqs` itself (called inside the write gate).
    pub(crate) fn wrote(&self, seqs: impl IntoIterator<Item = i64>) {
        if self.is_enabled() {
            let mut s = self.lock();
            let applied = s.applied;
            s.local.extend(seqs.into_iter().filter(|&q| q > applied));
        }
    }

    /// A commit up to `seq` is known (a notification, a poll of the store's seq).
    fn saw(&self, seq: i64) {
        let mut s = self.lock();
        if seq > s.head {
            s.head = seq;
        }
        if s.head > s.applied && s.behind_since.is_none() {
            s.behind_since = Some(Instant::now());
        }
    }

    /// Changes up to `seq` are applied; `caught_up`: the store had nothing newer when read.
    fn advanced(&self, seq: i64, caught_up: bool) {
        let mut s = self.lock();
        s.applied = s.applied.max(seq);
        let above = s.applied + 1;
        s.local = s.local.split_off(&above);
        if caught_up && s.head <= s.applied {
            s.head = s.applied;
            s.behind_since = None;
        }
    }

    fn is_local(&self, seq: i64) -> bool {
        self.lock().local.contains(&seq)
    }

    fn knows_switch(&self, token: &str) -> bool {
        self.lock().switch_token.as_deref() == Some(token)
    }

    /// Whether this replica, serving `serving`, must follow the store's switch record `active`:
    /// it is of another version, and not the switch this replica's model was chosen under (its
    /// own, or one a deliberate other `--model` started after; see `restore`).
    fn must_follow(&self, active: &ActiveModel, serving: &ModelVersion) -> bool {
        active.model_version != *serving && !self.knows_switch(&active.switch_token)
    }

    /// Asks the follow loop to read the store's switch record now.
    fn wake(&self) {
        self.wake.notify_one();
    }

    /// Why writes are refused now (a switch being followed or that cannot be).
    pub(crate) fn blocked(&self) -> Option<String> {
        self.lock().blocked.clone()
    }

    fn block(&self, why: Option<String>) {
        self.lock().blocked = why;
    }

    /// Whether following a switch may be tried now (at most once an interval).
    fn may_try_switch(&self) -> bool {
        let interval = self.config.map_or(Duration::ZERO, |c| c.interval);
        let mut s = self.lock();
        if s.switch_tried.is_some_and(|t| t.elapsed() < interval) {
            return false;
        }
        s.switch_tried = Some(Instant::now());
        true
    }

    /// `None` when not following.
    pub(crate) fn status(&self) -> Option<FollowStatus> {
        self.config?;
        let s = self.lock();
        Some(FollowStatus {
            applied_seq: s.applied,
            lag_seq: (s.head - s.applied).max(0),
            lag_seconds: s.behind_since.map_or(0.0, |t| t.elapsed().as_secs_f64()),
        })
    }

    /// Why this replica must not be ready, if it must not.
    pub(crate) fn unready(&self) -> Option<String> {
        let cfg = self.config?;
        if let Some(why) = self.blocked() {
            return Some(why);
        }
        let st = self.status()?;
        (st.lag_seconds > cfg.max_lag.as_secs_f64()).then(|| {
            format!(
                "{} changes behind the store for {:.1}s, longer than --max-follow-lag ({}s)",
                st.lag_seq,
                st.lag_seconds,
                cfg.max_lag.as_secs_f64()
            )
        })
    }
}

/// What one read of the change log found.
enum Step {
    /// Everything committed when read is applied.
    CaughtUp,
    /// Another replica switched the store to another model.
    Switched(ActiveModel),
    /// Tombstones this replica needs were purged: only a rebuild is right.
    Purged,
}

impl App {
    /// Follows the store until the task is aborted (the server spawns it after the restore).
    /// Returns at once when replica mode is off.
    pub async fn follow(&self) {
        let Some(cfg) = self.follow.config() else { return };
        tracing::info!(
            interval_s = cfg.interval.as_secs_f64(),
            max_lag_s = cfg.max_lag.as_secs_f64(),
            applied_seq = self.follow.applied(),
            "following the store"
        );
        let mut tick = tokio::time::interval(cfg.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut listener: Option<ChangeListener> = None;
        let mut listen_failing = false;
        // A switch recorded after this replica chose its model (while it restored) is followed
        // now, not at the first change that shows it.
        self.follow_recorded_switch().await;
        loop {
            // While the health probe finds the store unreachable nothing is tried (it has said
            // so); the interval retries.
            if listener.is_none() && self.store.unreachable().is_none() {
                match self.store.listen().await {
                    Ok(l) => {
                        listener = Some(l);
                        listen_failing = false;
                        // Whatever committed while no listener was up is read now.
                        self.follow_step().await;
                    }
                    Err(e) if !listen_failing => {
                        listen_failing = true;
                        tracing::warn!(error = %e, "cannot listen for changes; polling until it can");
                    }
                    Err(_) => {}
                }
            }
            tokio::select! {
                notice = next_notice(&mut listener) => match notice {
                    Ok(Notice::Committed(seq)) => {
                        self.follow.saw(seq);
                        if seq > self.follow.applied() {
                            self.follow_step().await;
                        }
                    }
                    Ok(Notice::Reconnected) => {
                        self.metrics.follow_reconnects.inc();
                        tracing::info!("the change listener reconnected; reading what it may have missed");
                        self.follow_step().await;
                    }
                    Err(e) => {
                        self.metrics.follow_reconnects.inc();
                        tracing::warn!(error = %e, "the change listener failed; rebuilding it");
                        listener = None;
                    }
                },
                _ = self.follow.wake.notified() => {
                    self.follow_recorded_switch().await;
                }
                _ = tick.tick() => {
                    if let Some(l) = listener.as_mut() {
                        let beat = tokio::time::timeout(HEARTBEAT_TIMEOUT, l.heartbeat()).await;
                        if !matches!(beat, Ok(Ok(()))) {
                            self.metrics.follow_reconnects.inc();
                            tracing::warn!("the change listener did not answer its heartbeat; rebuilding it");
                            listener = None;
                        }
                    }
                    if let Ok(seq) = self.store.max_seq().await {
                        self.follow.saw(seq);
                    }
                    self.follow_step().await;
                }
            }
        }
    }

    /// Reads and applies what the store has; follows a switch or rebuilds when that is what it
    /// finds. Failures are logged (and counted by the store's error metric); the next step retries.
    async fn follow_step(&self) {
        if self.store.unreachable().is_some() {
            self.refresh_follow_lag();
            return;
        }
        let outcome = match self.catch_up().await {
            Ok(Step::CaughtUp) => Ok(()),
            Ok(Step::Switched(active)) => {
                self.follow_switch(active).await;
                Ok(())
            }
            Ok(Step::Purged) => self.resync().await,
            Err(e) => Err(e),
        };
        if let Err(e) = outcome {
            tracing::warn!(error = %e, "following the store failed; retrying at the next notification or interval");
        }
        self.refresh_follow_lag();
    }

    /// Applies `changes_since(applied)`, page after page, each with writes held, until a read
    /// finds nothing newer.
    async fn catch_up(&self) -> Result<Step, AppError> {
        loop {
            let held = self.hold_writes().await;
            let from = self.follow.applied();
            let changes = match self.store.changes_since(from, PAGE).await {
                Ok(c) => c,
                Err(StoreError::ChangesPurged { .. }) => return Ok(Step::Purged),
                Err(e) => return Err(self.store_err("changes", e)),
            };
            let Some(last) = changes.last().map(Change::seq) else {
                drop(held);
                self.follow.advanced(from, true);
                return Ok(Step::CaughtUp);
            };
            let serving = self.serving();
            let foreign = changes
                .iter()
                .any(|c| matches!(c, Change::Upsert { model_version, .. } if *model_version != serving.version));
            if foreign {
                if let Some(active) = self.store.active_model().await.map_err(|e| self.store_err("changes", e))? {
                    if self.follow.must_follow(&active, &serving.version) {
                        return Ok(Step::Switched(active));
                    }
                }
            }
            let (others, mine): (Vec<Change>, Vec<Change>) =
                changes.into_iter().partition(|c| !self.follow.is_local(c.seq()));
            // Replica mode runs only with the in-process index (the server refuses it otherwise).
            let Some(index) = serving.hnsw() else { return Ok(Step::CaughtUp) };
            let applied = apply_changes(index, &serving.version, others)?;
            if applied > 0 {
                held.changed();
            }
            self.follow.advanced(last, false);
            drop(held);
            if applied > 0 {
                self.metrics.follow_applied.inc_by(applied as u64);
                tracing::debug!(applied, own = mine.len(), seq = last, "applied changes from the store");
                self.after_write();
            }
        }
    }

    /// Reads the store's switch record and follows it when this replica must, whatever the
    /// change log shows (a switch of an empty store changes no row); otherwise one usual step.
    /// Run when a write found the store switched, and when following starts.
    async fn follow_recorded_switch(&self) {
        if self.store.unreachable().is_some() {
            return;
        }
        match self.store.active_model().await {
            Ok(Some(active)) if self.follow.must_follow(&active, &self.model_version()) => {
                self.follow_switch(active).await;
                self.refresh_follow_lag();
            }
            Ok(_) => self.follow_step().await,
            Err(e) => {
                self.store_err("changes", e);
            }
        }
    }

    /// A write embedded by `serving`'s model was refused by the store: another process's
    /// re-index switched it to `active` meanwhile. `Ok` once this process serves the store's
    /// active model (the write is then embedded again by it); otherwise why it cannot write now.
    /// A replica wakes its follow loop and waits for it, at most [`STALE_WRITE_WAIT`]; a process
    /// that does not follow the store, or that deliberately serves another model, cannot write
    /// until it is restarted.
    pub(crate) async fn await_store_model(&self, serving: &Serving, active: &ModelVersion) -> Result<(), AppError> {
        // Before anything is read: a swap from here on is seen.
        let mut swaps = self.serving.subscribe();
        if self.model_version() == *active {
            return Ok(());
        }
        if !self.follow.is_enabled() {
            return Err(AppError::NotReady(format!(
                "the store was re-indexed to model {active} (by another process, or before this one started \
                 with another --model); this one serves model {} and cannot write until it is restarted with \
                 model {active}",
                serving.version
            )));
        }
        // The latest record (yet another switch may have followed): its version is what to wait
        // for, and a record this replica knew when it chose its model is never followed.
        let record = self.store.active_model().await.map_err(|e| self.store_err("get", e))?;
        let target = match record {
            Some(r) => {
                let known = self.follow.knows_switch(&r.switch_token);
                // Read after the token: following a switch swaps the model, then records its token.
                let now = self.model_version();
                if now == r.model_version {
                    return Ok(());
                }
                if known {
                    return Err(AppError::NotReady(format!(
                        "this replica serves model {now} (--model), not model {} that the store's notes are \
                         of: it cannot write until it is restarted with that model",
                        r.model_version
                    )));
                }
                r.model_version
            }
            None => active.clone(),
        };
        self.follow.wake();
        let followed = async {
            loop {
                if self.model_version() == target {
                    return true;
                }
                if swaps.changed().await.is_err() {
                    return false;
                }
            }
        };
        if tokio::time::timeout(STALE_WRITE_WAIT, followed).await.unwrap_or(false) {
            return Ok(());
        }
        Err(AppError::NotReady(self.follow.blocked().unwrap_or_else(|| {
            format!("the store was re-indexed to model {target} by another replica, which this one has not loaded yet")
        })))
    }

    /// The changes this replica needs were purged: a fresh index from a full scan, swapped in.
    async fn resync(&self) -> Result<(), AppError> {
        tracing::warn!(
            applied_seq = self.follow.applied(),
            "changes this replica needs were purged; rebuilding its index from the store"
        );
        let serving = self.serving();
        let Some(current) = serving.hnsw() else { return Ok(()) };
        let (index, seq) = self.scan_store(current.config().clone(), &serving.version).await?;
        let held = self.hold_writes().await;
        if !Arc::ptr_eq(&self.serving(), &serving) {
            return Ok(()); // switched meanwhile: the switch built its own index
        }
        self.swap_serving(serving.with_index(index), &held);
        held.changed();
        self.follow.start_at(seq, None);
        drop(held);
        self.update_index_gauges();
        Ok(())
    }

    /// Loads the checkpoint another replica's re-index switched the store to, with an index of
    /// the store's vectors of it, and makes both serve; blocks writes meanwhile, and for as long
    /// as it fails (retried at most once an interval).
    async fn follow_switch(&self, active: ActiveModel) {
        if !self.follow.may_try_switch() {
            return;
        }
        let from = self.model_version();
        tracing::info!(
            from = %from,
            to = %active.model_version,
            checkpoint = %active.model_dir.display(),
            "the store was switched to another model by a re-index; following it"
        );
        self.follow.block(Some(format!(
            "following the store's re-index switch from model {from} to {} (loading {})",
            active.model_version,
            active.model_dir.display()
        )));
        let started = Instant::now();
        match self.load_switch(&active).await {
            Ok(notes) => {
                self.follow.block(None);
                self.metrics.follow_switches.with_label_values(&["done"]).inc();
                tracing::info!(from = %from, to = %active.model_version, notes, secs = started.elapsed().as_secs_f64(), "followed the re-index switch: the new model serves");
            }
            Err(e) => {
                self.metrics.follow_switches.with_label_values(&["failed"]).inc();
                let why = format!(
                    "the store was re-indexed to model {} (checkpoint {}), which this replica cannot serve: {e}; \
                     it answers reads with model {from} and refuses writes until it can",
                    active.model_version,
                    active.model_dir.display()
                );
                tracing::error!("{why}");
                self.follow.block(Some(why));
            }
        }
    }

    async fn load_switch(&self, active: &ActiveModel) -> Result<usize, AppError> {
        let (dir, device) = (active.model_dir.clone(), self.template().device.clone());
        let model = tokio::task::spawn_blocking(move || ServedModel::load(&dir, &device))
            .await
            .map_err(|e| AppError::Internal(format!("model load task: {e}")))?
            .map_err(|e| AppError::Internal(format!("loading the checkpoint: {e}")))?;
        if *model.version() != active.model_version {
            return Err(AppError::Internal(format!(
                "the checkpoint there now holds model {}, not {}",
                model.version(),
                active.model_version
            )));
        }
        let model = Arc::new(model);
        let (index, seq) = self.scan_store(self.template().config_for(&model), &active.model_version).await?;
        let notes = index.len();
        let serving = self
            .template()
            .serve(model, crate::Vectors::Hnsw(Arc::new(index)), &self.metrics)
            .map_err(|e| AppError::Internal(format!("cannot start the new model's batcher: {e}")))?;
        let held = self.hold_writes().await;
        let old = self.serving();
        self.swap_serving(serving, &held);
        held.changed();
        self.follow.start_at(seq, Some(active.switch_token.clone()));
        drop(held);
        self.relabel_build_info(&old.version, &active.model_version);
        self.update_index_gauges();
        Ok(notes)
    }

    /// This process's own re-index switched the store (called with writes held): its new index
    /// holds every change up to `seq` (`None` when the switch's answer was lost).
    pub(crate) fn followed_own_switch(&self, token: &str, seq: Option<i64>) {
        if self.follow.is_enabled() {
            let at = seq.unwrap_or_else(|| self.follow.applied());
            self.follow.start_at(at, Some(token.to_owned()));
        }
    }

    /// Where this replica stands, when it follows the store.
    pub fn follow_status(&self) -> Option<FollowStatus> {
        self.follow.status()
    }

    /// Updates the follow gauges (after every step and before every scrape).
    pub fn refresh_follow_lag(&self) {
        if let Some(s) = self.follow.status() {
            self.metrics.follow_applied_seq.set(s.applied_seq);
            self.metrics.follow_lag_seq.set(s.lag_seq);
            self.metrics.follow_lag_seconds.set(s.lag_seconds);
        }
    }
}

async fn next_notice(listener: &mut Option<ChangeListener>) -> notellm_store::Result<Notice> {
    match listener {
        Some(l) => l.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn following() -> Follow {
        Follow::new(Some(FollowConfig { interval: Duration::from_millis(10), max_lag: Duration::from_millis(50) }))
    }

    #[test]
    fn settings_are_checked() {
        assert!(FollowConfig::default().validate().is_ok());
        let zero = FollowConfig { interval: Duration::ZERO, ..Default::default() };
        assert!(zero.validate().is_err());
        let short = FollowConfig { interval: Duration::from_secs(5), max_lag: Duration::from_secs(5) };
        assert!(short.validate().unwrap_err().contains("--max-follow-lag"));
    }

    #[test]
    fn lag_is_what_was_seen_and_not_applied_and_clears_when_caught_up() {
        let f = following();
        f.start_at(10, None);
        assert_eq!(f.status().unwrap().lag_seq, 0);
        f.saw(14);
        let st = f.status().unwrap();
        assert_eq!((st.applied_seq, st.lag_seq), (10, 4));
        f.advanced(12, false);
        assert_eq!(f.status().unwrap().lag_seq, 2);
        // A read that found nothing newer than 14 catches up.
        f.advanced(14, true);
        let st = f.status().unwrap();
        assert_eq!((st.applied_seq, st.lag_seq, st.lag_seconds), (14, 0, 0.0));
        // A seq seen while reading is not cleared by a read that did not reach it.
        f.saw(20);
        f.advanced(14, true);
        assert_eq!(f.status().unwrap().lag_seq, 6);
    }

    #[test]
    fn a_replica_behind_for_longer_than_the_limit_is_not_ready() {
        let f = following();
        f.start_at(1, None);
        f.saw(3);
        assert!(f.unready().is_none(), "behind, but not for long");
        std::thread::sleep(Duration::from_millis(80));
        let why = f.unready().unwrap();
        assert!(why.contains("2 changes behind") && why.contains("--max-follow-lag"), "{why}");
        f.advanced(3, true);
        assert!(f.unready().is_none());
        f.block(Some("switching".into()));
        assert_eq!(f.unready().as_deref(), Some("switching"));
    }

    #[test]
    fn own_writes_are_remembered_until_applied_and_only_when_following() {
        let f = following();
        f.start_at(5, None);
        f.wrote([4, 6, 9]);
        assert!(!f.is_local(4), "at or below the applied seq: nothing to skip");
        assert!(f.is_local(6) && f.is_local(9));
        f.advanced(7, false);
        assert!(!f.is_local(6) && f.is_local(9));
        let single = Follow::new(None);
        single.wrote([1, 2]);
        assert!(!single.is_local(1) && single.status().is_none() && single.unready().is_none());
    }

    #[test]
    fn switches_to_another_model_are_followed_unless_known() {
        let f = following();
        let v1 = ModelVersion("v1".into());
        let record = |version: &str, token: &str| ActiveModel {
            model_version: ModelVersion(version.into()),
            model_dir: "/models/x".into(),
            previous_version: ModelVersion("v0".into()),
            switch_token: token.into(),
            switched_at: std::time::SystemTime::now(),
        };
        assert!(f.must_follow(&record("v2", "t1"), &v1));
        assert!(!f.must_follow(&record("v1", "t1"), &v1), "the model it serves");
        f.start_at(0, Some("t1".into()));
        assert!(!f.must_follow(&record("v2", "t1"), &v1), "the switch it chose its model under");
        assert!(f.must_follow(&record("v2", "t2"), &v1), "a later switch");
    }

    #[tokio::test]
    async fn a_wake_while_the_loop_is_busy_is_kept_for_its_next_turn() {
        let f = following();
        f.wake();
        let woken = tokio::time::timeout(Duration::from_millis(200), f.wake.notified()).await;
        assert!(woken.is_ok(), "the wake was lost");
    }

    #[test]
    fn a_switch_is_retried_at_most_once_an_interval() {
        let f = following();
        assert!(f.may_try_switch());
        assert!(!f.may_try_switch());
        std::thread::sleep(Duration::from_millis(20));
        assert!(f.may_try_switch());
    }
}
