//! `notellm data debian`: Debian's package index as a dataset directory (the format of
//! [`crate::data::dataset`]): notes and sessions from the apt lists ([`crate::data::debian`]),
//! related pairs mined from the sessions ([`crate::train::mining`]), a split by note with a
//! fixed seed and a manifest. Same lists and parameters give byte-identical files.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use serde::Serialize;

use crate::data::dataset::{self, DataError, Pair, Part, Split};
use crate::data::debian::{self, AptLists, CorpusStats, DebianError};
use crate::train::mining::{self, MiningOptions, MiningStats};
use notellm_model::ModelError;

pub const DEFAULT_SEED: u64 = 42;

/// Flags of `notellm data debian`.
#[derive(Debug, Clone, clap::Args)]
pub struct DebianArgs {
    /// Dataset directory to write (created; files in it are overwritten).
    #[arg(long, env = "NOTELLM_DATA_OUT")]
    pub out: PathBuf,
    /// apt's lists directory, holding `*_main_binary-amd64_Packages[.lz4]` and
    /// `*_main_i18n_Translation-en[.lz4]`.
    #[arg(long, env = "NOTELLM_DATA_APT_LISTS", default_value = debian::DEFAULT_LISTS)]
    pub lists: PathBuf,
    /// Suite to read (e.g. `bookworm`). Default: the suite with the largest Packages file.
    #[arg(long, env = "NOTELLM_DATA_SUITE")]
    pub suite: Option<String>,
    /// First refresh apt's lists with `apt-get -o Acquire::Languages=en update` (needs root;
    /// apt writes its own lists directory, the default of --lists).
    /// `NOTELLM_DATA_APT_UPDATE` takes true/false, 1/0, yes/no or on/off.
    #[arg(long, env = "NOTELLM_DATA_APT_UPDATE", value_parser = clap::builder::BoolishValueParser::new())]
    pub update: bool,
    #[command(flatten)]
    pub mining: MiningOptions,
    /// Share of notes in the validation part.
    #[arg(long, env = "NOTELLM_DATA_VAL_SHARE", default_value_t = 0.02)]
    pub val_share: f64,
    /// Share of notes in the test part (unseen at training time).
    #[arg(long, env = "NOTELLM_DATA_TEST_SHARE", default_value_t = 0.05)]
    pub test_share: f64,
    /// Seed of the split.
    #[arg(long, env = "NOTELLM_DATA_SEED", default_value_t = DEFAULT_SEED)]
    pub seed: u64,
}

