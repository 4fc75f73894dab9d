//! In-process HNSW index over note embeddings (hnsw_rs).
//!
//! The store is the source of truth; this index is a cache of it that can always be rebuilt.
//! [`NoteIndex`] maps note ids to hnsw_rs's internal ids, handles updates and deletes with
//! tombstones (hnsw_rs cannot delete), rebuilds itself from its live vectors, and snapshots to
//! the data directory tagged with the store's change sequence.
//!
//! Files: `note_index.rs` (the public type, concurrency, rebuild), `graph.rs` (one hnsw_rs graph
//! and its id map), `ids.rs` (id map, tombstones), `live.rs` (lock-free liveness bitset),
//! `dist.rs` (the distance), `snapshot.rs` (+ `checksum.rs`), `config.rs`, `error.rs`, and
//! `recall.rs` (synthetic data, exact-vs-HNSW recall and latency measurement).
//!
//! Choices:
//! - Vectors live only inside hnsw_rs's points (it copies each inserted vector and lets us read
//!   it back), so there is no second copy; rebuilds, snapshots and exact search read them there.
//! - Distance `max(0, 1 - dot)` over unit vectors; scores are `1 - distance` = cosine.
//! - Searches use `search_filter` with a filter over a lock-free liveness bitset that also
//!   leaves out the query note; they over-fetch by one and widen the beam when tombstones hide
//!   results, so `k` live hits come back whenever they exist.
//! - Snapshots are hnsw_rs's own dump (graph + vectors) plus our id map, with a manifest holding
//!   the format version, sequence, dim and per-file checksums (see `snapshot.rs`).
//!
//! The caller's contract for snapshots and the change sequence: a snapshot tagged `seq` holds
//! at least every change up to `seq` (writes that raced the save may be in it too), so after a
//! load the caller replays the store's changes after `seq`; upserts and removes are idempotent.
//!
//! # Measurements
//!
//! TODO

mod checksum;
mod config;
mod dist;
mod error;
mod graph;
mod ids;
mod live;
mod note_index;
pub mod recall;
mod snapshot;

pub use config::{
    IndexConfig, DEFAULT_EF_CONSTRUCTION, DEFAULT_EF_SEARCH, DEFAULT_M, DEFAULT_MAX_ELEMENTS,
    DEFAULT_REBUILD_TOMBSTONE_SHARE,
};
pub use error::IndexError;
pub use note_index::NoteIndex;
pub use snapshot::FORMAT_VERSION as SNAPSHOT_FORMAT_VERSION;

use crate::note::NoteId;

/// One search result: a note and its cosine similarity to the query.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Hit {
    pub id: NoteId,
    pub score: f32,
}
