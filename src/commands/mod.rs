//! One module per command: its own flags (beside the shared ones in `cli.rs`) and its body,
//! which calls the library crates. Errors become `anyhow` here, at the edge.

pub mod data;
pub mod embed;
pub mod eval;
pub mod ingest;
pub mod migrate;
pub mod model;
pub mod reindex;
pub mod serve;
pub mod suggest;
pub mod train;

use anyhow::{Context, Result};

use crate::cli::{Command, ModelArgs};
use notellm_model::{NoteLlm, ServedModel};

/// Runs one command to its end.
pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Serve(a) => serve::run(a),
        Command::Ingest(a) => ingest::run(a),
        Command::Migrate(a) => migrate::run(a),
        Command::Reindex(a) => reindex::run(a),
        Command::Embed(a) => embed::run(a),
        Command::Suggest(a) => suggest::run(a),
        Command::Data(c) => data::run(c),
        Command::Eval(a) => eval::run(a),
        Command::Train(a) => train::run(a),
        Command::Model(c) => model::run(c),
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

/// The checkpoint of `--model` as the service would serve it: NoteLLM (text or multimodal) or a
/// sentence encoder.
fn load_served(args: &ModelArgs) -> Result<ServedModel> {
    let dir = args.resolve()?;
    let device = args.device.open()?;
    ServedModel::load(&dir, &device).with_context(|| format!("loading model {}", dir.display()))
}

/// A NoteLLM checkpoint, for generation; a sentence encoder is refused with what to do instead.
fn load(args: &ModelArgs) -> Result<NoteLlm> {
    let dir = args.resolve()?;
    if notellm_model::encoder::is_encoder_checkpoint(&dir) {
        anyhow::bail!(
            "{} is a sentence encoder: it cannot generate hashtags or a category; serve it and ask POST \
             /suggest-tags, which answers with the nearest notes' vote",
            dir.display()
        );
    }
    let device = args.device.open()?;
    NoteLlm::load(&dir, &device).with_context(|| format!("loading model {}", dir.display()))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}
