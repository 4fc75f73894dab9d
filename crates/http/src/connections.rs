//! The connection layer under the router: HTTP/1.1 over TCP with every connection bounded.
//!
//! - **Header read timeout.** A connection has `header_read_timeout` to send a request's
//!   headers, counted from when the server starts waiting for them: for a keep-alive connection,
//!   from the end of the previous response. So the same limit closes a slowloris (headers
//!   trickled a byte at a time) and an idle keep-alive connection.
//! - **A connection limit below the descriptor limit.** At most `max_connections` regular
//!   connections (keep-alive) plus `probe_slots` one-request connections are open at once. A
//!   connection is accepted only once a slot is free, so the process never runs out of file
//!   descriptors (`accept: Too many open files`): past the limit, clients wait in the kernel's
//!   listen backlog, which costs no descriptor. [`plan`] checks the limit against
//!   `RLIMIT_NOFILE` at start, keeping [`RESERVED_FDS`] for the store, the index snapshot and
//!   the model.
//! - **Probes stay answerable.** When every regular slot is taken (by idle or slow clients), a
//!   new connection takes a probe slot: it is served one request, with keep-alive off and a
//!   header timeout of at most [`PROBE_HEADER_TIMEOUT`], so a `/healthz` or `/readyz` from a
//!   kubelet is answered within a few seconds however many connections are held open. Within a
//!   few seconds, not at once: a probe waits its turn in the listen backlog behind every client
//!   already queued there, and probe slots free only as their holders' header timeouts expire,
//!   so hundreds of abusive sockets delay it past a kubelet's 3-5 s probe timeout.
//! - **A probe listener of its own.** Hence [`serve_probes`] (`--probe-listen`): the probe
//!   routes ([`PROBE_ROUTES`]) on a second listener, with its own backlog and
//!   [`PROBE_LISTENER_CONNECTIONS`] one-request slots that the service's clients cannot take
//!   (they are not counted against `--max-connections`). A pod whose service port is held by
//!   clients then keeps passing its probes while it closes them at their header timeout,
//!   instead of failing its liveness probe and being restarted (which only hands them a fresh
//!   pod). It is one more port rather than a priority inside the one listener because the
//!   kernel's accept queue is first come, first served: no server can pick a probe out of it.
//! - **An explicit listen backlog.** [`LISTEN_BACKLOG`] connections wait in the kernel's queue
//!   while every slot is taken (capped by `net.core.somaxconn`); tokio's `TcpListener::bind`
//!   asks for 128, and past the backlog the kernel drops new connections' SYNs, which clients
//!   retry only after 1 s, 3 s, 7 s.
//! - **Bounded read buffer.** A connection's read buffer holds at most [`MAX_HEAD_BYTES`]: a
//!   request line and headers past it are answered 431 `headers_too_large` and the connection is
//!   closed. hyper's default (about 400 KB) let each idle connection hold that much unfinished
//!   header, gigabytes at the default connection limit. Bodies stream through the same buffer in
//!   chunks, so their size is bounded by `--body-limit-bytes` only.
//! - **Graceful shutdown.** On the shutdown signal the listener closes, every connection is told
//!   to finish its in-flight request and close, and [`serve`] returns when the last one has.
//!
//! - **Parse errors in JSON.** A request hyper cannot parse is answered by hyper itself; those
//!   answers get the JSON error body on the way out ([`crate::parse_errors`]). HTTP/1.0 is
//!   served (health checkers and load generators send it; the connection closes after the
//!   answer unless the request asks for keep-alive); an HTTP/2 prior-knowledge preface, which
//!   hyper closes without a word, is answered 505 `http_version_not_supported`
//!   ([`crate::h2_preface`]).
//!
//! Request-level limits (body size, body read time, URI length, request time, concurrency) are
//! the router's ([`crate::api`]).

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus::{IntCounterVec, IntGauge};
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::api::ApiError;
use crate::h2_preface::RefuseH2Preface;
use crate::parse_errors::JsonParseErrors;

