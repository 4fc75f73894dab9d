//! A flat, read-optimised mirror of the hnsw_rs graph, and the search that runs on it.
//!
//! Why: hnsw_rs 0.3.5 keeps every point behind an `Arc`, its links behind a per-point `RwLock`
//! of `Arc`s (one atomic increment per link followed), and the visited set in a `HashSet`; a
//! search at ef 96 over 100k 128-d points costs ~0.5 ms of CPU, most of it that bookkeeping
//! rather than distances (`index/mod.rs`). This mirror holds the same graph as plain arrays:
//! vectors contiguous, links as `u32` slots, a per-thread visited array, so that a search is the
//! distance computations and little else.
//!
//! What it mirrors: every point's vector, level and links per layer, in hnsw_rs's order. hnsw_rs
//! still builds the graph and writes the snapshots; `Graph` copies into the mirror what each
//! insert changed (`graph.rs`), so the mirror is a function of the hnsw_rs graph and a graph
//! reloaded from a snapshot answers exactly as before. The entry point is the point of the
//! highest level with the smallest internal id.
//!
//! Search: hnswlib's algorithm: a greedy walk down the upper layers, then a best-first beam of
//! `ef` on layer 0 where every point guides the walk but only points the caller accepts (live,
//! not the query note) enter the results; the walk stops once `ef` accepted results are closer
//! than every unexplored candidate. So tombstones cost a little walking, not a second search.
//!
//! Concurrency: one writer at a time ([`Flat::write`] holds a mutex); searches take no lock.
//! Links are atomics: a search racing a write may read a list half-rewritten (a slightly
//! different walk, never an invalid id: ids at or above the published count are skipped).
//! Vectors are plain floats, written once, before their id is published: a write goes only to
//! slots at or above `published` and a search reads only slots below the `published` it loaded
//! with `Acquire`, which the writer stored with `Release` after the write. That invariant is
//! what makes the one `unsafe impl Sync` below sound. Growing past the capacity makes a bigger
//! copy ([`Flat::grown`]) that the owner swaps in; searches still holding the old one finish on
//! it.

use std::cell::{RefCell, UnsafeCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::dist::dot;

/// An empty slot: no point, no upper-layer block, no entry point.
const NONE: u32 = u32::MAX;

/// Why a point could not be added; the owner grows the mirror (or, for `Published`, has a bug).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddError {
    /// The id does not fit the capacity, or its upper layers do not fit the block pool.
    Full,
    /// The id is already published (searches may be reading its vector).
    Published,
}

/// The mirror. Ids are hnsw_rs's origin ids, i.e. the index's internal ids (dense from 0).
pub struct Flat {
    dim: usize,
    /// Link slots per point on layer 0 (`2 m`, as hnsw_rs) and on the upper layers (`m`).
    m0: usize,
    m: usize,
    cap: usize,
    /// `cap * dim` floats; see the module docs for who may touch which slot when.
    vectors: Box<[UnsafeCell<f32>]>,
    levels: Box<[AtomicU8]>,
    /// `cap` lists of `1 + m0` slots: the count, then the ids.
    links0: Box<[AtomicU32]>,
    /// Per point, the block of its layer 1 in `upper` (its layers `1..=level` are consecutive
    /// blocks), or `NONE`.
    upper_at: Box<[AtomicU32]>,
    /// Blocks of `1 + m` slots: the count, then the ids.
    upper: Box<[AtomicU32]>,
    /// Ids below this have their vector and level written and may be read.
    published: AtomicUsize,
    /// `level << 32 | id`, or `u64::MAX` while the graph is empty.
    entry: AtomicU64,
    /// Serialises writers; holds the number of upper blocks handed out.
    writer: Mutex<usize>,
}

// SAFETY: every field but `vectors` is `Sync` (atomics, a mutex). `vectors` is written only
// through `FlatWrite::add_point`, which holds `writer` and writes only slots of an id at or
// above `published`; readers only read slots of ids below a `published` value loaded with
// `Acquire` (`View`), and `published` only grows, stored with `Release` after the writes. So a
// slot is never read and written concurrently.
unsafe impl Sync for Flat {}

impl std::fmt::Debug for Flat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flat")
            .field("dim", &self.dim)
            .field("m", &self.m)
            .field("cap", &self.cap)
            .field("published", &self.published.load(Ordering::Relaxed))
            .finish()
    }
}

fn atomics<T>(n: usize, f: impl Fn() -> T) -> Box<[T]> {
    (0..n).map(|_| f()).collect()
}

