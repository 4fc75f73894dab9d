//! One generation of the index: an hnsw_rs graph, its flat mirror, and the id map of its points.
//!
//! `NoteIndex` swaps whole generations on `rebuild()`. hnsw_rs builds the graph (inserts) and
//! dumps it (snapshots); searches run on the flat mirror of it (`flat.rs`, kept equal by
//! `mirror.rs` after every insert), which holds the second copy of the vectors.

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use notellm_note::NoteId;

use super::dist::{dot, UnitDot};
use super::flat::Flat;
use super::ids::IdMap;
use super::mirror::{layer_counts, Mirror};
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
    mirror: Mirror,
    ids: RwLock<IdMap>,
}

impl Graph {
    pub fn new(cfg: &IndexConfig, capacity: usize) -> Self {
        let hnsw = Hnsw::new(cfg.m, capacity.max(16), NB_LAYERS, cfg.ef_construction, UnitDot);
        Self::from_parts(cfg, hnsw, IdMap::with_capacity(capacity))
    }

    /// A generation around an existing hnsw_rs graph (a loaded snapshot): mirrors it whole.
    pub fn from_parts(cfg: &IndexConfig, hnsw: Hnsw, ids: IdMap) -> Self {
        let mirror = Mirror::new(cfg.dim, cfg.m, ids.allocated());
        mirror.sync_all(&hnsw);
        Self { hnsw, mirror, ids: RwLock::new(ids) }
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
        self.mirror.reserve(first + items.len());
        let start = Instant::now();
        let log = items.len() > PROGRESS_CHUNK;
        for (c, chunk) in items.chunks(PROGRESS_CHUNK).enumerate() {
            let base = first + c * PROGRESS_CHUNK;
            if chunk.len() < PARALLEL_MIN {
                for (i, (_, v)) in chunk.iter().enumerate() {
                    let before = layer_counts(&self.hnsw);
                    self.hnsw.insert_slice((v, base + i));
                    self.mirror.after_insert(&self.hnsw, &before);
                }
            } else {
                let points: Vec<(&[f32], usize)> = chunk.iter().enumerate().map(|(i, (_, v))| (*v, base + i)).collect();
                self.hnsw.parallel_insert_slice(&points);
                self.mirror.sync_all(&self.hnsw);
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

    /// See `Mirror::check`.
    #[cfg(test)]
    pub fn check_mirror(&self) -> Result<(), String> {
        self.mirror.check(&self.hnsw)
    }

    pub fn remove(&self, note: &NoteId) -> bool {
        self.ids_mut().remove(note)
    }

    /// Top-`k` live notes by cosine to `query`, `exclude` left out, best first.
    pub fn search(&self, query: &[f32], k: usize, ef_search: usize, exclude: Option<&NoteId>) -> Vec<Hit> {
        let excluded = exclude.and_then(|n| self.ids().get(n));
        self.search_internal(&self.mirror.flat(), query, k, ef_search, excluded)
    }

    /// Top-`k` live notes related to the live note `note` (its own vector as the query, itself
    /// left out); `None` when the note is not in this graph.
    pub fn search_note(&self, note: &NoteId, k: usize, ef_search: usize) -> Option<Vec<Hit>> {
        let internal = self.ids().get(note)?;
        let flat = self.mirror.flat();
        let view = flat.view();
        // A committed point is always published (the mirror is updated before the commit).
        let query = (internal < view.len()).then(|| view.vector(internal))?;
        Some(self.search_internal(&flat, query, k, ef_search, Some(internal)))
    }

    /// The beam search on the mirror (`flat.rs`), every live point but `excluded` accepted.
    /// When the beam holds fewer than `min(k, live notes)` of them (tombstones cutting a
    /// neighbourhood off, or writes racing the search), an exact scan answers instead.
    fn search_internal(
        &self,
        flat: &Flat,
        query: &[f32],
        k: usize,
        ef_search: usize,
        excluded: Option<usize>,
    ) -> Vec<Hit> {
        let (live, n_live) = {
            let ids = self.ids();
            (ids.live_bits(), ids.len())
        };
        let excluded_live = excluded.is_some_and(|i| live.get(i));
        let wanted = k.min(n_live.saturating_sub(usize::from(excluded_live)));
        if wanted == 0 {
            return Vec::new();
        }
        let found = flat.search(query, ef_search.max(wanted), |id| Some(id) != excluded && live.get(id));
        let hits = self.to_hits(&found, wanted);
        if hits.len() >= wanted {
            return hits;
        }
        tracing::debug!(wanted, got = hits.len(), "hnsw search short of live hits; exact scan");
        self.exact_internal(query, k, excluded)
    }

    /// `(distance, internal id)` nearest first to hits, dropping points that died meanwhile.
    fn to_hits(&self, found: &[(f32, usize)], wanted: usize) -> Vec<Hit> {
        let ids = self.ids();
        found
            .iter()
            .filter_map(|&(distance, id)| ids.note(id).map(|note| Hit { id: note.clone(), score: 1.0 - distance }))
            .take(wanted)
            .collect()
    }

    /// Brute-force top-`k` over every live point (tests, recall measurement, last resort).
    pub fn exact(&self, query: &[f32], k: usize, exclude: Option<&NoteId>) -> Vec<Hit> {
        let excluded = exclude.and_then(|n| self.ids().get(n));
        self.exact_internal(query, k, excluded)
    }

    fn exact_internal(&self, query: &[f32], k: usize, excluded: Option<usize>) -> Vec<Hit> {
        if k == 0 {
            return Vec::new();
        }
        let flat = self.mirror.flat();
        let view = flat.view();
        let ids = self.ids();
        let mut scored: Vec<(f32, usize)> = Vec::with_capacity(ids.len());
        for id in 0..view.len() {
            if Some(id) != excluded && ids.note(id).is_some() {
                scored.push((dot(query, view.vector(id)).min(1.0), id));
            }
        }
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
        points * (POINT_FIXED + vector + links) + self.ids().heap_bytes() + self.mirror.heap_bytes()
    }
}
