//! The write gate: the one place the write-ordering rule lives.
//!
//! A write holds the shared side of the gate and the stripe locks of its notes while it commits
//! to the store and updates the index ([`WriteGate::write`] returns a [`WriteGuard`]); two
//! writes of one note therefore reach store and index in the same order. A snapshot, a restore
//! and a re-index switch hold the exclusive side ([`WriteGate::hold`] returns a [`Held`]): no
//! write is between store and index then, so the index holds exactly the store's changes. The
//! serving slot only swaps under a [`Held`] (`serving.rs`), so that rule is kept by the types.
//!
//! The gate also keeps whether the index changed since it last matched a snapshot on disk
//! (the dirty flag) and when that was.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use tokio::sync::{Mutex as AsyncMutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use notellm_note::hash::Fnv1a64;
use notellm_note::NoteId;

const STRIPES: usize = 64;

pub(crate) struct WriteGate {
    lock: RwLock<()>,
    stripes: Vec<AsyncMutex<()>>,
    /// Whether the index changed since it last matched a snapshot.
    dirty: AtomicBool,
    /// When the index last matched a snapshot on disk (written or loaded).
    snapshot_at: Mutex<Option<SystemTime>>,
}

/// A write in progress: the shared side of the gate and its notes' stripes.
pub(crate) struct WriteGuard<'a> {
    gate: &'a WriteGate,
    _shared: RwLockReadGuard<'a, ()>,
    _stripes: Vec<MutexGuard<'a, ()>>,
}

/// No write is in flight while this lives.
pub(crate) struct Held<'a> {
    gate: &'a WriteGate,
    _exclusive: RwLockWriteGuard<'a, ()>,
}

impl WriteGate {
    pub(crate) fn new() -> Self {
        Self {
            lock: RwLock::new(()),
            stripes: (0..STRIPES).map(|_| AsyncMutex::new(())).collect(),
            dirty: AtomicBool::new(false),
            snapshot_at: Mutex::new(None),
        }
    }

    /// Enters a write of `ids`: waits out any holder of the exclusive side, then takes the
    /// stripes in one global order (so two writes never wait on each other's).
    pub(crate) async fn write<'a>(&'a self, ids: impl IntoIterator<Item = &NoteId>) -> WriteGuard<'a> {
        let shared = self.lock.read().await;
        let mut stripes: Vec<usize> = ids.into_iter().map(stripe).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards = Vec::with_capacity(stripes.len());
        for s in stripes {
            guards.push(self.stripes[s].lock().await);
        }
        WriteGuard { gate: self, _shared: shared, _stripes: guards }
    }

    /// Holds every write out until the returned value is dropped.
    pub(crate) async fn hold(&self) -> Held<'_> {
        Held { gate: self, _exclusive: self.lock.write().await }
    }

    /// Waits until no one holds the exclusive side (a switch in progress has finished).
    pub(crate) async fn wait_for_holder(&self) {
        drop(self.lock.read().await);
    }

    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::SeqCst)
    }

    /// Seconds since the index last matched a snapshot, 0 while it still does.
    pub(crate) fn snapshot_age_secs(&self) -> f64 {
        let since = self.snapshot_at.lock().ok().and_then(|t| *t).and_then(|t| t.elapsed().ok());
        match since {
            Some(d) if self.is_dirty() => d.as_secs_f64(),
            _ => 0.0,
        }
    }

    fn set_matches_snapshot(&self, dirty: bool) {
        self.dirty.store(dirty, Ordering::SeqCst);
        if let Ok(mut t) = self.snapshot_at.lock() {
            *t = Some(SystemTime::now());
        }
    }
}

impl WriteGuard<'_> {
    /// The index was changed by this write.
    pub(crate) fn changed(&self) {
        self.gate.dirty.store(true, Ordering::SeqCst);
    }
}

impl Held<'_> {
    /// The index was changed (or replaced) while writes were held.
    pub(crate) fn changed(&self) {
        self.gate.dirty.store(true, Ordering::SeqCst);
    }

    /// The index now matches the snapshot on disk: one was written, or one was loaded and
    /// `changed` says whether replaying the store changed it since.
    pub(crate) fn matches_snapshot(&self, changed: bool) {
        self.gate.set_matches_snapshot(changed);
    }
}

/// The stripe of a note: stable and cheap; it only spreads ids over the stripes.
fn stripe(id: &NoteId) -> usize {
    (Fnv1a64::new().write(id.as_str().as_bytes()).finish() % STRIPES as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn id(s: &str) -> NoteId {
        NoteId::parse(s).expect("valid id")
    }

    #[tokio::test]
    async fn a_hold_waits_for_writes_and_writes_wait_for_a_hold() {
        let gate = WriteGate::new();
        let w = gate.write([&id("a")]).await;
        assert!(tokio::time::timeout(Duration::from_millis(50), gate.hold()).await.is_err());
        drop(w);
        let held = gate.hold().await;
        assert!(tokio::time::timeout(Duration::from_millis(50), gate.write([&id("b")])).await.is_err());
        assert!(tokio::time::timeout(Duration::from_millis(50), gate.wait_for_holder()).await.is_err());
        drop(held);
        gate.write([&id("b")]).await;
    }

    #[tokio::test]
    async fn writes_of_one_note_exclude_each_other_and_of_others_do_not() {
        let gate = WriteGate::new();
        let (a, b) = (id("a"), id("b"));
        assert_ne!(stripe(&a), stripe(&b), "the test needs two stripes");
        let _held = gate.write([&a, &a]).await;
        assert!(tokio::time::timeout(Duration::from_millis(50), gate.write([&a])).await.is_err());
        let other = tokio::time::timeout(Duration::from_millis(50), gate.write([&b])).await;
        assert!(other.is_ok());
    }

    #[tokio::test]
    async fn the_dirty_flag_follows_writes_and_snapshots() {
        let gate = WriteGate::new();
        assert!(!gate.is_dirty());
        gate.write([&id("a")]).await.changed();
        assert!(gate.is_dirty());
        gate.hold().await.matches_snapshot(false);
        assert!(!gate.is_dirty());
        assert_eq!(gate.snapshot_age_secs(), 0.0);
        gate.hold().await.changed();
        assert!(gate.is_dirty());
    }
}