impl Flat {
    /// An empty mirror for `cap` points of dimension `dim`, built with `m` links per upper layer,
    /// with room for `blocks` upper-layer lists.
    pub fn new(dim: usize, m: usize, cap: usize, blocks: usize) -> Self {
        let (m0, cap, blocks) = (2 * m, cap.max(1), blocks.max(1));
        Self {
            dim,
            m0,
            m,
            cap,
            vectors: atomics(cap * dim, || UnsafeCell::new(0.0)),
            levels: atomics(cap, || AtomicU8::new(0)),
            links0: atomics(cap * (1 + m0), || AtomicU32::new(0)),
            upper_at: atomics(cap, || AtomicU32::new(NONE)),
            upper: atomics(blocks * (1 + m), || AtomicU32::new(0)),
            published: AtomicUsize::new(0),
            entry: AtomicU64::new(u64::MAX),
            writer: Mutex::new(0),
        }
    }

    /// Upper-layer blocks to reserve for `cap` points: levels are geometric with ratio `1/m`,
    /// so points hold `1/(m-1)` upper lists on average; twice that plus some slack.
    pub fn blocks_for(cap: usize, m: usize) -> usize {
        2 * cap / m.saturating_sub(1).max(1) + 64
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Links per upper layer (layer 0 holds twice as many).
    pub fn m(&self) -> usize {
        self.m
    }

    /// Upper-layer blocks this mirror can hold.
    pub fn block_capacity(&self) -> usize {
        self.upper.len() / (1 + self.m)
    }

    /// Ids below this are readable.
    pub fn published(&self) -> usize {
        self.published.load(Ordering::Acquire)
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.cap * (self.dim * 4 + 1 + (1 + self.m0) * 4 + 4) + self.upper.len() * 4
    }

    /// The readable part, as of now.
    pub fn view(&self) -> View<'_> {
        View { flat: self, n: self.published() }
    }

    /// The entry point and its level.
    pub(super) fn entry(&self) -> Option<(usize, usize)> {
        match self.entry.load(Ordering::Acquire) {
            u64::MAX => None,
            e => Some(((e & 0xffff_ffff) as usize, (e >> 32) as usize)),
        }
    }

