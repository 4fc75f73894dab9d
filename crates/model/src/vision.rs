//! The frozen image encoder of NoteLLM-2: a DINOv2 vision transformer (ViT-S/14 as imported by
//! `notellm model import-vision`), in timm / candle-transformers names, so that candle's own
//! `dinov2` module loads the same file.
//!
//! This forward pass follows the graph it was imported from rather than candle's module: LayerNorm
//! eps 1e-6 (candle's uses 1e-5), and the stored 37x37 grid of position embeddings resized to the
//! image's grid by bicubic interpolation (a = -0.75, half-pixel centres, edges clamped: ONNX's
//! `Resize` and PyTorch's `interpolate`), where candle's resizes by nearest neighbour. The
//! golden-feature test compares it with ONNX Runtime on the original graph.
//!
//! CLIP (`"architecture": "clip"`, the paper's ViT-B/16) runs through candle-transformers'
//! `clip::vision_model` on weights in Hugging Face CLIP names (`vision_model.*`; a whole CLIP
//! checkpoint works as it is, its text half unused): the last layer's states are `hidden`, and
//! the model's `post_layernorm` over every token is `normed`.
//!
//! Input: `(batch, 3, image_size, image_size)` pixels, already normalised with
//! [`VisionConfig::mean`] / [`VisionConfig::std`]. Output: the last block's hidden states (CLS
//! first, then the patches row by row) before and after the final LayerNorm.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Conv2d, Conv2dConfig, LayerNorm, Linear, VarBuilder};
use candle_transformers::models::clip::text_model::Activation;
use candle_transformers::models::clip::vision_model::{ClipVisionConfig, ClipVisionTransformer};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// The encoder directory's configuration file.
pub const VISION_CONFIG_FILE: &str = "vision.json";
/// The encoder directory's weights.
pub const VISION_WEIGHTS_FILE: &str = "model.safetensors";

/// `VisionConfig::architecture` of a DINOv2 encoder (timm names).
pub const DINOV2: &str = "dinov2";
/// `VisionConfig::architecture` of a CLIP vision tower (Hugging Face names, `vision_model.*`).
pub const CLIP: &str = "clip";

/// What an encoder directory holds (`vision.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VisionConfig {
    /// `"dinov2"` or `"clip"`.
    pub architecture: String,
    /// Square input side in pixels.
    pub image_size: usize,
    pub patch_size: usize,
    pub width: usize,
    pub depth: usize,
    pub heads: usize,
    /// MLP hidden width = `mlp_ratio * width`.
    pub mlp_ratio: usize,
    pub layer_norm_eps: f64,
    /// Side of the square grid the stored position embeddings (after the CLS one) cover.
    pub pos_grid: usize,
    /// Per-channel normalisation of RGB values in [0, 1]: `(x - mean) / std`.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Where the weights came from (package, file, sha256), for people reading the directory.
    pub source: String,
}

impl VisionConfig {
    /// OpenAI's CLIP ViT-B/16 at 224 px (the NoteLLM-2 paper's encoder), for weights a user
    /// brings: 12 layers of width 768, 12 heads, CLIP's mean and std.
    pub fn clip_vit_b16(source: impl Into<String>) -> Self {
        Self {
            architecture: CLIP.into(),
            image_size: 224,
            patch_size: 16,
            width: 768,
            depth: 12,
            heads: 12,
            mlp_ratio: 4,
            layer_norm_eps: 1e-5,
            pos_grid: 14,
            mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
            std: [0.268_629_54, 0.261_302_6, 0.275_777_1],
            source: source.into(),
        }
    }

    /// Patches along one side of the input.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens per image: CLS + `grid()²` patches.
    pub fn tokens(&self) -> usize {
        1 + self.grid() * self.grid()
    }

    fn validate(&self) -> Result<()> {
        let bad =
            |field: &str, msg: String| ModelError::Field { file: VISION_CONFIG_FILE.into(), field: field.into(), msg };
        if self.architecture != DINOV2 && self.architecture != CLIP {
            return Err(bad(
                "architecture",
                format!("{:?} is not supported ({DINOV2:?} or {CLIP:?})", self.architecture),
            ));
        }
        if self.patch_size == 0 || self.image_size % self.patch_size != 0 || self.image_size == 0 {
            return Err(bad(
                "image_size",
                format!("{} is not a multiple of patch_size {}", self.image_size, self.patch_size),
            ));
        }
        if self.heads == 0 || self.width % self.heads != 0 {
            return Err(bad("heads", format!("width {} is not divisible by {} heads", self.width, self.heads)));
        }
        if self.depth == 0 || self.mlp_ratio == 0 || self.pos_grid == 0 {
            return Err(bad("depth", "depth, mlp_ratio and pos_grid must be positive".into()));
        }
        if self.architecture == CLIP && self.pos_grid != self.grid() {
            return Err(bad(
                "pos_grid",
                format!("CLIP keeps position embeddings for its own grid: {} must be {}", self.pos_grid, self.grid()),
            ));
        }
        if self.std.iter().any(|s| *s <= 0.0) {
            return Err(bad("std", format!("{:?} has a non-positive entry", self.std)));
        }
        Ok(())
    }

