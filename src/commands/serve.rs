//! `notellm serve`: the HTTP service.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use crate::cli::PipelineArgs;
use notellm_http::server;

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[arg(long, env = "NOTELLM_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// When set, writes (PUT, DELETE, POST /notes:batch) need `Authorization: Bearer <key>`.
    #[arg(long, env = "NOTELLM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Largest request body, bytes (413 above).
    #[arg(long, env = "NOTELLM_BODY_LIMIT_BYTES", default_value_t = 1 << 20)]
    pub body_limit_bytes: usize,
    /// Per-request time limit, seconds (504 above).
    #[arg(long, env = "NOTELLM_REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// A request's whole body must arrive within this many seconds of its headers (408 past
    /// it); shorter than --request-timeout-secs.
    #[arg(long, env = "NOTELLM_BODY_READ_TIMEOUT_SECS", default_value_t = 10)]
    pub body_read_timeout_secs: u64,
    /// Seconds a connection may take to send a request's headers, and may stay idle between
    /// keep-alive requests, before it is closed.
    #[arg(long, env = "NOTELLM_HEADER_READ_TIMEOUT_SECS", default_value_t = 10)]
    pub header_read_timeout_secs: u64,
    /// Keep-alive connections open at once; past them a few one-request slots keep probes
    /// answered and other clients wait in the listen backlog. Default: what the file
    /// descriptor limit (RLIMIT_NOFILE) allows, at most 10000; a larger value than it allows
    /// is refused at start.
    #[arg(long, env = "NOTELLM_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Also serve GET /healthz, /readyz and /metrics (nothing else) on this address, with 32
    /// one-request connections of its own that do not count against --max-connections: clients
    /// holding every connection of --listen cannot delay a probe here. Point the kubelet's
    /// probes at it, and keep it off the Service and the load balancer. Default: off.
    #[arg(long, env = "NOTELLM_PROBE_LISTEN")]
    pub probe_listen: Option<std::net::SocketAddr>,
    /// Requests handled at once; more are shed with 503 and Retry-After.
    #[arg(long, env = "NOTELLM_CONCURRENCY_LIMIT", default_value_t = 1024)]
    pub concurrency_limit: usize,
    /// k of /related when the query does not say.
    #[arg(long, env = "NOTELLM_DEFAULT_K", default_value_t = 20)]
    pub default_k: usize,
    /// GET /related answers kept in memory, by (note, k); 0 disables the cache. An answer is
    /// served from it only while no index write happened since it was computed (about 1 KB
    /// per answer at k=20).
    #[arg(long, env = "NOTELLM_RELATED_CACHE_ENTRIES", default_value_t = notellm_service::DEFAULT_RELATED_CACHE_ENTRIES)]
    pub related_cache_entries: usize,
    /// Where /suggest-tags answers come from: "neighbours" (the nearest indexed notes vote with
    /// their hashtags and category, weighted by similarity; generation when none has a label or
    /// the index is being restored) or "generate" (the LLM generates them).
    #[arg(long, env = "NOTELLM_SUGGEST_FROM", default_value = "neighbours")]
    pub suggest_from: notellm_service::SuggestFrom,
    /// Nearest indexed notes that vote in a /suggest-tags answer (1-200).
    #[arg(long, env = "NOTELLM_SUGGEST_NEIGHBOURS", default_value_t = notellm_service::DEFAULT_SUGGEST_NEIGHBOURS)]
    pub suggest_neighbours: usize,
    /// How sharply the nearest notes outvote the rest in a /suggest-tags vote: a neighbour's
    /// weight is exp((cosine - 1) / T); 0 weighs neighbours by their cosine (the plain vote).
    #[arg(long, env = "NOTELLM_SUGGEST_TEMPERATURE", default_value_t = notellm_service::DEFAULT_SUGGEST_TEMPERATURE)]
    pub suggest_temperature: f64,
    /// Neighbours whose cosine to the draft is below this do not vote (-1: all vote).
    #[arg(long, env = "NOTELLM_SUGGEST_FLOOR", default_value_t = notellm_service::DEFAULT_SUGGEST_FLOOR, allow_negative_numbers = true)]
    pub suggest_floor: f32,
    /// A hashtag is suggested only when it carries at least this share of the vote's weight
    /// (0-1; 0 answers the best-voted tags whatever their share).
    #[arg(long, env = "NOTELLM_SUGGEST_MIN_SHARE", default_value_t = notellm_service::DEFAULT_SUGGEST_MIN_SHARE)]
    pub suggest_min_share: f64,
    /// Replica mode: follow the writes that other `notellm serve` processes make to the same
    /// Postgres store (LISTEN plus a poll), so that any number of them answer alike. Needs
    /// Postgres; the embedded SQLite store serves one process.
    #[arg(long, env = "NOTELLM_FOLLOW", default_value_t = false)]
    pub follow: bool,
    /// Replica mode: seconds between reads of the store's changes without a notification (a
    /// lost one is applied at most this late), and between heartbeats of the listener.
    #[arg(long, env = "NOTELLM_FOLLOW_INTERVAL", default_value_t = 2.0)]
    pub follow_interval: f64,
    /// Replica mode: seconds a replica may stay behind the store before /readyz turns 503.
    #[arg(long, env = "NOTELLM_MAX_FOLLOW_LAG", default_value_t = 30.0)]
    pub max_follow_lag: f64,
}

impl ServeArgs {
    /// Replica mode's settings, when `--follow` is on.
    pub fn follow_config(&self) -> Result<Option<notellm_service::FollowConfig>> {
        if !self.follow {
            return Ok(None);
        }
        let secs = |name: &str, v: f64| {
            Duration::try_from_secs_f64(v).map_err(|_| anyhow::anyhow!("{name} must be a number of seconds, got {v}"))
        };
        let cfg = notellm_service::FollowConfig {
            interval: secs("--follow-interval", self.follow_interval)?,
            max_lag: secs("--max-follow-lag", self.max_follow_lag)?,
        };
        cfg.validate().map_err(anyhow::Error::msg)?;
        Ok(Some(cfg))
    }

    pub fn suggest_config(&self) -> notellm_service::SuggestConfig {
        let rule = notellm_model::vote::VoteRule {
            temperature: (self.suggest_temperature != 0.0).then_some(self.suggest_temperature),
            floor: self.suggest_floor,
            min_share: self.suggest_min_share,
        };
        notellm_service::SuggestConfig { from: self.suggest_from, neighbours: self.suggest_neighbours, rule }
    }

    /// The HTTP settings, checked: timeouts that make sense together, a connection limit the
    /// process's descriptor limit allows.
    pub fn http_config(&self) -> Result<notellm_http::api::HttpConfig> {
        use notellm_http::connections;
        if self.body_read_timeout_secs == 0 || self.body_read_timeout_secs >= self.request_timeout_secs {
            anyhow::bail!(
                "--body-read-timeout-secs ({}) must be positive and shorter than --request-timeout-secs ({}), \
                 so that a slow body answers 408 rather than 504",
                self.body_read_timeout_secs,
                self.request_timeout_secs
            );
        }
        if self.probe_listen == Some(self.listen) {
            anyhow::bail!("--probe-listen ({}) must be another address than --listen", self.listen);
        }
        let nofile = connections::descriptor_limit().context("reading RLIMIT_NOFILE")?;
        // The probe listener's connections and socket take descriptors too: planned with the
        // probe slots, so the limit check counts them; the service's listener keeps its 16.
        let probe_listener_fds = if self.probe_listen.is_some() { connections::PROBE_LISTENER_FDS } else { 0 };
        let limits = connections::plan(
            self.max_connections,
            connections::DEFAULT_PROBE_SLOTS + probe_listener_fds,
            Duration::from_secs(self.header_read_timeout_secs),
            nofile,
        )?;
        let limits = connections::ConnectionLimits { probe_slots: connections::DEFAULT_PROBE_SLOTS, ..limits };
        Ok(notellm_http::api::HttpConfig {
            api_key: self.api_key.clone().filter(|k| !k.is_empty()),
            body_limit_bytes: self.body_limit_bytes,
            body_read_timeout: Duration::from_secs(self.body_read_timeout_secs),
            request_timeout: Duration::from_secs(self.request_timeout_secs),
            concurrency_limit: self.concurrency_limit,
            default_k: self.default_k,
            connections: limits,
        })
    }
}

pub fn run(a: ServeArgs) -> Result<()> {
    super::runtime()?.block_on(async {
        let cfg = server::ServiceConfig {
            related_cache_entries: a.related_cache_entries,
            suggest: a.suggest_config(),
            follow: a.follow_config()?,
            ..a.pipeline.service_config()?
        };
        let http = a.http_config()?;
        let listener = server::bind(a.listen).await?;
        let probes = match a.probe_listen {
            Some(addr) => Some(server::bind(addr).await?),
            None => None,
        };
        let app = server::build(&cfg).await?;
        server::run_with_probes(app, http, listener, probes, cfg.snapshot_interval, server::shutdown_signal()).await?;
        Ok(())
    })
}
