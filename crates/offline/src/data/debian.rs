//! Debian's package index as a corpus of notes with a behaviour log (`docs/data.md`).
//!
//! apt keeps its indices in `/var/lib/apt/lists` as `<mirror>_dists_<suite>_main_binary-amd64_Packages`
//! and `<mirror>_dists_<suite>_main_i18n_Translation-en`, lz4-compressed (`.lz4`, frame format)
//! or plain. One suite is read: the one named, or else the one whose `Packages` file is largest
//! (`bookworm`, not `bookworm-updates` or `bookworm-security`, whose few packages would only
//! replace some versions). When several `Packages` files of the suite exist (several mirrors),
//! they are read in name order and the last stanza of a package wins, as within one file.
//!
//! Each package is a note:
//! - id: `Package` with `+` mapped to `_` (Debian names never contain `_`, so this is
//!   injective; a name that does is an error);
//! - title: the first line of `Description`;
//! - content: the long description, from `Description-en` of the `Translation-en` stanza with
//!   the same `Description-md5`, else the continuation lines of `Description` (reflowed as
//!   Debian policy 5.6.13 says: a ` .` line separates paragraphs, lines indented further stay
//!   verbatim on their own line, other lines of a paragraph are joined with spaces);
//! - hashtags: the debtags of `Tag`; category: `Section` without a `contrib/`, `non-free/` or
//!   `non-free-firmware/` prefix.
//!
//! Each package's dependency list is one session (a "user" who engaged with all of those
//! packages), with the package's note id as session id: `Depends`, `Recommends` and `Suggests`
//! in that order, the first alternative of each `|` group, without version constraints,
//! architecture qualifiers (`:any`) or `[arch]`/`<profile>` restrictions; a name that is no
//! package is resolved through `Provides` when exactly one package provides it, and dropped
//! otherwise. Sessions are deduplicated and kept when they name at least 2 notes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::dataset::Session;
use super::deb822::{Deb822Error, Stanza, Stanzas};
use crate::jsonl::NoteLine;
use notellm_note::{Note, NoteId};

pub const DEFAULT_LISTS: &str = "/var/lib/apt/lists";
const PACKAGES_SUFFIX: &str = "_main_binary-amd64_Packages";
const TRANSLATION_SUFFIX: &str = "_main_i18n_Translation-en";
const SECTION_PREFIXES: [&str; 3] = ["contrib/", "non-free/", "non-free-firmware/"];
const DEPENDENCY_FIELDS: [&str; 3] = ["Depends", "Recommends", "Suggests"];

#[derive(Debug, thiserror::Error)]
pub enum DebianError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: Deb822Error,
    },
    #[error("{path}:{line}: {msg}")]
    Stanza { path: PathBuf, line: usize, msg: String },
    #[error("no `*{PACKAGES_SUFFIX}[.lz4]` file{} in {dir} (run `apt-get -o Acquire::Languages=en update`, or pass --update)",
        suite.as_ref().map(|s| format!(" of suite {s:?}")).unwrap_or_default())]
    NoLists { dir: PathBuf, suite: Option<String> },
    #[error(
        "no `*{TRANSLATION_SUFFIX}[.lz4]` file of suite {suite:?} in {dir}, so the notes would have no content \
             (apt drops them when `Acquire::Languages` is \"none\": run `apt-get -o Acquire::Languages=en update`, \
             or pass --update)"
    )]
    NoTranslations { dir: PathBuf, suite: String },
}

pub type Result<T, E = DebianError> = std::result::Result<T, E>;

/// The apt list files of one suite, each list sorted by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptLists {
    pub dir: PathBuf,
    pub suite: String,
    pub packages: Vec<PathBuf>,
    pub translations: Vec<PathBuf>,
}

impl AptLists {
    /// Every file read, packages first.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.packages.iter().chain(&self.translations).map(PathBuf::as_path)
    }
}

