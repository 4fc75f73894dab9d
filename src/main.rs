//! The `notellm` binary: parses the command line and calls the library. Errors become `anyhow`
//! here, at the edge, and a non-zero exit.

mod cli;
mod reindex;

use std::io::{BufWriter, IsTerminal};

use crate::cli::{Cli, Command, DataCommand, KnownModel, LogFormat, ModelArgs, ModelCommand};
use anyhow::{Context, Result};
use clap::Parser;
use notellm_artifacts::init::{init_model, InitOptions};
use notellm_artifacts::{fetch, import};
use notellm_http::server;
use notellm_model::{GenerateOptions, NoteLlm};
use notellm_note::Note;
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = Cli::parse();
    init_tracing(cli.log_format, &cli.log);
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn init_tracing(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|e| {
        eprintln!("warning: bad log filter {filter:?} ({e}); using info");
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// For the model-heavy offline commands: candle allocates a fresh tensor for every op, and
/// glibc's defaults hand large freed blocks straight back to the kernel (its mmap threshold
/// adapts, its heap is trimmed at 128 KiB), so the next op page-faults and zeroes them again:
/// a third of a training step went there (perf: `clear_page_erms`). Serving blocks from the heap
/// up to 32 MiB (glibc's largest mmap threshold) and trimming only past 1 GiB keeps them.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before the work starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

fn load(args: &ModelArgs) -> Result<NoteLlm> {
    let dir = args.resolve()?;
    let device = args.device.open()?;
    NoteLlm::load(&dir, &device).with_context(|| format!("loading model {}", dir.display()))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(a) => runtime()?.block_on(async {
            let cfg = server::ServiceConfig {
                related_cache_entries: a.related_cache_entries,
                suggest: a.suggest_config(),
                ..a.pipeline.service_config()?
            };
            let listener = server::bind(a.listen).await?;
            let app = server::build(&cfg).await?;
            server::run(app, a.http_config(), listener, cfg.snapshot_interval, server::shutdown_signal()).await
        })?,
        Command::Ingest(a) => runtime()?.block_on(async {
            let file = std::fs::File::open(&a.file).with_context(|| format!("opening {}", a.file.display()))?;
            let total = notellm_offline::jsonl::count_lines(std::io::BufReader::new(&file))
                .with_context(|| format!("reading {}", a.file.display()))?;
            let file = std::fs::File::open(&a.file).with_context(|| format!("opening {}", a.file.display()))?;
            let app = server::build(&a.pipeline.service_config()?).await?;
            app.restore().await?;
            let progress = notellm_offline::progress::bar("ingesting", total);
            let report = notellm_offline::commands::ingest::run(
                &app,
                std::io::BufReader::new(file),
                a.chunk,
                a.on_error,
                &progress,
            )
            .await?;
            progress.finish_and_clear();
            app.store.close().await;
            eprintln!(
                "ingested {}: {} created, {} updated, {} unchanged, {} malformed lines skipped",
                a.file.display(),
                report.created,
                report.updated,
                report.unchanged,
                report.skipped_lines
            );
            anyhow::Ok(())
        })?,
        Command::Reindex(a) => runtime()?.block_on(async {
            use crate::reindex;
            let mut reporter = reindex::Reporter::new(std::time::Duration::from_secs(5));
            let result = reindex::run(&a, |s| reporter.show(s)).await;
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
            anyhow::Ok(())
        })?,
        Command::Migrate(a) => runtime()?.block_on(async {
            std::fs::create_dir_all(&a.data_dir).with_context(|| format!("creating {}", a.data_dir.display()))?;
            let url = a.database_url();
            let opts = notellm_store::StoreOptions { schema: a.database_schema.clone(), ..Default::default() };
            let report = notellm_store::migrate(url.as_deref(), &a.data_dir, &opts).await?;
            eprintln!("migrations: {report:?}");
            anyhow::Ok(())
        })?,
        Command::Embed(a) => {
            let model = load(&a.model)?;
            let progress = notellm_offline::progress::counter("embedding");
            let stdin = std::io::stdin().lock();
            let stdout = BufWriter::new(std::io::stdout().lock());
            let report =
                notellm_offline::commands::embed::run(&model, stdin, stdout, a.batch_size, a.on_error, &progress)?;
            progress.finish_and_clear();
            eprintln!("embedded {} notes, skipped {} malformed lines", report.embedded, report.skipped);
        }
        Command::Suggest(a) => {
            let model = load(&a.model)?;
            let note = Note { title: a.title, content: a.content, ..Default::default() };
            note.validate()?;
            let opts = GenerateOptions {
                max_new_tokens: None,
                temperature: a.temperature,
                top_p: a.top_p,
                seed: a.seed,
                repetition_penalty: a.repetition_penalty,
            };
            let j = a.max_hashtags.unwrap_or(model.config().hashtag_count);
            let s = model.suggest(&note, j, &opts)?;
            println!("{}", serde_json::to_string(&s)?);
        }
        Command::Data(DataCommand::Debian(a)) => {
            if a.update {
                notellm_offline::commands::data::apt_update()?;
            }
            let manifest = notellm_offline::commands::data::run(&a)?;
            println!("{}", serde_json::to_string_pretty(&manifest)?);
        }
        Command::Eval(a) => {
            keep_freed_memory();
            let device = a.device.open()?;
            let systems = a.systems()?;
            let opts = notellm_offline::commands::eval::EvalOptions {
                part: a.part,
                ks: a.ks.clone(),
                buckets: a.buckets,
                batch_size: a.batch_size,
                generation_sample: a.generation,
                seed: a.seed,
                fusion: !a.no_fusion,
                vote_pool: a.vote_pool,
                vote_k: a.vote_k as usize,
            };
            let mut table = notellm_offline::commands::eval::run(&a.data, &systems, &device, &opts)?;
            table.context.push(format!("command: {}", std::env::args().collect::<Vec<_>>().join(" ")));
            let md = table.to_markdown();
            println!("{md}");
            if let Some(out) = &a.out {
                std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
                std::fs::write(out.join("results.md"), &md)?;
                std::fs::write(out.join("results.json"), serde_json::to_string_pretty(&table.to_json())?)?;
            }
        }
        Command::Train(a) => {
            keep_freed_memory();
            let device = a.device.open()?;
            let base = a.base_dir()?;
            let mut trainer =
                notellm_offline::train::trainer::Trainer::new(&a.data, &base, &a.out, &device, a.options())
                    .context("setting up training")?;
            if let Some(dir) = a.frozen_cache_dir() {
                trainer.set_frozen_cache(&dir).with_context(|| format!("frozen-state cache {}", dir.display()))?;
            }
            if a.resume && trainer.resume().context("resuming")? {
                eprintln!("resumed at step {}", trainer.step());
            }
            let s = trainer.run(a.stop_after).context("training")?;
            println!("{}", serde_json::to_string_pretty(&s)?);
        }
        Command::Model(ModelCommand::Init(a)) => {
            let opts = InitOptions {
                preset: a.preset,
                family: a.family.into(),
                vocab_size: a.vocab_size,
                embedding_dim: a.embedding_dim,
                seed: a.seed,
                shards: a.shards,
                model_version: None,
            };
            init_model(&a.corpus, &a.out, &opts)?;
            eprintln!("wrote {}", a.out.display());
        }
        Command::Model(ModelCommand::Import(a)) => {
            let categories = a.categories.as_deref().map(import::read_categories).transpose()?.unwrap_or_default();
            let opts = import::ImportOptions { model_version: a.model_version, categories, ..Default::default() };
            let s = import::import_gguf(&a.gguf, &a.out, &opts)?;
            eprintln!(
                "imported {} -> {} ({} tensors, {:.1}M parameters, vocab {}, [EMB] = {}) in {:.1}s",
                a.gguf.display(),
                s.out.display(),
                s.tensors,
                s.num_parameters as f64 / 1e6,
                s.vocab_size,
                s.emb_id,
                s.seconds
            );
        }
        Command::Model(ModelCommand::Fetch(a)) => {
            let categories = a.categories.as_deref().map(import::read_categories).transpose()?.unwrap_or_default();
            let mut opts = fetch::FetchOptions::default();
            opts.import.categories = categories;
            let KnownModel::Smollm2_135m = a.name;
            let dir = fetch::fetch_smollm2_with(&a.out, &fetch::default_cache_dir(), &opts)?;
            eprintln!("ready: {}", dir.display());
        }
    }
    Ok(())
}
