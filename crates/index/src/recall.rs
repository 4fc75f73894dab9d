//! Measuring the index: synthetic unit vectors, recall@k of HNSW against exact search, and
//! single-threaded search latency, as used by the tests and the figures in `index/mod.rs`.
//!
//! Queries follow `/related`: a stored note's own vector, with that note excluded.

use std::time::Instant;

use notellm_note::{Embedding, NoteId};

use super::{IndexConfig, IndexError, NoteIndex};

/// How synthetic vectors are spread over the unit sphere.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Spread {
    /// Isotropic: the hardest case for any ANN index (no structure, near-equal distances).
    Uniform,
    /// Gaussian blobs around `clusters` random centres; `noise` is the blob radius relative to
    /// the centre's unit norm. Closer to real embeddings, which have topical structure.
    Clustered { clusters: usize, noise: f32 },
}

/// Deterministic generator (splitmix64) so that tests and measurements are reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.unit().max(f32::MIN_POSITIVE);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }

    /// A random unit vector.
    pub fn unit_vector(&mut self, dim: usize) -> Vec<f32> {
        loop {
            let v: Vec<f32> = (0..dim).map(|_| self.normal()).collect();
            if let Ok(e) = Embedding::normalised(v) {
                return e.into_vec();
            }
        }
    }
}

/// `n` unit vectors of dimension `dim`.
pub fn synthetic(n: usize, dim: usize, spread: Spread, seed: u64) -> Vec<Embedding> {
    let mut rng = Rng::new(seed);
    let centres: Vec<Vec<f32>> = match spread {
        Spread::Uniform => Vec::new(),
        Spread::Clustered { clusters, .. } => (0..clusters.max(1)).map(|_| rng.unit_vector(dim)).collect(),
    };
    let scale = match spread {
        Spread::Uniform => 0.0,
        Spread::Clustered { noise, .. } => noise / (dim as f32).sqrt(),
    };
    (0..n)
        .map(|_| {
            let v = if centres.is_empty() {
                rng.unit_vector(dim)
            } else {
                let c = &centres[rng.below(centres.len())];
                c.iter().map(|x| x + scale * rng.normal()).collect()
            };
            // A draw that cannot be normalised is replaced by a fresh random direction.
            Embedding::normalised(v)
                .unwrap_or_else(|_| Embedding::normalised(rng.unit_vector(dim)).unwrap_or_else(|_| unreachable!()))
        })
        .collect()
}

/// Note ids `n0, n1, ...` for synthetic vectors.
pub fn synthetic_ids(n: usize) -> Vec<NoteId> {
    (0..n).map(|i| NoteId::parse(&format!("n{i}")).unwrap_or_else(|_| unreachable!())).collect()
}

/// Recall and latency of one index against exact search.
#[derive(Debug, Clone)]
pub struct RecallReport {
    pub n: usize,
    pub dim: usize,
    pub k: usize,
    pub ef_search: usize,
    pub queries: usize,
    /// Mean over queries of |HNSW top-k ∩ exact top-k| / k.
    pub recall: f64,
    /// Wall-clock search latency.
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
    /// On-CPU time of the searching thread (Linux `schedstat`): the latency on an idle core,
    /// unaffected by other processes preempting the measurement. `None` where unavailable.
    pub cpu_p50_us: Option<f64>,
    pub cpu_p99_us: Option<f64>,
}

/// Nanoseconds this thread has spent on a CPU: `clock_gettime(CLOCK_THREAD_CPUTIME_ID)`
/// (`/proc/thread-self/schedstat` is only updated at scheduler ticks on some kernels).
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
fn thread_cpu_ns() -> Option<u64> {
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut ts = Timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, exclusively borrowed timespec (64-bit Linux layout); the libc
    // std already links provides `clock_gettime`, which only writes through the pointer.
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64))
}

#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
fn thread_cpu_ns() -> Option<u64> {
    None
}

/// The `p`-quantile of sorted values (0 when empty).
fn quantile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(i).copied().unwrap_or(0.0)
}

