//! `/healthz` (alive), `/readyz` (model thread, index restored, store reachable) and `/metrics`.
//! None of them queue behind inference. A store that is out of space keeps `/readyz` at 200
//! (reads and `/related` still answer) and its body says that writes are refused. A replica
//! (`--follow`) adds where it stands: the seq it has applied and its lag behind the store.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::{ApiError, AppState};

pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn readyz(State(s): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    match s.app.readiness().await {
        Ok(()) => {
            let mut body = json!({
                "status": "ready",
                "model_version": s.app.model_version(),
                "writes": match s.app.writes_refused() {
                    None => "accepted".to_owned(),
                    Some(why) => format!("refused: {why}"),
                },
            });
            // The in-process index's size (with pgvector, the store's count is in /metrics).
            if let Some(index) = s.app.hnsw() {
                body["notes"] = json!(index.len());
            }
            if let Some(f) = s.app.follow_status() {
                body["follow"] = json!(f);
            }
            Ok(Json(body))
        }
        Err(why) => Err(ApiError::not_ready(why)),
    }
}

pub async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    s.app.refresh_snapshot_age();
    s.app.refresh_follow_lag();
    s.app.refresh_store_gauges().await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.app.metrics.render())
}
