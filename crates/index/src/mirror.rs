//! Keeps the flat mirror (`flat.rs`) equal to the hnsw_rs graph it copies.
//!
//! After a single insert, what changed in hnsw_rs is the new point (its vector, level and links)
//! and the links of the points it linked to: its reverse update adds the new point to each of
//! their lists, sorts and cuts them, and touches nothing else. Those are re-read. After a
//! parallel insert, concurrent inserts may also have cut each other's fresh lists, so which
//! points changed is not known: every point's links are re-read (~0.3 µs per point).
//!
//! hnsw_rs does not say where it stored a new point: its level is the layer whose point count
//! grew, and it is the last point of that layer. Its points are then kept here by internal id
//! (one `Arc` each), for re-reading their links later.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use super::flat::{AddError, Flat};
use super::graph::{Hnsw, NB_LAYERS};

type Point = hnsw_rs::hnsw::Point<'static, f32>;

/// The smallest mirror made: growing copies everything, and an empty one should cost little
/// (its size is `capacity * (dim * 4 + 4 m + ...)` bytes up front).
pub const MIN_CAPACITY: usize = 1024;

/// Points per layer, to find where the next insert put its point.
pub type LayerCounts = [usize; NB_LAYERS];

pub fn layer_counts(hnsw: &Hnsw) -> LayerCounts {
    let points = hnsw.get_point_indexation();
    std::array::from_fn(|layer| points.get_layer_nb_point(layer))
}

pub struct Mirror {
    flat: RwLock<Arc<Flat>>,
    /// hnsw_rs's points by internal id; also serialises the writers.
    points: Mutex<Vec<Option<Arc<Point>>>>,
}

impl Mirror {
    /// A mirror sized for `capacity` points (at least [`MIN_CAPACITY`]); it grows on demand.
    pub fn new(dim: usize, m: usize, capacity: usize) -> Self {
        let capacity = capacity.max(MIN_CAPACITY);
        let flat = Flat::new(dim, m, capacity, Flat::blocks_for(capacity, m));
        Self { flat: RwLock::new(Arc::new(flat)), points: Mutex::new(Vec::new()) }
    }

