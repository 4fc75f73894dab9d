//! `notellm ingest`: bulk-load notes JSONL through the service's pipeline.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::cli::PipelineArgs;
use notellm_http::server;
use notellm_offline::jsonl::OnError;

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

pub fn run(a: IngestArgs) -> Result<()> {
    super::runtime()?.block_on(async {
        let file = std::fs::File::open(&a.file).with_context(|| format!("opening {}", a.file.display()))?;
        let total = notellm_offline::jsonl::count_lines(std::io::BufReader::new(&file))
            .with_context(|| format!("reading {}", a.file.display()))?;
        let file = std::fs::File::open(&a.file).with_context(|| format!("opening {}", a.file.display()))?;
        let app = server::build(&a.pipeline.service_config()?).await?;
        app.restore().await?;
        let progress = notellm_offline::progress::bar("ingesting", total);
        let report =
            notellm_offline::commands::ingest::run(&app, std::io::BufReader::new(file), a.chunk, a.on_error, &progress)
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
        Ok(())
    })
}
