//! The HTTP API (axum): routes, extractors that validate input and turn every rejection into
//! the one JSON error shape, write authentication, request metrics, and the tower stack
//! (request id, tracing, timeout, body limit, compression, concurrency limit with load shedding);
//! [`limits`] holds a request to its URI length, declared body length and body read time.
//!
//! Follow a request from [`router`] to a handler in `notes`, `related`, `suggest`, `health` or
//! `admin`, and from there into [`notellm_service::App`].

mod admin;
mod error;
mod health;
pub mod limits;
mod notes;
pub mod openapi;
mod related;
mod suggest;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{BoxError, Router};
use serde::de::DeserializeOwned;
use tower::ServiceBuilder;
use tower_http::compression::predicate::{NotForContentType, Predicate, SizeAbove};
use tower_http::compression::{CompressionLayer, CompressionLevel};
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use error::ApiError;

use crate::connections::ConnectionLimits;

use notellm_service::{App, Reindexer};

/// Smallest body gzipped for clients that accept it. Below one packet's payload compression
/// costs CPU (tens of microseconds, more than a cached `/related` answer takes) and saves no
/// round trip; a `/related` answer at k=20 is about 1 KB.
const COMPRESS_MIN_BYTES: u16 = 1400;

/// Transport settings of the HTTP layer.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub api_key: Option<String>,
    pub body_limit_bytes: usize,
    /// The whole body must arrive within this after the headers (408 past it); shorter than
    /// `request_timeout`.
    pub body_read_timeout: Duration,
    pub request_timeout: Duration,
    pub concurrency_limit: usize,
    pub default_k: usize,
    /// Connection limits and the header read timeout ([`crate::connections`]).
    pub connections: ConnectionLimits,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            body_limit_bytes: 1 << 20,
            body_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            concurrency_limit: 1024,
            default_k: 20,
            connections: ConnectionLimits::default(),
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub app: Arc<App>,
    /// `/admin/reindex`.
    pub reindex: Arc<Reindexer>,
    pub http: Arc<HttpConfig>,
}

/// The full service: routes plus the tower stack.
pub fn router(app: Arc<App>, reindex: Arc<Reindexer>, http: HttpConfig) -> Router {
    let state = AppState { app, reindex, http: Arc::new(http.clone()) };
    let routes = Router::new()
        .route("/notes/{note_id}", put(notes::put_note).get(notes::get_note).delete(notes::delete_note))
        .route("/notes:batch", post(notes::put_batch))
        .route("/related/{note_id}", get(related::related))
        .route("/related", post(related::related_draft))
        .route("/suggest-tags", post(suggest::suggest_tags))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(openapi::openapi))
        .route("/admin/reindex", post(admin::start).get(admin::status).delete(admin::cancel))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), limits::check))
        .layer(axum::middleware::from_fn_with_state(state.clone(), record_metrics))
        .layer(DefaultBodyLimit::max(http.body_limit_bytes))
        .with_state(state);
    let overload = ServiceBuilder::new()
        .layer(axum::error_handling::HandleErrorLayer::new(handle_overload))
        .load_shed()
        // One semaphore for the whole router: `Router::layer` calls a layer once per route, and
        // tower's `ConcurrencyLimitLayer` makes a new semaphore each time, which made the limit
        // one per route; `GlobalConcurrencyLimitLayer` shares its semaphore between them.
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(http.concurrency_limit.max(1)))
        .timeout(http.request_timeout);
    routes
        .layer(overload)
        .layer(
            CompressionLayer::new().quality(CompressionLevel::Fastest).compress_when(
                SizeAbove::new(COMPRESS_MIN_BYTES)
                    .and(NotForContentType::GRPC)
                    .and(NotForContentType::IMAGES)
                    .and(NotForContentType::SSE),
            ),
        )
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let id =
                        req.extensions().get::<RequestId>().and_then(|r| r.header_value().to_str().ok()).unwrap_or("-");
                    tracing::info_span!("request", method = %req.method(), uri = %req.uri(), request_id = %id)
                })
                // A 503 from /readyz while restoring is expected; internal errors are logged at ERROR
                // where they happen.
                .on_failure(tower_http::trace::DefaultOnFailure::new().level(tracing::Level::WARN)),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(SequentialId::new()))
}

