//! Byte- and text-level encodings shared by both backends: embeddings as little-endian f32
//! blobs, hashtags as JSON text, timestamps as microseconds, the note content hash, and the row
//! types that turn database columns back into domain values (never panicking on bad data).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use notellm_note::hash::Fnv1a128;
use notellm_note::{Embedding, ModelVersion, Note, NoteId};

use super::{Change, NoteLabels, StoreError, StoredNote};

/// Encodes an embedding as `dim` little-endian f32 values (`4 * dim` bytes).
pub(crate) fn encode_embedding(embedding: &Embedding) -> Vec<u8> {
    embedding.as_slice().iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Decodes an embedding blob written by [`encode_embedding`], checking it against the stored
/// `dim`. Any mismatch, or a vector that is empty, zero or not finite, is a `Corrupt` error.
pub(crate) fn decode_embedding(id: &str, bytes: &[u8], dim: i64) -> Result<Embedding, StoreError> {
    let dim = usize::try_from(dim)
        .ok()
        .filter(|d| *d > 0)
        .ok_or_else(|| StoreError::corrupt(id, format!("invalid embedding dim {dim}")))?;
    if Some(bytes.len()) != dim.checked_mul(4) {
        return Err(StoreError::corrupt(id, format!("embedding is {} bytes, expected {dim} x 4", bytes.len())));
    }
    let values = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    Embedding::from_unit(values).map_err(|_| StoreError::corrupt(id, "embedding is zero or not finite"))
}

/// The stored `dim` column for an embedding.
pub(crate) fn embedding_dim(embedding: &Embedding) -> Result<i32, StoreError> {
    i32::try_from(embedding.dim())
        .map_err(|_| StoreError::Config(format!("embedding dim {} too large", embedding.dim())))
}

/// Hashtags as a JSON array of strings (infallible: a `Value` always displays).
pub(crate) fn encode_hashtags(tags: &[String]) -> String {
    serde_json::Value::Array(tags.iter().cloned().map(serde_json::Value::String).collect()).to_string()
}

pub(crate) fn decode_hashtags(id: &str, json: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(json)
        .map_err(|e| StoreError::corrupt(id, format!("hashtags are not a JSON string array: {e}")))
}

/// Microseconds since the Unix epoch, as SQLite stores timestamps.
pub(crate) fn now_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX)).unwrap_or(0)
}

pub(crate) fn time_from_micros(id: &str, us: i64) -> Result<SystemTime, StoreError> {
    let t = if us >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_micros(us.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_micros(us.unsigned_abs()))
    };
    t.ok_or_else(|| StoreError::corrupt(id, format!("timestamp {us} out of range")))
}

/// The latest note row and the latest tombstone at or below a seq (`$1`); the later of the two
/// is the store's witness of that position (`Store::witness`). Both use the unique seq indexes.
pub(crate) const WITNESS: [&str; 2] = [
    "SELECT note_id, seq FROM notes WHERE seq <= $1 ORDER BY seq DESC LIMIT 1",
    "SELECT note_id, seq FROM note_tombstones WHERE seq <= $1 ORDER BY seq DESC LIMIT 1",
];

/// The later of the rows [`WITNESS`] found (a note row, a tombstone), its id checked.
pub(crate) fn later_witness(rows: Vec<Option<(String, i64)>>) -> Result<Option<(NoteId, i64)>, StoreError> {
    rows.into_iter().flatten().max_by_key(|(_, seq)| *seq).map(|(id, seq)| Ok((parse_id(&id)?, seq))).transpose()
}

/// A note's row seq, then its tombstone's (`$1` the id): at most one of them exists.
pub(crate) const CURRENT_SEQ: [&str; 2] =
    ["SELECT seq FROM notes WHERE note_id = $1", "SELECT seq FROM note_tombstones WHERE note_id = $1"];

pub(crate) fn parse_id(id: &str) -> Result<NoteId, StoreError> {
    NoteId::parse(id).map_err(|e| StoreError::corrupt(id, e.to_string()))
}

/// The content hash of a note: a stable fingerprint of title, content, hashtags (in order) and
/// category, used to detect an unchanged re-PUT before spending an embedding on it.
///
/// The algorithm is FNV-1a 128 over an unambiguous framing (a version tag, then each field as a
/// tag byte + little-endian u64 length + UTF-8 bytes; hashtags as a count then each tag;
/// category as a presence byte), rendered as `"fnv1a128:<32 hex digits>"`. FNV is not
/// cryptographic: a deliberately colliding edit would only stop its own author's note from being
/// re-embedded. The prefix names the algorithm, so switching to SHA-256 later only costs one
/// re-embedding per note on its next PUT.
pub fn content_hash(note: &Note) -> String {
    content_hash_with_image(note, None)
}