/// Descriptors kept for everything but client connections: the store's pool and SQLite's files,
/// the snapshot being written, the model's files, the runtime's own.
pub const RESERVED_FDS: u64 = 256;
/// The longest header timeout of a connection served in a probe slot.
pub const PROBE_HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// The most regular connections when `--max-connections` is left to the descriptor limit.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// The most bytes a connection's read buffer holds: a request line and headers longer than this
/// are refused with 431 (a note service's requests carry a few hundred bytes of headers).
pub const MAX_HEAD_BYTES: usize = 64 << 10;
/// Probe slots (one-request connections past the limit).
pub const DEFAULT_PROBE_SLOTS: usize = 16;
/// Connections the probe listener serves at once (one request each): a kubelet's three probes
/// and a scrape need a few; the rest is room for probes that overlap.
pub const PROBE_LISTENER_CONNECTIONS: usize = 32;
/// Descriptors the probe listener takes when it is on: its connections and its socket.
pub const PROBE_LISTENER_FDS: usize = PROBE_LISTENER_CONNECTIONS + 1;
/// The only routes the probe listener serves (any method the service serves on them, so GET and
/// HEAD); anything else there is 404.
pub const PROBE_ROUTES: [&str; 3] = ["/healthz", "/readyz", "/metrics"];
/// The listen backlog asked for: connections the kernel completes and queues while every slot
/// is taken. The kernel caps it at `net.core.somaxconn` (4096 by default since Linux 5.4, 128
/// before; per network namespace, so per pod). Queued connections hold no descriptor of ours.
pub const LISTEN_BACKLOG: u32 = 1024;

/// How many connections, and how long a connection may wait for a request's headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub probe_slots: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self { header_read_timeout: Duration::from_secs(10), max_connections: 1024, probe_slots: DEFAULT_PROBE_SLOTS }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConnectionError {
    #[error(
        "--max-connections {requested} needs {needed} file descriptors (plus {probes} probe slots and {RESERVED_FDS} \
         for the store and files), but RLIMIT_NOFILE allows {limit}: raise it (ulimit -n, LimitNOFILE=, the \
         container's nofile) or lower --max-connections"
    )]
    TooManyConnections { requested: usize, probes: usize, needed: u64, limit: u64 },
    #[error(
        "RLIMIT_NOFILE is {limit}: too low to serve (it must exceed {RESERVED_FDS} descriptors kept for the store \
         and files plus {probes} probe slots); raise it"
    )]
    DescriptorsTooFew { limit: u64, probes: usize },
    #[error("--header-read-timeout must be positive")]
    ZeroHeaderTimeout,
}

/// The regular connection limit for a descriptor limit of `nofile`: `requested`, checked to
/// fit, or (`None`) as many as fit, at most [`DEFAULT_MAX_CONNECTIONS`].
pub fn plan(
    requested: Option<usize>,
    probes: usize,
    header_read_timeout: Duration,
    nofile: u64,
) -> Result<ConnectionLimits, ConnectionError> {
    if header_read_timeout.is_zero() {
        return Err(ConnectionError::ZeroHeaderTimeout);
    }
    let fixed = RESERVED_FDS + probes as u64;
    let available = nofile.checked_sub(fixed).filter(|&a| a > 0);
    let max_connections = match (requested, available) {
        (_, None) => return Err(ConnectionError::DescriptorsTooFew { limit: nofile, probes }),
        (Some(n), Some(a)) if n as u64 > a => {
            return Err(ConnectionError::TooManyConnections {
                requested: n,
                probes,
                needed: n as u64 + fixed,
                limit: nofile,
            })
        }
        (Some(n), Some(_)) => n.max(1),
        (None, Some(a)) => usize::try_from(a).unwrap_or(usize::MAX).min(DEFAULT_MAX_CONNECTIONS),
    };
    Ok(ConnectionLimits { header_read_timeout, max_connections, probe_slots: probes })
}

/// The soft `RLIMIT_NOFILE`, first raised to the hard limit where it is lower (as most servers
/// do; the hard limit is what the operator allowed).
#[cfg(unix)]
pub fn descriptor_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass; no other memory is touched.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            tracing::info!(from = lim.rlim_cur, to = lim.rlim_max, "raised the soft RLIMIT_NOFILE to the hard limit");
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Ok(lim.rlim_cur)
}

#[cfg(not(unix))]
pub fn descriptor_limit() -> std::io::Result<u64> {
    Ok(u64::MAX)
}

/// Connection metrics (registered in the service's registry).
#[derive(Clone)]
pub struct ConnectionMetrics {
    /// `notellm_http_connections`: open now.
    pub open: IntGauge,
    /// `notellm_http_connections_total{slot}`: accepted, by slot (`regular`, `probe`,
    /// `probe_listener`).
    pub accepted: IntCounterVec,
    /// `notellm_http_connections_closed_total{reason}`: `header_timeout`, `error` or `done`.
    pub closed: IntCounterVec,
}

