//! `notellm embed`: notes JSONL on stdin, embeddings JSONL on stdout.

use std::io::BufWriter;

use anyhow::Result;
use clap::Args;

use crate::cli::ModelArgs;
use notellm_offline::jsonl::OnError;

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

pub fn run(a: EmbedArgs) -> Result<()> {
    let model = super::load_served(&a.model)?;
    let progress = notellm_offline::progress::counter("embedding");
    let stdin = std::io::stdin().lock();
    let stdout = BufWriter::new(std::io::stdout().lock());
    let report = notellm_offline::commands::embed::run(&model, stdin, stdout, a.batch_size, a.on_error, &progress)?;
    progress.finish_and_clear();
    eprintln!("embedded {} notes, skipped {} malformed lines", report.embedded, report.skipped);
    Ok(())
}
