//! `GET /related/{note_id}?k=` (the feed backend's hot path: no model, one index search) and
//! `POST /related` for an unsaved draft (cold start; nothing is stored).

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::notes::{validate_text, IdPath, NoteBody};
use super::{ApiError, ApiJson, ApiQuery, AppState};
use notellm_service::Related;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KQuery {
    /// Signed, so that an integer out of range (`k=-1`, `k=0`) is a 422 like any other, and only
    /// a value that is not an integer is a malformed query (400).
    k: Option<i64>,
}

fn check_k(k: Option<i64>, s: &AppState) -> Result<usize, ApiError> {
    let max = s.app.limits.max_k;
    let Some(k) = k else { return Ok(s.http.default_k) };
    match usize::try_from(k) {
        Ok(k) if (1..=max).contains(&k) => Ok(k),
        _ => Err(ApiError::invalid(format!("k must be between 1 and {max}, got {k}"))),
    }
}

/// The body comes ready-serialized from the service (often from its answer cache).
pub async fn related(
    State(s): State<AppState>,
    IdPath(id): IdPath,
    ApiQuery(q): ApiQuery<KQuery>,
) -> Result<Response, ApiError> {
    let k = check_k(q.k, &s)?;
    let body = s.app.related_json(id, k).await?;
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response())
}

pub async fn related_draft(
    State(s): State<AppState>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Json<Related>, ApiError> {
    // `flatten` and `deny_unknown_fields` do not combine in serde: split `k` off by hand.
    let mut obj = match body {
        serde_json::Value::Object(o) => o,
        _ => return Err(ApiError::invalid("the body must be a JSON object")),
    };
    let k = match obj.remove("k") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(serde_json::from_value::<i64>(v).map_err(|_| ApiError::invalid("k must be an integer"))?),
    };
    let note: NoteBody =
        serde_json::from_value(serde_json::Value::Object(obj)).map_err(|e| ApiError::invalid(e.to_string()))?;
    let k = check_k(k, &s)?;
    let note = validate_text(note, &s.app.limits)?;
    Ok(Json(s.app.related_draft(&note, k).await?))
}