impl ConnectionMetrics {
    pub fn register(registry: &prometheus::Registry) -> prometheus::Result<Self> {
        let open = IntGauge::new("notellm_http_connections", "HTTP connections open")?;
        let accepted = IntCounterVec::new(
            prometheus::Opts::new(
                "notellm_http_connections_total",
                "HTTP connections accepted, by slot (regular: keep-alive; probe: one request, past the limit; \
                 probe_listener: on --probe-listen)",
            ),
            &["slot"],
        )?;
        let closed = IntCounterVec::new(
            prometheus::Opts::new(
                "notellm_http_connections_closed_total",
                "HTTP connections closed, by reason (header_timeout: no complete request headers in time)",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(open.clone()))?;
        registry.register(Box::new(accepted.clone()))?;
        registry.register(Box::new(closed.clone()))?;
        for slot in SlotKind::ALL {
            accepted.with_label_values(&[slot.label()]);
        }
        for reason in ["header_timeout", "error", "done"] {
            closed.with_label_values(&[reason]);
        }
        Ok(Self { open, accepted, closed })
    }
}

/// Which kind of slot a connection holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotKind {
    /// Keep-alive, the full header timeout.
    Regular,
    /// One request, a short header timeout: past the regular limit.
    Probe,
    /// One request, a short header timeout: on the probe listener.
    ProbeListener,
}

impl SlotKind {
    const ALL: [SlotKind; 3] = [SlotKind::Regular, SlotKind::Probe, SlotKind::ProbeListener];

    fn label(self) -> &'static str {
        match self {
            SlotKind::Regular => "regular",
            SlotKind::Probe => "probe",
            SlotKind::ProbeListener => "probe_listener",
        }
    }
}

/// A connection's slot; freed when the connection closes and this drops.
struct Slot {
    kind: SlotKind,
    _permit: OwnedSemaphorePermit,
}

/// A free slot: a regular one if there is one, else a probe slot, else the first that frees.
async fn admit(regular: &Arc<Semaphore>, probe: &Arc<Semaphore>) -> Slot {
    let slot = |kind, _permit| Slot { kind, _permit };
    if let Ok(p) = regular.clone().try_acquire_owned() {
        return slot(SlotKind::Regular, p);
    }
    if let Ok(p) = probe.clone().try_acquire_owned() {
        return slot(SlotKind::Probe, p);
    }
    // Neither semaphore is ever closed, so acquiring cannot fail.
    tokio::select! {
        Ok(p) = regular.clone().acquire_owned() => slot(SlotKind::Regular, p),
        Ok(p) = probe.clone().acquire_owned() => slot(SlotKind::Probe, p),
    }
}

/// How a listener's connections get their slots.
enum Admission {
    /// The service's listener: a regular slot while there is one, else a probe slot.
    Service { regular: Arc<Semaphore>, probe: Arc<Semaphore> },
    /// The probe listener: one-request slots of its own.
    ProbeListener(Arc<Semaphore>),
}

impl Admission {
    async fn admit(&self) -> Slot {
        match self {
            Admission::Service { regular, probe } => admit(regular, probe).await,
            Admission::ProbeListener(slots) => {
                // The semaphore is never closed, so acquiring cannot fail.
                let permit = slots.clone().acquire_owned().await.expect("the probe listener's slots are never closed");
                Slot { kind: SlotKind::ProbeListener, _permit: permit }
            }
        }
    }

