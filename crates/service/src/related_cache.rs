//! The answer cache of `GET /related/{note_id}?k=`: the serialized answer per (note, k), valid
//! for one [`Generation`] of what serves.
//!
//! Why it is exact. A generation is the pair (serving epoch, index version): the epoch changes
//! when a restore or a re-index swaps the whole [`Serving`](super::Serving); the index version
//! ([`NoteIndex::version`](notellm_index::NoteIndex::version)) is incremented before and after
//! every write to the index (insert, update, delete, rebuild), so it is odd while one is under
//! way. A request reads the generation *before* it searches and stores its answer tagged with
//! it; a lookup returns an entry only when its tag equals the generation read at the lookup, and
//! nothing is cached or served under an odd version. So an entry is served only while no write
//! has started since its search began: exactly the answer a new search would give. A DELETE or
//! PUT increments the version before it returns, so no later request is served an answer from
//! before it. Stale entries are not removed eagerly (a write would have to visit every shard):
//! they fail the tag check and are the first evicted.
//!
//! Why this shape. Shards (up to [`MAX_SHARDS`], chosen by the key's hash) each behind their own
//! `Mutex`, held for a hash lookup and an `Arc` clone, so requests on different cores rarely meet
//! and never wait on one global lock. Eviction is CLOCK per shard, with stale entries evicted
//! first: an entry's bit is set on a hit and cleared as the hand passes, and a new entry starts
//! with it clear, so notes asked for once (the long tail of a feed's traffic) leave before the
//! popular ones, at the cost of one bit and one index per slot (no linked list to update on a
//! hit, unlike LRU). The size bound counts entries (`--related-cache-entries`): an answer at
//! k = 20 is about 1 KB; k up to `--max-k` makes entries larger. Keys hash with std's randomly
//! keyed SipHash: note ids come from clients, so a chosen set of ids cannot pile into one bucket.
//! Crates (moka, quick_cache) would add admission policies this workload does not need, and
//! none would know the generation rule, which is the part that must be right.

use std::collections::hash_map::{HashMap, RandomState};
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard};

use prometheus::{IntCounter, IntGauge};

use notellm_note::NoteId;

/// Most shards.
pub const MAX_SHARDS: usize = 64;
/// Fewest entries per shard (unless the whole cache is smaller): CLOCK needs room to tell
/// popular entries from one-offs, and hashing spreads keys unevenly over tiny shards.
pub const MIN_SHARD_ENTRIES: usize = 64;

/// What an answer was computed from; see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation {
    /// Incremented whenever the serving model and index are swapped whole.
    pub serving: u64,
    /// The serving index's [`version`](notellm_index::NoteIndex::version).
    pub index: u64,
}

impl Generation {
    /// False while an index write is under way: nothing is cached or served then.
    pub fn is_stable(self) -> bool {
        self.index % 2 == 0
    }
}

/// One cached answer's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RelatedKey {
    pub id: NoteId,
    pub k: usize,
}

/// The cache's own metrics.
#[derive(Clone)]
pub struct CacheMetrics {
    pub hits: IntCounter,
    pub misses: IntCounter,
    pub entries: IntGauge,
}

/// A bounded map from (note, k) to an answer `V`, valid for one [`Generation`].
pub struct RelatedCache<V> {
    shards: Box<[Mutex<Shard<V>>]>,
    hasher: RandomState,
    metrics: CacheMetrics,
}

struct Shard<V> {
    map: HashMap<RelatedKey, usize>,
    slots: Vec<Slot<V>>,
    capacity: usize,
    /// The CLOCK hand: the next slot to consider for eviction.
    hand: usize,
}

struct Slot<V> {
    key: RelatedKey,
    value: V,
    generation: Generation,
    /// Hit since the hand last passed.
    referenced: bool,
}

impl<V: Clone> RelatedCache<V> {
    /// A cache of at most `capacity` entries; 0 disables it (every lookup misses, uncounted).
    pub fn new(capacity: usize, metrics: CacheMetrics) -> Self {
        let n = if capacity == 0 { 0 } else { (capacity / MIN_SHARD_ENTRIES).clamp(1, MAX_SHARDS) };
        let shards = (0..n)
            .map(|i| {
                // Spread the capacity exactly: the first `capacity % n` shards take one more.
                let cap = capacity / n + usize::from(i < capacity % n);
                Mutex::new(Shard { map: HashMap::with_capacity(cap), slots: Vec::new(), capacity: cap, hand: 0 })
            })
            .collect();
        metrics.entries.set(0);
        Self { shards, hasher: RandomState::new(), metrics }
    }