async fn handle_overload(e: BoxError) -> ApiError {
    if e.is::<tower::timeout::error::Elapsed>() {
        ApiError::new(axum::http::StatusCode::GATEWAY_TIMEOUT, "timeout", "the request took too long")
    } else if e.is::<tower::load_shed::error::Overloaded>() {
        ApiError::overloaded("too many requests in flight")
    } else {
        tracing::error!(error = %e, "middleware error");
        ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the server log")
    }
}

/// Request ids: a per-process random prefix and a counter (unique, cheap, sortable in logs).
#[derive(Clone)]
struct SequentialId {
    prefix: Arc<str>,
    next: Arc<AtomicU64>,
}

impl SequentialId {
    fn new() -> Self {
        let prefix = format!("{:08x}", rand::random::<u32>());
        Self { prefix: prefix.into(), next: Arc::new(AtomicU64::new(1)) }
    }
}

impl MakeRequestId for SequentialId {
    fn make_request_id<B>(&mut self, _req: &axum::http::Request<B>) -> Option<RequestId> {
        use std::fmt::Write;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // One allocation, handed to the header as it is (`from_str` would copy it).
        let mut id = String::with_capacity(self.prefix.len() + 21);
        let _ = write!(id, "{}-{n}", self.prefix);
        HeaderValue::try_from(id).ok().map(RequestId::new)
    }
}

/// `notellm_http_requests_total` and `notellm_http_request_duration_seconds` by matched route.
async fn record_metrics(State(state): State<AppState>, req: Request, next: Next) -> Response {
    // Shared handles, not copies: the matched path is an `Arc<str>`, a standard method an enum.
    let route = req.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let method = req.method().clone();
    let started = Instant::now();
    let resp = next.run(req).await;
    let m = &state.app.metrics;
    m.http_duration.with_label_values(&[route]).observe(started.elapsed().as_secs_f64());
    m.http_requests.with_label_values(&[route, method.as_str(), resp.status().as_str()]).inc();
    resp
}

/// `Json<T>` whose rejections are [`ApiError`]s. Every body of this API is a JSON object: an
/// array is refused (serde would otherwise read a struct from a sequence of its fields, so
/// `["title", "content"]` would pass for a note).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(ObjectOnly(v)) = axum::Json::<ObjectOnly<T>>::from_request(req, state).await?;
        Ok(Self(v))
    }
}

/// `T` read from a JSON object only.
struct ObjectOnly<T>(T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Object<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Object(std::marker::PhantomData)).map(ObjectOnly)
    }
}

/// `Query<T>` whose rejections are [`ApiError`]s.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(v) = axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Self(v))
    }
}

/// Guard for writes and `/admin/*`: when an API key is configured, the request must carry it as a
/// bearer token.
pub struct WriteAuth;

impl FromRequestParts<AppState> for WriteAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(key) = state.http.api_key.as_deref() else { return Ok(WriteAuth) };
        let given =
            parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer_token).unwrap_or("");
        if constant_time_eq(given.as_bytes(), key.as_bytes()) {
            Ok(WriteAuth)
        } else {
            Err(ApiError::unauthorized())
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is case-insensitive
/// (RFC 7235), one or more spaces separate it from the token.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim_start_matches(' '))
}

/// Compares without an early exit on the first differing byte (no timing oracle on the key).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, &x) in a.iter().enumerate() {
        diff |= (x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0)) as usize;
    }
    diff == 0
}

/// A write's answer: 201 when it created the note, else 200, with the outcome as the body.
pub(crate) fn put_response(outcome: notellm_service::PutOutcome) -> Response {
    let status = match outcome.status {
        notellm_service::WriteStatus::Created => axum::http::StatusCode::CREATED,
        _ => axum::http::StatusCode::OK,
    };
    (status, axum::Json(outcome)).into_response()
}

#[cfg(test)]
mod tests {
    use super::{bearer_token, constant_time_eq};

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for v in ["Bearer k", "bearer k", "BEARER k", "Bearer   k"] {
            assert_eq!(bearer_token(v), Some("k"), "{v}");
        }
        for v in ["Basic k", "Bearerk", "k", "", "Bearer"] {
            assert_eq!(bearer_token(v), None, "{v}");
        }
        assert_eq!(bearer_token("Bearer "), Some(""));
    }

    #[test]
    fn key_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secre", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
        assert!(!constant_time_eq(b"secretx", b"secret"));
    }
}