    /// The listener's name in the log.
    fn name(&self) -> &'static str {
        match self {
            Admission::Service { .. } => "service",
            Admission::ProbeListener(_) => "probes",
        }
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown` resolves, then lets every open
/// connection finish its request and returns once all have closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    metrics: ConnectionMetrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let admission = Admission::Service {
        regular: Arc::new(Semaphore::new(limits.max_connections.max(1))),
        probe: Arc::new(Semaphore::new(limits.probe_slots)),
    };
    accept_loop(listener, router, admission, limits.header_read_timeout, metrics, shutdown).await;
}

/// Serves the probe routes of `router` (the service's router: [`PROBE_ROUTES`] of it, 404 for
/// the rest) on the probe listener until `shutdown` resolves, like [`serve`] but with
/// [`PROBE_LISTENER_CONNECTIONS`] slots of its own, each serving one request with a header
/// timeout of at most [`PROBE_HEADER_TIMEOUT`]: a kubelet opens a connection per probe, and
/// a client that holds one idle cannot keep it past that timeout.
pub async fn serve_probes(
    listener: TcpListener,
    router: Router,
    header_read_timeout: Duration,
    metrics: ConnectionMetrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let admission = Admission::ProbeListener(Arc::new(Semaphore::new(PROBE_LISTENER_CONNECTIONS)));
    accept_loop(listener, probe_routes(router), admission, header_read_timeout, metrics, shutdown).await;
}

/// `router` cut down to [`PROBE_ROUTES`]: whatever reaches the pod reaches the probe port, so it
/// serves what a probe or a scrape needs and nothing else (no writes, no `/admin`, no notes).
pub fn probe_routes(router: Router) -> Router {
    router.layer(axum::middleware::from_fn(only_probe_routes))
}

async fn only_probe_routes(req: Request, next: Next) -> Response {
    if PROBE_ROUTES.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    ApiError::not_found("the probe listener serves /healthz, /readyz and /metrics only").into_response()
}

/// Accepts connections on `listener` as `admission` gives out slots and serves `router` on each
/// until `shutdown` resolves, then lets every open connection finish its request and returns
/// once all have closed.
async fn accept_loop(
    listener: TcpListener,
    router: Router,
    admission: Admission,
    header_read_timeout: Duration,
    metrics: ConnectionMetrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        // A slot first, then accept: a connection without a slot waits in the listen backlog.
        let slot = tokio::select! {
            biased;
            () = &mut shutdown => break,
            slot = admission.admit() => slot,
        };
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Per-connection failures (reset before accept) and resource exhaustion
                    // alike: log, back off briefly, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, %peer, "set_nodelay failed");
        }
        metrics.accepted.with_label_values(&[slot.kind.label()]).inc();
        metrics.open.inc();
        let (router, metrics, mut stop) = (router.clone(), metrics.clone(), stop_rx.clone());
        connections.spawn(async move {
            let (keep_alive, header_timeout) = match slot.kind {
                SlotKind::Regular => (true, header_read_timeout),
                SlotKind::Probe | SlotKind::ProbeListener => (false, header_read_timeout.min(PROBE_HEADER_TIMEOUT)),
            };
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(keep_alive)
                .max_buf_size(MAX_HEAD_BYTES);
            let io = TokioIo::new(JsonParseErrors::new(RefuseH2Preface::new(stream)));
            let conn = builder.serve_connection(io, TowerToHyperService::new(router));
            let mut conn = pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                // (The borrow `wait_for` resolves to is dropped inside: it must not live across
                // the await below.)
                () = async { let _ = stop.wait_for(|s| *s).await; } => {
                    // The connection closes after its in-flight request (at once when idle).
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            let reason = match &result {
                Ok(()) => "done",
                Err(e) if e.is_timeout() => "header_timeout",
                Err(e) => {
                    tracing::debug!(error = %e, %peer, "connection ended with an error");
                    "error"
                }
            };
            metrics.closed.with_label_values(&[reason]).inc();
            metrics.open.dec();
            drop(slot);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    tracing::info!(
        listener = admission.name(),
        open = connections.len(),
        "stopped accepting; waiting for open connections"
    );
    while connections.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn the_limit_fits_below_the_descriptor_limit() {
        // Left to the limit: what fits, capped.
        let l = plan(None, 16, T, 1024).unwrap();
        assert_eq!(l.max_connections, 1024 - 256 - 16);
        assert_eq!(plan(None, 16, T, 1 << 20).unwrap().max_connections, DEFAULT_MAX_CONNECTIONS);
        // Asked for: granted when it fits, refused with the numbers when it does not.
        assert_eq!(plan(Some(700), 16, T, 1024).unwrap().max_connections, 700);
        let e = plan(Some(2000), 16, T, 1024).unwrap_err();
        assert_eq!(e, ConnectionError::TooManyConnections { requested: 2000, probes: 16, needed: 2272, limit: 1024 });
        assert!(e.to_string().contains("ulimit -n"), "{e}");
        assert_eq!(plan(Some(752), 16, T, 1024).unwrap().max_connections, 752);
        assert!(plan(Some(753), 16, T, 1024).is_err());
        // Too few descriptors to serve at all, and a zero timeout.
        assert!(matches!(plan(None, 16, T, 200), Err(ConnectionError::DescriptorsTooFew { .. })));
        assert!(matches!(plan(None, 16, T, 272), Err(ConnectionError::DescriptorsTooFew { .. })));
        assert_eq!(plan(None, 16, Duration::ZERO, 1024), Err(ConnectionError::ZeroHeaderTimeout));
    }

    #[tokio::test]
    async fn the_probe_listener_serves_the_probe_routes_only() {
        use axum::body::Body;
        use axum::http::StatusCode;
        use axum::routing::get;
        use tower::ServiceExt;
        let router = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/metrics", get(|| async { "metrics" }))
            .route("/notes/{note_id}", get(|| async { "a note" }));
        let probes = probe_routes(router);
        let cases = [
            ("/healthz", StatusCode::OK),
            ("/metrics", StatusCode::OK),
            ("/notes/a", StatusCode::NOT_FOUND),
            ("/healthz/", StatusCode::NOT_FOUND),
            ("/nowhere", StatusCode::NOT_FOUND),
        ];
        for (path, status) in cases {
            let req = axum::http::Request::builder().uri(path).body(Body::empty()).unwrap();
            let resp = probes.clone().oneshot(req).await.unwrap();
            assert_eq!(resp.status(), status, "{path}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn the_descriptor_limit_is_read() {
        let n = descriptor_limit().unwrap();
        assert!(n >= 64, "{n}");
    }
}