/// [`content_hash`] of a note with an image, named by the SHA-256 (hex) of its bytes: another
/// image is another content. Without an image it is `content_hash(note)` exactly, so the hashes
/// stored before images existed still say "unchanged".
pub fn content_hash_with_image(note: &Note, image_hash: Option<&str>) -> String {
    let mut h = Fnv1a128::new();
    h.write(b"notellm-note-v1");
    field(&mut h, b'T', note.title.as_bytes());
    field(&mut h, b'C', note.content.as_bytes());
    h.write(b"H");
    h.write(&(note.hashtags.len() as u64).to_le_bytes());
    for tag in &note.hashtags {
        field(&mut h, b't', tag.as_bytes());
    }
    match &note.category {
        Some(c) => field(&mut h, b'K', c.as_bytes()),
        None => {
            h.write(b"k");
        }
    }
    if let Some(image) = image_hash {
        field(&mut h, b'I', image.as_bytes());
    }
    format!("fnv1a128:{:032x}", h.finish())
}

/// `tag`, then `bytes` framed by their length.
fn field(h: &mut Fnv1a128, tag: u8, bytes: &[u8]) {
    h.write(&[tag]);
    h.write(&(bytes.len() as u64).to_le_bytes());
    h.write(bytes);
}

/// A full `notes` row. Postgres selects cast `dim` to BIGINT and timestamps to microseconds so
/// that one row type serves both backends.
#[derive(sqlx::FromRow)]
pub(crate) struct NoteRow {
    note_id: String,
    title: String,
    content: String,
    hashtags: String,
    category: Option<String>,
    content_hash: String,
    embedding: Vec<u8>,
    dim: i64,
    model_version: String,
    image_hash: Option<String>,
    seq: i64,
    created_us: i64,
    updated_us: i64,
}

impl NoteRow {
    pub(crate) fn decode(self) -> Result<StoredNote, StoreError> {
        let id = &self.note_id;
        Ok(StoredNote {
            id: parse_id(id)?,
            note: Note {
                hashtags: decode_hashtags(id, &self.hashtags)?,
                title: self.title,
                content: self.content,
                category: self.category,
            },
            content_hash: self.content_hash,
            embedding: decode_embedding(id, &self.embedding, self.dim)?,
            model_version: ModelVersion(self.model_version),
            image_hash: self.image_hash,
            seq: self.seq,
            created_at: time_from_micros(id, self.created_us)?,
            updated_at: time_from_micros(id, self.updated_us)?,
        })
    }
}

/// The hot-path projection: just the vector and its model.
#[derive(sqlx::FromRow)]
pub(crate) struct EmbeddingRow {
    embedding: Vec<u8>,
    dim: i64,
    model_version: String,
}

impl EmbeddingRow {
    pub(crate) fn decode(self, id: &NoteId) -> Result<(Embedding, ModelVersion), StoreError> {
        let e = decode_embedding(id.as_str(), &self.embedding, self.dim)?;
        Ok((e, ModelVersion(self.model_version)))
    }
}

/// The labels projection of `labels`: what a note votes with in `/suggest-tags`.
#[derive(sqlx::FromRow)]
pub(crate) struct LabelRow {
    note_id: String,
    hashtags: String,
    category: Option<String>,
}

impl LabelRow {
    pub(crate) fn decode(self) -> Result<(NoteId, NoteLabels), StoreError> {
        let hashtags = decode_hashtags(&self.note_id, &self.hashtags)?;
        Ok((parse_id(&self.note_id)?, NoteLabels { hashtags, category: self.category }))
    }
}

/// `SELECT <columns> FROM notes WHERE note_id IN ($1, .., $n)` for `n` ids (both backends
/// number their parameters this way).
pub(crate) fn select_by_ids(columns: &str, n: usize) -> String {
    let params: Vec<String> = (1..=n).map(|i| format!("${i}")).collect();
    format!("SELECT {columns} FROM notes WHERE note_id IN ({})", params.join(", "))
}

/// A row of `scan_embeddings`.
#[derive(sqlx::FromRow)]
pub(crate) struct ScanRow {
    note_id: String,
    embedding: Vec<u8>,
    dim: i64,
    model_version: String,
}

