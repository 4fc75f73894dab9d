//! Assembling and running the service: store (migrations applied), model, batcher, index, HTTP.
//!
//! The listener opens before the index is restored, so `/healthz` answers during a long restore
//! while `/readyz` says 503. With a probe listener (`--probe-listen`, [`run_with_probes`]) the
//! probe routes are also served on a port of their own, which the service's clients cannot
//! crowd out ([`crate::connections`]). Shutdown (SIGINT/SIGTERM or the caller's signal): stop
//! accepting, drain in-flight requests (the probe listener answers until they are drained),
//! write the index snapshot, close the store's pool.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::api::{self, HttpConfig};
use crate::connections::{self, ConnectionMetrics};
use notellm_index::IndexConfig;
use notellm_model::{DeviceSpec, ServedModel};
use notellm_service::batcher::BatcherConfig;
use notellm_service::metrics::Metrics;
use notellm_service::{
    App, AppOptions, FollowConfig, IndexBackend, Reindexer, ServiceLimits, ServingTemplate, SuggestConfig,
};
use notellm_store::{Store, StoreError, StoreOptions};

pub use notellm_service::snapshot_dir;

/// How long a shutdown waits for a cancelled re-index to stop (a switch in progress finishes).
const REINDEX_STOP_WAIT: Duration = Duration::from_secs(30);
/// The store's health probe: how often, and how long a ping may take before the store counts as
/// unreachable (readiness 503, store operations failing at once with Retry-After).
const STORE_PROBE_INTERVAL: Duration = Duration::from_secs(1);
const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything the service needs to start.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub model_dir: PathBuf,
    pub device: DeviceSpec,
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    /// Postgres schema (created if missing).
    pub database_schema: Option<String>,
    pub batcher: BatcherConfig,
    pub limits: ServiceLimits,
    /// HNSW parameters; `dim` is taken from the model.
    pub hnsw_m: usize,
    pub hnsw_ef_construction: usize,
    pub hnsw_ef_search: usize,
    pub rebuild_tombstone_share: f64,
    pub snapshot_interval: Duration,
    /// Most `GET /related` answers cached (0: no cache).
    pub related_cache_entries: usize,
    /// How `/suggest-tags` answers.
    pub suggest: SuggestConfig,
    /// Replica mode (`--follow`): follow the other replicas' writes to the shared Postgres.
    pub follow: Option<FollowConfig>,
    /// Which index serves (`--index`).
    pub index: IndexBackend,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("data directory {}: {source}", path.display())]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("model: {0}")]
    Model(#[from] notellm_model::ModelError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("index: {0}")]
    Index(#[from] notellm_index::IndexError),
    #[error("{0}")]
    Config(String),
    #[error("task failed: {0}")]
    Task(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Connects the store, loads the model, starts the batcher; the index is empty until
/// [`App::restore`].
pub async fn build(cfg: &ServiceConfig) -> Result<Arc<App>, ServerError> {
    cfg.suggest.validate().map_err(ServerError::Config)?;
    if let Some(f) = &cfg.follow {
        f.validate().map_err(ServerError::Config)?;
    }
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|source| ServerError::DataDir { path: cfg.data_dir.clone(), source })?;
    let pgvector = cfg.index == IndexBackend::Pgvector;
    if pgvector && cfg.follow.is_some() {
        return Err(ServerError::Config(
            "--follow is for the in-process index: with --index pgvector every replica searches the same \
             index in Postgres and needs no following; run them without --follow"
                .into(),
        ));
    }
    if pgvector && cfg.hnsw_ef_search > notellm_store::MAX_EF_SEARCH {
        return Err(ServerError::Config(format!(
            "--hnsw-ef-search {} is above pgvector's limit of {}",
            cfg.hnsw_ef_search,
            notellm_store::MAX_EF_SEARCH
        )));
    }
    let database_url = cfg.database_url.clone().filter(|u| !u.trim().is_empty());
    let opts = StoreOptions { schema: cfg.database_schema.clone(), pgvector, ..Default::default() };
    let store = Store::connect_with(database_url.as_deref(), &cfg.data_dir, &opts).await?;
    tracing::info!(backend = store.backend(), "store connected, migrations applied");
    if cfg.follow.is_some() && store.backend() != "postgres" {
        store.close().await;
        return Err(ServerError::Config(
            "--follow (replica mode) needs the shared Postgres store: set DATABASE_URL to a postgres:// URL. \
             The embedded SQLite store serves one process, which needs no --follow"
                .into(),
        ));
    }
    let device = cfg.device.open()?;
    // After a re-index, the store may name another checkpoint than --model (service/reindex).
    let dir = notellm_service::reindex::resolve_model_dir(&store, &cfg.model_dir).await;
    let load_device = device.clone();
    let model = tokio::task::spawn_blocking(move || ServedModel::load(&dir, &load_device))
        .await
        .map_err(|e| ServerError::Task(format!("model load: {e}")))??;
    let model = Arc::new(model);
    let metrics = Metrics::new()?;
    metrics.build_info.with_label_values(&[env!("CARGO_PKG_VERSION"), &model.version().0, store.backend()]).set(1.0);
    let index_cfg = IndexConfig {
        m: cfg.hnsw_m,
        ef_construction: cfg.hnsw_ef_construction,
        ef_search: cfg.hnsw_ef_search,
        rebuild_tombstone_share: cfg.rebuild_tombstone_share,
        ..IndexConfig::new(model.embedding_dim())
    };
    let template = ServingTemplate {
        batcher: cfg.batcher.clone(),
        backend: cfg.index,
        index: index_cfg,
        data_dir: cfg.data_dir.clone(),
        device,
    };
    let vectors = template.fresh_vectors(&model)?;
    let serving = template.serve(model, vectors, &metrics)?;
    // The answer cache's generation moves with this process's index writes; pgvector's index is
    // written by every replica, so its answers are never cached.
    let related_cache_entries = if pgvector { 0 } else { cfg.related_cache_entries };
    if pgvector && cfg.related_cache_entries > 0 {
        tracing::info!("the /related answer cache is off with --index pgvector");
    }
    let opts =
        AppOptions { limits: cfg.limits.clone(), related_cache_entries, suggest: cfg.suggest, follow: cfg.follow };
    Ok(Arc::new(App::new(store, serving, template, metrics, opts)))
}

/// Runs the HTTP service on `listener` until `shutdown` resolves.
pub async fn run(
    app: Arc<App>,
    http: HttpConfig,
    listener: tokio::net::TcpListener,
    snapshot_interval: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    run_with_probes(app, http, listener, None, snapshot_interval, shutdown).await
}

/// [`run`], and with `probes` the probe routes (`/healthz`, `/readyz`, `/metrics`) on that
/// listener too, with connections of its own ([`connections::serve_probes`]). It stops after
/// the service's listener has drained, so probes are answered during the drain.
pub async fn run_with_probes(
    app: Arc<App>,
    http: HttpConfig,
    listener: tokio::net::TcpListener,
    probes: Option<tokio::net::TcpListener>,
    snapshot_interval: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    if let Some(probes) = &probes {
        let addr = probes.local_addr()?;
        tracing::info!(%addr, connections = connections::PROBE_LISTENER_CONNECTIONS, "probe listener");
    }
    // Restore, then (replica mode) follow the store until shutdown.
    let restoring = {
        let app = app.clone();
        tokio::spawn(async move {
            match app.restore().await {
                Ok(()) => app.follow().await,
                Err(e) => tracing::error!(error = %e, "index restore failed; the service stays unready"),
            }
        })
    };
    let snapshots = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(snapshot_interval.max(Duration::from_secs(1)));
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = app.snapshot().await {
                    tracing::error!(error = %e, "periodic snapshot failed");
                }
            }
        })
    };
    let probe = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(STORE_PROBE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                app.probe_store(STORE_PROBE_TIMEOUT).await;
            }
        })
    };
    let reindex = Arc::new(Reindexer::new(app.clone()));
    let limits = http.connections;
    let conn_metrics = ConnectionMetrics::register(&app.metrics.registry)?;
    tracing::info!(
        max_connections = limits.max_connections,
        probe_slots = limits.probe_slots,
        header_read_timeout_s = limits.header_read_timeout.as_secs_f64(),
        "connection limits"
    );
    // The probe listener gets a router of its own: the concurrency limits it counts against
    // are not the ones the service's clients fill (503 `overloaded`).
    let probe_listener = probes.map(|probes| {
        let router = api::router(app.clone(), reindex.clone(), http.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let stopped = async move {
            let _ = stopped.await;
        };
        let serving = tokio::spawn(connections::serve_probes(
            probes,
            router,
            limits.header_read_timeout,
            conn_metrics.clone(),
            stopped,
        ));
        (stop, serving)
    });
    let router = api::router(app.clone(), reindex.clone(), http);
    connections::serve(listener, router, limits, conn_metrics, shutdown).await;
    tracing::info!("stopped accepting; in-flight requests drained");
    if let Some((stop, serving)) = probe_listener {
        let _ = stop.send(());
        if let Err(e) = serving.await {
            tracing::error!(error = %e, "the probe listener failed");
        }
    }
    snapshots.abort();
    restoring.abort();
    probe.abort();
    stop_reindex(&reindex).await;
    match app.snapshot().await {
        Ok(true) => tracing::info!("final snapshot written"),
        Ok(false) => tracing::info!("index unchanged since the last snapshot"),
        Err(e) => tracing::error!(error = %e, "final snapshot failed; the next start replays from the store"),
    }
    app.store.close().await;
    Ok(())
}

/// Cancels a running re-index and waits for it to stop: it must not write to a store being
/// closed. What it staged stays for the next attempt.
async fn stop_reindex(reindex: &Reindexer) {
    if reindex.cancel().is_err() {
        return;
    }
    tracing::info!("cancelling the running re-index");
    if tokio::time::timeout(REINDEX_STOP_WAIT, reindex.finished()).await.is_err() {
        tracing::warn!("the re-index did not stop in time; shutting down anyway");
    }
}

/// Binds `addr` with a listen backlog of [`connections::LISTEN_BACKLOG`] (tokio's
/// `TcpListener::bind` asks for 128, which a few hundred clients held waiting for a slot
/// overflow: the kernel then drops new connections, probes included, until they retry).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ServerError> {
    let listen = || -> std::io::Result<tokio::net::TcpListener> {
        let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        // As `TcpListener::bind` does: a restarted server binds while the old one's connections
        // are in TIME_WAIT. (On Windows it would let another process take the port.)
        #[cfg(not(windows))]
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(connections::LISTEN_BACKLOG)
    };
    listen().map_err(|source| ServerError::Listen { addr, source })
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutdown signal received");
}
