//! `notellm reindex`: the client of a running service's `/admin/reindex`. The work happens in
//! the service (`service::reindex`), which keeps serving meanwhile; this starts it, shows its
//! progress until it ends, and exits non-zero unless the new model serves.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use reqwest::StatusCode;
use serde_json::json;

use notellm_service::reindex::{DEFAULT_BATCH_NOTES, MAX_BATCH_NOTES};
use notellm_service::{ReindexState, ReindexStatus};

#[derive(Debug, Clone, Args)]
pub struct ReindexArgs {
    /// The new checkpoint: a directory on the service's machine. A path that exists here is sent
    /// as an absolute path; any other is sent as given, for the service to resolve.
    #[arg(long, env = "NOTELLM_REINDEX_MODEL", required_unless_present = "cancel")]
    pub model: Option<PathBuf>,
    /// The running service (http://; use a port-forward to reach one in a cluster).
    #[arg(long, env = "NOTELLM_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// The service's API key (its NOTELLM_API_KEY), when it has one.
    #[arg(long, env = "NOTELLM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Notes per background chunk: a live write waits for at most one chunk.
    #[arg(long, env = "NOTELLM_REINDEX_BATCH_NOTES", default_value_t = DEFAULT_BATCH_NOTES)]
    pub batch_notes: usize,
    /// Milliseconds between progress polls.
    #[arg(long, env = "NOTELLM_REINDEX_POLL_MS", default_value_t = 500)]
    pub poll_ms: u64,
    /// Start the re-index and return at once (follow it with GET /admin/reindex).
    #[arg(long, env = "NOTELLM_REINDEX_DETACH", value_parser = clap::builder::BoolishValueParser::new())]
    pub detach: bool,
    /// Cancel the running re-index instead (before its switch; what it staged is reused by the
    /// next one).
    #[arg(long, env = "NOTELLM_REINDEX_CANCEL", value_parser = clap::builder::BoolishValueParser::new(), conflicts_with = "detach")]
    pub cancel: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ReindexClientError {
    #[error("cannot reach the service at {server}: {source}")]
    Connect {
        server: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the service answered {status}: {code}: {message}")]
    Refused { status: StatusCode, code: String, message: String },
    #[error("unexpected answer from the service: {0}")]
    Protocol(String),
    #[error("--batch-notes must be between 1 and {MAX_BATCH_NOTES}, got {0}")]
    BadBatch(usize),
    #[error("--model is required")]
    NoModel,
    #[error("the re-index {state}: {error}; the service still serves {from}")]
    Ended { state: &'static str, error: String, from: String },
}

/// The HTTP side: one client, the base URL and the key.
struct Client {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Client {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    /// Sends and decodes a `ReindexStatus`, or the service's error.
    async fn status(&self, req: reqwest::RequestBuilder) -> Result<ReindexStatus, ReindexClientError> {
        let resp =
            req.send().await.map_err(|source| ReindexClientError::Connect { server: self.base.clone(), source })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| ReindexClientError::Protocol(e.to_string()))?;
        if status.is_success() {
            return serde_json::from_str(&text).map_err(|e| ReindexClientError::Protocol(format!("{e}: {text}")));
        }
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let field = |k: &str| v["error"][k].as_str().map(str::to_owned);
        Err(ReindexClientError::Refused {
            status,
            code: field("code").unwrap_or_else(|| "-".into()),
            message: field("message").unwrap_or(text),
        })
    }
}

/// What the service is told to load: an absolute path when the directory exists here.
fn model_path(p: &Path) -> String {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned()).display().to_string()
}

/// Starts (or cancels) a re-index and, unless detached, follows it to its end, handing every
/// status it polls to `on_status`. Returns the final status; a re-index that ended without
/// switching (failed, cancelled) is an error.
pub async fn follow(
    args: &ReindexArgs,
    mut on_status: impl FnMut(&ReindexStatus),
) -> Result<ReindexStatus, ReindexClientError> {
    let client = Client {
        http: reqwest::Client::new(),
        base: args.server.trim_end_matches('/').to_owned(),
        key: args.api_key.clone().filter(|k| !k.is_empty()),
    };
    if args.cancel {
        return client.status(client.request(reqwest::Method::DELETE, "/admin/reindex")).await;
    }
    if args.batch_notes == 0 || args.batch_notes > MAX_BATCH_NOTES {
        return Err(ReindexClientError::BadBatch(args.batch_notes));
    }
    let model = model_path(args.model.as_deref().ok_or(ReindexClientError::NoModel)?);
    let body = json!({ "model": model, "batch_notes": args.batch_notes });
    let started = client.status(client.request(reqwest::Method::POST, "/admin/reindex").json(&body)).await;
    let mut status = match started {
        Ok(s) => s,
        // Run again after an interrupted `notellm reindex`: follow the job it started.
        Err(ReindexClientError::Refused { code, .. }) if code == "reindex_running" => {
            let s = client.status(client.request(reqwest::Method::GET, "/admin/reindex")).await?;
            if s.model_dir != model {
                return Err(ReindexClientError::Refused {
                    status: StatusCode::CONFLICT,
                    code,
                    message: format!("a re-index with {} is running; wait for it or cancel it", s.model_dir),
                });
            }
            tracing::info!(model, "a re-index with this checkpoint is already running; following it");
            s
        }
        Err(e) => return Err(e),
    };
    if args.detach {
        return Ok(status);
    }
    let poll = Duration::from_millis(args.poll_ms.max(10));
    while !status.state.is_finished() {
        on_status(&status);
        tokio::time::sleep(poll).await;
        status = client.status(client.request(reqwest::Method::GET, "/admin/reindex")).await?;
    }
    on_status(&status);
    match status.state {
        ReindexState::Done => Ok(status),
        state => Err(ReindexClientError::Ended {
            state: state.as_str(),
            error: status.error.clone().unwrap_or_else(|| "no reason given".into()),
            from: status.from_version.0.clone(),
        }),
    }
}

/// Shows a status: on the bar when stderr is a terminal, else as a line on each change of state
/// and every `every` otherwise (logs of a job runner).
pub struct Reporter {
    bar: indicatif::ProgressBar,
    every: Duration,
    last: Option<(ReindexState, std::time::Instant)>,
}

impl Reporter {
    pub fn new(every: Duration) -> Self {
        Self { bar: notellm_offline::progress::bar("re-indexing", 0), every, last: None }
    }

    pub fn show(&mut self, s: &ReindexStatus) {
        self.bar.set_length(s.notes_total.max(s.notes_done));
        self.bar.set_position(s.notes_done);
        self.bar.set_message(format!("{} -> {}: {}", s.from_version, s.to_version, s.state.as_str()));
        if !self.bar.is_hidden() {
            return;
        }
        let due = match self.last {
            Some((state, at)) => state != s.state || at.elapsed() >= self.every,
            None => true,
        };
        if due {
            eprintln!(
                "re-index {} -> {}: {}, {}/{} notes ({} reused), {} changes caught up, {:.0}s",
                s.from_version,
                s.to_version,
                s.state.as_str(),
                s.notes_done,
                s.notes_total,
                s.notes_reused,
                s.changes_applied,
                s.elapsed_secs
            );
            self.last = Some((s.state, std::time::Instant::now()));
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// The command: start (or cancel) the re-index, follow it, print its last status as JSON.
pub fn run(a: ReindexArgs) -> Result<()> {
    super::runtime()?.block_on(async {
        let mut reporter = Reporter::new(Duration::from_secs(5));
        let result = follow(&a, |s| reporter.show(s)).await;
        reporter.finish();
        let s = result?;
        if a.cancel {
            eprintln!("cancelling the re-index to {} (now {})", s.to_version, s.state.as_str());
        } else if a.detach {
            eprintln!(
                "re-index {} -> {} started (job {}); follow it with GET {}/admin/reindex",
                s.from_version, s.to_version, s.job_id, a.server
            );
        } else {
            eprintln!(
                "re-index done: {} serves; {} notes ({} reused), {} changes caught up, writes held {:.3}s, {:.1}s",
                s.to_version,
                s.notes_done,
                s.notes_reused,
                s.changes_applied,
                s.write_hold_secs.unwrap_or(0.0),
                s.elapsed_secs
            );
        }
        println!("{}", serde_json::to_string(&s)?);
        Ok(())
    })
}
