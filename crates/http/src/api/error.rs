//! Errors to HTTP, in one place: every rejection is `{"error": {"code", "message"}}` with the
//! right status, including malformed JSON, bodies over the limit, unknown routes and overload
//! (with `Retry-After`). 5xx answers never carry internals; those go to the log.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use notellm_service::batcher::Queue;
use notellm_service::{AppError, Conflict, ReindexError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after: None }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid `Authorization: Bearer <api key>` header is required for writes and /admin",
        )
    }

    fn retry(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// 503 `not_ready` with `Retry-After` (restoring, store unreachable, model stopped).
    pub fn not_ready(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message).retry(5)
    }

    pub fn overloaded(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message).retry(1)
    }

    /// A note's image refused: 413 `image_too_large` for its size, else 422 `invalid_image`.
    pub fn image(e: &notellm_service::ImageError) -> Self {
        if e.is_size() {
            Self::new(StatusCode::PAYLOAD_TOO_LARGE, "image_too_large", e.to_string())
        } else {
            Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_image", e.to_string())
        }
    }

    /// 413 `body_too_large`: over `--body-limit-bytes` (said by `Content-Length` or found
    /// while reading).
    pub fn body_too_large() -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "the request body is over the size limit")
    }

    /// 408 `body_timeout`: the body did not arrive within `--body-read-timeout`
    /// ([`super::limits`]).
    pub fn body_timeout() -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, "body_timeout", "the request body did not arrive in time")
    }

    pub(crate) fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the server log")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// The one map from the service's meanings to HTTP: exhaustive, so a new meaning cannot reach a
/// client without a status and a code chosen for it.
impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        match e {
            AppError::NotFound(m) => ApiError::not_found(m),
            AppError::Invalid(m) => ApiError::invalid(m),
            AppError::NoteTooLong(m) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "note_too_long", m),
            AppError::InvalidModel(m) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_model", m),
            AppError::Conflict(c, m) => ApiError::new(StatusCode::CONFLICT, conflict_code(c), m),
            AppError::NotReady(m) => ApiError::not_ready(m),
            AppError::Overloaded(Queue::Embed) => ApiError::overloaded("the embedding queue is full"),
            AppError::Overloaded(Queue::Generate) => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                "too many generation requests in flight",
            )
            .retry(1),
            AppError::ModelStopped(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "model_unavailable", "the model worker has stopped")
                    .retry(5)
            }
            AppError::StoreUnavailable(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", "the store is unavailable").retry(5)
            }
            AppError::StorageFull(detail) => {
                tracing::error!(alert = true, error = %detail, "the store is out of space; writes fail until space is freed");
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage", "the store is out of space")
                    .retry(30)
            }
            AppError::Corrupt(detail) => {
                // Not retryable: the same read fails again until someone repairs the row.
                tracing::error!(alert = true, error = %detail, "corrupt data in the store");
                ApiError::internal()
            }
            AppError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                ApiError::internal()
            }
        }
    }
}

fn conflict_code(c: Conflict) -> &'static str {
    match c {
        Conflict::ModelVersion => "model_version_mismatch",
        Conflict::ReindexRunning => "reindex_running",
        Conflict::AlreadyServing => "already_serving",
    }
}

impl From<ReindexError> for ApiError {
    fn from(e: ReindexError) -> Self {
        AppError::from(e).into()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonDataError(e) => ApiError::invalid(e.body_text()),
            JsonRejection::JsonSyntaxError(e) => {
                ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.body_text())
            }
            JsonRejection::MissingJsonContentType(e) => {
                ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", e.body_text())
            }
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::body_too_large()
            }
            JsonRejection::BytesRejection(e) if caused_by::<super::limits::BodyTimeout>(&e) => ApiError::body_timeout(),
            other => ApiError::new(other.status(), "bad_request", other.body_text()),
        }
    }
}

/// Whether `e` or an error it was caused by is an `E`.
fn caused_by<E: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<E>() {
            return true;
        }
        cur = err.source();
    }
    false
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", r.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notellm_service::batcher::BatchError;
    use notellm_store::StoreError;

    #[test]
    fn corrupt_store_data_is_a_500_other_store_errors_a_retryable_503() {
        let corrupt: ApiError = AppError::from(StoreError::corrupt("n1", "bad embedding")).into();
        assert_eq!(
            (corrupt.status, corrupt.code, corrupt.retry_after),
            (StatusCode::INTERNAL_SERVER_ERROR, "internal", None)
        );
        assert!(!corrupt.message.contains("n1"), "no internals in a 5xx: {}", corrupt.message);
        let purged: ApiError = AppError::from(StoreError::ChangesPurged { since: 1, purged_through: 2 }).into();
        assert_eq!(
            (purged.status, purged.code, purged.retry_after),
            (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", Some(5))
        );
    }

    #[test]
    fn every_conflict_keeps_its_own_code() {
        let codes: Vec<&str> = [
            AppError::Conflict(Conflict::ModelVersion, "v1 vs v2".into()),
            ReindexError::Running("v3".into()).into(),
            ReindexError::AlreadyServing("v2".into()).into(),
        ]
        .into_iter()
        .map(|e| {
            let e = ApiError::from(e);
            assert_eq!(e.status, StatusCode::CONFLICT);
            e.code
        })
        .collect();
        assert_eq!(codes, ["model_version_mismatch", "reindex_running", "already_serving"]);
    }

    #[test]
    fn queues_answer_as_before() {
        let embed: ApiError = AppError::from(BatchError::QueueFull { queue: Queue::Embed }).into();
        assert_eq!((embed.status, embed.code), (StatusCode::SERVICE_UNAVAILABLE, "overloaded"));
        let generate: ApiError = AppError::from(BatchError::QueueFull { queue: Queue::Generate }).into();
        assert_eq!((generate.status, generate.code), (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"));
        let long: ApiError = AppError::from(BatchError::TooLong { tokens: 900, max: 512 }).into();
        assert_eq!((long.status, long.code), (StatusCode::UNPROCESSABLE_ENTITY, "note_too_long"));
    }

    #[test]
    fn causes_are_found_down_the_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("inner"));
        assert!(caused_by::<std::io::Error>(&e));
        assert!(caused_by::<Outer>(&e));
        assert!(!caused_by::<std::fmt::Error>(&e));
    }

    #[test]
    fn every_503_says_when_to_retry() {
        let errors: Vec<ApiError> = vec![
            AppError::NotReady("restoring".into()).into(),
            ApiError::not_ready("store unreachable"),
            ApiError::overloaded("full"),
            AppError::from(BatchError::Closed).into(),
            ReindexError::NotReady.into(),
        ];
        for e in errors {
            assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE, "{e:?}");
            let resp = e.clone().into_response();
            assert!(resp.headers().contains_key(header::RETRY_AFTER), "{e:?}");
        }
    }
}
