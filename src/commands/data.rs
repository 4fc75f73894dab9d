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
    }
    Ok(())
}
