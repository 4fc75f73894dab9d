//! `notellm serve`: the HTTP service.

use anyhow::Result;
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
}

impl ServeArgs {
    pub fn suggest_config(&self) -> notellm_service::SuggestConfig {
        notellm_service::SuggestConfig { from: self.suggest_from, neighbours: self.suggest_neighbours }
    }

    pub fn http_config(&self) -> notellm_http::api::HttpConfig {
        notellm_http::api::HttpConfig {
            api_key: self.api_key.clone().filter(|k| !k.is_empty()),
            body_limit_bytes: self.body_limit_bytes,
            request_timeout: std::time::Duration::from_secs(self.request_timeout_secs),
            concurrency_limit: self.concurrency_limit,
            default_k: self.default_k,
        }
    }
}

pub fn run(a: ServeArgs) -> Result<()> {
    super::runtime()?.block_on(async {
        let cfg = server::ServiceConfig {
            related_cache_entries: a.related_cache_entries,
            suggest: a.suggest_config(),
            ..a.pipeline.service_config()?
        };
        let listener = server::bind(a.listen).await?;
        let app = server::build(&cfg).await?;
        server::run(app, a.http_config(), listener, cfg.snapshot_interval, server::shutdown_signal()).await?;
        Ok(())
    })
}