    /// An image as the encoder's input, `3 x image_size x image_size` values (channels first):
    /// transparency composited over white, the shorter side resized to `image_size` (bicubic,
    /// Catmull-Rom), the centre cropped, each channel normalised. An image already of that size
    /// is only normalised.
    pub fn pixels(&self, img: &image::DynamicImage) -> Vec<f32> {
        let s = self.image_size as u32;
        let rgba = img.to_rgba8();
        let (w, h) = rgba.dimensions();
        let rgba = if (w, h) == (s, s) {
            rgba
        } else {
            let scale = s as f64 / w.min(h).max(1) as f64;
            let (rw, rh) = (((w as f64 * scale).round() as u32).max(s), ((h as f64 * scale).round() as u32).max(s));
            let resized = if (rw, rh) == (w, h) {
                rgba
            } else {
                image::imageops::resize(&rgba, rw, rh, image::imageops::FilterType::CatmullRom)
            };
            image::imageops::crop_imm(&resized, (rw - s) / 2, (rh - s) / 2, s, s).to_image()
        };
        let plane = (s * s) as usize;
        let mut out = vec![0f32; 3 * plane];
        for (i, p) in rgba.pixels().enumerate() {
            let alpha = f32::from(p[3]) / 255.0;
            for c in 0..3 {
                let v = (f32::from(p[c]) / 255.0) * alpha + (1.0 - alpha);
                out[c * plane + i] = (v - self.mean[c]) / self.std[c];
            }
        }
        out
    }

    /// Reads and checks `dir/vision.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(VISION_CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io { path: path.clone(), source })?;
        let cfg: Self = serde_json::from_str(&text).map_err(|e| ModelError::Json { path, msg: e.to_string() })?;
        cfg.validate()?;
        Ok(cfg)
    }
}

/// The last block's states for a batch of images: `(batch, tokens, width)` each.
#[derive(Debug)]
pub struct VisionFeatures {
    /// Before the final LayerNorm (what NoteLLM-2's late fusion takes the CLS of).
    pub hidden: Tensor,
    /// After it (DINOv2's usual output).
    pub normed: Tensor,
}

struct Block {
    norm1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    ls1: Tensor,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    ls2: Tensor,
}

/// The DINOv2 forward pass's weights.
struct Dinov2 {
    patch: Conv2d,
    cls: Tensor,
    /// `(1, tokens, width)`: CLS position, then the grid resized to the input's.
    pos: Tensor,
    blocks: Vec<Block>,
    norm: LayerNorm,
}

enum Backend {
    Dinov2(Dinov2),
    Clip { tower: ClipVisionTransformer, post_norm: LayerNorm },
}

/// A loaded image encoder.
pub struct VisionEncoder {
    cfg: VisionConfig,
    backend: Backend,
    device: Device,
    /// SHA-256 (hex) of `vision.json` and the weights file, when loaded from a directory: what
    /// cached features are keyed by.
    fingerprint: Option<String>,
}

impl std::fmt::Debug for VisionEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VisionEncoder").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