    pub fn is_enabled(&self) -> bool {
        !self.shards.is_empty()
    }

    /// Most entries held at once.
    pub fn capacity(&self) -> usize {
        self.shards.iter().map(|s| lock(s).capacity).sum()
    }

    /// Entries held now, stale ones included.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).slots.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, key: &RelatedKey) -> MutexGuard<'_, Shard<V>> {
        // High bits: the shard's own map uses another key, so the low ones stay independent.
        let h = self.hasher.hash_one(key);
        lock(&self.shards[((h >> 32) as usize) % self.shards.len()])
    }

    /// The answer cached for `key` under `now`, the generation read just before this call.
    pub fn get(&self, key: &RelatedKey, now: Generation) -> Option<V> {
        if !self.is_enabled() {
            return None;
        }
        if now.is_stable() {
            let mut shard = self.shard(key);
            if let Some(&i) = shard.map.get(key) {
                let slot = &mut shard.slots[i];
                if slot.generation == now {
                    slot.referenced = true;
                    let value = slot.value.clone();
                    drop(shard);
                    self.metrics.hits.inc();
                    return Some(value);
                }
            }
        }
        self.metrics.misses.inc();
        None
    }

    /// Stores `value`, computed from a search that began under `computed`; `now` reads the
    /// generation at this moment. Skipped when a write started since (the entry could never be
    /// served: lookups need the tag to equal the generation they read).
    pub fn insert(&self, key: RelatedKey, value: V, computed: Generation, now: impl FnOnce() -> Generation) {
        if !self.is_enabled() || !computed.is_stable() || now() != computed {
            return;
        }
        let mut shard = self.shard(&key);
        let shard = &mut *shard;
        if let Some(&i) = shard.map.get(&key) {
            let slot = &mut shard.slots[i];
            slot.value = value;
            slot.generation = computed;
            return;
        }
        let slot = Slot { key: key.clone(), value, generation: computed, referenced: false };
        if shard.slots.len() < shard.capacity {
            shard.map.insert(key, shard.slots.len());
            shard.slots.push(slot);
            self.metrics.entries.inc();
            return;
        }
        // CLOCK: pass over referenced entries of this generation, clearing their bit; the first
        // stale or unreferenced one goes. Ends within one turn (every bit passed is cleared).
        let victim = loop {
            let i = shard.hand;
            shard.hand = (i + 1) % shard.capacity;
            let s = &mut shard.slots[i];
            if s.referenced && s.generation == computed {
                s.referenced = false;
            } else {
                break i;
            }
        };
        shard.map.remove(&shard.slots[victim].key);
        shard.map.insert(key, victim);
        shard.slots[victim] = slot;
    }
}

