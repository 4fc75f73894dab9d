//! The map between note ids and the graph's internal ids, and the tombstones.
//!
//! hnsw_rs has no delete, so every point ever inserted stays in the graph. Each insertion gets a
//! fresh internal id (never reused within one graph); an update inserts the new vector under a new
//! internal id and tombstones the old one; a delete tombstones. A point is live iff its internal
//! id maps back to a note here; every other point in the graph is a tombstone. `rebuild()` builds
//! a fresh graph from the live points to drop them.

use std::collections::HashMap;
use std::sync::Arc;

use notellm_note::NoteId;

use super::live::LiveBits;

/// Note id <-> internal id, plus the lock-free liveness set searches filter with.
#[derive(Debug)]
pub struct IdMap {
    by_note: HashMap<NoteId, usize>,
    /// `by_internal[i]` is the note whose current point is `i`; `None` for a tombstone.
    by_internal: Vec<Option<NoteId>>,
    live: Arc<LiveBits>,
    /// Internal ids handed out so far (points in the graph, or about to be).
    allocated: usize,
}

impl IdMap {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            by_note: HashMap::with_capacity(capacity),
            by_internal: Vec::with_capacity(capacity),
            live: Arc::new(LiveBits::with_capacity(capacity)),
            allocated: 0,
        }
    }

    /// Rebuilds a map from saved live entries (snapshot load). Fails on a duplicate note or
    /// internal id, or an internal id not below `allocated`.
    pub fn from_entries(allocated: usize, entries: Vec<(NoteId, usize)>) -> Result<Self, String> {
        let mut map = Self::with_capacity(allocated.max(entries.len()));
        map.allocated = allocated;
        for (note, internal) in entries {
            if internal >= allocated {
                return Err(format!("internal id {internal} of {note} is not below {allocated}"));
            }
            if map.note(internal).is_some() {
                return Err(format!("internal id {internal} is used twice"));
            }
            if map.commit(note.clone(), internal).is_some() {
                return Err(format!("note {note} is listed twice"));
            }
        }
        Ok(map)
    }

    /// Reserves `n` fresh internal ids for points about to be inserted. They stay dead (filtered
    /// out of searches) until committed, so a half-inserted point is never returned.
    pub fn allocate(&mut self, n: usize) -> std::ops::Range<usize> {
        let start = self.allocated;
        self.allocated += n;
        start..self.allocated
    }

    /// Makes `internal` the live point of `note`, tombstoning the note's previous point.
    /// Returns the previous internal id, if any.
    pub fn commit(&mut self, note: NoteId, internal: usize) -> Option<usize> {
        self.allocated = self.allocated.max(internal + 1);
        if self.by_internal.len() <= internal {
            self.by_internal.resize(internal + 1, None);
        }
        if self.live.capacity() <= internal {
            self.live = Arc::new(self.live.grown(internal + 1));
        }
        let previous = self.by_note.insert(note.clone(), internal);
        if let Some(old) = previous {
            self.kill(old);
        }
        self.by_internal[internal] = Some(note);
        self.live.set(internal, true);
        previous
    }

    /// Tombstones the note's point. Returns whether the note was live.
    pub fn remove(&mut self, note: &NoteId) -> bool {
        match self.by_note.remove(note) {
            Some(internal) => {
                self.kill(internal);
                true
            }
            None => false,
        }
    }

    fn kill(&mut self, internal: usize) {
        self.live.set(internal, false);
        if let Some(slot) = self.by_internal.get_mut(internal) {
            *slot = None;
        }
    }

    pub fn get(&self, note: &NoteId) -> Option<usize> {
        self.by_note.get(note).copied()
    }

    /// The note whose live point is `internal`; `None` for a tombstone or an unknown id.
    pub fn note(&self, internal: usize) -> Option<&NoteId> {
        self.by_internal.get(internal).and_then(Option::as_ref)
    }

    /// The liveness set to hand to a search filter.
    pub fn live_bits(&self) -> Arc<LiveBits> {
        Arc::clone(&self.live)
    }

    /// Live notes.
    pub fn len(&self) -> usize {
        self.by_note.len()
    }

    /// Points in the graph that no note maps to any more.
    pub fn tombstones(&self) -> usize {
        self.allocated - self.by_note.len()
    }

    /// Internal ids handed out so far.
    pub fn allocated(&self) -> usize {
        self.allocated
    }

    /// Live (note, internal id) pairs, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&NoteId, usize)> {
        self.by_note.iter().map(|(n, &i)| (n, i))
    }

    /// Approximate heap bytes: hash map entry + reverse slot + two copies of the id string.
    pub fn heap_bytes(&self) -> usize {
        let strings: usize = self.by_note.keys().map(|n| n.as_str().len().next_multiple_of(8) * 2).sum();
        let entry = std::mem::size_of::<(NoteId, usize)>() + 1; // hashbrown: slot + control byte
        self.by_note.capacity() * entry
            + self.by_internal.capacity() * std::mem::size_of::<Option<NoteId>>()
            + strings
            + self.live.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NoteId {
        NoteId::parse(s).unwrap()
    }

    #[test]
    fn commit_update_remove() {
        let mut m = IdMap::with_capacity(1);
        let r = m.allocate(2);
        assert_eq!(r, 0..2);
        assert!(!m.live_bits().get(0), "allocated but uncommitted ids are dead");
        assert_eq!(m.commit(id("a"), 0), None);
        assert_eq!(m.commit(id("b"), 1), None);
        assert_eq!((m.len(), m.tombstones()), (2, 0));
        let r = m.allocate(1);
        assert_eq!(m.commit(id("a"), r.start), Some(0));
        assert_eq!((m.len(), m.tombstones()), (2, 1));
        assert!(!m.live_bits().get(0) && m.live_bits().get(2));
        assert_eq!(m.note(0), None);
        assert_eq!(m.note(2), Some(&id("a")));
        assert!(m.remove(&id("b")));
        assert!(!m.remove(&id("b")));
        assert_eq!((m.len(), m.tombstones()), (1, 2));
        assert_eq!(m.get(&id("a")), Some(2));
        assert_eq!(m.note(99), None);
    }

    #[test]
    fn grows_past_initial_capacity() {
        let mut m = IdMap::with_capacity(1);
        for i in 0..1000 {
            let r = m.allocate(1);
            m.commit(id(&format!("n{i}")), r.start);
        }
        assert_eq!(m.len(), 1000);
        assert!(m.live_bits().get(999));
    }
}