    /// Starts a write; writers wait for each other.
    pub fn write(&self) -> FlatWrite<'_> {
        FlatWrite { flat: self, blocks_used: self.writer.lock().unwrap_or_else(|e| e.into_inner()) }
    }

    /// A copy with room for `cap` points and `blocks` upper lists (at least the current ones).
    /// Taken under the write lock, so it is a consistent state.
    pub fn grown(&self, cap: usize, blocks: usize) -> Flat {
        let w = self.write();
        let fresh = Flat::new(self.dim, self.m, cap.max(self.cap), blocks.max(self.block_capacity()));
        let view = self.view();
        let n = view.len();
        for id in 0..n {
            for (dst, src) in fresh.vectors[id * self.dim..(id + 1) * self.dim].iter().zip(view.vector(id)) {
                // SAFETY: `fresh` is not shared yet.
                unsafe { *dst.get() = *src };
            }
        }
        let copy = |dst: &[AtomicU32], src: &[AtomicU32]| {
            for (d, s) in dst.iter().zip(src) {
                d.store(s.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        };
        copy(&fresh.links0, &self.links0);
        copy(&fresh.upper_at, &self.upper_at);
        copy(&fresh.upper, &self.upper);
        for (d, s) in fresh.levels.iter().zip(self.levels.iter()) {
            d.store(s.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        *fresh.writer.lock().unwrap_or_else(|e| e.into_inner()) = *w.blocks_used;
        fresh.entry.store(self.entry.load(Ordering::Acquire), Ordering::Release);
        fresh.published.store(n, Ordering::Release);
        fresh
    }

    /// The slots of `id`'s list on `layer`: the count, then the ids. `None` when the point has
    /// no such layer.
    fn list(&self, id: usize, layer: usize) -> Option<&[AtomicU32]> {
        if layer == 0 {
            let s = 1 + self.m0;
            return self.links0.get(id * s..(id + 1) * s);
        }
        if layer > usize::from(self.levels.get(id)?.load(Ordering::Relaxed)) {
            return None;
        }
        let block = self.upper_at.get(id)?.load(Ordering::Relaxed);
        if block == NONE {
            return None;
        }
        let s = 1 + self.m;
        let b = block as usize + layer - 1;
        self.upper.get(b * s..(b + 1) * s)
    }

    /// Calls `f` with each id linked from `id` on `layer`.
    #[inline]
    fn for_each_link(&self, id: usize, layer: usize, mut f: impl FnMut(usize)) {
        if let Some(list) = self.list(id, layer) {
            let count = (list[0].load(Ordering::Relaxed) as usize).min(list.len() - 1);
            for slot in &list[1..1 + count] {
                f(slot.load(Ordering::Relaxed) as usize);
            }
        }
    }

    /// Links of `id` on `layer`, as stored.
    #[cfg(test)]
    pub fn links(&self, id: usize, layer: usize) -> Vec<usize> {
        let mut out = Vec::new();
        self.for_each_link(id, layer, |n| out.push(n));
        out
    }

    /// The up to `ef` accepted points nearest to `query` by `max(0, 1 - dot)` that the beam
    /// finds, as `(distance, id)`, nearest first (ties by id). `accept` decides which points may
    /// be results (every point guides the walk).
    pub fn search(&self, query: &[f32], ef: usize, accept: impl Fn(usize) -> bool) -> Vec<(f32, usize)> {
        let view = self.view();
        let Some((mut cur, top)) = self.entry() else {
            return Vec::new();
        };
        if cur >= view.n || ef == 0 || query.len() != self.dim {
            return Vec::new();
        }
        let dist = |id: usize| (1.0 - dot(query, view.vector(id))).max(0.0);
        let mut cur_d = dist(cur);
        for layer in (1..=top).rev() {
            loop {
                let mut moved = false;
                self.for_each_link(cur, layer, |n| {
                    if n < view.n {
                        let d = dist(n);
                        if d < cur_d {
                            (cur, cur_d, moved) = (n, d, true);
                        }
                    }
                });
                if !moved {
                    break;
                }
            }
        }
        VISITED.with(|visited| {
            let mut visited = visited.borrow_mut();
            visited.start(view.n);
            // Distances are >= 0 (or NaN-free after the clamp), so their bits order like them;
            // a key is `dist bits << 32 | id`, which also breaks ties by id.
            let key = |d: f32, id: usize| (u64::from(d.to_bits()) << 32) | id as u64;
            let unkey = |k: u64| (f32::from_bits((k >> 32) as u32), (k & 0xffff_ffff) as usize);
            let mut candidates = BinaryHeap::with_capacity(ef * 2);
            let mut results: BinaryHeap<u64> = BinaryHeap::with_capacity(ef + 1);
            let Visited { marks, epoch, batch } = &mut *visited;
            mark(marks, *epoch, cur);
            candidates.push(Reverse(key(cur_d, cur)));
            if accept(cur) {
                results.push(key(cur_d, cur));
            }
            while let Some(Reverse(c)) = candidates.pop() {
                if results.len() >= ef && results.peek().is_some_and(|&worst| c > worst) {
                    break;
                }
                let (_, c) = unkey(c);
                // Gather the new neighbours and ask for their vectors first: each is a cache
                // miss, and issuing them together overlaps their latencies.
                batch.clear();
                self.for_each_link(c, 0, |n| {
                    if n < view.n && mark(marks, *epoch, n) {
                        batch.push(n as u32);
                    }
                });
                for &n in batch.iter() {
                    prefetch(view.vector(n as usize));
                }
                for &n in batch.iter() {
                    let n = n as usize;
                    let k = key(dist(n), n);
                    if results.len() < ef || results.peek().is_some_and(|&worst| k < worst) {
                        candidates.push(Reverse(k));
                        if accept(n) {
                            results.push(k);
                            if results.len() > ef {
                                results.pop();
                            }
                        }
                    }
                }
            }
            results.into_sorted_vec().into_iter().map(unkey).collect()
        })
    }
}

/// The published part of a mirror; its vectors never change.
pub struct View<'a> {
    flat: &'a Flat,
    n: usize,
}

impl View<'_> {
    /// Ids below this can be read.
    pub fn len(&self) -> usize {
        self.n
    }

    /// The vector of `id`; every component 0 for an id hnsw_rs never held (a gap).
    ///
    /// # Panics
    /// When `id >= self.len()`.
    #[inline]
    pub fn vector(&self, id: usize) -> &[f32] {
        assert!(id < self.n, "id {id} is not published ({} are)", self.n);
        let dim = self.flat.dim;
        let cells = &self.flat.vectors[id * dim..(id + 1) * dim];
        // SAFETY: `UnsafeCell<f32>` has the layout of `f32`; `id < n <= published`, so these
        // slots were written before `published` was stored with `Release` (we loaded it with
        // `Acquire`) and are never written again (module docs).
        unsafe { std::slice::from_raw_parts(cells.as_ptr().cast::<f32>(), dim) }
    }
}

/// An open write: adds points and rewrites link lists. Dropping it ends the write.
pub struct FlatWrite<'a> {
    flat: &'a Flat,
    blocks_used: MutexGuard<'a, usize>,
}

