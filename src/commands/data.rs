//! `notellm data`: build a training/evaluation dataset directory.

use anyhow::Result;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Debian's package index as notes (apt lists: Packages + Translation-en), dependencies as
    /// behaviour sessions, co-occurrence pairs, a split by note.
    Debian(notellm_offline::commands::data::DebianArgs),
    /// Debian's AppStream metadata as notes with images (name, summary, description, keywords,
    /// category, icon as DIR/images/<note_id>.png), related pairs from same source package,
    /// Depends/Recommends and addon Extends, a split by note. Fetched with a private apt
    /// configuration unless --lists is given.
    #[command(name = "appstream")]
    AppStream(notellm_offline::commands::data::AppStreamArgs),
    /// A validation set that can decide between training runs: a copy of a dataset directory
    /// with --notes seeded training notes moved into the validation part (the pairs among them
    /// become validation pairs, pairs with one of them are dropped); the test part is copied
    /// unchanged.
    Holdout(HoldoutArgs),
}

#[derive(Debug, clap::Args)]
pub struct HoldoutArgs {
    /// The dataset directory to carve from (not modified).
    #[arg(long, env = "NOTELLM_DATA")]
    pub data: std::path::PathBuf,
    /// The new dataset directory.
    #[arg(long, env = "NOTELLM_DATA_OUT")]
    pub out: std::path::PathBuf,
    /// Training notes to hold out (Debian: 4,500 of 58,995 keep ~1,500 pairs among them).
    #[arg(long, env = "NOTELLM_DATA_HOLDOUT_NOTES", default_value_t = 4500)]
    pub notes: usize,
    #[arg(long, env = "NOTELLM_DATA_HOLDOUT_SEED", default_value_t = 7)]
    pub seed: u64,
}

pub fn run(c: DataCommand) -> Result<()> {
    match c {
        // `data::run` runs `apt-get update` itself when --update is given.
        DataCommand::Debian(a) => {
            let manifest = notellm_offline::commands::data::run(&a)?;
            println!("{}", serde_json::to_string_pretty(&manifest)?);
        }
        DataCommand::AppStream(a) => {
            let manifest = notellm_offline::commands::data::run_appstream(&a)?;
            println!("{}", serde_json::to_string_pretty(&manifest)?);
        }
        DataCommand::Holdout(a) => {
            let manifest = notellm_offline::data::holdout::holdout(&a.data, &a.out, a.notes, a.seed)?;
            println!("{}", serde_json::to_string_pretty(&manifest)?);
        }
    }
    Ok(())
}
