//! `notellm data`: build a training/evaluation dataset directory.

use anyhow::Result;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Debian's package index as notes (apt lists: Packages + Translation-en), dependencies as
    /// behaviour sessions, co-occurrence pairs, a split by note.
    Debian(notellm_offline::commands::data::DebianArgs),
}

pub fn run(c: DataCommand) -> Result<()> {
    match c {
        DataCommand::Debian(a) => {
            if a.update {
                notellm_offline::commands::data::apt_update()?;
            }
            let manifest = notellm_offline::commands::data::run(&a)?;
            println!("{}", serde_json::to_string_pretty(&manifest)?);
        }
    }
    Ok(())
}