impl FlatWrite<'_> {
    /// Upper-layer blocks handed out so far.
    pub fn blocks_used(&self) -> usize {
        *self.blocks_used
    }

    /// Writes an unpublished point's vector and level and reserves its upper-layer lists.
    /// It becomes readable at the next [`publish`](Self::publish) past it.
    pub fn add_point(&mut self, id: usize, level: usize, vector: &[f32]) -> Result<(), AddError> {
        let f = self.flat;
        if id < f.published() {
            return Err(AddError::Published);
        }
        let blocks = f.block_capacity();
        if id >= f.cap || *self.blocks_used + level > blocks || level > usize::from(u8::MAX) {
            return Err(AddError::Full);
        }
        let dim = f.dim;
        for (dst, src) in f.vectors[id * dim..(id + 1) * dim].iter().zip(vector) {
            // SAFETY: `id >= published` and we hold the writer lock (module docs).
            unsafe { *dst.get() = *src };
        }
        f.levels[id].store(level as u8, Ordering::Relaxed);
        let block = if level == 0 { NONE } else { *self.blocks_used as u32 };
        f.upper_at[id].store(block, Ordering::Relaxed);
        *self.blocks_used += level;
        Ok(())
    }

    /// Replaces `id`'s list on `layer` with `links` (ids at or above the capacity and the point
    /// itself are left out, and the list is cut to its slots). Returns false when the point has
    /// no such layer here.
    pub fn set_links(&self, id: usize, layer: usize, links: impl IntoIterator<Item = usize>) -> bool {
        let f = self.flat;
        let Some(list) = f.list(id, layer) else {
            return false;
        };
        let mut count = 0;
        for n in links {
            if count + 1 == list.len() {
                break;
            }
            if n < f.cap && n != id {
                list[1 + count].store(n as u32, Ordering::Relaxed);
                count += 1;
            }
        }
        list[0].store(count as u32, Ordering::Relaxed);
        true
    }

    /// Makes ids below `n` readable (never shrinks).
    pub fn publish(&self, n: usize) {
        self.flat.published.fetch_max(n.min(self.flat.cap), Ordering::Release);
    }

    /// Makes `id` the entry point when its level is higher than the current one's, or equal
    /// with a smaller id (so that the entry depends on the graph, not on insertion order).
    pub fn offer_entry(&self, id: usize, level: usize) {
        let f = self.flat;
        let better = match f.entry() {
            None => true,
            Some((cur, cur_level)) => level > cur_level || (level == cur_level && id < cur),
        };
        if better {
            f.entry.store(((level as u64) << 32) | id as u64, Ordering::Release);
        }
    }
}

