//! Tuning knobs of the note index and their defaults (see the measurements in `index/mod.rs`).

use serde::{Deserialize, Serialize};

use super::IndexError;

/// Default links per node (layer 0 keeps `2 * m`).
pub const DEFAULT_M: usize = 16;
/// Default candidate list size while building the graph.
pub const DEFAULT_EF_CONSTRUCTION: usize = 200;
/// Default candidate list size while searching: on 100k clustered 128-d vectors the mirror's
/// search (`flat.rs`) gave recall@10 0.977-0.987 and recall@20 0.978-0.985 at 64 over three
/// graph builds (parallel builds differ), 0.988-0.994 at 96 for ~20% more CPU, and 0.95-0.956
/// at 32; see `index/mod.rs`. Raised to `k` for larger k.
pub const DEFAULT_EF_SEARCH: usize = 64;
/// Default capacity hint (pre-sizes the graph's per-layer tables; not a limit).
pub const DEFAULT_MAX_ELEMENTS: usize = 100_000;
/// Default share of dead points (tombstones) in the graph above which a rebuild is due.
pub const DEFAULT_REBUILD_TOMBSTONE_SHARE: f64 = 0.2;

/// hnsw_rs stores the link count in a `u8` (and exits the process above 256).
const MAX_M: usize = 255;

/// How the HNSW graph is built and searched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexConfig {
    /// Embedding dimension; every vector must have exactly this many components.
    pub dim: usize,
    /// Links per node in the upper layers (`2 * m` in layer 0).
    pub m: usize,
    /// Candidate list size while inserting.
    pub ef_construction: usize,
    /// Candidate list size while searching (at least `k + 1` is used).
    pub ef_search: usize,
    /// Expected number of notes: a capacity hint, not a limit.
    pub max_elements: usize,
    /// `needs_rebuild()` turns true once tombstones exceed this share of the graph's points.
    pub rebuild_tombstone_share: f64,
}

impl IndexConfig {
    /// The defaults for a given embedding dimension.
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            m: DEFAULT_M,
            ef_construction: DEFAULT_EF_CONSTRUCTION,
            ef_search: DEFAULT_EF_SEARCH,
            max_elements: DEFAULT_MAX_ELEMENTS,
            rebuild_tombstone_share: DEFAULT_REBUILD_TOMBSTONE_SHARE,
        }
    }

    /// Rejects values hnsw_rs would panic or exit on, or that make no sense.
    pub fn validate(&self) -> Result<(), IndexError> {
        let bad = |msg: String| Err(IndexError::Config(msg));
        if self.dim == 0 {
            return bad("dim must be > 0".into());
        }
        if !(2..=MAX_M).contains(&self.m) {
            return bad(format!("m must be in 2..={MAX_M}, got {}", self.m));
        }
        if self.ef_construction == 0 || self.ef_search == 0 {
            return bad("ef_construction and ef_search must be > 0".into());
        }
        if !(self.rebuild_tombstone_share > 0.0 && self.rebuild_tombstone_share <= 1.0) {
            return bad(format!("rebuild_tombstone_share must be in (0, 1], got {}", self.rebuild_tombstone_share));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_rejected() {
        assert!(IndexConfig::new(128).validate().is_ok());
        assert!(IndexConfig::new(0).validate().is_err());
        assert!(IndexConfig { m: 300, ..IndexConfig::new(8) }.validate().is_err());
        assert!(IndexConfig { ef_search: 0, ..IndexConfig::new(8) }.validate().is_err());
        let nan = IndexConfig { rebuild_tombstone_share: f64::NAN, ..IndexConfig::new(8) };
        assert!(nan.validate().is_err());
    }
}