impl DebianArgs {
    /// The defaults, writing to `out` from `lists`.
    pub fn new(out: PathBuf, lists: PathBuf) -> Self {
        Self {
            out,
            lists,
            suite: None,
            update: false,
            mining: MiningOptions::default(),
            val_share: 0.02,
            test_share: 0.05,
            seed: DEFAULT_SEED,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataCommandError {
    #[error(transparent)]
    Debian(#[from] DebianError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("cannot hash a source file: {0}")]
    Checksum(#[from] ModelError),
    #[error("--update: apt-get not found; it needs a Debian system (or leave out --update and pass --lists)")]
    AptMissing,
    #[error("--update: cannot run apt-get: {0}")]
    AptSpawn(#[source] std::io::Error),
    #[error("--update: `apt-get -o Acquire::Languages=en update` failed ({0}); it needs root and access to the configured mirrors")]
    AptFailed(ExitStatus),
}

/// A source file of the dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceFile {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PartCounts {
    pub train: usize,
    pub val: usize,
    pub test: usize,
}

impl PartCounts {
    pub fn get_mut(&mut self, part: Part) -> &mut usize {
        match part {
            Part::Train => &mut self.train,
            Part::Val => &mut self.val,
            Part::Test => &mut self.test,
        }
    }

    pub fn total(&self) -> usize {
        self.train + self.val + self.test
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Counts {
    pub notes: usize,
    pub sessions: usize,
    pub categories: usize,
    pub pairs: usize,
    pub split_notes: PartCounts,
    pub split_pairs: PartCounts,
    /// Mined pairs whose two notes fell into different parts (in `pairs.jsonl` only).
    pub cross_part_pairs: usize,
    pub corpus: CorpusStats,
    pub mining: MiningStats,
}

/// `manifest.json`: how the directory was made.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Manifest {
    pub source: String,
    pub lists_dir: PathBuf,
    pub suite: String,
    pub files: Vec<SourceFile>,
    pub mining: MiningOptions,
    pub val_share: f64,
    pub test_share: f64,
    pub seed: u64,
    pub counts: Counts,
}

/// `notellm data debian`: optionally `apt-get update`, then [`build`] from the lists found.
pub fn run(args: &DebianArgs) -> Result<Manifest, DataCommandError> {
    // Reject bad shares before the minute of work.
    Split::by_note(&[], args.val_share, args.test_share, args.seed)?;
    if args.update {
        apt_update()?;
    }
    let lists = debian::find_lists(&args.lists, args.suite.as_deref())?;
    build(&lists, args)
}

/// Refreshes apt's lists with English descriptions. Only apt itself fetches anything.
pub fn apt_update() -> Result<(), DataCommandError> {
    tracing::info!("running apt-get -o Acquire::Languages=en update");
    let status = Command::new("apt-get").args(["-o", "Acquire::Languages=en", "update"]).status().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            DataCommandError::AptMissing
        } else {
            DataCommandError::AptSpawn(e)
        }
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(DataCommandError::AptFailed(status))
    }
}

/// Reads `lists`, mines pairs, splits and writes the dataset directory `args.out` (the other
/// fields of `args` that [`run`] uses, `lists`, `suite` and `update`, are not read here).
pub fn build(lists: &AptLists, args: &DebianArgs) -> Result<Manifest, DataCommandError> {
    let started = std::time::Instant::now();
    let files = lists.files().map(source_file).collect::<Result<Vec<_>, _>>()?;
    let corpus = debian::read_corpus(lists)?;
    let mined = mining::mine(&corpus.sessions, &args.mining);
    let ids: Vec<_> = corpus.notes.iter().map(|n| n.note_id.clone()).collect();
    let split = Split::by_note(&ids, args.val_share, args.test_share, args.seed)?;

    let out = &args.out;
    dataset::write_jsonl(&out.join(dataset::NOTES_FILE), &corpus.notes)?;
    dataset::write_jsonl(&out.join(dataset::SESSIONS_FILE), &corpus.sessions)?;
    dataset::write_jsonl(&out.join(dataset::PAIRS_FILE), &mined.pairs)?;
    let mut categories: Vec<&str> = corpus.notes.iter().filter_map(|n| n.note.category.as_deref()).collect();
    categories.sort_unstable();
    categories.dedup();
    dataset::write_lines(&out.join(dataset::CATEGORIES_FILE), &categories)?;

    let parts = split.parts();
    let (mut split_notes, mut split_pairs) = (PartCounts::default(), PartCounts::default());
    for part in Part::ALL {
        dataset::write_lines(&part.ids_path(out), split.ids(part).iter().map(|id| id.as_str()))?;
        *split_notes.get_mut(part) = split.ids(part).len();
        let inside = |p: &&Pair| parts.get(&p.a) == Some(&part) && parts.get(&p.b) == Some(&part);
        *split_pairs.get_mut(part) = dataset::write_jsonl(&part.pairs_path(out), mined.pairs.iter().filter(inside))?;
    }
    let cross_part_pairs = mined.pairs.len() - split_pairs.total();
    tracing::info!(
        notes = ?split_notes,
        pairs = ?split_pairs,
        cross_part_pairs,
        "split by note (cross-part pairs are only in pairs.jsonl)"
    );

    let manifest = Manifest {
        source: "debian apt lists".into(),
        lists_dir: lists.dir.clone(),
        suite: lists.suite.clone(),
        files,
        mining: args.mining.clone(),
        val_share: args.val_share,
        test_share: args.test_share,
        seed: args.seed,
        counts: Counts {
            notes: corpus.notes.len(),
            sessions: corpus.sessions.len(),
            categories: categories.len(),
            pairs: mined.pairs.len(),
            split_notes,
            split_pairs,
            cross_part_pairs,
            corpus: corpus.stats,
            mining: mined.stats,
        },
    };
    write_manifest(&out.join(dataset::MANIFEST_FILE), &manifest)?;
    tracing::info!(out = %out.display(), seconds = started.elapsed().as_secs_f64(), "dataset written");
    Ok(manifest)
}

fn source_file(path: &Path) -> Result<SourceFile, DataCommandError> {
    let io = |source| DataError::Io { path: path.to_owned(), source };
    Ok(SourceFile {
        name: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        bytes: std::fs::metadata(path).map_err(io)?.len(),
        sha256: notellm_artifacts::fetch::sha256_file(path)?,
    })
}

fn write_manifest(path: &Path, manifest: &Manifest) -> Result<(), DataError> {
    let io = |source| DataError::Io { path: path.to_owned(), source };
    let mut text = serde_json::to_string_pretty(manifest).map_err(|e| io(e.into()))?;
    text.push('\n');
    std::fs::write(path, text).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: DebianArgs,
    }

    #[test]
    fn flags_and_defaults() {
        let cli = Cli::try_parse_from(["x", "--out", "d", "--update", "--top-t", "5"]).unwrap();
        let a = cli.args;
        assert!(a.update);
        assert_eq!(a.mining.top_t, 5);
        let d = DebianArgs::new("d".into(), debian::DEFAULT_LISTS.into());
        assert_eq!((a.lists, a.val_share, a.test_share, a.seed), (d.lists, d.val_share, d.test_share, d.seed));
        assert_eq!(MiningOptions { top_t: 10, ..a.mining }, d.mining);
        use clap::CommandFactory;
        for arg in Cli::command().get_arguments().filter(|a| a.get_id() != "help") {
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default();
            assert!(env.starts_with("NOTELLM_DATA_") || env.starts_with("NOTELLM_MINE_"), "--{}", arg.get_id());
        }
    }

    #[test]
    fn bad_shares_fail_before_reading() {
        let mut a = DebianArgs::new("/nonexistent/out".into(), "/nonexistent/lists".into());
        a.test_share = 1.5;
        assert!(matches!(run(&a), Err(DataCommandError::Data(DataError::Invalid(_)))));
    }
}
