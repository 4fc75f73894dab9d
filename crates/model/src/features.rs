//! Encoder features of images, cached on disk per (encoder, image). The encoder is frozen, so an
//! image's features never change while its weights do not: a run that meets an image again (a
//! second evaluation, a resumed training run, a re-index) reads them instead of encoding.
//!
//! ```text
//! ROOT/<encoder fingerprint>/<first 2 hex of the image hash>/<image hash>.f16
//!     u32 tokens, u32 width (little-endian), then tokens x width f16 (little-endian)
//! ```
//!
//! The fingerprint is the SHA-256 of the encoder's `vision.json` and weights
//! ([`VisionEncoder::fingerprint`]), so features of two encoders never mix. What is kept is the
//! last layer's states before the final norm (`VisionFeatures::hidden`), rounded to f16 (relative
//! error below 5e-4); [`VisionEncoder::final_norm`] gives the normed form. Files are written to a
//! temporary name and renamed, so a reader never sees half a file; a file that does not parse
//! is treated as missing and rewritten.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use half::f16;

use crate::error::{ModelError, Result};
use crate::image_input::ImageHash;
use crate::vision::VisionEncoder;

/// The per-encoder cache directory.
#[derive(Debug, Clone)]
pub struct FeatureCache {
    dir: PathBuf,
    tokens: usize,
    width: usize,
}

impl FeatureCache {
    /// The cache of `encoder` under `root`; the encoder must have been loaded from a directory.
    pub fn open(root: &Path, encoder: &VisionEncoder) -> Result<Self> {
        let fp = encoder.fingerprint().ok_or_else(|| {
            ModelError::Input("an encoder not loaded from a directory has no fingerprint to cache under".into())
        })?;
        let dir = root.join(&fp[..32]);
        std::fs::create_dir_all(&dir).map_err(|source| ModelError::Io { path: dir.clone(), source })?;
        Ok(Self { dir, tokens: encoder.config().tokens(), width: encoder.config().width })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, hash: &ImageHash) -> PathBuf {
        let hex = hash.to_hex();
        self.dir.join(&hex[..2]).join(format!("{hex}.f16"))
    }

    /// The cached features of one image, `[tokens, width]` f32, if present and whole.
    pub fn get(&self, hash: &ImageHash) -> Option<Tensor> {
        let bytes = std::fs::read(self.path(hash)).ok()?;
        if bytes.len() < 8
            || u32::from_le_bytes(bytes[0..4].try_into().ok()?) as usize != self.tokens
            || u32::from_le_bytes(bytes[4..8].try_into().ok()?) as usize != self.width
        {
            return None;
        }
        from_f16_bytes(&bytes[8..], self.tokens, self.width).ok()
    }

    /// Stores one image's features (`[tokens, width]`).
    pub fn put(&self, hash: &ImageHash, features: &Tensor) -> Result<()> {
        let (t, w) = features.dims2()?;
        if (t, w) != (self.tokens, self.width) {
            return Err(ModelError::Input(format!(
                "features {t} x {w} do not fit this cache's {} x {}",
                self.tokens, self.width
            )));
        }
        let mut bytes = Vec::with_capacity(8 + 2 * t * w);
        bytes.extend((t as u32).to_le_bytes());
        bytes.extend((w as u32).to_le_bytes());
        bytes.extend(to_f16_bytes(features)?);
        let path = self.path(hash);
        let parent = path.parent().unwrap_or(&self.dir).to_owned();
        std::fs::create_dir_all(&parent).map_err(|source| ModelError::Io { path: parent, source })?;
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        std::fs::write(&tmp, &bytes).map_err(|source| ModelError::Io { path: tmp.clone(), source })?;
        std::fs::rename(&tmp, &path).map_err(|source| ModelError::Io { path, source })
    }
}

/// One image's features (`[tokens, width]`) as little-endian f16: the form they are cached and
/// stored in (relative error below 5e-4).
pub fn to_f16_bytes(features: &Tensor) -> Result<Vec<u8>> {
    let values = features.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let mut bytes = Vec::with_capacity(2 * values.len());
    for v in values {
        bytes.extend(f16::from_f32(v).to_le_bytes());
    }
    Ok(bytes)
}

/// [`to_f16_bytes`]' inverse: `[tokens, width]` f32 on the CPU; refuses bytes of another size.
pub fn from_f16_bytes(bytes: &[u8], tokens: usize, width: usize) -> Result<Tensor> {
    if bytes.len() != 2 * tokens * width {
        return Err(ModelError::Input(format!(
            "{} bytes of features, not the {} of {tokens} x {width} f16 values",
            bytes.len(),
            2 * tokens * width
        )));
    }
    let values: Vec<f32> = bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect();
    Ok(Tensor::from_vec(values, (tokens, width), &Device::Cpu)?)
}

/// The features (`[n, tokens, width]`, before the final norm) of `images`, named by `hashes`:
/// read from `cache` where present, the rest encoded `batch` at a time and stored. Returns them
/// with how many were encoded.
pub fn features_of(
    encoder: &VisionEncoder,
    cache: Option<&FeatureCache>,
    images: &[(ImageHash, &image::DynamicImage)],
    batch: usize,
) -> Result<(Tensor, usize)> {
    let mut rows: Vec<Option<Tensor>> = images.iter().map(|(h, _)| cache.and_then(|c| c.get(h))).collect();
    let missing: Vec<usize> = (0..images.len()).filter(|&i| rows[i].is_none()).collect();
    for chunk in missing.chunks(batch.max(1)) {
        let imgs: Vec<&image::DynamicImage> = chunk.iter().map(|&i| images[i].1).collect();
        let hidden = encoder.encode(&imgs)?.hidden.to_device(&Device::Cpu)?;
        for (j, &i) in chunk.iter().enumerate() {
            let row = hidden.get(j)?;
            if let Some(c) = cache {
                c.put(&images[i].0, &row)?;
            }
            rows[i] = Some(row);
        }
    }
    let rows: Vec<Tensor> = rows.into_iter().map(|r| r.expect("every row is read or encoded")).collect();
    if rows.is_empty() {
        let cfg = encoder.config();
        return Ok((Tensor::zeros((0, cfg.tokens(), cfg.width), DType::F32, &Device::Cpu)?, 0));
    }
    Ok((Tensor::stack(&rows, 0)?, missing.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_round_trip_through_f16_bytes_and_wrong_sizes_are_refused() {
        let values: Vec<f32> = (0..12).map(|i| (i as f32 - 5.5) * 0.37).collect();
        let t = Tensor::from_vec(values.clone(), (3, 4), &Device::Cpu).unwrap();
        let bytes = to_f16_bytes(&t).unwrap();
        assert_eq!(bytes.len(), 24);
        let back = from_f16_bytes(&bytes, 3, 4).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (a, b) in values.iter().zip(&back) {
            assert!((a - b).abs() <= 5e-4 * a.abs().max(1e-3), "{a} vs {b}");
        }
        // Values already in f16 come back exactly: bytes -> tensor -> bytes is the identity.
        let again = to_f16_bytes(&from_f16_bytes(&bytes, 3, 4).unwrap()).unwrap();
        assert_eq!(again, bytes);
        assert!(from_f16_bytes(&bytes, 4, 4).is_err());
        assert!(from_f16_bytes(&bytes[1..], 3, 4).is_err());
    }
}
