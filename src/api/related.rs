//! `GET /related/{note_id}?k=` (the feed backend's hot path: no model, one index search) and
//! `POST /related` for an unsaved draft (cold start; nothing is stored).

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::notes::{parse_id, validate, NoteBody};
use super::{ApiError, ApiJson, ApiQuery, AppState};
use crate::service::Related;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KQuery {
    k: Option<usize>,
}

fn check_k(k: Option<usize>, s: &AppState) -> Result<usize, ApiError> {
    let k = k.unwrap_or(s.http.default_k);
    let max = s.app.limits.max_k;
    if k == 0 || k > max {
        return Err(ApiError::invalid(format!("k must be between 1 and {max}, got {k}")));
    }
    Ok(k)
}

/// The body comes ready-serialized from the service (often from its answer cache).
pub async fn related(
    State(s): State<AppState>,
    Path(raw): Path<String>,
    ApiQuery(q): ApiQuery<KQuery>,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw)?;
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
        Some(v) => {
            Some(serde_json::from_value::<usize>(v).map_err(|_| ApiError::invalid("k must be a positive integer"))?)
        }
    };
    let note: NoteBody =
        serde_json::from_value(serde_json::Value::Object(obj)).map_err(|e| ApiError::invalid(e.to_string()))?;
    let k = check_k(k, &s)?;
    let note = validate(note, &s.app.limits)?;
    Ok(Json(s.app.related_draft(&note, k).await?))
}
