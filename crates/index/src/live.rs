//! A liveness bitset that search filters read without taking any lock.
//!
//! hnsw_rs calls the search filter for every node it visits (thousands per query). Reading the id
//! map under a `RwLock` for the whole search would make every write wait for the slowest
//! in-flight search, and (std's lock prefers writers) every search arriving meanwhile wait for
//! that write. Instead a search clones an `Arc<LiveBits>` once and reads atomics. Growing the set
//! allocates a bigger one; a search still holding the old one sees the state as of its start,
//! which is a valid order for two concurrent operations (hits are re-checked against the id map
//! before they are returned).

use std::sync::atomic::{AtomicU64, Ordering};

/// Fixed-capacity bitset of live internal ids.
#[derive(Debug)]
pub struct LiveBits {
    words: Box<[AtomicU64]>,
}

impl LiveBits {
    /// A set able to hold ids `0..capacity` (rounded up to 64), all dead.
    pub fn with_capacity(capacity: usize) -> Self {
        let words = capacity.div_ceil(64).max(1);
        Self { words: (0..words).map(|_| AtomicU64::new(0)).collect() }
    }

    /// Ids `0..capacity()` can be stored.
    pub fn capacity(&self) -> usize {
        self.words.len() * 64
    }

    /// Whether `id` is live; ids beyond the capacity are not.
    #[inline]
    pub fn get(&self, id: usize) -> bool {
        match self.words.get(id / 64) {
            Some(w) => w.load(Ordering::Acquire) & (1 << (id % 64)) != 0,
            None => false,
        }
    }

    /// Marks `id` live or dead. Returns false (and does nothing) when `id` is beyond the capacity.
    pub fn set(&self, id: usize, live: bool) -> bool {
        let Some(w) = self.words.get(id / 64) else {
            return false;
        };
        let bit = 1u64 << (id % 64);
        if live {
            w.fetch_or(bit, Ordering::AcqRel);
        } else {
            w.fetch_and(!bit, Ordering::AcqRel);
        }
        true
    }

    /// A copy with room for at least `capacity` ids (doubling, to amortise growth).
    pub fn grown(&self, capacity: usize) -> Self {
        let bigger = Self::with_capacity(capacity.max(self.capacity() * 2));
        for (dst, src) in bigger.words.iter().zip(self.words.iter()) {
            dst.store(src.load(Ordering::Acquire), Ordering::Relaxed);
        }
        bigger
    }

    /// Heap bytes used.
    pub fn heap_bytes(&self) -> usize {
        self.words.len() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_grow() {
        let b = LiveBits::with_capacity(10);
        assert_eq!(b.capacity(), 64);
        assert!(!b.get(3));
        assert!(b.set(3, true));
        assert!(b.get(3));
        assert!(!b.set(64, true));
        assert!(!b.get(1_000_000));
        let g = b.grown(100);
        assert!(g.capacity() >= 128);
        assert!(g.get(3));
        assert!(g.set(100, true) && g.get(100));
        assert!(g.set(3, false) && !g.get(3));
    }
}
