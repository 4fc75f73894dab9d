//! `/related`'s index search alone: `NoteIndex::related` (what `GET /related/{id}` runs on a
//! cache miss) and `search_with_ef` at several beam widths, k = 20, on N synthetic 128-d notes in
//! 100 gaussian blobs (the clustered set of `index/mod.rs`; noise 0.75), built once with the
//! default graph parameters. Each iteration asks for the next note of a fixed shuffled order, so
//! the queries spread over the whole index as uniform traffic does.
//!
//! `cargo bench --bench index` (N = 100,000: the build takes 35-120 s on 2 cores);
//! `NOTELLM_BENCH_INDEX_N=20000` for a quicker run. Recall at the same settings comes from
//! `scripts/loadtest.sh recall`; this measures time only.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use notellm_index::recall::{synthetic, synthetic_ids, Rng, Spread};
use notellm_index::{IndexConfig, NoteIndex, DEFAULT_EF_SEARCH};
use notellm_note::{Embedding, NoteId};

const DIM: usize = 128;
const K: usize = 20;

fn main() {
    let n: usize = std::env::var("NOTELLM_BENCH_INDEX_N").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let vectors = synthetic(n, DIM, Spread::Clustered { clusters: 100, noise: 0.75 }, 7);
    let ids = synthetic_ids(n);
    let items: Vec<(NoteId, Embedding)> = ids.iter().cloned().zip(vectors.iter().cloned()).collect();
    let index = NoteIndex::new(IndexConfig::new(DIM)).expect("default config is valid");
    let t = Instant::now();
    index.upsert_batch(&items).expect("dimensions match");
    eprintln!("built {n} x {DIM} in {:.1} s", t.elapsed().as_secs_f32());
    let mut rng = Rng::new(11);
    let order: Vec<usize> = (0..4096).map(|_| rng.below(n)).collect();

    let mut c = Criterion::default().configure_from_args().sample_size(30).warm_up_time(Duration::from_secs(1));
    let mut group = c.benchmark_group(format!("index_{n}"));
    let mut next = 0usize;
    group.bench_function(format!("related_k{K}_ef{DEFAULT_EF_SEARCH}"), |b| {
        b.iter(|| {
            next = (next + 1) % order.len();
            black_box(index.related(&ids[order[next]], K))
        })
    });
    for ef in [32, 64, 96, 128] {
        group.bench_with_input(BenchmarkId::new(format!("search_k{K}"), format!("ef{ef}")), &ef, |b, &ef| {
            b.iter(|| {
                next = (next + 1) % order.len();
                let q = order[next];
                black_box(index.search_with_ef(&vectors[q], K, Some(&ids[q]), ef))
            })
        });
    }
    group.finish();
    c.final_summary();
}
