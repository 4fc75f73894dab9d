//! Image-only systems of `notellm eval`, for datasets whose notes have images
//! (`notellm data appstream`): do the images carry the relatedness signal at all?
//!
//! - **16x16 raw pixels** (the control): the image composited over white, resized to 16 x 16
//!   (a box filter: the mean colour of each cell), its 768 RGB values in [0, 1] centred on their
//!   own mean, so that the cosine of two is the correlation of their pixels and a shared white
//!   background does not make every pair alike.
//! - **the frozen encoder's CLS feature**: `VisionEncoder::encode` (resize, crop, normalise), the
//!   CLS token after the final norm (DINOv2's usual image feature), in batches, with the
//!   features cached per image under `$NOTELLM_CACHE/image-features` so a second run encodes
//!   nothing.
//!
//! Every note of the pool must have an image; the first one without is named.

use crate::data::Dataset;
use crate::eval::{EvalError, Result};
use notellm_model::features::{features_of, FeatureCache};
use notellm_model::image_input::{ImageHash, ImageInput};
use notellm_model::multimodal::{MiclEmbedding, MultimodalNoteLlm};
use notellm_model::vision::VisionEncoder;
use notellm_note::{Embedding, Note, NoteId};

/// The table row of the pixel control.
pub const PIXELS_NAME: &str = "16x16 raw pixels (image only)";
/// Side of the pixel control's grid.
pub const PIXEL_GRID: u32 = 16;

/// The images of `ids` ([`Dataset::image`]); an error names the first note without one.
pub fn load_images(data: &Dataset, ids: &[NoteId]) -> Result<Vec<ImageInput>> {
    ids.iter()
        .map(|id| {
            data.image(id)
                .map_err(|e| EvalError::Input(format!("{e}: image-only and multimodal systems need one per note")))
        })
        .collect()
}

/// The pixel control's vector of one image: 16 x 16 cells x RGB, centred on its mean.
pub fn pixel_vector(img: &image::DynamicImage) -> Vec<f32> {
    let rgba = img.to_rgba8();
    let (w, h) = rgba.dimensions();
    let g = PIXEL_GRID as usize;
    let mut sums = vec![0f64; g * g * 3];
    let mut counts = vec![0u32; g * g];
    for (x, y, p) in rgba.enumerate_pixels() {
        let cell = (y as usize * g / h.max(1) as usize) * g + x as usize * g / w.max(1) as usize;
        let alpha = f64::from(p[3]) / 255.0;
        for c in 0..3 {
            sums[cell * 3 + c] += (f64::from(p[c]) / 255.0) * alpha + (1.0 - alpha);
        }
        counts[cell] += 1;
    }
    let mut v: Vec<f32> = sums
        .iter()
        .enumerate()
        .map(|(i, s)| match counts[i / 3] {
            0 => 1.0, // an image smaller than the grid: empty cells are background
            n => (s / f64::from(n)) as f32,
        })
        .collect();
    let mean = v.iter().sum::<f32>() / v.len() as f32;
    v.iter_mut().for_each(|x| *x -= mean);
    v
}

/// L2-normalised pixel vectors; an image of one flat colour (no variance) gets a tiny constant
/// direction so that it still has an embedding (it matches nothing in particular).
pub fn pixel_embeddings(images: &[&image::DynamicImage]) -> Result<Vec<Embedding>> {
    images
        .iter()
        .map(|img| {
            let mut v = pixel_vector(img);
            if v.iter().all(|x| x.abs() < 1e-6) {
                v.iter_mut().for_each(|x| *x = 1e-3);
            }
            Embedding::normalised(v).map_err(|e| EvalError::Input(format!("pixel vector: {e}")))
        })
        .collect()
}

