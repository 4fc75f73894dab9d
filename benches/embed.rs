//! Embedding throughput: our decoder (`NoteLlm::embed_ids`) against candle-transformers' stock
//! qwen2 `Model` on the same weights, batches of 1, 8 and 32 notes of 128 tokens, for the tiny and
//! the ~100M-parameter presets. After criterion has measured, a table of notes/s and achieved
//! GFLOP/s is printed from criterion's own estimates (the table in docs/benchmarks.md).
//!
//! `cargo bench --bench embed` (set `NOTELLM_BENCH_PRESETS=tiny` for the quick half).

use std::path::Path;
use std::time::Duration;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_transformers::models::qwen2;
use criterion::{BenchmarkId, Criterion, Throughput};
use notellm_artifacts::init::{init_model, InitOptions, Preset};
use notellm_model::config::{DecoderConfig, Family};
use notellm_model::{CheckpointFiles, NoteLlm};

const TOKENS: usize = 128;
const BATCHES: [usize; 3] = [1, 8, 32];

/// Forward FLOPs of one `TOKENS`-token note: the projections plus the attention products
/// (QK^T and PV over the full square, as both implementations compute them).
fn flops_per_note(c: &DecoderConfig) -> f64 {
    let attn = 4.0 * (TOKENS * TOKENS * c.num_heads * c.head_dim * c.num_layers) as f64;
    c.flops_per_token() * TOKENS as f64 + attn
}

struct Setup {
    name: &'static str,
    ours: NoteLlm,
    stock: qwen2::Model,
    seqs: Vec<Vec<u32>>,
    cfg: DecoderConfig,
}

fn setup(preset: Preset, name: &'static str, dir: &Path) -> Setup {
    let out = dir.join(name);
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/notes.jsonl");
    let opts = InitOptions {
        preset,
        family: Family::Qwen2,
        vocab_size: 1000,
        embedding_dim: 128,
        seed: 1,
        shards: 1,
        model_version: None,
    };
    init_model(&corpus, &out, &opts).expect("init");
    let mut ours = NoteLlm::load(&out, &Device::Cpu).expect("load ours");
    ours.set_prefix_reuse(false).expect("prefix off");
    let files = CheckpointFiles::open(&out).expect("open");
    let cfg = files.decoder.clone();
    let stock = qwen2::Model::new(&cfg.to_candle_qwen2(), files.var_builder(DType::F32, &Device::Cpu).expect("vb"))
        .expect("stock");
    // Deterministic "notes" of exactly TOKENS ordinary (non-special) tokens.
    let vocab = cfg.vocab_size as u32;
    let seqs =
        (0..32u32).map(|i| (0..TOKENS as u32).map(|t| 4 + (i * 7919 + t * 104_729) % (vocab - 4)).collect()).collect();
    Setup { name, ours, stock, seqs, cfg }
}

fn stock_embed(stock: &mut qwen2::Model, seqs: &[Vec<u32>]) -> Vec<Vec<f32>> {
    stock.clear_kv_cache();
    let flat: Vec<u32> = seqs.concat();
    let input = Tensor::from_vec(flat, (seqs.len(), TOKENS), &Device::Cpu).expect("input");
    let hidden = stock.forward(&input, 0, None).expect("forward");
    hidden.i((.., TOKENS - 1)).expect("last").to_vec2::<f32>().expect("vec")
}

fn main() {
    let presets = std::env::var("NOTELLM_BENCH_PRESETS").unwrap_or_else(|_| "tiny,base".into());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut setups = Vec::new();
    if presets.contains("tiny") {
        setups.push(setup(Preset::Tiny, "tiny", dir.path()));
    }
    if presets.contains("base") {
        setups.push(setup(Preset::Base, "base", dir.path()));
    }
    let mut c = Criterion::default().configure_from_args().sample_size(10).warm_up_time(Duration::from_secs(1));
    for s in setups.iter_mut() {
        let mut g = c.benchmark_group(format!("embed_{}", s.name));
        g.measurement_time(Duration::from_secs(if s.name == "base" { 20 } else { 5 }));
        for &b in &BATCHES {
            g.throughput(Throughput::Elements(b as u64));
            let seqs = &s.seqs[..b];
            g.bench_with_input(BenchmarkId::new("ours", b), seqs, |bench, seqs| {
                bench.iter(|| s.ours.embed_ids(seqs).expect("embed"))
            });
            let stock = &mut s.stock;
            g.bench_with_input(BenchmarkId::new("stock_qwen2", b), seqs, |bench, seqs| {
                bench.iter(|| stock_embed(stock, seqs))
            });
        }
        g.finish();
    }
    c.final_summary();
    print_table(&setups);
}

/// Mean seconds per iteration from criterion's estimates file, if the bench ran.
fn mean_secs(group: &str, imp: &str, batch: usize) -> Option<f64> {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| format!("{}/target", env!("CARGO_MANIFEST_DIR")));
    let p = format!("{target}/criterion/{group}/{imp}/{batch}/new/estimates.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()?;
    Some(v["mean"]["point_estimate"].as_f64()? / 1e9)
}

fn print_table(setups: &[Setup]) {
    println!("\n| preset | params | batch | ours notes/s | ours GFLOP/s | stock qwen2 notes/s | stock GFLOP/s | ours / stock |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for s in setups {
        let gflop = flops_per_note(&s.cfg) / 1e9;
        for &b in &BATCHES {
            let group = format!("embed_{}", s.name);
            let (Some(o), Some(k)) = (mean_secs(&group, "ours", b), mean_secs(&group, "stock_qwen2", b)) else {
                continue;
            };
            let (on, kn) = (b as f64 / o, b as f64 / k);
            println!(
                "| {} | {:.1}M | {b} | {on:.1} | {:.1} | {kn:.1} | {:.1} | {:.2} |",
                s.name,
                s.cfg.num_parameters() as f64 / 1e6,
                on * gflop,
                kn * gflop,
                on / kn
            );
        }
    }
}
