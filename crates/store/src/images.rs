//! Notes' images: what NoteLLM-2 needs of a note's image, kept beside the note so that neither a
//! restart nor a re-index with the same image encoder ever needs the image bytes again.
//!
//! A row of `note_images` holds the SHA-256 of the image's bytes and the frozen encoder's
//! features of it (`tokens x width` f16), tagged with the encoder's fingerprint. The row is
//! written, replaced and removed in the note's own write transaction ([`crate::NoteWrite::image`],
//! [`Store::delete_note`]): a note without an image has none. The bytes themselves are not kept:
//! a checkpoint with another encoder needs the images sent again.

use super::{Backend, Result, Store, StoreError};

/// A note's image as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredImage {
    /// SHA-256 of the image bytes, 64 lower-case hex digits.
    pub image_hash: String,
    /// The fingerprint of the encoder that made `features`.
    pub encoder: String,
    pub tokens: u32,
    pub width: u32,
    /// `tokens x width` f16, little-endian.
    pub features: Vec<u8>,
}

impl StoredImage {
    /// Refuses an image whose hash is not hex SHA-256 or whose features do not fill its shape.
    pub(crate) fn check(&self, id: &str) -> Result<()> {
        let hex =
            self.image_hash.len() == 64 && self.image_hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let len = 2 * u64::from(self.tokens) * u64::from(self.width);
        if !hex || self.encoder.is_empty() || self.tokens == 0 || self.width == 0 || self.features.len() as u64 != len {
            return Err(StoreError::corrupt(
                id,
                format!(
                    "image {:?} of encoder {:?}: {} bytes of features for {} x {}",
                    self.image_hash,
                    self.encoder,
                    self.features.len(),
                    self.tokens,
                    self.width
                ),
            ));
        }
        Ok(())
    }
}

/// Replaces a note's image row in its write transaction: `$1` note id, then the image.
pub(crate) const INSERT_IMAGE: &str =
    "INSERT INTO note_images (note_id, image_hash, encoder, tokens, width, features) VALUES ($1, $2, $3, $4, $5, $6)";

pub(crate) const DELETE_IMAGE: &str = "DELETE FROM note_images WHERE note_id = $1";

/// A row of `note_images`.
#[derive(sqlx::FromRow)]
pub(crate) struct ImageRow {
    note_id: String,
    image_hash: String,
    encoder: String,
    tokens: i64,
    width: i64,
    features: Vec<u8>,
}

impl ImageRow {
    pub(crate) fn decode(self) -> Result<StoredImage> {
        let dim = |v: i64| u32::try_from(v).map_err(|_| StoreError::corrupt(&self.note_id, "image shape out of range"));
        let image = StoredImage {
            tokens: dim(self.tokens)?,
            width: dim(self.width)?,
            image_hash: self.image_hash,
            encoder: self.encoder,
            features: self.features,
        };
        image.check(&self.note_id)?;
        Ok(image)
    }
}

impl Store {
    /// The stored image of note `id`, or `None` when it has none (or does not exist).
    pub async fn image(&self, id: &notellm_note::NoteId) -> Result<Option<StoredImage>> {
        dispatch!(self, b => b.image(id).await)
    }

    /// Some stored note's image with this content hash and encoder: a new note with the same
    /// image reuses its features instead of encoding it again.
    pub async fn image_by_hash(&self, encoder: &str, image_hash: &str) -> Result<Option<StoredImage>> {
        dispatch!(self, b => b.image_by_hash(encoder, image_hash).await)
    }

    /// The encoders the stored images' features come from, with how many images each: a
    /// re-index refuses a checkpoint whose encoder would need the image bytes again.
    pub async fn image_encoders(&self) -> Result<Vec<(String, u64)>> {
        let rows = dispatch!(self, b => b.image_encoders().await)?;
        Ok(rows.into_iter().map(|(e, n)| (e, u64::try_from(n).unwrap_or(0))).collect())
    }
}

/// SQL of the reads above, the same in both dialects.
pub(crate) const IMAGE_OF: &str = "SELECT note_id, image_hash, encoder, tokens, width, features \
     FROM note_images WHERE note_id = $1";
pub(crate) const IMAGE_BY_HASH: &str = "SELECT note_id, image_hash, encoder, tokens, width, features \
     FROM note_images WHERE encoder = $1 AND image_hash = $2 LIMIT 1";
pub(crate) const IMAGE_ENCODERS: &str =
    "SELECT encoder, COUNT(*) AS n FROM note_images GROUP BY encoder ORDER BY encoder";

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> StoredImage {
        StoredImage { image_hash: "ab".repeat(32), encoder: "fp".into(), tokens: 2, width: 3, features: vec![0; 12] }
    }

    #[test]
    fn an_image_must_fill_its_shape_and_carry_a_sha256() {
        assert!(image().check("n").is_ok());
        assert!(StoredImage { features: vec![0; 11], ..image() }.check("n").is_err());
        assert!(StoredImage { image_hash: "AB".repeat(32), ..image() }.check("n").is_err());
        assert!(StoredImage { image_hash: "ab".into(), ..image() }.check("n").is_err());
        assert!(StoredImage { tokens: 0, features: vec![], ..image() }.check("n").is_err());
        assert!(StoredImage { encoder: String::new(), ..image() }.check("n").is_err());
    }
}