/// The encoder's normed CLS feature of each image, `batch` images per forward pass; features
/// are read from and written to `cache` ([`notellm_model::features`]).
pub fn encoder_embeddings(
    encoder: &VisionEncoder,
    cache: Option<&FeatureCache>,
    images: &[ImageInput],
    batch: usize,
) -> Result<Vec<Embedding>> {
    let named: Vec<(ImageHash, &image::DynamicImage)> = images.iter().map(|i| (i.hash, &i.image)).collect();
    let (hidden, encoded) = features_of(encoder, cache, &named, batch)?;
    tracing::info!(images = images.len(), encoded, cached = images.len() - encoded, "image features");
    let cls = encoder.final_norm(&hidden.narrow(1, 0, 1)?.squeeze(1)?)?.to_vec2::<f32>()?;
    cls.into_iter()
        .map(|v| Embedding::normalised(v).map_err(|e| EvalError::Input(format!("encoder feature: {e}"))))
        .collect()
}

/// NoteLLM-2's two embeddings (mICL prompt with the image, late fusion) of `notes`, each with
/// its image: the note embedding (retrieval) and the image embedding (the state before
/// `<IMG_EMB>`, which sees the image alone). Features through `cache`, `batch` notes per
/// forward pass.
pub fn multimodal_embeddings(
    model: &MultimodalNoteLlm,
    cache: Option<&FeatureCache>,
    notes: &[Note],
    images: &[ImageInput],
    batch: usize,
) -> Result<Vec<MiclEmbedding>> {
    if notes.len() != images.len() {
        return Err(EvalError::Input(format!("{} notes but {} images", notes.len(), images.len())));
    }
    let named: Vec<(ImageHash, &image::DynamicImage)> = images.iter().map(|i| (i.hash, &i.image)).collect();
    let (hidden, encoded) = features_of(model.encoder(), cache, &named, batch)?;
    tracing::info!(images = images.len(), encoded, "image features");
    let bar = crate::progress::bar("NoteLLM-2 embed", notes.len() as u64);
    let mut out = Vec::with_capacity(notes.len());
    for (i, chunk) in notes.chunks(batch.max(1)).enumerate() {
        let start = i * batch.max(1);
        let feats = hidden.narrow(0, start, chunk.len())?.to_device(model.encoder().device())?;
        out.extend(model.embed(chunk, &feats)?);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solid(w: u32, h: u32, rgb: [u8; 3]) -> image::DynamicImage {
        image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(w, h, image::Rgb(rgb)))
    }

    #[test]
    fn pixel_vectors_average_cells_and_composite_over_white() {
        // Left half black, right half white, 32 x 32: each cell is one colour.
        let mut img = image::RgbImage::new(32, 32);
        for (x, _, p) in img.enumerate_pixels_mut() {
            *p = image::Rgb(if x < 16 { [0, 0, 0] } else { [255, 255, 255] });
        }
        let v = pixel_vector(&image::DynamicImage::ImageRgb8(img));
        assert_eq!(v.len(), 768);
        // Mean 0.5: black cells -0.5, white cells +0.5.
        assert!((v[0] + 0.5).abs() < 1e-6 && (v[15 * 3] - 0.5).abs() < 1e-6, "{} {}", v[0], v[45]);
        // A fully transparent image is white, i.e. flat: all zeros after centring.
        let clear = image::DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(20, 20, image::Rgba([0, 0, 0, 0])));
        assert!(pixel_vector(&clear).iter().all(|x| x.abs() < 1e-6));
        // A 4 x 4 image fills the grid without panicking.
        assert_eq!(pixel_vector(&solid(4, 4, [10, 200, 30])).len(), 768);
    }

    #[test]
    fn similar_images_are_closer_than_different_ones() {
        let red = pixel_embeddings(&[&solid(64, 64, [220, 10, 10])]).unwrap();
        let mut half = image::RgbImage::from_pixel(64, 64, image::Rgb([220, 10, 10]));
        for (x, _, p) in half.enumerate_pixels_mut() {
            if x > 48 {
                *p = image::Rgb([10, 10, 220]);
            }
        }
        let mostly_red = pixel_embeddings(&[&image::DynamicImage::ImageRgb8(half)]).unwrap();
        let blue = pixel_embeddings(&[&solid(64, 64, [10, 10, 220])]).unwrap();
        assert!(red[0].cosine(&mostly_red[0]) > red[0].cosine(&blue[0]));
        // A flat image still gets a unit embedding.
        let flat = pixel_embeddings(&[&solid(8, 8, [128, 128, 128])]).unwrap();
        assert!((flat[0].as_slice().iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-5);
    }
}