/// Asks the CPU to start loading `v` into the cache (a hint; no effect on results).
#[inline]
fn prefetch(v: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in v.chunks(16) {
        // SAFETY: prefetching is a hint that never faults; the address is inside `v` anyway.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line.as_ptr().cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}

/// Marks `id` visited in the search of `epoch`; false if it already was.
#[inline]
fn mark(marks: &mut [u16], epoch: u16, id: usize) -> bool {
    let fresh = marks[id] != epoch;
    marks[id] = epoch;
    fresh
}

/// Per-thread search scratch: `marks[id] == epoch` means visited in this search; `batch` holds
/// one expansion's new neighbours.
struct Visited {
    marks: Vec<u16>,
    epoch: u16,
    batch: Vec<u32>,
}

impl Visited {
    /// Starts a search over ids below `n`.
    fn start(&mut self, n: usize) {
        if self.marks.len() < n {
            self.marks.resize(n, 0);
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.marks.fill(0);
            self.epoch = 1;
        }
    }
}

thread_local! {
    static VISITED: RefCell<Visited> = const { RefCell::new(Visited { marks: Vec::new(), epoch: 0, batch: Vec::new() }) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    /// A ring of points on the unit circle, each linked to its two neighbours on layer 0, and
    /// point 0 on layer 1 alone.
    fn ring(n: usize) -> Flat {
        let flat = Flat::new(2, 2, n, Flat::blocks_for(n, 2));
        let mut w = flat.write();
        for i in 0..n {
            let a = i as f32 / n as f32 * std::f32::consts::TAU;
            w.add_point(i, usize::from(i == 0), &[a.cos(), a.sin()]).unwrap();
        }
        for i in 0..n {
            assert!(w.set_links(i, 0, [(i + 1) % n, (i + n - 1) % n]));
        }
        w.publish(n);
        w.offer_entry(0, 1);
        drop(w);
        flat
    }

    #[test]
    fn beam_walks_the_ring_to_the_nearest_points() {
        let flat = ring(64);
        let q = unit(&[0.0, 1.0]); // a quarter turn from the entry: point 16
        let hits = flat.search(&q, 4, |_| true);
        let ids: Vec<usize> = hits.iter().map(|h| h.1).collect();
        assert_eq!(ids[0], 16);
        let mut near: Vec<usize> = ids[..3].to_vec();
        near.sort_unstable();
        assert_eq!(near, vec![15, 16, 17]);
        assert!(ids[3] == 14 || ids[3] == 18, "{ids:?}");
        assert!(hits.windows(2).all(|w| w[0].0 <= w[1].0), "nearest first");
    }

    #[test]
    fn rejected_points_guide_the_walk_but_never_return() {
        let flat = ring(64);
        let q = unit(&[0.0, 1.0]);
        // Everything around the target is dead: the beam walks through to the live ones.
        let hits = flat.search(&q, 2, |id| !(10..=22).contains(&id));
        let ids: Vec<usize> = hits.iter().map(|h| h.1).collect();
        assert_eq!(ids.len(), 2);
        assert!(ids.contains(&9) && ids.contains(&23), "{ids:?}");
        // Nothing acceptable: the whole ring is walked, nothing returned.
        assert!(flat.search(&q, 5, |_| false).is_empty());
    }

    #[test]
    fn unpublished_points_are_skipped_and_published_ones_frozen() {
        let flat = Flat::new(2, 2, 8, 8);
        let mut w = flat.write();
        w.add_point(0, 0, &[1.0, 0.0]).unwrap();
        w.add_point(1, 0, &[0.0, 1.0]).unwrap();
        w.set_links(0, 0, [1]);
        w.publish(1);
        w.offer_entry(0, 0);
        // Point 1 is linked but not published: searches never reach it.
        let hits = flat.search(&[0.0, 1.0], 4, |_| true);
        assert_eq!(hits.iter().map(|h| h.1).collect::<Vec<_>>(), vec![0]);
        assert_eq!(w.add_point(0, 0, &[0.5, 0.5]), Err(AddError::Published));
        assert_eq!(w.add_point(8, 0, &[0.5, 0.5]), Err(AddError::Full));
        w.publish(2);
        let hits = flat.search(&[0.0, 1.0], 4, |_| true);
        assert_eq!(hits.iter().map(|h| h.1).collect::<Vec<_>>(), vec![1, 0]);
        assert_eq!(flat.view().vector(0), &[1.0, 0.0]);
    }

    #[test]
    fn links_are_cut_to_the_slots_and_skip_self_and_out_of_range() {
        let flat = Flat::new(2, 2, 8, 8);
        let mut w = flat.write();
        w.add_point(0, 1, &[1.0, 0.0]).unwrap();
        assert!(w.set_links(0, 0, [0, 1, 99, 2, 3, 4, 5, 6]));
        assert_eq!(flat.links(0, 0), vec![1, 2, 3, 4]);
        assert!(w.set_links(0, 1, [5, 6, 7]));
        assert_eq!(flat.links(0, 1), vec![5, 6]);
        assert!(!w.set_links(0, 2, [1]), "point 0 has no layer 2");
        w.add_point(1, 0, &[0.0, 1.0]).unwrap();
        assert!(!w.set_links(1, 1, [0]), "point 1 has no layer 1");
    }

    #[test]
    fn grown_copy_answers_the_same_and_takes_more() {
        let flat = ring(32);
        let bigger = flat.grown(100, 200);
        assert_eq!(bigger.capacity(), 100);
        let q = unit(&[0.3, -0.8]);
        assert_eq!(flat.search(&q, 6, |_| true), bigger.search(&q, 6, |_| true));
        let mut w = bigger.write();
        w.add_point(32, 2, &q).unwrap();
        w.set_links(32, 0, [0]);
        w.publish(33);
        w.offer_entry(32, 2);
        drop(w);
        assert_eq!(bigger.search(&q, 1, |_| true)[0].1, 32);
    }

    #[test]
    fn entry_prefers_higher_level_then_smaller_id() {
        let flat = Flat::new(2, 2, 8, 8);
        let w = flat.write();
        w.offer_entry(5, 1);
        w.offer_entry(3, 1);
        w.offer_entry(1, 0);
        assert_eq!(flat.entry(), Some((3, 1)));
        w.offer_entry(7, 2);
        assert_eq!(flat.entry(), Some((7, 2)));
    }

    #[test]
    fn empty_mirror_finds_nothing() {
        let flat = Flat::new(4, 4, 4, 4);
        assert!(flat.search(&[1.0, 0.0, 0.0, 0.0], 10, |_| true).is_empty());
    }
}
