//! One generation of the index: an hnsw_rs graph and the id map of its points.
//!
//! `NoteIndex` swaps whole generations on `rebuild()`. Vectors live only inside hnsw_rs's points
//! (it copies every inserted slice); `for_each_point` reads them back for rebuilds, snapshots and
//! exact search, so the index keeps no second copy.

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use hnsw_rs::hnsw::Neighbour;

use crate::note::NoteId;

use super::dist::{dot, UnitDot};
use super::ids::IdMap;
use super::{Hit, IndexConfig};

/// The hnsw_rs graph type. `'static`: points own their data (no mmap).
pub type Hnsw = hnsw_rs::hnsw::Hnsw<'static, f32, UnitDot>;

/// hnsw_rs's `NB_LAYER_MAX`; its dump refuses any other layer count.
pub const NB_LAYERS: usize = 16;

/// Below this many points a batch is inserted serially (rayon's overhead is not worth it).
const PARALLEL_MIN: usize = 256;
/// Batches larger than this are inserted in chunks, logging progress between them.
const PROGRESS_CHUNK: usize = 20_000;

pub struct Graph {
    pub hnsw: Hnsw,
    ids: RwLock<IdMap>,
}

impl Graph {
    pub fn new(cfg: &IndexConfig, capacity: usize) -> Self {
        let hnsw = Hnsw::new(cfg.m, capacity.max(16), NB_LAYERS, cfg.ef_construction, UnitDot);
        Self::from_parts(hnsw, IdMap::with_capacity(capacity))
    }

    pub fn from_parts(hnsw: Hnsw, ids: IdMap) -> Self {
        Self { hnsw, ids: RwLock::new(ids) }
    }

    /// Read access to the id map; a poisoned lock is still consistent (every mutation of the
    /// map is a handful of infallible steps), so poisoning is ignored rather than propagated.
    pub fn ids(&self) -> RwLockReadGuard<'_, IdMap> {
        self.ids.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn ids_mut(&self) -> RwLockWriteGuard<'_, IdMap> {
        self.ids.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Inserts `items` (dimension already checked) and makes them live. Later items win over
    /// earlier ones with the same note id. The caller serialises writers.
    pub fn insert(&self, items: &[(&NoteId, &[f32])]) {
        let first = self.ids_mut().allocate(items.len()).start;
        let start = Instant::now();
        let log = items.len() > PROGRESS_CHUNK;
        for (c, chunk) in items.chunks(PROGRESS_CHUNK).enumerate() {
            let base = first + c * PROGRESS_CHUNK;
            if chunk.len() < PARALLEL_MIN {
                for (i, (_, v)) in chunk.iter().enumerate() {
                    self.hnsw.insert_slice((v, base + i));
                }
            } else {
                let points: Vec<(&[f32], usize)> = chunk.iter().enumerate().map(|(i, (_, v))| (*v, base + i)).collect();
                self.hnsw.parallel_insert_slice(&points);
            }
            // Commit chunk by chunk, so that a long load becomes searchable progressively.
            let mut map = self.ids_mut();
            for (i, (note, _)) in chunk.iter().enumerate() {
                map.commit((*note).clone(), base + i);
            }
            drop(map);
            if log {
                let done = c * PROGRESS_CHUNK + chunk.len();
                tracing::info!(done, total = items.len(), secs = start.elapsed().as_secs_f32(), "index build progress");
            }
        }
    }

    pub fn remove(&self, note: &NoteId) -> bool {
        self.ids_mut().remove(note)
    }

    /// Top-`k` live notes by cosine to `query`, `exclude` left out, best first.
    ///
    /// Fast path: hnsw_rs's plain search for the `ef` nearest points, tombstones and the excluded
    /// note dropped afterwards. Only when that beam holds fewer than `k` live points (tombstones
    /// crowding the query's neighbourhood) does it run `search_filter` with the liveness filter,
    /// over-fetching one (hnsw_rs may keep its filtered-out entry point among the results),
    /// widening the beam, and finally scanning exactly, so that `min(k, live notes)` hits come
    /// back whenever they exist. Why not `search_filter` always: in hnsw_rs 0.3.5 a filtered
    /// search has no early exit (it expands every queued candidate) and costs 2.5-3x a plain
    /// one at the same `ef` (measured in `index/mod.rs`).
    pub fn search(&self, query: &[f32], k: usize, ef_search: usize, exclude: Option<&NoteId>) -> Vec<Hit> {
        let (live, excluded, n_live) = {
            let ids = self.ids();
            (ids.live_bits(), exclude.and_then(|n| ids.get(n)), ids.len())
        };
        let wanted = k.min(n_live - usize::from(excluded.is_some()));
        if wanted == 0 {
            return Vec::new();
        }
        let points = self.hnsw.get_nb_point();
        let mut ef = ef_search.max(wanted + 1);
        let beam = self.hnsw.search(query, ef, ef);
        let hits = self.to_hits(&beam, excluded, wanted);
        if hits.len() >= wanted {
            return hits;
        }
        let filter = |id: &usize| Some(*id) != excluded && live.get(*id);
        loop {
            let found = self.hnsw.search_filter(query, wanted + 1, ef, Some(&filter));
            let hits = self.to_hits(&found, excluded, wanted);
            if hits.len() >= wanted {
                return hits;
            }
            if ef >= points {
                tracing::debug!(wanted, got = hits.len(), "hnsw search short of live hits; exact scan");
                return self.exact(query, k, exclude);
            }
            ef = ef.saturating_mul(4).min(points.max(wanted + 1));
        }
    }