    /// The current mirror, for a search (brief read lock; growing swaps it).
    pub fn flat(&self) -> Arc<Flat> {
        Arc::clone(&self.flat.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn points(&self) -> MutexGuard<'_, Vec<Option<Arc<Point>>>> {
        self.points.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A mirror with room for ids below `cap` and `blocks` more upper lists: the current one,
    /// or a bigger copy swapped in (the caller holds `points`, so no write is lost).
    fn room(&self, cap: usize, blocks: usize) -> Arc<Flat> {
        let flat = self.flat();
        let free = flat.block_capacity() - flat.write().blocks_used();
        if cap <= flat.capacity() && blocks <= free {
            return flat;
        }
        let new_cap = if cap > flat.capacity() { cap.max(flat.capacity() * 2) } else { flat.capacity() };
        let new_blocks = Flat::blocks_for(new_cap, flat.m()).max(2 * (flat.block_capacity() + blocks));
        let grown = Arc::new(flat.grown(new_cap, new_blocks));
        *self.flat.write().unwrap_or_else(|e| e.into_inner()) = Arc::clone(&grown);
        grown
    }

    /// Makes room for ids below `cap` ahead of a batch, so that it grows once, not by doublings.
    pub fn reserve(&self, cap: usize) {
        let _points = self.points();
        self.room(cap, 0);
    }

    /// Copies what one `insert_slice` changed; `before` are the layer counts taken just before
    /// it. The caller serialises inserts.
    pub fn after_insert(&self, hnsw: &Hnsw, before: &LayerCounts) {
        let after = layer_counts(hnsw);
        let found = (0..NB_LAYERS)
            .find(|&l| after[l] > before[l])
            .and_then(|level| Some((level, hnsw.get_point_indexation().get_layer_iterator(level).nth(before[level])?)));
        let Some((level, point)) = found else {
            tracing::warn!("hnsw insert added no point where expected; re-reading the whole graph");
            return self.sync_all(hnsw);
        };
        let mut points = self.points();
        let id = point.get_origin_id();
        let flat = self.room(id + 1, level);
        let mut w = flat.write();
        if let Err(e) = w.add_point(id, level, point.get_v()) {
            drop(w);
            drop(points);
            tracing::warn!(id, ?e, "mirror could not add the new point; re-reading the whole graph");
            return self.sync_all(hnsw);
        }
        let hood = point.get_neighborhood_id();
        for (layer, links) in hood.iter().enumerate().take(level + 1) {
            w.set_links(id, layer, links.iter().map(|n| n.d_id));
        }
        w.publish(id + 1);
        w.offer_entry(id, level);
        if points.len() <= id {
            points.resize(id + 1, None);
        }
        points[id] = Some(point);
        let touched: BTreeSet<usize> = hood.iter().flatten().map(|n| n.d_id).collect();
        for q in touched {
            match points.get(q).and_then(Option::as_ref) {
                Some(p) => copy_links(&w, p),
                None => tracing::warn!(point = q, "mirror lacks a linked point"),
            }
        }
    }

    /// Re-reads the whole graph: new points are added, every point's links are copied again.
    /// For parallel inserts and for graphs loaded from a snapshot.
    pub fn sync_all(&self, hnsw: &Hnsw) {
        let index = hnsw.get_point_indexation();
        let mut all: Vec<Arc<Point>> = Vec::with_capacity(index.get_nb_point());
        for layer in 0..NB_LAYERS {
            if index.get_layer_nb_point(layer) > 0 {
                all.extend(index.get_layer_iterator(layer));
            }
        }
        let mut points = self.points();
        let Some(max_id) = all.iter().map(|p| p.get_origin_id()).max() else {
            return;
        };
        let published = self.flat().published();
        let new_blocks: usize =
            all.iter().filter(|p| p.get_origin_id() >= published).map(|p| usize::from(p.get_point_id().0)).sum();
        let flat = self.room(max_id + 1, new_blocks);
        let mut w = flat.write();
        for p in &all {
            let (id, level) = (p.get_origin_id(), usize::from(p.get_point_id().0));
            match w.add_point(id, level, p.get_v()) {
                Ok(()) | Err(AddError::Published) => {}
                // `room` made room for every point; this is a bug, and the point stays out.
                Err(AddError::Full) => tracing::error!(id, level, "mirror full after making room"),
            }
        }
        // Vectors first: a search reaches a new point only through links written below.
        w.publish(max_id + 1);
        if points.len() <= max_id {
            points.resize(max_id + 1, None);
        }
        for p in all {
            copy_links(&w, &p);
            let id = p.get_origin_id();
            w.offer_entry(id, usize::from(p.get_point_id().0));
            points[id] = Some(p);
        }
    }

    pub fn heap_bytes(&self) -> usize {
        self.flat().heap_bytes() + self.points().capacity() * 8
    }
}

/// Copies `p`'s links on each of its layers.
fn copy_links(w: &super::flat::FlatWrite<'_>, p: &Point) {
    let level = usize::from(p.get_point_id().0);
    for (layer, links) in p.get_neighborhood_id().iter().enumerate().take(level + 1) {
        w.set_links(p.get_origin_id(), layer, links.iter().map(|n| n.d_id));
    }
}

#[cfg(test)]
impl Mirror {
    /// Whether the mirror holds exactly hnsw_rs's graph: every point's vector and links (in
    /// order, as `set_links` stores them) and the entry point.
    pub fn check(&self, hnsw: &Hnsw) -> Result<(), String> {
        let flat = self.flat();
        let view = flat.view();
        let mut top: Option<(usize, usize)> = None;
        for p in hnsw.get_point_indexation() {
            let (id, level) = (p.get_origin_id(), usize::from(p.get_point_id().0));
            if id >= view.len() {
                return Err(format!("point {id} is not published ({} are)", view.len()));
            }
            if view.vector(id) != p.get_v() {
                return Err(format!("point {id}: vector differs"));
            }
            for (layer, links) in p.get_neighborhood_id().iter().enumerate().take(level + 1) {
                let slots = if layer == 0 { 2 * flat.m() } else { flat.m() };
                let want: Vec<usize> = links.iter().map(|n| n.d_id).filter(|&n| n != id).take(slots).collect();
                let got = flat.links(id, layer);
                if got != want {
                    return Err(format!("point {id} layer {layer}: mirror {got:?}, hnsw_rs {want:?}"));
                }
            }
            if top.is_none_or(|(t, l)| level > l || (level == l && id < t)) {
                top = Some((id, level));
            }
        }
        if flat.entry() != top {
            return Err(format!("entry {:?}, expected {top:?}", flat.entry()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::graph::Graph;
    use crate::recall::{synthetic, Spread};
    use crate::IndexConfig;
    use notellm_note::NoteId;

    fn insert(graph: &Graph, from: usize, vectors: &[notellm_note::Embedding]) {
        let ids: Vec<NoteId> = (from..from + vectors.len()).map(|i| NoteId::parse(&format!("n{i}")).unwrap()).collect();
        let items: Vec<(&NoteId, &[f32])> = ids.iter().zip(vectors).map(|(n, v)| (n, v.as_slice())).collect();
        graph.insert(&items);
    }

    #[test]
    fn mirror_equals_hnsw_after_serial_parallel_and_growing_inserts() {
        // Capacity 16: the mirror has to grow several times.
        let cfg = IndexConfig { m: 6, ef_construction: 40, max_elements: 16, ..IndexConfig::new(16) };
        let graph = Graph::new(&cfg, 16);
        let vectors = synthetic(1_200, 16, Spread::Clustered { clusters: 12, noise: 0.6 }, 3);
        // Serial inserts (chunks under the parallel threshold), one point at a time.
        for (c, chunk) in vectors[..300].chunks(30).enumerate() {
            insert(&graph, c * 30, chunk);
            graph.check_mirror().unwrap();
        }
        // One parallel batch, then serial ones again.
        insert(&graph, 300, &vectors[300..1_100]);
        graph.check_mirror().unwrap();
        insert(&graph, 1_100, &vectors[1_100..]);
        graph.check_mirror().unwrap();
        assert_eq!(graph.ids().len(), 1_200);
    }

    #[test]
    fn a_graph_made_from_the_same_hnsw_mirrors_it_again() {
        let cfg = IndexConfig { m: 8, ef_construction: 40, max_elements: 64, ..IndexConfig::new(8) };
        let graph = Graph::new(&cfg, 64);
        insert(&graph, 0, &synthetic(500, 8, Spread::Uniform, 5));
        let dir = tempfile::tempdir().unwrap();
        crate::snapshot::save(&graph, &cfg, dir.path(), &crate::StorePosition::at(7)).unwrap();
        let (loaded, seq) = crate::snapshot::load(dir.path(), &cfg).unwrap().unwrap();
        assert_eq!(seq.seq, 7);
        loaded.check_mirror().unwrap();
    }
}