impl VisionEncoder {
    /// Loads `dir/vision.json` and `dir/model.safetensors` (f32) onto `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let cfg = VisionConfig::load(dir)?;
        let weights = dir.join(VISION_WEIGHTS_FILE);
        if !weights.is_file() {
            return Err(ModelError::MissingFile { dir: dir.to_owned(), file: VISION_WEIGHTS_FILE.into() });
        }
        let fingerprint = dir_fingerprint(dir)?;
        // SAFETY: the file is memory-mapped read-only and not modified while loaded.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, device)? };
        Ok(Self { fingerprint: Some(fingerprint), ..Self::new(cfg, vb)? })
    }

    /// What identifies these weights (`None` for an encoder not loaded from a directory).
    pub fn fingerprint(&self) -> Option<&str> {
        self.fingerprint.as_deref()
    }

    /// The final norm over features' `hidden` states (`[.., width]`): their `normed` form.
    pub fn final_norm(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(match &self.backend {
            Backend::Dinov2(m) => m.norm.forward(hidden)?,
            Backend::Clip { post_norm, .. } => post_norm.forward(hidden)?,
        })
    }

    /// The encoder of `cfg.architecture` from its weights: DINOv2 in timm names
    /// (`cls_token`, `pos_embed`, `patch_embed.proj`, `blocks.N.*`, `norm`), CLIP in Hugging
    /// Face names (`vision_model.embeddings.*`, `vision_model.encoder.layers.N.*`, ...).
    pub fn new(cfg: VisionConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let device = vb.device().clone();
        let backend = if cfg.architecture == CLIP { Self::clip(&cfg, vb)? } else { Self::dinov2(&cfg, vb)? };
        Ok(Self { cfg, backend, device, fingerprint: None })
    }

    fn clip(cfg: &VisionConfig, vb: VarBuilder) -> Result<Backend> {
        let vb = vb.pp("vision_model");
        // candle draws a random class embedding when the file has none; refuse such a file.
        vb.pp("embeddings").get(cfg.width, "class_embedding")?;
        let c = ClipVisionConfig {
            embed_dim: cfg.width,
            activation: Activation::QuickGelu,
            intermediate_size: cfg.mlp_ratio * cfg.width,
            num_hidden_layers: cfg.depth,
            num_attention_heads: cfg.heads,
            projection_dim: cfg.width,
            num_channels: 3,
            image_size: cfg.image_size,
            patch_size: cfg.patch_size,
        };
        let tower = ClipVisionTransformer::new(vb.clone(), &c)?;
        let post_norm = candle_nn::layer_norm(cfg.width, cfg.layer_norm_eps, vb.pp("post_layernorm"))?;
        Ok(Backend::Clip { tower, post_norm })
    }

    fn dinov2(cfg: &VisionConfig, vb: VarBuilder) -> Result<Backend> {
        let (w, p) = (cfg.width, cfg.patch_size);
        let conv = Conv2dConfig { stride: p, ..Default::default() };
        let patch = candle_nn::conv2d(3, w, p, conv, vb.pp("patch_embed").pp("proj"))?;
        let cls = vb.get((1, 1, w), "cls_token")?;
        let stored = vb.get((1, 1 + cfg.pos_grid * cfg.pos_grid, w), "pos_embed")?;
        let pos = resize_positions(&stored, cfg.pos_grid, cfg.grid())?;
        let eps = cfg.layer_norm_eps;
        let blocks = (0..cfg.depth)
            .map(|i| {
                let vb = vb.pp("blocks").pp(i);
                Ok(Block {
                    norm1: candle_nn::layer_norm(w, eps, vb.pp("norm1"))?,
                    qkv: candle_nn::linear(w, 3 * w, vb.pp("attn").pp("qkv"))?,
                    proj: candle_nn::linear(w, w, vb.pp("attn").pp("proj"))?,
                    ls1: vb.get(w, "ls1.gamma")?,
                    norm2: candle_nn::layer_norm(w, eps, vb.pp("norm2"))?,
                    fc1: candle_nn::linear(w, cfg.mlp_ratio * w, vb.pp("mlp").pp("fc1"))?,
                    fc2: candle_nn::linear(cfg.mlp_ratio * w, w, vb.pp("mlp").pp("fc2"))?,
                    ls2: vb.get(w, "ls2.gamma")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = candle_nn::layer_norm(w, eps, vb.pp("norm"))?;
        Ok(Backend::Dinov2(Dinov2 { patch, cls, pos, blocks, norm }))
    }

    pub fn config(&self) -> &VisionConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// [`VisionConfig::pixels`] of each image, as one batch through [`forward`](Self::forward).
    pub fn encode<I: std::borrow::Borrow<image::DynamicImage>>(&self, images: &[I]) -> Result<VisionFeatures> {
        let s = self.cfg.image_size;
        let data: Vec<f32> = images.iter().flat_map(|img| self.cfg.pixels(img.borrow())).collect();
        self.forward(&Tensor::from_vec(data, (images.len(), 3, s, s), &self.device)?)
    }

    /// Runs normalised pixels `(batch, 3, image_size, image_size)` through the encoder.
    pub fn forward(&self, pixels: &Tensor) -> Result<VisionFeatures> {
        let s = self.cfg.image_size;
        let (b, c, h, w) = pixels.dims4()?;
        if (c, h, w) != (3, s, s) {
            return Err(ModelError::Input(format!("images must be (batch, 3, {s}, {s}); got ({b}, {c}, {h}, {w})")));
        }
        let _span = tracing::debug_span!("encode_images", size = b, architecture = %self.cfg.architecture).entered();
        match &self.backend {
            Backend::Dinov2(m) => m.forward(pixels, self.cfg.width, self.cfg.heads),
            Backend::Clip { tower, post_norm } => {
                let states = tower.output_hidden_states(pixels)?;
                // One entry per layer, then the pooled output.
                let hidden = states[states.len().saturating_sub(2)].clone();
                let normed = post_norm.forward(&hidden)?;
                Ok(VisionFeatures { hidden, normed })
            }
        }
    }
}

impl Dinov2 {
    fn forward(&self, pixels: &Tensor, width: usize, heads: usize) -> Result<VisionFeatures> {
        let b = pixels.dim(0)?;
        let patches = self.patch.forward(pixels)?.flatten_from(2)?.transpose(1, 2)?;
        let cls = self.cls.expand((b, 1, width))?;
        let mut x = Tensor::cat(&[&cls, &patches], 1)?.broadcast_add(&self.pos)?;
        for block in &self.blocks {
            x = Self::block(block, &x, heads)?;
        }
        let normed = self.norm.forward(&x)?;
        Ok(VisionFeatures { hidden: x, normed })
    }

    fn block(blk: &Block, x: &Tensor, heads: usize) -> Result<Tensor> {
        let (b, n, w) = x.dims3()?;
        let hd = w / heads;
        let qkv = blk.qkv.forward(&blk.norm1.forward(x)?)?.reshape((b, n, 3, heads, hd))?.permute((2, 0, 3, 1, 4))?;
        let (q, k, v) = (qkv.get(0)?.contiguous()?, qkv.get(1)?.contiguous()?, qkv.get(2)?.contiguous()?);
        let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?;
        let attn = candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v)?;
        let attn = blk.proj.forward(&attn.transpose(1, 2)?.reshape((b, n, w))?)?;
        let x = (x + attn.broadcast_mul(&blk.ls1)?)?;
        let mlp = blk.fc2.forward(&blk.fc1.forward(&blk.norm2.forward(&x)?)?.gelu_erf()?)?;
        Ok((&x + mlp.broadcast_mul(&blk.ls2)?)?)
    }
}

/// The fingerprint [`VisionEncoder::load`] gives the encoder in `dir`, without loading it: what a
/// re-index checks against the stored features before it starts.
pub fn dir_fingerprint(dir: &Path) -> Result<String> {
    fingerprint(&dir.join(VISION_CONFIG_FILE), &dir.join(VISION_WEIGHTS_FILE))
}

/// SHA-256 of the config file's and the weights' bytes, streamed.
fn fingerprint(config: &Path, weights: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut h = Sha256::new();
    for path in [config, weights] {
        let io = |source| ModelError::Io { path: path.to_owned(), source };
        let mut f = std::fs::File::open(path).map_err(io)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// `(1, 1 + from², w)` position embeddings as `(1, 1 + to², w)`: the CLS one kept, the grid
/// resized bicubically (separable, see [`cubic_weights`]).
fn resize_positions(stored: &Tensor, from: usize, to: usize) -> Result<Tensor> {
    let w = stored.dim(D::Minus1)?;
    let cls = stored.narrow(1, 0, 1)?;
    if from == to {
        return Ok(stored.clone());
    }
    let grid = stored.narrow(1, 1, from * from)?.reshape((from, from * w))?;
    let m = Tensor::from_vec(cubic_weights(from, to), (to, from), stored.device())?;
    // Rows: (to, from * w) -> (to, from, w); then columns, with the row axis moved aside.
    let rows = m.matmul(&grid)?.reshape((to, from, w))?;
    let cols = rows.transpose(0, 1)?.contiguous()?.reshape((from, to * w))?;
    let resized = m.matmul(&cols)?.reshape((to, to, w))?.transpose(0, 1)?.contiguous()?.reshape((1, to * to, w))?;
    Ok(Tensor::cat(&[&cls, &resized], 1)?)
}

/// The `(to, from)` matrix of 1-D bicubic resampling weights: output `o` samples the input at
/// `(o + 0.5) * from / to - 0.5` with Keys' kernel (a = -0.75); taps beyond the edge read the
/// edge sample.
fn cubic_weights(from: usize, to: usize) -> Vec<f32> {
    const A: f64 = -0.75;
    let kernel = |d: f64| {
        let d = d.abs();
        if d <= 1.0 {
            ((A + 2.0) * d - (A + 3.0)) * d * d + 1.0
        } else if d < 2.0 {
            ((A * d - 5.0 * A) * d + 8.0 * A) * d - 4.0 * A
        } else {
            0.0
        }
    };
    let mut m = vec![0f32; to * from];
    let scale = from as f64 / to as f64;
    for o in 0..to {
        let x = (o as f64 + 0.5) * scale - 0.5;
        let x0 = x.floor();
        let t = x - x0;
        for (tap, d) in [(-1i64, 1.0 + t), (0, t), (1, 1.0 - t), (2, 2.0 - t)] {
            let i = (x0 as i64 + tap).clamp(0, from as i64 - 1) as usize;
            m[o * from + i] += kernel(d) as f32;
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cubic_weights_sum_to_one_and_the_same_size_is_the_identity() {
        for (from, to) in [(37, 16), (16, 37), (5, 5), (4, 2)] {
            let m = cubic_weights(from, to);
            for o in 0..to {
                let row = &m[o * from..(o + 1) * from];
                let sum: f32 = row.iter().sum();
                assert!((sum - 1.0).abs() < 1e-5, "{from}->{to} row {o} sums to {sum}");
            }
        }
        // The same size is the identity.
        let m = cubic_weights(5, 5);
        for o in 0..5 {
            for i in 0..5 {
                assert!((m[o * 5 + i] - f32::from(u8::from(o == i))).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn resizing_positions_keeps_cls_and_resizes_a_hand_checked_grid() {
        // A 2x2 grid of one channel to 1x1: the centre sample (0.5, 0.5) weighs the four
        // samples and their clamped neighbours equally, so it is their mean.
        let stored = Tensor::new(&[[[9f32], [1.0], [2.0], [3.0], [4.0]]], &Device::Cpu).unwrap();
        let out = resize_positions(&stored, 2, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0], 9.0);
        assert!((out[1] - 2.5).abs() < 1e-5, "{out:?}");
    }

    fn small() -> VisionConfig {
        VisionConfig { image_size: 4, patch_size: 2, pos_grid: 2, ..dinov2_s() }
    }

    #[test]
    fn pixels_are_normalised_channels_first_with_transparency_over_white() {
        let cfg = VisionConfig { mean: [0.5, 0.0, 0.0], std: [0.5, 1.0, 2.0], ..small() };
        let mut img = image::RgbaImage::from_pixel(4, 4, image::Rgba([255, 0, 51, 255]));
        img.put_pixel(1, 0, image::Rgba([0, 0, 0, 0]));
        let px = cfg.pixels(&image::DynamicImage::ImageRgba8(img));
        assert_eq!(px.len(), 3 * 16);
        assert_eq!((px[0], px[16], px[32]), (1.0, 0.0, 0.1));
        // The transparent pixel is white.
        assert_eq!((px[1], px[17], px[33]), (1.0, 1.0, 0.5));
    }

    #[test]
    fn other_sizes_are_resized_by_the_shorter_side_and_centre_cropped() {
        let cfg = VisionConfig { mean: [0.0; 3], std: [1.0; 3], ..small() };
        // 8 x 4: left half black, right half white; the shorter side is already 4, so the
        // centre 4 x 4 (columns 2..6) is kept: two black columns, two white ones.
        let img = image::RgbImage::from_fn(8, 4, |x, _| if x < 4 { image::Rgb([0; 3]) } else { image::Rgb([255; 3]) });
        let px = cfg.pixels(&image::DynamicImage::ImageRgb8(img));
        assert_eq!(px.len(), 3 * 16);
        assert_eq!(&px[..4], &[0.0, 0.0, 1.0, 1.0]);
        // 2 x 2 up to 4 x 4: a uniform image stays uniform.
        let grey = image::RgbImage::from_pixel(2, 2, image::Rgb([51; 3]));
        let px = cfg.pixels(&image::DynamicImage::ImageRgb8(grey));
        assert!(px.iter().all(|v| (v - 0.2).abs() < 1e-6), "{px:?}");
    }

    fn dinov2_s() -> VisionConfig {
        VisionConfig {
            architecture: "dinov2".into(),
            image_size: 224,
            patch_size: 14,
            width: 384,
            depth: 12,
            heads: 6,
            mlp_ratio: 4,
            layer_norm_eps: 1e-6,
            pos_grid: 37,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            source: String::new(),
        }
    }

    #[test]
    fn configs_that_cannot_run_are_refused() {
        let good = dinov2_s();
        assert!(good.validate().is_ok());
        assert_eq!((good.grid(), good.tokens()), (16, 257));
        for bad in [
            VisionConfig { architecture: "clip".into(), ..good.clone() },
            VisionConfig { image_size: 225, ..good.clone() },
            VisionConfig { heads: 5, ..good.clone() },
            VisionConfig { std: [0.0, 1.0, 1.0], ..good.clone() },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
