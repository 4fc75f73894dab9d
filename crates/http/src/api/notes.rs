//! `PUT/GET/DELETE /notes/{note_id}` and `POST /notes:batch`.

use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{ApiError, ApiJson, AppState, WriteAuth};
use std::sync::Arc;

use base64::Engine;
use notellm_note::{Note, NoteId};
use notellm_service::{ImageError, ImageLimits, NoteUpload, ServiceLimits};

/// A note as clients send it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoteBody {
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub content: String,
    #[serde(default)]
    pub hashtags: Vec<String>,
    #[serde(default)]
    pub category: Option<String>,
    /// The note's image: a PNG, JPEG or WebP file in standard base64.
    #[serde(default)]
    pub image: Option<String>,
}

pub fn parse_id(raw: &str) -> Result<NoteId, ApiError> {
    NoteId::parse(raw).map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_note_id", e.to_string()))
}

/// The `{note_id}` of a route as a [`NoteId`]; a segment that does not percent-decode to UTF-8
/// is an invalid id like any other (a JSON 422, not axum's plain-text 400).
pub struct IdPath(pub NoteId);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(raw)) => parse_id(&raw).map(IdPath),
            Err(e) => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_note_id",
                format!("the note id in the path is not a valid id: {}", e.body_text()),
            )),
        }
    }
}

/// Checks a note's fields against the limits ([`Note::check`], as the offline commands do) and
/// decodes its image, if any ([`decode_image`]).
pub async fn validate(id: NoteId, mut body: NoteBody, l: &ServiceLimits) -> Result<NoteUpload, ApiError> {
    let image = body.image.take();
    let note = validate_text(body, l)?;
    let image = match image {
        Some(b64) => Some(Arc::new(decode_image(b64, l.image).await?)),
        None => None,
    };
    Ok(NoteUpload { id, note, image })
}

/// [`validate`] for a draft (`POST /related`, `/suggest-tags`): text only, nothing stored.
pub fn validate_text(body: NoteBody, l: &ServiceLimits) -> Result<Note, ApiError> {
    if body.image.is_some() {
        return Err(ApiError::invalid(
            "a draft is embedded by its text: `image` is only taken by PUT /notes and the batch",
        ));
    }
    let note = Note { title: body.title, content: body.content, hashtags: body.hashtags, category: body.category };
    note.check(&l.note).map_err(|e| ApiError::invalid(e.to_string()))?;
    Ok(note)
}

/// A note's base64 image, checked and decoded off the async runtime (`image_input::decode`):
/// 413 over the byte or pixel limits, 422 when it is not a PNG, JPEG or WebP file. The size is
/// checked from the base64 length before anything is decoded.
async fn decode_image(b64: String, limits: ImageLimits) -> Result<notellm_model::image_input::ImageInput, ApiError> {
    let bytes_at_least = b64.trim_end_matches('=').len() / 4 * 3;
    if bytes_at_least > limits.max_bytes {
        return Err(ApiError::image(&ImageError::TooLarge { bytes: bytes_at_least, max: limits.max_bytes }));
    }
    let decoded = tokio::task::spawn_blocking(move || {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| ImageError::Decode(format!("`image` is not standard base64: {e}")))?;
        notellm_model::image_input::decode(&bytes, &limits)
    })
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "image decoding task failed");
        ApiError::internal()
    })?;
    decoded.map_err(|e| ApiError::image(&e))
}

pub async fn put_note(
    State(s): State<AppState>,
    _auth: WriteAuth,
    IdPath(id): IdPath,
    ApiJson(body): ApiJson<NoteBody>,
) -> Result<Response, ApiError> {
    let upload = validate(id, body, &s.app.limits).await?;
    let outcome = s.app.put_uploads(vec![upload]).await?.pop();
    let outcome = outcome.unwrap_or_else(|| Err(notellm_service::AppError::Internal("note was not processed".into())));
    Ok(super::put_response(outcome?))
}

#[derive(Debug, Serialize)]
struct NoteView {
    note_id: NoteId,
    title: String,
    content: String,
    hashtags: Vec<String>,
    category: Option<String>,
    model_version: notellm_note::ModelVersion,
    /// SHA-256 (hex) of the note's image, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    image_sha256: Option<String>,
    seq: i64,
    updated_at_unix: u64,
}

