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
//!   points against 32-35 µs for the mirror (`filter_overhead`, 2026-11-30). The mirror is
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
//! 100,000 unit vectors of dim 128, m 16, ef_construction 200; queries are stored notes' own
//! vectors with the note excluded (as `/related`), recall against `exact_search` over 500 queries
//! (k = 10) and 300 (k = 20). Latency is one thread, wall clock and on-CPU time, release build,
//! 2026-11-30 on a 2-vCPU AMD EPYC (AVX-512 capable) with nothing else running:
//! `cargo test --release -p notellm-index --lib recall -- --ignored --nocapture --test-threads 1`
//! (`NOTELLM_INDEX_BENCH=blobs100` for one data set; `scripts/loadtest.sh recall` runs that).
//! `parallel_insert` races make every build of the same data a little different; the 100-blob
//! set was built four times (graphs A-D) while the search was being tuned, A and B before the
//! AVX2 dot product (slower by ~25%, same recall).
//!
//! | data set | ef_search | recall@10 | recall@20 | k=20 on-CPU p50 / p99 |
//! | --- | --- | --- | --- | --- |
//! | 100 gaussian blobs (noise 0.75), graph D | 32 | 0.957 | 0.955 | 66 / 120 µs |
//! | same | 48 | 0.966 | 0.975 | 86 / 165 µs |
//! | same | **64** | **0.967** | **0.985** | 104 / 184 µs |
//! | same | 96 | 0.977 | 0.989 | 118 / 236 µs |
//! | same | 128 | 0.990 | 0.993 | 135 / 268 µs |
//! | same, 20% of notes deleted | **64** | **0.973** | **0.985** | 106 / 177 µs |
//! | graph C | 32 / **64** / 96 | 0.955 / **0.977** / 0.988 | 0.950 / **0.985** / 0.996 | 76 / **101** / 126 µs p50 |
//! | graph B (before AVX2) | 32 / **64** / 96 | 0.950 / **0.981** / 0.987 | 0.956 / **0.985** / 0.999 | 98 / **137** / 175 µs p50 |
//! | graph A (before AVX2) | 32 / **64** / 96 | 0.956 / **0.987** / 0.994 | 0.953 / **0.978** / 0.992 | 112 / **147** / 170 µs p50 |
//! | 1000 gaussian blobs | 16 | 0.998 | 0.998 | 72 / 131 µs |
//! | same | **64** | **1.000** | **0.9998** | 125 / 188 µs |
//! | uniform on the sphere (worst case) | **64** | **0.722** | **0.682** | 203 / 297 µs |
//! | same | 128 | 0.759 | 0.728 | 379 / 617 µs |
//!
//! - Default ef_search 64: recall@10 0.967-0.987 and recall@20 0.978-0.985 on the harder
//!   clustered set over the four graphs; 96 buys ~0.01 more for ~20% more CPU; 32 is at the
//!   0.95 edge. hnsw_rs's own search needed 96 for 0.974-0.986 at 0.46-0.57 ms p50 (2026-11-23):
//!   the mirror's greedy descent (repeated hops per upper layer, where hnsw_rs takes one) starts
//!   the layer-0 beam in the right cluster more often.
//! - Uniform random 128-d vectors have no structure (every neighbour is nearly as far as the
//!   next) and no setting reaches 0.95 on them at an acceptable cost; real embeddings cluster.
//! - Two threads searching at once (k = 20, ef 64), on-CPU p50 / p99: 96 / 221 µs (100 blobs),
//!   119 / 188 µs (1000 blobs). Target: `/related` p99 <= 2 ms at 100k notes on 2 cores.
//! - Where a search's time goes (`perf annotate` of `Flat::search`, graph A): loads of vectors and
//!   link lists that miss the cache (the 100k x 128-d vectors are 51 MB, beyond the 32 MB L3);
//!   prefetching each expansion's new neighbours before computing their distances is in, though
//!   it measured within noise here.
//! - Build (= rebuild) of 100k with `parallel_insert` on 2 cores, release: 35-117 s depending on
//!   the data (uniform is slowest), up to 240 s while other compilations ran; dev profile 122 s.
//! - Memory: RSS grows by 3.2-3.7 KB per note while building, the mirror's 0.66 KB (allocated
//!   by doubling) included (hnsw_rs: the vector 0.5 KB and one `Arc` per link, ~2 KB for layer
//!   0's 32 links); `memory_bytes_estimate()` gives 4.0 KB/note; the service measured 4.7 KB
//!   per note (docs/benchmarks.md). A rebuild holds two graphs at once.
//! - Snapshot: 1.2-1.3 KB per note on disk (118-132 MB for 100k), save 0.5 s, load 0.9-1.5 s
//!   with checksums verified and the mirror rebuilt, against 35-117 s to rebuild the graph.

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