/// Finds the `Packages` and `Translation-en` files of `suite` (default: the suite whose
/// `Packages` file is largest) in `dir`; both must be there. Of `X` and `X.lz4`, the `.lz4` is
/// read.
pub fn find_lists(dir: &Path, suite: Option<&str>) -> Result<AptLists> {
    struct ListFile {
        suite: String,
        packages: bool,
        path: PathBuf,
        bytes: u64,
    }
    let io = |source| DebianError::Io { path: dir.to_owned(), source };
    // Every list file, keyed by its name without `.lz4`.
    let mut found: BTreeMap<String, ListFile> = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let (base, lz4) = name.strip_suffix(".lz4").map_or((name, false), |b| (b, true));
        let Some((suite, packages)) = list_suite(base) else { continue };
        if found.contains_key(base) && !lz4 {
            continue;
        }
        let bytes = std::fs::metadata(&path).map_err(|source| DebianError::Io { path: path.clone(), source })?.len();
        let file = ListFile { suite: suite.to_owned(), packages, path: path.clone(), bytes };
        found.insert(base.to_owned(), file);
    }
    let suite = match suite {
        Some(s) => s.to_owned(),
        None => found
            .values()
            .filter(|f| f.packages)
            .max_by_key(|f| f.bytes)
            .map(|f| f.suite.clone())
            .ok_or_else(|| DebianError::NoLists { dir: dir.to_owned(), suite: None })?,
    };
    let of_suite = |packages: bool| -> Vec<PathBuf> {
        found.values().filter(|f| f.suite == suite && f.packages == packages).map(|f| f.path.clone()).collect()
    };
    let lists = AptLists { dir: dir.to_owned(), packages: of_suite(true), translations: of_suite(false), suite };
    if lists.packages.is_empty() {
        return Err(DebianError::NoLists { dir: dir.to_owned(), suite: Some(lists.suite) });
    }
    if lists.translations.is_empty() {
        return Err(DebianError::NoTranslations { dir: dir.to_owned(), suite: lists.suite });
    }
    Ok(lists)
}

/// `(suite, is_packages)` of an apt list file name (without `.lz4`).
fn list_suite(name: &str) -> Option<(&str, bool)> {
    let (rest, packages) = match name.strip_suffix(PACKAGES_SUFFIX) {
        Some(rest) => (rest, true),
        None => (name.strip_suffix(TRANSLATION_SUFFIX)?, false),
    };
    let (_, suite) = rest.rsplit_once("_dists_")?;
    (!suite.is_empty()).then_some((suite, packages))
}

/// Opens a deb822 file, decompressing `*.lz4` (lz4 frame format) on the fly.
pub fn open_stanzas(path: &Path) -> Result<Stanzas<Box<dyn BufRead>>> {
    let file = std::fs::File::open(path).map_err(|source| DebianError::Io { path: path.to_owned(), source })?;
    let reader: Box<dyn BufRead> = if path.extension().is_some_and(|e| e == "lz4") {
        Box::new(BufReader::new(lz4_flex::frame::FrameDecoder::new(BufReader::new(file))))
    } else {
        Box::new(BufReader::new(file))
    };
    Ok(Stanzas::new(reader))
}

/// Calls `f` on every stanza of `path`.
fn for_each_stanza(path: &Path, mut f: impl FnMut(Stanza) -> Result<()>) -> Result<()> {
    for stanza in open_stanzas(path)? {
        f(stanza.map_err(|source| DebianError::Parse { path: path.to_owned(), source })?)?;
    }
    Ok(())
}

