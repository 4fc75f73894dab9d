//! Domain types shared by every layer: a note, its id, its embedding and the model version that
//! produced it. Values are validated once, when they are built, so that lower layers can trust them.

pub mod hash;

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest note id accepted (bytes; ids are ASCII).
pub const MAX_NOTE_ID_LEN: usize = 128;

/// Why a value could not become a domain type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("note id must be 1-{MAX_NOTE_ID_LEN} characters of [A-Za-z0-9._:-], not `.` or `..`, got {0:?}")]
    BadId(String),
    #[error("note has neither a title nor content")]
    Empty,
    #[error("{field} is over {max} characters")]
    TooLong { field: &'static str, max: usize },
    #[error("more than {0} hashtags")]
    TooManyHashtags(usize),
    #[error("hashtag {tag:?} is empty or over {max} characters")]
    BadHashtag { tag: String, max: usize },
    #[error("category is empty or over {0} characters")]
    BadCategory(usize),
    #[error("embedding is empty or not finite")]
    BadEmbedding,
    /// Postgres cannot store U+0000 in text, and no note needs it: refused on every store alike.
    #[error("{0} contains a NUL character (U+0000)")]
    Nul(&'static str),
}

/// A note's external id: 1-128 chars of `[A-Za-z0-9._:-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct NoteId(String);

impl NoteId {
    pub fn parse(s: &str) -> Result<Self, NoteError> {
        // `.` and `..` are path segments that URL clients normalise away: no client could
        // reach such a note at /notes/{id}.
        let ok = !s.is_empty()
            && s.len() <= MAX_NOTE_ID_LEN
            && s != "."
            && s != ".."
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(NoteError::BadId(s.chars().take(MAX_NOTE_ID_LEN + 8).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NoteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for NoteId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        NoteId::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for NoteId {
    type Err = NoteError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The text fields of a note, as the Note Compression Prompt uses them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Note {
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub content: String,
    #[serde(default)]
    pub hashtags: Vec<String>,
    #[serde(default)]
    pub category: Option<String>,
}

/// Bounds on a note's fields: one check for every way a note comes in (`PUT /notes`, the batch,
/// `notellm ingest`, `notellm embed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoteLimits {
    pub max_title_chars: usize,
    pub max_content_chars: usize,
    pub max_hashtags: usize,
    /// Also the bound of the category.
    pub max_hashtag_chars: usize,
}

impl Default for NoteLimits {
    fn default() -> Self {
        Self { max_title_chars: 1_000, max_content_chars: 20_000, max_hashtags: 50, max_hashtag_chars: 100 }
    }
}

impl NoteLimits {
    /// The most bytes a JSON line holding a note within these limits can take: every character
    /// escaped (`\uXXXX`), plus room for the id, the keys and the punctuation. Readers refuse a
    /// longer line before parsing it.
    pub fn max_json_bytes(&self) -> usize {
        let chars = self.max_title_chars
            + self.max_content_chars
            + (self.max_hashtags + 1) * self.max_hashtag_chars
            + self.max_hashtags * 4;
        chars.saturating_mul(6).saturating_add(64 << 10)
    }
}

impl Note {
    /// [`validate`](Self::validate) and the field bounds of `limits`.
    pub fn check(&self, limits: &NoteLimits) -> Result<(), NoteError> {
        let chars = |s: &str| s.chars().count();
        let nul = |s: &str| s.contains('\0');
        for (field, text) in [("title", &self.title), ("content", &self.content)] {
            if nul(text) {
                return Err(NoteError::Nul(field));
            }
        }
        if self.hashtags.iter().any(|h| nul(h)) {
            return Err(NoteError::Nul("a hashtag"));
        }
        if self.category.as_deref().is_some_and(nul) {
            return Err(NoteError::Nul("category"));
        }
        if chars(&self.title) > limits.max_title_chars {
            return Err(NoteError::TooLong { field: "title", max: limits.max_title_chars });
        }
        if chars(&self.content) > limits.max_content_chars {
            return Err(NoteError::TooLong { field: "content", max: limits.max_content_chars });
        }
        if self.hashtags.len() > limits.max_hashtags {
            return Err(NoteError::TooManyHashtags(limits.max_hashtags));
        }
        let max = limits.max_hashtag_chars;
        if let Some(h) = self.hashtags.iter().find(|h| h.trim().is_empty() || chars(h) > max) {
            // The message quotes at most the bound (plus a little) of a hashtag, never all of it.
            return Err(NoteError::BadHashtag { tag: h.chars().take(max + 8).collect(), max });
        }
        if self.category.as_ref().is_some_and(|c| c.trim().is_empty() || chars(c) > max) {
            return Err(NoteError::BadCategory(max));
        }
        self.validate()
    }

    /// A note must carry some text to be embedded.
    pub fn validate(&self) -> Result<(), NoteError> {
        if self.title.trim().is_empty() && self.content.trim().is_empty() {
            Err(NoteError::Empty)
        } else {
            Ok(())
        }
    }

    /// The note as a creator's draft: title and content only, no hashtags or category (what
    /// `/suggest-tags` sees, and what any suggestion must be judged on).
    pub fn draft(&self) -> Note {
        Note { title: self.title.clone(), content: self.content.clone(), hashtags: Vec::new(), category: None }
    }
}

/// An L2-normalised embedding vector. Constructed only through [`Embedding::normalised`] or
/// [`Embedding::from_unit`], so every value in circulation has unit norm.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Embedding(Vec<f32>);

impl Embedding {
    /// Normalises `v` to unit L2 norm. Fails on an empty, zero or non-finite vector.
    pub fn normalised(mut v: Vec<f32>) -> Result<Self, NoteError> {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if v.is_empty() || !norm.is_finite() || norm == 0.0 {
            return Err(NoteError::BadEmbedding);
        }
        v.iter_mut().for_each(|x| *x /= norm);
        Ok(Self(v))
    }

    /// Wraps a vector that is already unit-norm (e.g. read back from the store) bit for bit, so
    /// a stored vector round-trips exactly; one that has drifted from unit norm is renormalised.
    pub fn from_unit(v: Vec<f32>) -> Result<Self, NoteError> {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if !v.is_empty() && v.iter().all(|x| x.is_finite()) && (norm - 1.0).abs() <= 1e-4 {
            Ok(Self(v))
        } else {
            Self::normalised(v)
        }
    }

    pub fn dim(&self) -> usize {
        self.0.len()
    }

    pub fn as_slice(&self) -> &[f32] {
        &self.0
    }

    pub fn into_vec(self) -> Vec<f32> {
        self.0
    }

    /// Cosine similarity (a dot product, since both sides are unit-norm).
    pub fn cosine(&self, other: &Embedding) -> f32 {
        self.0.iter().zip(&other.0).map(|(a, b)| a * b).sum()
    }
}

/// Names the checkpoint that produced an embedding, so vectors of two models never mix.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ModelVersion(pub String);

impl fmt::Display for ModelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nul_character_is_refused_in_every_field() {
        let limits = NoteLimits::default();
        let ok =
            Note { title: "t".into(), content: "c".into(), hashtags: vec!["h".into()], category: Some("k".into()) };
        assert!(ok.check(&limits).is_ok());
        for (bad, field) in [
            (Note { title: "a\0b".into(), ..ok.clone() }, "title"),
            (Note { content: "\0".into(), ..ok.clone() }, "content"),
            (Note { hashtags: vec!["x\0".into()], ..ok.clone() }, "a hashtag"),
            (Note { category: Some("\0k".into()), ..ok.clone() }, "category"),
        ] {
            let e = bad.check(&limits).unwrap_err();
            assert!(matches!(e, NoteError::Nul(f) if f == field), "{e}");
            assert!(e.to_string().contains("NUL"), "{e}");
        }
    }

    use proptest::prelude::*;

    #[test]
    fn ids() {
        assert!(NoteId::parse("abc-1.2_x:y").is_ok());
        assert!(NoteId::parse("").is_err());
        assert!(NoteId::parse("a b").is_err());
        assert!(NoteId::parse("é").is_err());
        assert!(NoteId::parse(&"a".repeat(128)).is_ok());
        assert!(NoteId::parse(&"a".repeat(129)).is_err());
        assert!(NoteId::parse("a/b").is_err());
        assert!(NoteId::parse(".").is_err());
        assert!(NoteId::parse("..").is_err());
        assert!(NoteId::parse("...").is_ok());
        assert!(NoteId::parse(".a").is_ok());
    }

    #[test]
    fn limits_bound_every_field() {
        let l = NoteLimits { max_title_chars: 5, max_content_chars: 8, max_hashtags: 2, max_hashtag_chars: 4 };
        let ok = Note {
            title: "héllo".into(),
            content: "12345678".into(),
            hashtags: vec!["ab".into()],
            category: Some("c".into()),
        };
        assert_eq!(ok.check(&l), Ok(()));
        let with = |f: &dyn Fn(&mut Note)| {
            let mut n = ok.clone();
            f(&mut n);
            n.check(&l).unwrap_err().to_string()
        };
        assert_eq!(with(&|n| n.title.push('x')), "title is over 5 characters");
        assert_eq!(with(&|n| n.content.push('x')), "content is over 8 characters");
        assert_eq!(with(&|n| n.hashtags = vec!["a".into(); 3]), "more than 2 hashtags");
        assert!(with(&|n| n.hashtags = vec![" ".into()]).starts_with("hashtag \" \" is empty"));
        let long = with(&|n| n.hashtags = vec!["x".repeat(10_000)]);
        assert!(long.len() < 100, "the message quotes the whole hashtag: {} bytes", long.len());
        assert_eq!(with(&|n| n.category = Some("toolong".into())), "category is empty or over 4 characters");
        assert_eq!(with(&|n| *n = Note::default()), NoteError::Empty.to_string());
        assert!(NoteLimits::default().max_json_bytes() < 1 << 20);
    }

    #[test]
    fn empty_note_rejected() {
        assert_eq!(Note::default().validate(), Err(NoteError::Empty));
        let n = Note { title: "t".into(), ..Default::default() };
        assert!(n.validate().is_ok());
    }

    #[test]
    fn unit_vectors_round_trip_exactly() {
        let e = Embedding::normalised(vec![0.3, -0.7, 0.2, 0.9]).unwrap();
        let back = Embedding::from_unit(e.as_slice().to_vec()).unwrap();
        assert_eq!(back.as_slice(), e.as_slice());
        assert!((Embedding::from_unit(vec![2.0, 0.0]).unwrap().as_slice()[0] - 1.0).abs() < 1e-6);
        assert!(Embedding::from_unit(vec![f32::INFINITY, 0.0]).is_err());
    }

    #[test]
    fn embedding_normalises() {
        let e = Embedding::normalised(vec![3.0, 4.0]).unwrap();
        assert!((e.as_slice()[0] - 0.6).abs() < 1e-6);
        assert!(Embedding::normalised(vec![0.0, 0.0]).is_err());
        assert!(Embedding::normalised(vec![f32::NAN]).is_err());
        assert!(Embedding::normalised(vec![]).is_err());
    }

    proptest! {
        #[test]
        fn id_parse_accepts_exactly_the_grammar(s in "\\PC{0,140}") {
            let ok = !s.is_empty()
                && s.len() <= 128
                && s != "."
                && s != ".."
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b));
            prop_assert_eq!(NoteId::parse(&s).is_ok(), ok);
        }

        #[test]
        fn short_dot_ids_follow_the_grammar_too(s in "[.a/]{0,3}") {
            let ok = !s.is_empty() && s != "." && s != ".." && !s.contains('/');
            prop_assert_eq!(NoteId::parse(&s).is_ok(), ok);
        }
    }
}
