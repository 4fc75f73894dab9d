//! `notellm data debian` and `notellm data appstream`: dataset directories (the format of
//! [`crate::data::dataset`]) with a split by note under a fixed seed and a manifest. Same input
//! files and parameters give byte-identical files.
//!
//! - `debian`: notes and sessions from the apt lists ([`crate::data::debian`]), related pairs
//!   mined from the sessions ([`crate::train::mining`]).
//! - `appstream`: notes with icons from Debian's AppStream metadata, fetched through a private
//!   apt configuration ([`crate::data::apt`]) or read from a lists directory, and related pairs
//!   from explicit relations ([`crate::data::appstream`]), written as they are rather than mined.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use serde::Serialize;

use crate::data::appstream::{self, AppStreamError, AppStreamLists, RelationStats};
use crate::data::apt::{self, AptError, PrivateApt};
use crate::data::dataset::{self, DataError, Pair, Part, Session, Split};
use crate::data::debian::{self, AptLists, CorpusStats, DebianError};
use crate::jsonl::NoteLine;
use crate::train::mining::{self, MiningOptions, MiningStats};
use notellm_model::ModelError;
use notellm_note::{NoteId, NoteLimits};

pub const DEFAULT_SEED: u64 = 42;
/// The private apt configuration of `notellm data appstream`, inside the cache directory.
pub const APPSTREAM_APT_DIR: &str = "appstream-apt";

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

/// Flags of `notellm data appstream`.
#[derive(Debug, Clone, clap::Args)]
pub struct AppStreamArgs {
    /// Dataset directory to write (created; files in it are overwritten, and images of notes
    /// that are no longer in it removed).
    #[arg(long, env = "NOTELLM_DATA_OUT")]
    pub out: PathBuf,
    /// Read the metadata from this lists directory and fetch nothing: the suite's
    /// `*_main_dep11_Components-amd64.yml.gz`, `*_main_dep11_icons-64x64.tar.gz`,
    /// `*_main_dep11_icons-128x128.tar.gz` and `*_main_binary-amd64_Packages[.lz4|.gz]`. Without
    /// it, apt first fetches them into a private configuration under
    /// `$NOTELLM_CACHE/appstream-apt` (default `~/.cache/notellm/appstream-apt`; /etc/apt is not
    /// touched), whose `lists` is then read.
    #[arg(long, env = "NOTELLM_DATA_APPSTREAM_LISTS")]
    pub lists: Option<PathBuf>,
    /// Debian suite (its `main` component).
    #[arg(long, env = "NOTELLM_DATA_APPSTREAM_SUITE", default_value = appstream::DEFAULT_SUITE)]
    pub suite: String,
    /// Debian mirror to fetch from. Default: the machine's own (the first `URIs:` of
    /// /etc/apt/sources.list.d/debian.sources, else the first `deb` line of /etc/apt/sources.list).
    #[arg(long, env = "NOTELLM_DATA_APPSTREAM_MIRROR", conflicts_with = "lists")]
    pub mirror: Option<String>,
    /// Hub bound of the dependency relation: a package that the packages of more than this many
    /// notes depend on (`Depends`/`Recommends`) relates to none of them.
    #[arg(long, env = "NOTELLM_DATA_APPSTREAM_MAX_DEPENDENTS", default_value_t = appstream::DEFAULT_MAX_DEPENDENTS)]
    pub max_dependents: usize,
    /// Share of notes in the validation part. Larger than for `data debian`: a part with a share
    /// p of the notes keeps about p^2 of the pairs, and this corpus is small.
    #[arg(long, env = "NOTELLM_DATA_VAL_SHARE", default_value_t = APPSTREAM_VAL_SHARE)]
    pub val_share: f64,
    /// Share of notes in the test part (unseen at training time).
    #[arg(long, env = "NOTELLM_DATA_TEST_SHARE", default_value_t = APPSTREAM_TEST_SHARE)]
    pub test_share: f64,
    /// Seed of the split.
    #[arg(long, env = "NOTELLM_DATA_SEED", default_value_t = DEFAULT_SEED)]
    pub seed: u64,
}