/// The notes and sessions read from one suite.
#[derive(Debug, Clone)]
pub struct Corpus {
    /// Sorted by note id.
    pub notes: Vec<NoteLine>,
    /// Sorted by session id.
    pub sessions: Vec<Session>,
    pub stats: CorpusStats,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CorpusStats {
    pub stanzas: usize,
    /// Stanzas replaced by a later one of the same package.
    pub replaced: usize,
    pub notes: usize,
    /// `Translation-en` stanzas read, and those a note uses.
    pub translations: usize,
    pub translations_used: usize,
    pub content_from_translation: usize,
    pub content_from_description: usize,
    pub without_content: usize,
    pub with_hashtags: usize,
    pub categories: usize,
    /// Dependency names (first alternatives) over all packages, and what became of them.
    pub dependencies: usize,
    pub resolved_via_provides: usize,
    pub unresolved: usize,
    pub sessions: usize,
}

/// What a `Packages` stanza contributes.
struct Package {
    id: NoteId,
    title: String,
    long: String,
    md5: Option<String>,
    hashtags: Vec<String>,
    category: Option<String>,
    depends: Vec<String>,
    provides: Vec<String>,
}

/// Reads the notes and sessions of `lists`.
pub fn read_corpus(lists: &AptLists) -> Result<Corpus> {
    let mut stats = CorpusStats::default();
    let mut packages: BTreeMap<String, Package> = BTreeMap::new();
    for path in &lists.packages {
        for_each_stanza(path, |s| {
            stats.stanzas += 1;
            let (name, package) =
                parse_package(&s).map_err(|msg| DebianError::Stanza { path: path.clone(), line: s.line, msg })?;
            if packages.insert(name, package).is_some() {
                tracing::debug!(path = %path.display(), line = s.line, "stanza replaces an earlier one of its package");
                stats.replaced += 1;
            }
            Ok(())
        })?;
    }
    tracing::info!(
        suite = %lists.suite,
        stanzas = stats.stanzas,
        packages = packages.len(),
        replaced = stats.replaced,
        "read Packages"
    );

    let wanted: HashSet<&str> = packages.values().filter_map(|p| p.md5.as_deref()).collect();
    let mut translated: HashMap<String, String> = HashMap::new();
    for path in &lists.translations {
        for_each_stanza(path, |s| {
            stats.translations += 1;
            if let Some(md5) = s.get("Description-md5").filter(|m| wanted.contains(m)) {
                let text = s.get("Description-en").ok_or_else(|| DebianError::Stanza {
                    path: path.clone(),
                    line: s.line,
                    msg: "Description-md5 without Description-en".into(),
                })?;
                translated.entry(md5.to_owned()).or_insert_with(|| long_description(text));
            }
            Ok(())
        })?;
    }

    stats.translations_used = translated.len();
    let sessions = sessions(&packages, &mut stats);
    let mut categories = HashSet::new();
    let notes: Vec<NoteLine> = packages
        .into_values()
        .map(|p| {
            let content = match p.md5.and_then(|m| translated.get(&m).cloned()) {
                Some(text) => {
                    stats.content_from_translation += 1;
                    text
                }
                None if !p.long.is_empty() => {
                    stats.content_from_description += 1;
                    p.long
                }
                None => {
                    stats.without_content += 1;
                    String::new()
                }
            };
            stats.with_hashtags += usize::from(!p.hashtags.is_empty());
            categories.extend(p.category.clone());
            NoteLine {
                note_id: p.id,
                note: Note { title: p.title, content, hashtags: p.hashtags, category: p.category },
            }
        })
        .collect();
    stats.notes = notes.len();
    stats.categories = categories.len();
    stats.sessions = sessions.len();
    tracing::info!(
        notes = stats.notes,
        from_translation = stats.content_from_translation,
        from_description = stats.content_from_description,
        without_content = stats.without_content,
        with_hashtags = stats.with_hashtags,
        categories = stats.categories,
        sessions = stats.sessions,
        dependencies = stats.dependencies,
        via_provides = stats.resolved_via_provides,
        unresolved = stats.unresolved,
        "built Debian notes and sessions"
    );
    Ok(Corpus { notes, sessions, stats })
}

/// The package name and what the note needs of a `Packages` stanza; errors are messages.
fn parse_package(s: &Stanza) -> std::result::Result<(String, Package), String> {
    let name = s.get("Package").filter(|n| !n.is_empty()).ok_or("stanza without Package")?;
    if name.contains('_') {
        return Err(format!("package name {name:?} contains '_', which the note id uses for '+'"));
    }
    let id = NoteId::parse(&name.replace('+', "_")).map_err(|e| format!("package {name:?}: {e}"))?;
    let description = s.get("Description").ok_or_else(|| format!("package {name:?} has no Description"))?;
    let title = description.lines().next().unwrap_or_default().trim().to_owned();
    let long = long_description(description);
    if title.is_empty() && long.is_empty() {
        return Err(format!("package {name:?} has an empty Description"));
    }
    let category =
        s.get("Section").map(|sec| SECTION_PREFIXES.iter().find_map(|p| sec.strip_prefix(p)).unwrap_or(sec).to_owned());
    let package = Package {
        id,
        title,
        long,
        md5: s.get("Description-md5").map(str::to_owned),
        hashtags: s.get("Tag").map(|t| list(t).map(str::to_owned).collect()).unwrap_or_default(),
        category: category.filter(|c| !c.is_empty()),
        depends: DEPENDENCY_FIELDS
            .iter()
            .filter_map(|f| s.get(f))
            .flat_map(relation_names)
            .map(str::to_owned)
            .collect(),
        provides: s.get("Provides").map(|p| relation_names(p).map(str::to_owned).collect()).unwrap_or_default(),
    };
    Ok((name.to_owned(), package))
}

/// The non-empty, trimmed items of a comma-separated field.
fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// The package names of a relationship field (`Depends`, `Provides`, ...): the first
/// alternative of each `|` group, without version, architecture qualifier or restrictions.
pub(crate) fn relation_names(value: &str) -> impl Iterator<Item = &str> {
    list(value).filter_map(|group| {
        let first = group.split('|').next()?.trim_start();
        let name = first.split(|c: char| c.is_whitespace() || matches!(c, '(' | '[' | '<')).next()?;
        let name = name.split(':').next()?;
        (!name.is_empty()).then_some(name)
    })
}

/// The long description (every line after the first) of a description field value, reflowed
/// as Debian policy 5.6.13 says.
pub fn long_description(value: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut joinable = false;
    for raw in value.lines().skip(1) {
        let line = raw.strip_prefix([' ', '\t']).unwrap_or(raw).trim_end();
        if line == "." {
            if lines.last().is_some_and(|l| !l.is_empty()) {
                lines.push(String::new());
            }
            joinable = false;
        } else if line.starts_with([' ', '\t']) {
            lines.push(line.to_owned());
            joinable = false;
        } else if let Some(last) = lines.last_mut().filter(|_| joinable) {
            last.push(' ');
            last.push_str(line);
        } else {
            lines.push(line.to_owned());
            joinable = true;
        }
    }
    while lines.last().is_some_and(String::is_empty) {
        lines.pop();
    }
    lines.join("\n")
}

/// One session per package: its resolved dependencies (see the module documentation).
fn sessions(packages: &BTreeMap<String, Package>, stats: &mut CorpusStats) -> Vec<Session> {
    let mut providers: HashMap<&str, Vec<&str>> = HashMap::new();
    for (name, p) in packages {
        for v in &p.provides {
            let list = providers.entry(v.as_str()).or_default();
            if !list.contains(&name.as_str()) {
                list.push(name);
            }
        }
    }
    let mut out = Vec::new();
    for p in packages.values() {
        let mut notes: Vec<NoteId> = Vec::new();
        for dep in &p.depends {
            stats.dependencies += 1;
            let target = match (packages.get(dep), providers.get(dep.as_str()).map(Vec::as_slice)) {
                (Some(t), _) => t,
                (None, Some([only])) => {
                    stats.resolved_via_provides += 1;
                    &packages[*only]
                }
                _ => {
                    stats.unresolved += 1;
                    continue;
                }
            };
            if !notes.contains(&target.id) {
                notes.push(target.id.clone());
            }
        }
        if notes.len() >= 2 {
            out.push(Session { session: p.id.to_string(), notes });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_names_strip_everything_but_the_name() {
        let v = "libc6 (>= 2.34), python3:any, foo | bar (<< 2), baz [amd64 i386] <!nocheck>,\n perl:amd64 (>= 5), ,";
        assert_eq!(relation_names(v).collect::<Vec<_>>(), ["libc6", "python3", "foo", "baz", "perl"]);
    }

    #[test]
    fn long_description_follows_policy() {
        let d = "short\n First line\n continued.\n .\n  verbatim one\n  verbatim two\n Next para\n .\n .";
        assert_eq!(long_description(d), "First line continued.\n\n verbatim one\n verbatim two\nNext para");
        assert_eq!(long_description("only a title"), "");
    }

    #[test]
    fn list_suites() {
        let n = "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages";
        assert_eq!(list_suite(n), Some(("bookworm", true)));
        let n = "deb.debian.org_debian-security_dists_bookworm-security_main_i18n_Translation-en";
        assert_eq!(list_suite(n), Some(("bookworm-security", false)));
        assert_eq!(list_suite("deb.debian.org_debian_dists_bookworm_InRelease"), None);
    }
}