/// A poisoned shard is still consistent: every mutation above is infallible once started.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap as Model;
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;

    fn metrics() -> CacheMetrics {
        CacheMetrics {
            hits: IntCounter::new("h", "h").unwrap(),
            misses: IntCounter::new("m", "m").unwrap(),
            entries: IntGauge::new("e", "e").unwrap(),
        }
    }

    fn key(id: &str, k: usize) -> RelatedKey {
        RelatedKey { id: NoteId::parse(id).unwrap(), k }
    }

    fn generation(serving: u64, index: u64) -> Generation {
        Generation { serving, index }
    }

    #[test]
    fn hit_only_for_the_generation_it_was_computed_under() {
        let m = metrics();
        let c = RelatedCache::new(16, m.clone());
        let g0 = generation(0, 2);
        assert_eq!(c.get(&key("a", 5), g0), None);
        c.insert(key("a", 5), "a5", g0, || g0);
        assert_eq!(c.get(&key("a", 5), g0), Some("a5"));
        assert_eq!(c.get(&key("a", 6), g0), None, "k is part of the key");
        assert_eq!(c.get(&key("b", 5), g0), None);
        // An index write (version 2 -> 3 -> 4) or a swap of the serving index invalidates it.
        assert_eq!(c.get(&key("a", 5), generation(0, 3)), None);
        assert_eq!(c.get(&key("a", 5), generation(0, 4)), None);
        assert_eq!(c.get(&key("a", 5), generation(1, 2)), None);
        assert_eq!((m.hits.get(), m.misses.get()), (1, 6));
        // Stored again under the new generation: served again, in the same slot.
        let g1 = generation(0, 4);
        c.insert(key("a", 5), "a5'", g1, || g1);
        assert_eq!(c.get(&key("a", 5), g1), Some("a5'"));
        assert_eq!(c.get(&key("a", 5), g0), None, "an older generation is not served either");
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn answers_computed_across_a_write_are_never_stored() {
        let c = RelatedCache::new(16, metrics());
        let before = generation(0, 2);
        // A write started (odd) or finished (next even) while the search ran.
        c.insert(key("a", 5), 1, before, || generation(0, 3));
        c.insert(key("a", 5), 2, before, || generation(0, 4));
        c.insert(key("a", 5), 3, before, || generation(1, 2));
        // A search that began while a write was under way.
        let during = generation(0, 3);
        c.insert(key("a", 5), 4, during, || during);
        assert!(c.is_empty());
        assert_eq!(c.get(&key("a", 5), during), None, "nothing is served under an odd version");
    }

    #[test]
    fn size_is_bounded_and_popular_entries_survive() {
        let m = metrics();
        let c = RelatedCache::new(100, m.clone());
        assert_eq!(c.capacity(), 100);
        let g = generation(0, 0);
        let hot: Vec<RelatedKey> = (0..10).map(|i| key(&format!("hot{i}"), 20)).collect();
        for k in &hot {
            c.insert(k.clone(), 1, g, || g);
        }
        for round in 0..50 {
            for k in &hot {
                assert_eq!(c.get(k, g), Some(1), "hot entry evicted in round {round}");
            }
            for i in 0..40 {
                c.insert(key(&format!("cold{round}-{i}"), 20), 0, g, || g);
            }
            assert!(c.len() <= 100);
        }
        assert_eq!(c.len(), 100);
        assert_eq!(m.entries.get(), 100);
    }

    #[test]
    fn stale_entries_are_evicted_first() {
        let c = RelatedCache::new(1, metrics());
        assert_eq!(c.capacity(), 1);
        let (g0, g1) = (generation(0, 0), generation(0, 2));
        c.insert(key("a", 1), 1, g0, || g0);
        assert_eq!(c.get(&key("a", 1), g0), Some(1));
        c.insert(key("b", 1), 2, g1, || g1);
        assert_eq!(c.len(), 1);
        assert_eq!(c.get(&key("b", 1), g1), Some(2));
    }

    #[test]
    fn small_capacities_use_fewer_shards() {
        for (cap, shards) in [(1, 1), (2, 1), (127, 1), (128, 2), (1000, 15), (4096, 64), (65_536, 64), (100_001, 64)] {
            let c = RelatedCache::<u8>::new(cap, metrics());
            assert_eq!(c.capacity(), cap);
            assert_eq!(c.shards.len(), shards, "capacity {cap}");
        }
    }

    #[test]
    fn disabled_cache_stores_nothing_and_counts_nothing() {
        let m = metrics();
        let c = RelatedCache::new(0, m.clone());
        assert!(!c.is_enabled());
        let g = generation(0, 0);
        c.insert(key("a", 5), 1, g, || g);
        assert_eq!(c.get(&key("a", 5), g), None);
        assert_eq!((c.len(), m.hits.get(), m.misses.get(), m.entries.get()), (0, 0, 0, 0));
    }

    #[test]
    fn concurrent_use_stays_bounded() {
        let c = Arc::new(RelatedCache::new(64, metrics()));
        let g = generation(0, 0);
        std::thread::scope(|s| {
            for t in 0..4 {
                let c = c.clone();
                s.spawn(move || {
                    for i in 0..2_000 {
                        let k = key(&format!("n{}", (i * 7 + t) % 300), 20);
                        if c.get(&k, g).is_none() {
                            c.insert(k.clone(), i, g, || g);
                        }
                    }
                });
            }
        });
        assert_eq!(c.len(), 64);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Against a model that remembers, per key, the last value stored under each generation:
        /// a hit is always that value for the generation asked, and the size never passes the
        /// capacity.
        #[test]
        fn never_serves_another_generations_answer(
            cap in 1usize..40,
            ops in proptest::collection::vec((0u8..30, 0u64..4, any::<bool>()), 1..300),
        ) {
            let c = RelatedCache::new(cap, metrics());
            let mut model: Model<(u8, u64), u32> = Model::new();
            for (n, (id, version, store)) in ops.into_iter().enumerate() {
                let g = generation(0, version * 2);
                let k = key(&format!("n{id}"), 10);
                if store {
                    c.insert(k, n as u32, g, || g);
                    model.insert((id, version), n as u32);
                } else if let Some(v) = c.get(&k, g) {
                    prop_assert_eq!(Some(&v), model.get(&(id, version)));
                }
                prop_assert!(c.len() <= cap);
            }
        }
    }
}