impl ScanRow {
    pub(crate) fn decode(self) -> Result<(NoteId, Embedding, ModelVersion), StoreError> {
        let e = decode_embedding(&self.note_id, &self.embedding, self.dim)?;
        Ok((parse_id(&self.note_id)?, e, ModelVersion(self.model_version)))
    }
}

/// A row of `changes_since`: a live note (embedding present) or a tombstone (all NULL).
#[derive(sqlx::FromRow)]
pub(crate) struct ChangeRow {
    note_id: String,
    seq: i64,
    embedding: Option<Vec<u8>>,
    dim: Option<i64>,
    model_version: Option<String>,
}

impl ChangeRow {
    pub(crate) fn decode(self) -> Result<Change, StoreError> {
        let id = parse_id(&self.note_id)?;
        match (self.embedding, self.dim, self.model_version) {
            (Some(bytes), Some(dim), Some(mv)) => Ok(Change::Upsert {
                embedding: decode_embedding(&self.note_id, &bytes, dim)?,
                id,
                model_version: ModelVersion(mv),
                seq: self.seq,
            }),
            (None, None, None) => Ok(Change::Delete { id, seq: self.seq }),
            _ => Err(StoreError::corrupt(&self.note_id, "partially NULL change row")),
        }
    }
}

/// Collects decoded rows, failing on the first corrupt one.
pub(crate) fn decode_all<R, T>(rows: Vec<R>, f: impl Fn(R) -> Result<T, StoreError>) -> Result<Vec<T>, StoreError> {
    rows.into_iter().map(f).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn content_hash_is_stable_and_field_sensitive() {
        let n = Note {
            title: "Autumn in Kyoto".into(),
            content: "maple leaves".into(),
            hashtags: vec!["travel".into(), "japan".into()],
            category: Some("travel".into()),
        };
        let h = content_hash(&n);
        assert!(h.starts_with("fnv1a128:") && h.len() == 9 + 32, "{h}");
        assert_eq!(h, content_hash(&n.clone()));
        // Moving bytes between fields changes the hash (framing is unambiguous).
        let shifted = Note { title: "Autumn in Kyotomaple".into(), content: " leaves".into(), ..n.clone() };
        assert_ne!(h, content_hash(&shifted));
        let merged_tags = Note { hashtags: vec!["traveljapan".into()], ..n.clone() };
        assert_ne!(h, content_hash(&merged_tags));
        let no_cat = Note { category: None, ..n.clone() };
        let empty_cat = Note { category: Some(String::new()), ..n.clone() };
        assert_ne!(content_hash(&no_cat), content_hash(&empty_cat));
        let reordered = Note { hashtags: vec!["japan".into(), "travel".into()], ..n };
        assert_ne!(h, content_hash(&reordered));
    }

    #[test]
    fn embedding_blob_errors_are_typed() {
        let e = Embedding::normalised(vec![1.0, 2.0, 2.0]).unwrap();
        let bytes = encode_embedding(&e);
        assert_eq!(bytes.len(), 12);
        assert!(decode_embedding("x", &bytes, 3).is_ok());
        for (b, d) in [(&bytes[..11], 3), (&bytes[..], 4), (&bytes[..], 0), (&bytes[..], -1)] {
            assert!(matches!(decode_embedding("x", b, d), Err(StoreError::Corrupt { .. })));
        }
        let nan = f32::NAN.to_le_bytes();
        assert!(matches!(decode_embedding("x", &nan, 1), Err(StoreError::Corrupt { .. })));
        assert!(matches!(decode_embedding("x", &[0; 8], 2), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn hashtags_round_trip_and_reject_garbage() {
        let tags = vec!["a\"b".to_string(), "ü".to_string(), String::new()];
        assert_eq!(decode_hashtags("x", &encode_hashtags(&tags)).unwrap(), tags);
        assert!(decode_hashtags("x", "{not json").is_err());
        assert!(decode_hashtags("x", "[1,2]").is_err());
    }

    proptest! {
        #[test]
        fn embedding_round_trip(v in proptest::collection::vec(-1.0f32..1.0, 1..64)) {
            prop_assume!(v.iter().any(|x| *x != 0.0));
            let e = Embedding::normalised(v).unwrap();
            let d = decode_embedding("x", &encode_embedding(&e), e.dim() as i64).unwrap();
            prop_assert_eq!(d.dim(), e.dim());
            for (a, b) in d.as_slice().iter().zip(e.as_slice()) {
                prop_assert!((a - b).abs() <= 1e-6);
            }
        }
    }
}
