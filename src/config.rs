//! The command line: one clap definition, where every flag can also be set through a
//! `NOTELLM_*` environment variable. `notellm <command> --help` is the reference.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::jsonl::OnError;
use crate::model::config::Family;
use crate::model::init::Preset;
use crate::model::DeviceSpec;

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
    #[arg(long, env = "NOTELLM_LOG", default_value = "info", global = true)]
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
    /// Embed notes: notes JSONL on stdin, `{"note_id","embedding"}` JSONL on stdout.
    Embed(EmbedArgs),
    /// Generate hashtags and a category for one note; prints `{"hashtags":[...],"category":"..."}`.
    Suggest(SuggestArgs),
    /// Make, import or fetch checkpoints.
    #[command(subcommand)]
    Model(ModelCommand),
}

/// Where the model comes from and what it runs on.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Checkpoint directory (Hugging Face layout + notellm.json).
    #[arg(long, env = "NOTELLM_MODEL")]
    pub model: PathBuf,
    /// auto, cpu or cuda:N (CUDA needs a build with `--features cuda`).
    #[arg(long, env = "NOTELLM_DEVICE", default_value = "auto")]
    pub device: DeviceSpec,
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

    /// Every flag of every command can come from a NOTELLM_* variable.
    #[test]
    fn every_flag_has_an_env_var() {
        fn walk(cmd: &clap::Command, path: &str) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if matches!(id, "help" | "version") || a.is_positional() {
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
