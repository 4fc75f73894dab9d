//! In-process HNSW index over note embeddings (hnsw_rs).
//!
//! The store is the source of truth; this index is a cache of it that can always be rebuilt.
//! [`NoteIndex`] maps note ids to hnsw_rs's internal ids, handles updates and deletes with
//! tombstones (hnsw_rs cannot delete), rebuilds itself from its live vectors, and snapshots to
//! the data directory tagged with the store's change sequence.
//!
//! Files: `note_index.rs` (the public type, concurrency, rebuild), `graph.rs` (one generation:
//! the hnsw_rs graph, its mirror and its id map), `flat.rs` (the flat mirror and the search that
//! runs on it), `mirror.rs` (keeping the mirror equal to hnsw_rs), `ids.rs` (id map, tombstones),
//! `live.rs` (lock-free liveness bitset), `dist.rs` (the distance), `snapshot.rs` (+
//! `checksum.rs`), `config.rs`, `error.rs`, and `recall.rs` (synthetic data, exact-vs-HNSW
//! recall and latency measurement).
//!
//! Choices:
//! - hnsw_rs builds the graph (its inserts, parallel batch inserts) and dumps/reloads it
//!   (snapshots); searches do not use hnsw_rs's search. They run on a flat mirror of the same
//!   graph (`flat.rs`): vectors contiguous, links as `u32` slots, a per-thread visited array,
//!   hnswlib's algorithm. hnsw_rs 0.3.5's search clones an `Arc` per link followed, takes a
//!   `RwLock` per point and tracks visits in a `HashSet`: 188-198 µs per query at ef 32 on 20k
//!   points against 32-35 µs for the mirror (`filter_overhead`). The mirror is
//!   updated after every insert from what hnsw_rs changed (`mirror.rs`; tests check it equals
//!   hnsw_rs point by point), so search results are a function of the hnsw_rs graph and survive
//!   a snapshot round trip unchanged. It costs a second copy of the vectors and the links:
//!   `dim * 4 + 8 m + ~20` bytes per point (660 B at 128-d, m 16).
//! - Distance `max(0, 1 - dot)` over unit vectors (`dist.rs`: anndists' `DistDot` asserts
//!   `1 - dot >= 0` and panics on a note's own vector); scores are `1 - distance` = cosine. The
//!   dot product uses AVX2+FMA when the CPU has them (run-time check): 9 ns for 128-d against
//!   14 ns for the portable loop the baseline x86-64 build gets.
//! - Search: a greedy walk down the upper layers, then a beam of `max(ef_search, k)` on layer 0
//!   in which every point guides the walk but only live points other than the query note enter
//!   the results, and the walk goes on until `ef` of those are closer than every unexplored
//!   candidate. So tombstones cost some walking, not a second search, and `k` live hits come
//!   back whenever the walk reaches them; if it does not (tombstones cutting a region off), an
//!   exact scan answers.
//! - Concurrency: searches never wait for each other or for writers (the mirror's links are
//!   atomics, its vectors write-once); writers are serialised and hold the id map's write lock
//!   only for microseconds; `rebuild()` runs beside searches and writes (`note_index.rs`).
//! - Snapshots: hnsw_rs's own dump (graph + vectors) plus our id map, with a manifest holding the
//!   format version, sequence, dim, m, ef_construction and per-file checksums, swapped in by
//!   rename (`snapshot.rs`). Chosen over "ids + vectors, rebuild the graph on load" because
//!   reloading 100k x 128-d takes 0.9-1.5 s where rebuilding takes 35-240 s on 2 cores, and
//!   search results stay identical across a restart. The mirror is rebuilt from the loaded
//!   graph (part of the load time).
//!
//! The caller's contract for snapshots and the change sequence: a snapshot tagged `seq` holds
//! at least every change up to `seq` (writes that raced the save may be in it too), so after a
//! load the caller replays the store's changes after `seq`; upserts and removes are idempotent.
//! `rebuild()` is the caller's to schedule (on a blocking thread) when `needs_rebuild()`.
//!
//! # Measurements
//!
//! Recall against exact search and latency by `ef_search`, build time, memory and snapshot
//! sizes, with the commands that measure them (`cargo test --release -p notellm-index --lib
//! recall -- --ignored --nocapture`, `cargo bench --bench index`): `docs/benchmarks.md`
//! ("The index alone").

mod checksum;
mod config;
mod dist;
mod error;
mod flat;
mod graph;
mod ids;
mod live;
mod mirror;
mod note_index;
#[cfg(any(test, feature = "recall-harness"))]
pub mod recall;
mod snapshot;

pub use config::{
    IndexConfig, DEFAULT_EF_CONSTRUCTION, DEFAULT_EF_SEARCH, DEFAULT_M, DEFAULT_MAX_ELEMENTS,
    DEFAULT_REBUILD_TOMBSTONE_SHARE,
};
pub use error::IndexError;
pub use note_index::NoteIndex;
pub use snapshot::{StorePosition, Witness, FORMAT_VERSION as SNAPSHOT_FORMAT_VERSION};

use notellm_note::NoteId;

/// One search result: a note and its cosine similarity to the query.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Hit {
    pub id: NoteId,
    pub score: f32,
}