/// Recall@k and single-threaded latency of `index.search_with_ef` for `queries` stored notes (their own
/// vector, themselves excluded), against `exact_search`.
pub fn measure(
    index: &NoteIndex,
    ids: &[NoteId],
    vectors: &[Embedding],
    k: usize,
    ef_search: usize,
    queries: usize,
    seed: u64,
) -> Result<RecallReport, IndexError> {
    let mut rng = Rng::new(seed);
    let picks: Vec<usize> = (0..queries).map(|_| rng.below(ids.len())).collect();
    let mut lat = Vec::with_capacity(queries);
    let mut cpu = Vec::with_capacity(queries);
    let mut found = Vec::with_capacity(queries);
    for &q in &picks {
        let c0 = thread_cpu_ns();
        let t = Instant::now();
        let hits = index.search_with_ef(&vectors[q], k, Some(&ids[q]), ef_search)?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        if let (Some(a), Some(b)) = (c0, thread_cpu_ns()) {
            cpu.push(b.saturating_sub(a) as f64 / 1e3);
        }
        found.push(hits);
    }
    let mut overlap = 0usize;
    let mut expected = 0usize;
    for (&q, hits) in picks.iter().zip(&found) {
        let truth = index.exact_search(&vectors[q], k, Some(&ids[q]))?;
        expected += truth.len();
        overlap += truth.iter().filter(|t| hits.iter().any(|h| h.id == t.id)).count();
    }
    lat.sort_by(f64::total_cmp);
    cpu.sort_by(f64::total_cmp);
    let cpu_ok = cpu.len() == lat.len() && !cpu.is_empty();
    Ok(RecallReport {
        n: index.len(),
        dim: index.config().dim,
        k,
        ef_search,
        queries,
        recall: if expected == 0 { 1.0 } else { overlap as f64 / expected as f64 },
        p50_us: quantile(&lat, 0.50),
        p99_us: quantile(&lat, 0.99),
        mean_us: lat.iter().sum::<f64>() / lat.len().max(1) as f64,
        cpu_p50_us: cpu_ok.then(|| quantile(&cpu, 0.50)),
        cpu_p99_us: cpu_ok.then(|| quantile(&cpu, 0.99)),
    })
}