    fn to_hits(&self, found: &[Neighbour], excluded: Option<usize>, wanted: usize) -> Vec<Hit> {
        let ids = self.ids();
        // hnsw_rs returns neighbours by increasing distance; the sort only guards that.
        let mut hits: Vec<Hit> = found
            .iter()
            .filter(|n| Some(n.d_id) != excluded)
            .filter_map(|n| ids.note(n.d_id).map(|id| (id, 1.0 - n.distance)))
            .take(wanted)
            .map(|(id, score)| Hit { id: id.clone(), score })
            .collect();
        hits.sort_by(|a, b| b.score.total_cmp(&a.score));
        hits
    }

    /// Brute-force top-`k` over every live point (tests, recall measurement, last resort).
    pub fn exact(&self, query: &[f32], k: usize, exclude: Option<&NoteId>) -> Vec<Hit> {
        if k == 0 {
            return Vec::new();
        }
        let ids = self.ids();
        let excluded = exclude.and_then(|n| ids.get(n));
        let mut scored: Vec<(f32, usize)> = Vec::with_capacity(ids.len());
        self.for_each_point(|id, v| {
            if Some(id) != excluded && ids.note(id).is_some() {
                scored.push((dot(query, v).min(1.0), id));
            }
        });
        let by_score = |a: &(f32, usize), b: &(f32, usize)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if scored.len() > k {
            scored.select_nth_unstable_by(k - 1, by_score);
            scored.truncate(k);
        }
        scored.sort_by(by_score);
        scored.into_iter().filter_map(|(score, id)| ids.note(id).map(|n| Hit { id: n.clone(), score })).collect()
    }

    /// Calls `f(internal id, vector)` for every point in the graph, tombstones included.
    /// Holds hnsw_rs's layer table read lock one layer at a time (inserts wait meanwhile).
    pub fn for_each_point(&self, mut f: impl FnMut(usize, &[f32])) {
        let points = self.hnsw.get_point_indexation();
        for layer in 0..NB_LAYERS {
            // get_layer_iterator indexes the layer table unchecked; skip absent/empty layers.
            if points.get_layer_nb_point(layer) == 0 {
                continue;
            }
            for p in points.get_layer_iterator(layer) {
                f(p.get_origin_id(), p.get_v());
            }
        }
    }

    /// Copies of the live (note, vector) pairs, for a rebuild.
    pub fn live_vectors(&self) -> Vec<(NoteId, Vec<f32>)> {
        let ids = self.ids();
        let mut out = Vec::with_capacity(ids.len());
        self.for_each_point(|id, v| {
            if let Some(note) = ids.note(id) {
                out.push((note.clone(), v.to_vec()));
            }
        });
        out
    }

    /// Estimated heap bytes of the graph, its vectors and the id map. hnsw_rs keeps, per point,
    /// an `Arc<Point>` with its own `Vec<f32>`, a table of 16 per-layer neighbour `Vec`s, and one
    /// heap-allocated `Arc<PointWithOrder>` per link (48 bytes with malloc overhead); layer 0
    /// fills up to its `2m` links (reverse links), in a `Vec` grown to the next power of two.
    /// Checked against RSS growth while building 100k points (see `index/mod.rs`), which is
    /// ~10% higher (allocator fragmentation from the searches' temporary allocations).
    pub fn memory_bytes_estimate(&self, cfg: &IndexConfig) -> usize {
        // Arc<Point>, its neighbours lock, the 16-layer table, the layer slot.
        const POINT_FIXED: usize = 96 + 64 + 16 * 24 + 16 + 8;
        const PER_LINK: usize = 48;
        let points = self.hnsw.get_nb_point();
        let vector = cfg.dim * 4 + 16;
        let layer0 = 2 * cfg.m + 1;
        // Upper layers hold ~1/(m-1) of the points with up to m links each: about one more link.
        let links = (layer0 + 1) * PER_LINK + layer0.next_power_of_two() * 8;
        points * (POINT_FIXED + vector + links) + self.ids().heap_bytes()
    }
}
