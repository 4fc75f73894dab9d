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
//! - Distance `max(0, 1 - dot)` over unit vectors (`dist.rs`: anndists' `DistDot` asserts
//!   `1 - dot >= 0` and panics on a note's own vector); scores are `1 - distance` = cosine.
//! - Search: hnsw_rs's plain search over a beam of `max(ef_search, k + 1)`, tombstones and the
//!   query note dropped afterwards; only when that leaves fewer than `k` live hits (tombstones
//!   crowding the neighbourhood) `search_filter`, with a filter over a lock-free liveness bitset
//!   that also leaves out the query note, then a wider beam, then an exact scan. So `k` live
//!   hits come back whenever they exist. hnsw_rs 0.3.5's `search_filter` has no early exit and
//!   costs 2.6x a plain search at the same ef (20k x 128-d, ef 64: 1.55 ms vs 0.60 ms, release),
//!   hence not on the fast path.
//! - Concurrency: searches never wait for each other; writers are serialised and hold the id
//!   map's write lock only for microseconds; `rebuild()` runs beside searches and writes
//!   (`note_index.rs`).
//! - Snapshots: hnsw_rs's own dump (graph + vectors) plus our id map, with a manifest holding the
//!   format version, sequence, dim, m, ef_construction and per-file checksums, swapped in by
//!   rename (`snapshot.rs`). Chosen over "ids + vectors, rebuild the graph on load" because
//!   reloading 100k x 128-d takes 0.9-1.4 s where rebuilding takes 35-240 s on 2 cores, and
//!   search results stay identical across a restart.
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
//! (k = 10) and 300 (k = 20). Latency is one thread, wall clock and on-CPU time: the machine
//! (2 cores) was shared with other compilations, so the on-CPU figure is the cost on an idle
//! core. Taken on 2026-11-23 with `measure_100k` compiled in release (a scratch crate that
//! includes `note.rs` and `index/` by path, to avoid building every dependency in release);
//! `cargo test --lib index::recall -- --ignored --nocapture` runs it in the dev profile
//! (`NOTELLM_INDEX_BENCH=blobs100` for one data set). Graphs A, B (release) and C (dev) are
//! separate builds of the same data: `parallel_insert` races make every graph a little different.
//!
//! | data set | ef_search | recall@10 | recall@20 | k=20 on-CPU p50 / p99 |
//! | --- | --- | --- | --- | --- |
//! | 100 gaussian blobs (noise 0.75), graph A | 32 | 0.914 | 0.880 | 0.30 / 0.67 ms |
//! | same | 48 | 0.954 | 0.919 | 0.37 / 0.73 ms |
//! | same | 64 | 0.975 | 0.941 | 0.44 / 0.99 ms |
//! | same | **96** | **0.986** | **0.959** | 0.57 / 1.19 ms |
//! | same | 128 | 0.996 | 0.983 | 0.60 / 1.47 ms |
//! | same, 20% of notes deleted | 64 | 0.974 | 0.940 | 0.46 / 1.05 ms |
//! | 100 gaussian blobs, graph B | 48 | 0.936 | 0.952 | 0.30 / 0.61 ms |
//! | same | 64 | 0.965 | 0.981 | 0.34 / 0.71 ms |
//! | same | **96** | **0.984** | **0.986** | 0.46 / 1.01 ms |
//! | same, 20% of notes deleted | **96** | **0.983** | **0.985** | 0.52 / 1.08 ms |
//! | 100 gaussian blobs, graph C (dev profile) | 64 | 0.935 | 0.951 | 0.63 / 1.28 ms |
//! | same | **96** | **0.974** | **0.976** | 0.69 / 1.54 ms |
//! | same | 128 | 0.990 | 0.989 | 0.84 / 1.88 ms |
//! | 1000 gaussian blobs, release | 16 | 0.998 | 0.998 | 0.31 / 0.50 ms |
//! | same | 64 | 1.000 | 0.9998 | 0.75 / 1.00 ms |
//! | uniform on the sphere (worst case), release | 64 | 0.725 | 0.686 | 1.15 / 1.77 ms |
//! | same | 128 | 0.762 | 0.726 | 2.77 / 3.68 ms |
//!
//! - Default ef_search 96: the smallest tried value with recall@10 and recall@20 >= 0.95 on the
//!   harder clustered set in every graph (64 gave 0.935 recall@10 in C, 0.941 recall@20 in A).
//!   hnsw_rs descends the upper layers with a single hop per layer, so the layer-0 beam sometimes
//!   starts in the wrong cluster; a wider beam is what recovers it.
//! - Uniform random 128-d vectors have no structure (every neighbour is nearly as far as the
//!   next) and no setting reaches 0.95 on them at an acceptable cost; real embeddings cluster.
//! - Two threads searching at once (k = 20, 100 blobs), on-CPU p50 / p99: ef 96 0.45 / 0.99 ms
//!   (graph B; wall p99 2.4 ms, preempted by other compilations); ef 64 0.37 / 0.83 ms (A), dev
//!   profile 0.57 / 1.26 ms (C). Target: p99 <= 2 ms at 100k notes with k = 20 on 2 cores.
//! - Build (= rebuild) of 100k with `parallel_insert` on 2 cores, release: 35-74 s, up to 240 s
//!   while other compilations ran; dev profile 122 s.
//! - Memory: RSS grows by 3.1-3.7 KB per note while building (vector 0.5 KB; hnsw_rs allocates
//!   one `Arc` per link, ~2 KB for layer 0's 32 links); `memory_bytes_estimate()` gives
//!   3.3 KB/note. A rebuild holds two graphs at once.
//! - Snapshot: 1.2-1.3 KB per note on disk (118-131 MB for 100k), save 0.5 s, load 0.9-1.6 s
//!   with checksums verified, against 35-240 s to rebuild the graph.

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