/// Builds an index of `n` synthetic vectors in gaussian blobs of ~1000 notes (the primary data
/// set of the measurements in `index/mod.rs`) with `cfg`, and measures it (`k`, 200 queries).
pub fn bench_recall(n: usize, k: usize, cfg: IndexConfig) -> Result<RecallReport, IndexError> {
    let vectors = synthetic(n, cfg.dim, Spread::Clustered { clusters: (n / 1000).max(1), noise: 0.75 }, 7);
    let ids = synthetic_ids(n);
    let index = NoteIndex::new(cfg)?;
    let items: Vec<(NoteId, Embedding)> = ids.iter().cloned().zip(vectors.iter().cloned()).collect();
    index.upsert_batch(&items)?;
    let ef = index.config().ef_search;
    measure(&index, &ids, &vectors, k, ef, 200, 11)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recall_at_10_on_5k_blobs() {
        let t = Instant::now();
        let r = bench_recall(5_000, 10, IndexConfig::new(128)).unwrap();
        eprintln!("5k x 128 in 5 blobs, default config: {r:?} ({:.1}s)", t.elapsed().as_secs_f32());
        assert!(r.recall >= 0.95, "recall@10 {}", r.recall);
    }

    /// What hnsw_rs's own searches (plain, and filtered: no early exit) cost per query against
    /// the mirror's search that `NoteIndex::search` runs (`flat.rs`).
    #[test]
    #[ignore = "measurement"]
    fn filter_overhead() {
        let n = 20_000;
        let vectors = synthetic(n, 128, Spread::Clustered { clusters: 200, noise: 0.75 }, 7);
        let ids = synthetic_ids(n);
        let index = NoteIndex::new(IndexConfig::new(128)).unwrap();
        let items: Vec<(NoteId, Embedding)> = ids.iter().cloned().zip(vectors.iter().cloned()).collect();
        let t = Instant::now();
        index.upsert_batch(&items).unwrap();
        println!("build {n}: {:.1}s", t.elapsed().as_secs_f32());
        let g = index.graph();
        for ef in [32, 64] {
            let t = Instant::now();
            for v in &vectors[..1000] {
                std::hint::black_box(g.hnsw.search(v.as_slice(), 21, ef));
            }
            let plain = t.elapsed().as_secs_f64() * 1e3;
            let live = index.graph().ids().live_bits();
            let filter = |id: &usize| *id != 5 && live.get(*id);
            let t = Instant::now();
            for v in &vectors[..1000] {
                std::hint::black_box(g.hnsw.search_filter(v.as_slice(), 21, ef, Some(&filter)));
            }
            let filtered = t.elapsed().as_secs_f64() * 1e3;
            let t = Instant::now();
            for q in 0..1000 {
                std::hint::black_box(index.search_with_ef(&vectors[q], 20, Some(&ids[q]), ef).unwrap());
            }
            let ours = t.elapsed().as_secs_f64() * 1e3;
            let t = Instant::now();
            for q in 0..1000 {
                for p in 0..2000 {
                    std::hint::black_box(super::super::dist::dot(vectors[q].as_slice(), vectors[p].as_slice()));
                }
            }
            let dots = t.elapsed().as_secs_f64() * 1e6 / 2e6;
            println!(
                "ef {ef}: plain {plain:.0}us, search_filter {filtered:.0}us, NoteIndex::search {ours:.0}us per query; \
                 dot {dots:.3}us"
            );
        }
    }

    fn rss_bytes() -> Option<usize> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some(pages * 4096)
    }

    /// The figures in `index/mod.rs`:
    /// `cargo test -p notellm-index --lib recall -- --ignored --nocapture --test-threads 1`.
    /// `NOTELLM_INDEX_BENCH=blobs1000,blobs100,uniform` picks the data sets (default: all three)
    /// and `NOTELLM_INDEX_BENCH_N` the number of notes (default 100000).
    #[test]
    #[ignore = "measurement: minutes on 2 cores"]
    fn measure_100k() {
        let n: usize = std::env::var("NOTELLM_INDEX_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
        let wanted = std::env::var("NOTELLM_INDEX_BENCH").unwrap_or_else(|_| "blobs1000,blobs100,uniform".into());
        let dim = 128;
        let k = 10;
        let sets = [
            ("blobs1000", "1000 gaussian blobs, noise 0.75", Spread::Clustered { clusters: 1000, noise: 0.75 }),
            ("blobs100", "100 gaussian blobs, noise 0.75", Spread::Clustered { clusters: 100, noise: 0.75 }),
            ("uniform", "uniform on the sphere", Spread::Uniform),
        ];
        for (key, name, spread) in sets {
            if !wanted.split(',').any(|w| w.trim() == key) {
                continue;
            }
            let vectors = synthetic(n, dim, spread, 7);
            let ids = synthetic_ids(n);
            let items: Vec<(NoteId, Embedding)> = ids.iter().cloned().zip(vectors.iter().cloned()).collect();
            let rss0 = rss_bytes();
            let t = Instant::now();
            let index = NoteIndex::new(IndexConfig::new(dim)).unwrap();
            index.upsert_batch(&items).unwrap();
            let build = t.elapsed().as_secs_f32();
            let rss1 = rss_bytes();
            println!("\n== {n} x {dim}, {name}: build {build:.1}s (= rebuild time; parallel_insert)");
            if let (Some(a), Some(b)) = (rss0, rss1) {
                println!(
                    "memory: RSS +{:.0} bytes/note (first index in the process only), estimate {:.0} bytes/note",
                    (b.saturating_sub(a)) as f64 / n as f64,
                    index.memory_bytes_estimate() as f64 / n as f64
                );
            }
            for ef in [16, 24, 32, 48, 64, 96, 128] {
                let r = measure(&index, &ids, &vectors, k, ef, 500, 3).unwrap();
                let r20 = measure(&index, &ids, &vectors, 20, ef, 300, 5).unwrap();
                println!("ef_search {ef:>3}: {} | {}", line(&r), line(&r20));
            }
            concurrent_latency(&index, &ids, &vectors);
            snapshot_timings(&index, n);
            // A fifth of the notes deleted: what a search costs just before a rebuild is due.
            for i in (0..n).step_by(5) {
                index.remove(&ids[i]);
            }
            let ef = index.config().ef_search;
            let r = measure(&index, &ids, &vectors, k, ef, 500, 3).unwrap();
            let r20 = measure(&index, &ids, &vectors, 20, ef, 300, 5).unwrap();
            println!("20% tombstones, ef_search {ef}: {} | {}", line(&r), line(&r20));
        }
    }

    fn line(r: &RecallReport) -> String {
        let cpu = match (r.cpu_p50_us, r.cpu_p99_us) {
            (Some(a), Some(b)) => format!(" (on-CPU p50 {a:.0}us p99 {b:.0}us)"),
            _ => String::new(),
        };
        format!("recall@{} {:.4} wall p50 {:.0}us p99 {:.0}us{cpu}", r.k, r.recall, r.p50_us, r.p99_us)
    }

    fn snapshot_timings(index: &NoteIndex, n: usize) {
        let dir = tempfile::tempdir().unwrap();
        let t = Instant::now();
        index.save_snapshot(dir.path(), &crate::StorePosition::at(1)).unwrap();
        let save = t.elapsed().as_secs_f32();
        let bytes: u64 = walk_bytes(dir.path());
        let t = Instant::now();
        let (loaded, _) = NoteIndex::load_snapshot(dir.path(), index.config().clone()).unwrap().unwrap();
        let load = t.elapsed().as_secs_f32();
        assert_eq!(loaded.len(), n);
        drop(loaded);
        println!(
            "snapshot: save {save:.2}s, {:.0} MB ({:.0} bytes/note); load {load:.2}s",
            bytes as f64 / 1e6,
            bytes as f64 / n as f64
        );
    }

    fn walk_bytes(p: &std::path::Path) -> u64 {
        std::fs::read_dir(p)
            .unwrap()
            .flatten()
            .map(|e| if e.path().is_dir() { walk_bytes(&e.path()) } else { e.metadata().map(|m| m.len()).unwrap_or(0) })
            .sum()
    }

    /// Two threads searching at once (the 2-core target), k = 20.
    fn concurrent_latency(index: &NoteIndex, ids: &[NoteId], vectors: &[Embedding]) {
        let per_thread = 2000;
        let samples: Vec<(f64, Option<f64>)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..2)
                .map(|t| {
                    s.spawn(move || {
                        let mut rng = Rng::new(100 + t);
                        (0..per_thread)
                            .map(|_| {
                                let q = rng.below(ids.len());
                                let c0 = thread_cpu_ns();
                                let t0 = Instant::now();
                                let hits = index.search(&vectors[q], 20, Some(&ids[q])).unwrap();
                                let wall = t0.elapsed().as_secs_f64() * 1e6;
                                assert_eq!(hits.len(), 20);
                                let cpu = c0.zip(thread_cpu_ns()).map(|(a, b)| b.saturating_sub(a) as f64 / 1e3);
                                (wall, cpu)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let mut wall: Vec<f64> = samples.iter().map(|s| s.0).collect();
        let mut cpu: Vec<f64> = samples.iter().filter_map(|s| s.1).collect();
        wall.sort_by(f64::total_cmp);
        cpu.sort_by(f64::total_cmp);
        println!(
            "2 threads x {per_thread} searches, k=20: wall p50 {:.0}us p99 {:.0}us; on-CPU p50 {:.0}us p99 {:.0}us",
            quantile(&wall, 0.5),
            quantile(&wall, 0.99),
            quantile(&cpu, 0.5),
            quantile(&cpu, 0.99)
        );
    }
}