pub const APPSTREAM_VAL_SHARE: f64 = 0.1;
pub const APPSTREAM_TEST_SHARE: f64 = 0.2;

impl AppStreamArgs {
    /// The defaults, writing to `out` from the lists directory `lists` (`None`: fetch first).
    pub fn new(out: PathBuf, lists: Option<PathBuf>) -> Self {
        Self {
            out,
            lists,
            suite: appstream::DEFAULT_SUITE.into(),
            mirror: None,
            max_dependents: appstream::DEFAULT_MAX_DEPENDENTS,
            val_share: APPSTREAM_VAL_SHARE,
            test_share: APPSTREAM_TEST_SHARE,
            seed: DEFAULT_SEED,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataCommandError {
    #[error(transparent)]
    Debian(#[from] DebianError),
    #[error(transparent)]
    AppStream(#[from] AppStreamError),
    #[error("fetching the AppStream metadata: {0}")]
    Apt(#[from] AptError),
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
    let written = write_dataset(out, &corpus.notes, &corpus.sessions, &mined.pairs, &split)?;
    let Written { categories, split_notes, split_pairs, cross_part_pairs } = written;

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
            categories,
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

/// What [`write_dataset`] wrote.
struct Written {
    categories: usize,
    split_notes: PartCounts,
    split_pairs: PartCounts,
    cross_part_pairs: usize,
}

/// Writes the files every dataset directory has (all but the manifest and the images).
fn write_dataset(
    out: &Path,
    notes: &[NoteLine],
    sessions: &[Session],
    pairs: &[Pair],
    split: &Split,
) -> Result<Written, DataError> {
    dataset::write_jsonl(&out.join(dataset::NOTES_FILE), notes)?;
    dataset::write_jsonl(&out.join(dataset::SESSIONS_FILE), sessions)?;
    dataset::write_jsonl(&out.join(dataset::PAIRS_FILE), pairs)?;
    let mut categories: Vec<&str> = notes.iter().filter_map(|n| n.note.category.as_deref()).collect();
    categories.sort_unstable();
    categories.dedup();
    dataset::write_lines(&out.join(dataset::CATEGORIES_FILE), &categories)?;

    let parts = split.parts();
    let (mut split_notes, mut split_pairs) = (PartCounts::default(), PartCounts::default());
    for part in Part::ALL {
        dataset::write_lines(&part.ids_path(out), split.ids(part).iter().map(|id| id.as_str()))?;
        *split_notes.get_mut(part) = split.ids(part).len();
        let inside = |p: &&Pair| parts.get(&p.a) == Some(&part) && parts.get(&p.b) == Some(&part);
        *split_pairs.get_mut(part) = dataset::write_jsonl(&part.pairs_path(out), pairs.iter().filter(inside))?;
    }
    let cross_part_pairs = pairs.len() - split_pairs.total();
    tracing::info!(
        notes = ?split_notes,
        pairs = ?split_pairs,
        cross_part_pairs,
        "split by note (cross-part pairs are only in pairs.jsonl)"
    );
    Ok(Written { categories: categories.len(), split_notes, split_pairs, cross_part_pairs })
}

/// Counts of `manifest.json` for `notellm data appstream`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AppStreamCounts {
    pub notes: usize,
    pub images: usize,
    pub sessions: usize,
    pub categories: usize,
    /// Lines of `pairs.jsonl`: both directions of each related pair.
    pub pairs: usize,
    /// Distinct unordered pairs, and those of each kind (a pair may be of several).
    pub union_pairs: usize,
    pub same_source_pairs: usize,
    pub dependency_pairs: usize,
    pub extends_pairs: usize,
    pub split_notes: PartCounts,
    pub split_pairs: PartCounts,
    /// Pairs whose two notes fell into different parts (in `pairs.jsonl` only).
    pub cross_part_pairs: usize,
    pub corpus: appstream::CorpusStats,
    pub relations: RelationStats,
}

/// `manifest.json` of `notellm data appstream`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AppStreamManifest {
    pub source: String,
    pub lists_dir: PathBuf,
    pub suite: String,
    /// The mirror apt fetched from, when this run fetched.
    pub fetched_from: Option<String>,
    /// The DEP-11 header of the `Components` file.
    pub dep11: appstream::Header,
    pub files: Vec<SourceFile>,
    pub max_dependents: usize,
    pub val_share: f64,
    pub test_share: f64,
    pub seed: u64,
    pub counts: AppStreamCounts,
}

/// `notellm data appstream`: fetch into the private apt configuration unless `--lists` is
/// given, then [`build_appstream`].
pub fn run_appstream(args: &AppStreamArgs) -> Result<AppStreamManifest, DataCommandError> {
    Split::by_note(&[], args.val_share, args.test_share, args.seed)?;
    let (dir, mirror) = match &args.lists {
        Some(dir) => (dir.clone(), None),
        None => {
            let mirror = match &args.mirror {
                Some(m) => m.clone(),
                None => apt::machine_mirror()?,
            };
            let private = PrivateApt::new(notellm_artifacts::fetch::default_cache_dir().join(APPSTREAM_APT_DIR));
            private.update(&apt::deb_line(&mirror, &args.suite), &appstream::apt_options())?;
            (private.lists_dir(), Some(mirror))
        }
    };
    let lists = appstream::find_lists(&dir, &args.suite)?;
    build_appstream(&lists, args, mirror)
}

/// Reads `lists`, builds the notes and relations, splits and writes the dataset directory
/// `args.out` with each note's icon as `images/<note_id>.png` (`lists`, `mirror` and `suite` of
/// `args` are not read here; `fetched_from` is the mirror the lists were just fetched from).
pub fn build_appstream(
    lists: &AppStreamLists,
    args: &AppStreamArgs,
    fetched_from: Option<String>,
) -> Result<AppStreamManifest, DataCommandError> {
    let started = std::time::Instant::now();
    let files = lists.files().map(source_file).collect::<Result<Vec<_>, _>>()?;
    let corpus = appstream::read_corpus(lists, &NoteLimits::default(), args.max_dependents)?;
    let pairs = corpus.relations.directed_pairs();
    let notes: Vec<NoteLine> = corpus.notes.iter().map(|n| n.line.clone()).collect();
    let ids: Vec<NoteId> = notes.iter().map(|n| n.note_id.clone()).collect();
    let split = Split::by_note(&ids, args.val_share, args.test_share, args.seed)?;

    let out = &args.out;
    let written = write_dataset(out, &notes, &corpus.relations.sessions, &pairs, &split)?;
    let images = write_images(out, corpus.notes.iter().map(|n| (&n.line.note_id, n.icon.png.as_slice())))?;
    let r = &corpus.relations.stats;
    let manifest = AppStreamManifest {
        source: "debian appstream (dep-11)".into(),
        lists_dir: lists.dir.clone(),
        suite: lists.suite.clone(),
        fetched_from,
        dep11: corpus.header.clone(),
        files,
        max_dependents: args.max_dependents,
        val_share: args.val_share,
        test_share: args.test_share,
        seed: args.seed,
        counts: AppStreamCounts {
            notes: notes.len(),
            images,
            sessions: corpus.relations.sessions.len(),
            categories: written.categories,
            pairs: pairs.len(),
            union_pairs: r.union_pairs,
            same_source_pairs: r.same_source_pairs,
            dependency_pairs: r.dependency_pairs,
            extends_pairs: r.extends_pairs,
            split_notes: written.split_notes,
            split_pairs: written.split_pairs,
            cross_part_pairs: written.cross_part_pairs,
            corpus: corpus.stats.clone(),
            relations: r.clone(),
        },
    };
    write_manifest(&out.join(dataset::MANIFEST_FILE), &manifest)?;
    tracing::info!(out = %out.display(), seconds = started.elapsed().as_secs_f64(), "dataset written");
    Ok(manifest)
}

/// Writes each image as `out/images/<note_id>.png` and removes the other `.png` files there
/// (left by an earlier run over other notes). Returns the number written.
fn write_images<'a>(out: &Path, images: impl Iterator<Item = (&'a NoteId, &'a [u8])>) -> Result<usize, DataError> {
    let dir = out.join(dataset::IMAGES_DIR);
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| DataError::Io { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let mut written = std::collections::HashSet::new();
    for (id, png) in images {
        let path = dataset::image_file(out, id);
        std::fs::write(&path, png).map_err(io(&path))?;
        written.insert(path);
    }
    for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
        let path = entry.map_err(io(&dir))?.path();
        if path.extension().is_some_and(|e| e == "png") && !written.contains(&path) {
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
    }
    Ok(written.len())
}

fn source_file(path: &Path) -> Result<SourceFile, DataCommandError> {
    let io = |source| DataError::Io { path: path.to_owned(), source };
    Ok(SourceFile {
        name: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        bytes: std::fs::metadata(path).map_err(io)?.len(),
        sha256: notellm_artifacts::fetch::sha256_file(path)?,
    })
}

fn write_manifest(path: &Path, manifest: &impl Serialize) -> Result<(), DataError> {
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

    #[derive(Parser)]
    struct AppStreamCli {
        #[command(flatten)]
        args: AppStreamArgs,
    }

    #[test]
    fn appstream_flags_and_defaults() {
        let a =
            AppStreamCli::try_parse_from(["x", "--out", "d", "--lists", "l", "--max-dependents", "5"]).unwrap().args;
        let d = AppStreamArgs::new("d".into(), Some("l".into()));
        assert_eq!(
            (a.max_dependents, &a.suite, a.val_share, a.test_share, a.seed),
            (5, &d.suite, 0.1, 0.2, DEFAULT_SEED)
        );
        assert_eq!(a.lists, d.lists);
        // A mirror is for fetching, which --lists turns off.
        assert!(AppStreamCli::try_parse_from(["x", "--out", "d", "--lists", "l", "--mirror", "http://m/"]).is_err());
        use clap::CommandFactory;
        for arg in AppStreamCli::command().get_arguments().filter(|a| a.get_id() != "help") {
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default();
            assert!(env.starts_with("NOTELLM_DATA_"), "--{}", arg.get_id());
        }
    }

    /// A trixie lists directory with the DEP-11 fixture of [`appstream`]'s tests, its icon
    /// tarballs and `Packages` (lz4), plus files that must be ignored.
    fn appstream_lists() -> tempfile::TempDir {
        use crate::data::appstream::tests::{png, tar_gz, FIXTURE, PACKAGES};
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("deb.debian.org_debian_dists_trixie_main");
        let file = |suffix: &str| PathBuf::from(format!("{}{suffix}", prefix.display()));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(FIXTURE.as_bytes()).unwrap();
        std::fs::write(file("_dep11_Components-amd64.yml.gz"), gz.finish().unwrap()).unwrap();
        tar_gz(
            &file("_dep11_icons-64x64.tar.gz"),
            &[
                ("maps_org.example.Maps.png", png("maps64")),
                ("maps-extra_xiterm+thai.png", png("xiterm64")),
                ("maps-plugin_plugin.png", png("plugin64")),
            ],
        );
        tar_gz(&file("_dep11_icons-128x128.tar.gz"), &[("maps_org.example.Maps.png", png("maps128"))]);
        let mut lz = lz4_flex::frame::FrameEncoder::new(Vec::new());
        lz.write_all(PACKAGES.as_bytes()).unwrap();
        std::fs::write(file("_binary-amd64_Packages.lz4"), lz.finish().unwrap()).unwrap();
        // Another suite's metadata (without icons) and a file that is no list.
        std::fs::write(dir.path().join("deb.debian.org_debian_dists_bookworm_main_dep11_Components-amd64.yml.gz"), b"")
            .unwrap();
        std::fs::write(dir.path().join("deb.debian.org_debian_dists_trixie_InRelease"), b"x").unwrap();
        dir
    }

    #[test]
    fn appstream_build_writes_a_dataset_with_images() {
        let lists_dir = appstream_lists();
        let out = tempfile::tempdir().unwrap();
        let args = AppStreamArgs { val_share: 0.0, test_share: 0.0, ..AppStreamArgs::new(out.path().into(), None) };
        let lists = appstream::find_lists(lists_dir.path(), "trixie").unwrap();
        assert!(lists.packages.to_string_lossy().ends_with("_Packages.lz4"));
        // A stale image of an earlier run goes; the icons are copied byte for byte.
        std::fs::create_dir_all(out.path().join("images")).unwrap();
        std::fs::write(out.path().join("images/gone.png"), b"x").unwrap();
        let m = build_appstream(&lists, &args, None).unwrap();
        let c = &m.counts;
        assert_eq!((c.notes, c.images, c.union_pairs, c.pairs), (3, 3, 2, 4));
        assert_eq!((c.same_source_pairs, c.dependency_pairs, c.extends_pairs), (1, 2, 1));
        assert_eq!((c.corpus.components, c.corpus.without_id, c.corpus.without_icon), (5, 1, 1));
        assert_eq!(m.files.len(), 4);
        assert!(m.files.iter().all(|f| f.sha256.len() == 64));
        assert_eq!(m.dep11.origin.as_deref(), Some("debian-trixie-main"));

        let data = dataset::Dataset::load(out.path()).unwrap();
        let id = |s: &str| NoteId::parse(s).unwrap();
        assert_eq!(data.notes.len(), 3);
        let maps = data.image_path(&id("org.example.Maps")).unwrap();
        assert_eq!(std::fs::read(maps).unwrap(), crate::data::appstream::tests::png("maps128"));
        assert!(data.image_path(&id("xiterm:2Bthai.desktop")).is_some());
        assert!(!out.path().join("images/gone.png").exists());
        assert_eq!(data.categories, ["Utility"]);
        // Everything is in training with these shares; each pair is there in both directions,
        // scored by the kinds that support it.
        let train: Vec<(String, String, f64)> =
            data.pairs(Part::Train).iter().map(|p| (p.a.to_string(), p.b.to_string(), p.score)).collect();
        assert_eq!(train.len(), 4);
        assert!(train.contains(&("org.example.Maps.plugin".into(), "org.example.Maps".into(), 2.0)));
        let sessions: Vec<Session> = dataset::read_jsonl(&out.path().join(dataset::SESSIONS_FILE)).unwrap();
        assert_eq!(sessions.len(), 4, "{sessions:?}");
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.path().join(dataset::MANIFEST_FILE)).unwrap()).unwrap();
        assert_eq!(manifest["counts"]["relations"]["extends_unresolved"], 1);

        // The same input gives the same bytes.
        let again = tempfile::tempdir().unwrap();
        build_appstream(&lists, &AppStreamArgs { out: again.path().into(), ..args }, None).unwrap();
        for f in [dataset::NOTES_FILE, dataset::PAIRS_FILE, dataset::SESSIONS_FILE, "split/train.txt"] {
            assert_eq!(std::fs::read(out.path().join(f)).unwrap(), std::fs::read(again.path().join(f)).unwrap(), "{f}");
        }
    }

    #[test]
    fn appstream_lists_must_be_complete() {
        let dir = tempfile::tempdir().unwrap();
        let e = appstream::find_lists(dir.path(), "trixie").unwrap_err();
        assert!(matches!(e, AppStreamError::NoComponents { .. }), "{e}");
        let prefix = "deb.debian.org_debian_dists_trixie_main";
        std::fs::write(dir.path().join(format!("{prefix}_dep11_Components-amd64.yml.gz")), b"").unwrap();
        std::fs::write(dir.path().join(format!("{prefix}_binary-amd64_Packages")), b"").unwrap();
        let e = appstream::find_lists(dir.path(), "trixie").unwrap_err();
        assert!(matches!(e, AppStreamError::NoIcons { .. }) && e.to_string().contains("DEP-11-icons"), "{e}");
    }

    #[test]
    fn bad_shares_fail_before_reading() {
        let mut a = DebianArgs::new("/nonexistent/out".into(), "/nonexistent/lists".into());
        a.test_share = 1.5;
        assert!(matches!(run(&a), Err(DataCommandError::Data(DataError::Invalid(_)))));
        let mut a = AppStreamArgs::new("/nonexistent/out".into(), None);
        a.val_share = -1.0;
        assert!(matches!(run_appstream(&a), Err(DataCommandError::Data(DataError::Invalid(_)))));
    }
}
