//! `/admin/reindex`: start (`POST`, 202), follow (`GET`) and cancel (`DELETE`) a re-index with a
//! new checkpoint (`service::reindex`). Guarded by the API key, like writes.

use std::path::PathBuf;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::{ApiError, ApiJson, AppState, WriteAuth};
use notellm_service::{ReindexRequest, ReindexStatus};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReindexBody {
    /// The new checkpoint: a directory on the server.
    model: String,
    #[serde(default)]
    batch_notes: Option<usize>,
}

pub async fn start(
    State(s): State<AppState>,
    _auth: WriteAuth,
    ApiJson(body): ApiJson<ReindexBody>,
) -> Result<(StatusCode, Json<ReindexStatus>), ApiError> {
    if body.model.trim().is_empty() {
        return Err(ApiError::invalid("model must name a checkpoint directory on the server"));
    }
    let req = ReindexRequest {
        model_dir: PathBuf::from(body.model),
        batch_notes: body.batch_notes.unwrap_or(notellm_service::reindex::DEFAULT_BATCH_NOTES),
    };
    let status = s.reindex.start(req).await?;
    Ok((StatusCode::ACCEPTED, Json(status)))
}

pub async fn status(State(s): State<AppState>, _auth: WriteAuth) -> Result<Json<ReindexStatus>, ApiError> {
    s.reindex.status().map(Json).ok_or_else(|| ApiError::not_found("no re-index has run since this process started"))
}

pub async fn cancel(
    State(s): State<AppState>,
    _auth: WriteAuth,
) -> Result<(StatusCode, Json<ReindexStatus>), ApiError> {
    Ok((StatusCode::ACCEPTED, Json(s.reindex.cancel()?)))
}