pub async fn get_note(State(s): State<AppState>, IdPath(id): IdPath) -> Result<Json<serde_json::Value>, ApiError> {
    let n = s.app.get_note(&id).await?;
    let updated = n.updated_at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let view = NoteView {
        note_id: n.id,
        title: n.note.title,
        content: n.note.content,
        hashtags: n.note.hashtags,
        category: n.note.category,
        model_version: n.model_version,
        image_sha256: n.image_hash,
        seq: n.seq,
        updated_at_unix: updated,
    };
    Ok(Json(serde_json::to_value(view).map_err(|e| ApiError::invalid(e.to_string()))?))
}

pub async fn delete_note(
    State(s): State<AppState>,
    _auth: WriteAuth,
    IdPath(id): IdPath,
) -> Result<StatusCode, ApiError> {
    s.app.delete_note(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    notes: Vec<BatchNote>,
}

/// One entry of a batch: `note_id` beside the note's fields. Kept as raw JSON so that a bad
/// entry (no `note_id`, a wrong type) is reported on its own instead of failing the batch.
pub type BatchNote = serde_json::Map<String, serde_json::Value>;

/// One batch entry after validation: the note to write, or its id as given (if any) and why not.
type Slot = Result<NoteUpload, (Option<String>, ApiError)>;

/// Per-note results in input order; a bad note does not fail the others.
pub async fn put_batch(
    State(s): State<AppState>,
    _auth: WriteAuth,
    ApiJson(body): ApiJson<BatchBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let l = &s.app.limits;
    if body.notes.is_empty() || body.notes.len() > l.max_notes_per_batch {
        return Err(ApiError::invalid(format!(
            "a batch holds 1 to {} notes, got {}",
            l.max_notes_per_batch,
            body.notes.len()
        )));
    }
    let mut slots: Vec<Slot> = Vec::with_capacity(body.notes.len());
    let mut seen = std::collections::HashSet::with_capacity(body.notes.len());
    for mut entry in body.notes {
        let raw = match entry.remove("note_id") {
            Some(serde_json::Value::String(raw)) => raw,
            other => {
                let got = if other.is_some() { "not a string" } else { "missing" };
                let e = ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_note_id",
                    format!("every batch entry needs a string `note_id`; it is {got}"),
                );
                slots.push(Err((None, e)));
                continue;
            }
        };
        let parsed = match parse_id(&raw).and_then(|id| {
            if !seen.insert(id.clone()) {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "duplicate_note_id",
                    format!("note {id} appears earlier in this batch; only its first entry is written"),
                ));
            }
            let b: NoteBody = serde_json::from_value(serde_json::Value::Object(entry))
                .map_err(|e| ApiError::invalid(e.to_string()))?;
            Ok((id, b))
        }) {
            Ok((id, b)) => validate(id, b, l).await,
            Err(e) => Err(e),
        };
        slots.push(parsed.map_err(|e| (Some(raw), e)));
    }
    let good: Vec<NoteUpload> = slots.iter().filter_map(|r| r.as_ref().ok().cloned()).collect();
    let mut done = s.app.put_uploads(good).await?.into_iter();
    let results: Vec<serde_json::Value> = slots
        .into_iter()
        .map(|slot| match slot {
            Ok(NoteUpload { id, .. }) => match done.next() {
                Some(Ok(o)) => serde_json::to_value(o).unwrap_or_default(),
                Some(Err(e)) => error_entry(Some(id.as_str()), e.into()),
                None => error_entry(Some(id.as_str()), ApiError::invalid("not processed")),
            },
            Err((raw, e)) => error_entry(raw.as_deref(), e),
        })
        .collect();
    Ok(Json(json!({ "results": results })))
}

/// A failed entry; `note_id` is null when the entry had none.
fn error_entry(id: Option<&str>, e: ApiError) -> serde_json::Value {
    json!({ "note_id": id, "status": "error", "error": { "code": e.code, "message": e.message } })
}
