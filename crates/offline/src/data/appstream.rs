//! Debian's AppStream (DEP-11) metadata with icons as a corpus of notes with images and explicit
//! relatedness (`docs/data.md`, "Debian AppStream (images)").
//!
//! apt fetches the metadata as extra index targets of a suite's `main` (see [`apt_options`]);
//! a lists directory then holds, under one `<mirror>_dists_<suite>` prefix:
//! - `_main_dep11_Components-amd64.yml.gz`: a YAML stream, a header document (`File: DEP-11`,
//!   `Origin`, `MediaBaseUrl`, ...) and then one document per component;
//! - `_main_dep11_icons-64x64.tar.gz` and `_main_dep11_icons-128x128.tar.gz`: the cached icons,
//!   PNG files named as the components' `Icon: cached:` entries say;
//! - `_main_binary-amd64_Packages[.lz4|.gz]`: the binary packages (`Source`, `Depends`,
//!   `Recommends`, `Provides`), for the relations.
//!
//! Each component with a name, a summary and an icon is a note:
//! - id: `ID` through [`note_id`] (`org.gnome.Maps` and `firefox-esr.desktop` stay as they are,
//!   `xiterm+thai.desktop` becomes `xiterm:2Bthai.desktop`);
//! - title: `Name` (the `C` locale); content: `Summary`, then `Description` with its HTML turned
//!   into text lines ([`html_to_text`]);
//! - hashtags: `Keywords` (deduplicated ignoring case, within [`NoteLimits`]);
//! - category: the first of `Categories` that is not generic ([`GENERIC_CATEGORIES`], `X-*`);
//! - image: the cached icon, 128 px where the 128 px tarball has it, else 64 px (HiDPI `scale: 2`
//!   entries are in other tarballs and not read).
//!
//! Relatedness ([`relations`]) comes from three explicit signals, not from behaviour: notes whose
//! packages are built from the same source package; a note whose package `Depends` on or
//! `Recommends` the package of another note (first alternatives; a virtual name resolved when
//! exactly one package provides it), except when that package is a hub that the packages of more
//! than `max_dependents` notes depend on (a shared `-data` or library package says little);
//! an addon whose `Extends` names another note's component.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use saphyr::{Scalar, ScalarStyle, Yaml, YamlLoader};
use serde::Serialize;

use super::compress;
use super::dataset::{Pair, Session};
use super::deb822::{Deb822Error, Stanza, Stanzas};
use super::debian::relation_names;
use crate::jsonl::NoteLine;
use notellm_note::{Note, NoteError, NoteId, NoteLimits, MAX_NOTE_ID_LEN};

pub const DEFAULT_SUITE: &str = "trixie";
pub const DEFAULT_MAX_DEPENDENTS: usize = 20;
const COMPONENTS_SUFFIX: &str = "_main_dep11_Components-amd64.yml";
const ICONS_64_SUFFIX: &str = "_main_dep11_icons-64x64.tar";
const ICONS_128_SUFFIX: &str = "_main_dep11_icons-128x128.tar";
const PACKAGES_SUFFIX: &str = "_main_binary-amd64_Packages";
const RELATION_FIELDS: [&str; 2] = ["Depends", "Recommends"];

/// The first bytes of every PNG file.
pub const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

/// Freedesktop categories that say which toolkit or desktop a program belongs to, or nothing at
/// all, rather than what it is for; the category of a note is the first of its component's
/// `Categories` that is none of these and does not start with `X-` (vendor extensions).
pub const GENERIC_CATEGORIES: [&str; 14] = [
    "Application",
    "Applications",
    "ConsoleOnly",
    "Core",
    "COSMIC",
    "DDE",
    "GNOME",
    "GTK",
    "Java",
    "KDE",
    "LXQt",
    "Motif",
    "Qt",
    "XFCE",
];

#[derive(Debug, thiserror::Error)]
pub enum AppStreamError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: document {document}: {msg}")]
    Dep11 { path: PathBuf, document: usize, msg: String },
    #[error("{path}: {source}")]
    Packages {
        path: PathBuf,
        #[source]
        source: Deb822Error,
    },
    #[error(
        "no `*_dists_{suite}{COMPONENTS_SUFFIX}[.gz|.lz4]` in {dir}: fetch it (leave out --lists), or run \
         `apt-get update -o Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=true \
         -o Acquire::IndexTargets::deb::DEP-11-icons-large::DefaultEnabled=true` with {suite} in the sources"
    )]
    NoComponents { dir: PathBuf, suite: String },
    #[error(
        "{dir} has no `{prefix}{ICONS_64_SUFFIX}.gz` nor `{prefix}{ICONS_128_SUFFIX}.gz`: apt fetches the icons only \
         with -o Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=true (64 px) and \
         ...::DEP-11-icons-large::DefaultEnabled=true (128 px)"
    )]
    NoIcons { dir: PathBuf, prefix: String },
    #[error("{dir} has no `{prefix}{PACKAGES_SUFFIX}[.lz4|.gz]`, which the relations need")]
    NoPackages { dir: PathBuf, prefix: String },
}

pub type Result<T, E = AppStreamError> = std::result::Result<T, E>;

/// The `-o` options that make `apt-get update` fetch the DEP-11 metadata and both icon sizes of
/// the amd64 architecture. The index targets are defined here too (as the `appstream` package's
/// `/etc/apt/apt.conf.d/50appstream` defines them), so that no system configuration is needed;
/// translations are not fetched (the metadata carries the text).
pub fn apt_options() -> Vec<String> {
    let mut o: Vec<String> =
        ["Acquire::Languages=none", "APT::Architecture=amd64", "APT::Architectures=amd64"].map(String::from).to_vec();
    let targets = [
        ("DEP-11", "$(COMPONENT)/dep11/Components-$(NATIVE_ARCHITECTURE).yml", "Components-$(NATIVE_ARCHITECTURE)"),
        ("DEP-11-icons", "$(COMPONENT)/dep11/icons-64x64.tar", "icons-64x64"),
        ("DEP-11-icons-large", "$(COMPONENT)/dep11/icons-128x128.tar", "icons-128x128"),
    ];
    for (target, key, short) in targets {
        let t = format!("Acquire::IndexTargets::deb::{target}");
        o.push(format!("{t}::MetaKey={key}"));
        o.push(format!("{t}::ShortDescription={short}"));
        o.push(format!("{t}::Description=$(RELEASE)/$(COMPONENT) DEP-11 {short}"));
        o.push(format!("{t}::KeepCompressed=true"));
        o.push(format!("{t}::KeepCompressedAs=gz"));
        o.push(format!("{t}::DefaultEnabled=true"));
    }
    o
}

/// The files of one suite's AppStream metadata in a lists directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppStreamLists {
    pub dir: PathBuf,
    pub suite: String,
    pub components: PathBuf,
    pub icons_64: Option<PathBuf>,
    pub icons_128: Option<PathBuf>,
    pub packages: PathBuf,
}

impl AppStreamLists {
    /// Every file read.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        [Some(&self.components), self.icons_64.as_ref(), self.icons_128.as_ref(), Some(&self.packages)]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
    }
}

/// Finds `suite`'s files in `dir`. With several mirrors, the first `<mirror>_dists_<suite>`
/// prefix in name order that has a `Components` file is read, all of its files from it.
pub fn find_lists(dir: &Path, suite: &str) -> Result<AppStreamLists> {
    let io = |source| AppStreamError::Io { path: dir.to_owned(), source };
    let mut names: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        if let Some(name) = entry.map_err(io)?.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    names.sort_unstable();
    let marker = format!("_dists_{suite}{COMPONENTS_SUFFIX}");
    let prefixes: BTreeSet<&str> = names
        .iter()
        .filter_map(|n| n.find(&marker).map(|i| &n[..i + marker.len() - COMPONENTS_SUFFIX.len()]))
        .collect();
    let mirrors = prefixes.len();
    let (prefix, components) = prefixes
        .into_iter()
        .find_map(|p| compress::find(&names, &format!("{p}{COMPONENTS_SUFFIX}")).map(|c| (p, c)))
        .ok_or_else(|| AppStreamError::NoComponents { dir: dir.to_owned(), suite: suite.to_owned() })?;
    if mirrors > 1 {
        tracing::warn!(dir = %dir.display(), prefix, "several mirrors hold this suite's metadata; reading the first");
    }
    let find = |suffix: &str| compress::find(&names, &format!("{prefix}{suffix}")).map(|n| dir.join(n));
    let lists = AppStreamLists {
        dir: dir.to_owned(),
        suite: suite.to_owned(),
        components: dir.join(components),
        icons_64: find(ICONS_64_SUFFIX),
        icons_128: find(ICONS_128_SUFFIX),
        packages: find(PACKAGES_SUFFIX)
            .ok_or_else(|| AppStreamError::NoPackages { dir: dir.to_owned(), prefix: prefix.to_owned() })?,
    };
    if lists.icons_64.is_none() && lists.icons_128.is_none() {
        return Err(AppStreamError::NoIcons { dir: dir.to_owned(), prefix: prefix.to_owned() });
    }
    Ok(lists)
}

// ---------------------------------------------------------------------------------------------
// DEP-11 YAML

/// The header document of a DEP-11 file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Header {
    pub version: Option<String>,
    pub origin: Option<String>,
    pub media_base_url: Option<String>,
    pub time: Option<String>,
}

/// A cached icon entry (`Icon: cached:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedIcon {
    pub name: String,
    pub width: u32,
    /// `scale` (1 when absent); scaled icons are in the `@2` tarballs.
    pub scale: u32,
}

/// What a note needs of one component document; the text fields are the `C` locale's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Component {
    /// 1-based position of the document in the stream (the header is document 1).
    pub document: usize,
    pub kind: String,
    pub id: String,
    pub package: Option<String>,
    pub name: Option<String>,
    pub summary: Option<String>,
    /// As in the metadata (HTML).
    pub description: Option<String>,
    pub keywords: Vec<String>,
    pub categories: Vec<String>,
    pub icons: Vec<CachedIcon>,
    pub extends: Vec<String>,
}

/// A malformed DEP-11 stream: the 1-based document and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dep11Error {
    pub document: usize,
    pub msg: String,
}

/// Parses a DEP-11 stream: its header and every component with an `ID` (documents without
/// one are counted in `without_id`). One document is held as YAML at a time.
pub fn parse_dep11(text: &str) -> std::result::Result<(Header, Vec<Component>, usize), Dep11Error> {
    let mut parser = saphyr_parser::Parser::new_from_str(text);
    let mut header = None;
    let mut components = Vec::new();
    let mut without_id = 0;
    for document in 1.. {
        let bad = |msg: String| Dep11Error { document, msg };
        let mut loader: YamlLoader<'_, Yaml<'_>> = YamlLoader::default();
        // Scalars stay as written (`Name: 1.10` is the string "1.10", not a float).
        loader.early_parse(false);
        parser.load(&mut loader, false).map_err(|e| bad(e.to_string()))?;
        if let Some(e) = loader.error() {
            return Err(bad(e.to_string()));
        }
        let Some(doc) = loader.into_documents().into_iter().next() else { break };
        if !matches!(doc, Yaml::Mapping(_)) {
            return Err(bad("not a mapping".into()));
        }
        if header.is_none() {
            if get_str(&doc, "File") != Some("DEP-11") {
                return Err(bad("the first document is not a DEP-11 header (`File: DEP-11`)".into()));
            }
            let field = |k| get_str(&doc, k).map(str::to_owned);
            header = Some(Header {
                version: field("Version"),
                origin: field("Origin"),
                media_base_url: field("MediaBaseUrl"),
                time: field("Time"),
            });
            continue;
        }
        match component(&doc, document) {
            Some(c) => components.push(c),
            None => without_id += 1,
        }
    }
    let header = header.ok_or(Dep11Error { document: 1, msg: "empty stream, no DEP-11 header".into() })?;
    Ok((header, components, without_id))
}

fn component(doc: &Yaml, document: usize) -> Option<Component> {
    let id = get_str(doc, "ID")?.trim();
    if id.is_empty() {
        return None;
    }
    let c_locale = |key| get(doc, key).and_then(|m| get_str(m, "C")).map(str::to_owned);
    let strings = |y: Option<&Yaml>| -> Vec<String> {
        y.map(|y| seq(y).iter().filter_map(text).map(str::to_owned).collect()).unwrap_or_default()
    };
    let icons = get(doc, "Icon")
        .and_then(|i| get(i, "cached"))
        .map(|cached| {
            seq(cached)
                .iter()
                .filter_map(|e| {
                    let number = |k| get_str(e, k).and_then(|v| v.trim().parse::<u32>().ok());
                    Some(CachedIcon {
                        name: get_str(e, "name")?.trim().to_owned(),
                        width: number("width")?,
                        scale: number("scale").unwrap_or(1),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Some(Component {
        document,
        kind: get_str(doc, "Type").unwrap_or_default().to_owned(),
        id: id.to_owned(),
        package: get_str(doc, "Package").map(str::trim).filter(|p| !p.is_empty()).map(str::to_owned),
        name: c_locale("Name"),
        summary: c_locale("Summary"),
        description: c_locale("Description"),
        keywords: strings(get(doc, "Keywords").and_then(|k| get(k, "C"))),
        categories: strings(get(doc, "Categories")),
        icons,
        extends: strings(get(doc, "Extends")),
    })
}

/// The text of a scalar node (`None` for a null, a collection or anything else).
fn text<'a>(y: &'a Yaml) -> Option<&'a str> {
    match y {
        Yaml::Representation(s, style, _) => {
            let null = *style == ScalarStyle::Plain && matches!(s.as_ref(), "" | "~" | "null" | "Null" | "NULL");
            (!null).then_some(s.as_ref())
        }
        Yaml::Value(Scalar::String(s)) => Some(s.as_ref()),
        Yaml::Tagged(_, inner) => text(inner),
        _ => None,
    }
}

/// The value of `key` in a mapping node.
fn get<'a, 'i>(y: &'a Yaml<'i>, key: &str) -> Option<&'a Yaml<'i>> {
    match y {
        Yaml::Mapping(m) => m.iter().find(|(k, _)| text(k) == Some(key)).map(|(_, v)| v),
        Yaml::Tagged(_, inner) => get(inner, key),
        _ => None,
    }
}

fn get_str<'a>(y: &'a Yaml, key: &str) -> Option<&'a str> {
    get(y, key).and_then(text)
}

/// The items of a sequence node (none for anything else).
fn seq<'a, 'i>(y: &'a Yaml<'i>) -> &'a [Yaml<'i>] {
    match y {
        Yaml::Sequence(s) => s,
        Yaml::Tagged(_, inner) => seq(inner),
        _ => &[],
    }
}

/// The text of an AppStream description: each `<p>` one line, each `<li>` one line starting
/// with `- ` (`1. `, `2. `, ... inside `<ol>`), inline markup (`<em>`, `<code>`, ...) dropped with
/// its text kept, whitespace runs collapsed, character references decoded. Anything else that
/// looks like a tag is text.
pub fn html_to_text(html: &str) -> String {
    const BLOCK: [&str; 6] = ["p", "ul", "ol", "li", "br", "div"];
    const INLINE: [&str; 11] = ["em", "code", "b", "i", "strong", "a", "span", "tt", "u", "sub", "sup"];
    let mut lines: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut bullet: Option<String> = None;
    let mut lists: Vec<Option<usize>> = Vec::new();
    let flush = |cur: &mut String, bullet: &mut Option<String>, lines: &mut Vec<String>| {
        let t = collapse(&decode_entities(cur));
        if !t.is_empty() {
            lines.push(bullet.take().unwrap_or_default() + &t);
        }
        cur.clear();
    };
    let mut rest = html;
    while let Some(lt) = rest.find('<') {
        cur.push_str(&rest[..lt]);
        let after = &rest[lt + 1..];
        let tag = after.find('>').and_then(|gt| {
            let inner = after[..gt].trim();
            let (closing, inner) = inner.strip_prefix('/').map_or((false, inner), |i| (true, i));
            let name = inner.split(|c: char| c.is_whitespace() || c == '/').next()?.to_ascii_lowercase();
            (BLOCK.contains(&name.as_str()) || INLINE.contains(&name.as_str())).then_some((gt, closing, name))
        });
        let Some((gt, closing, name)) = tag else {
            cur.push('<');
            rest = after;
            continue;
        };
        rest = &after[gt + 1..];
        if INLINE.contains(&name.as_str()) {
            continue;
        }
        flush(&mut cur, &mut bullet, &mut lines);
        match (name.as_str(), closing) {
            ("ul", false) => lists.push(None),
            ("ol", false) => lists.push(Some(0)),
            ("ul" | "ol", true) => {
                lists.pop();
            }
            ("li", false) => {
                bullet = Some(match lists.last_mut() {
                    Some(Some(n)) => {
                        *n += 1;
                        format!("{n}. ")
                    }
                    _ => "- ".to_owned(),
                })
            }
            _ => {}
        }
    }
    cur.push_str(rest);
    flush(&mut cur, &mut bullet, &mut lines);
    lines.join("\n")
}

fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Decodes `&amp;`, `&lt;`, `&gt;`, `&quot;`, `&apos;`, `&nbsp;` and numeric references; other
/// `&...;` stay as they are.
fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let decoded = after.find(';').filter(|&semi| semi <= 10).and_then(|semi| {
            let c = match &after[..semi] {
                "amp" => '&',
                "lt" => '<',
                "gt" => '>',
                "quot" => '"',
                "apos" => '\'',
                "nbsp" => ' ',
                n => {
                    let code = match n.strip_prefix("#x").or_else(|| n.strip_prefix("#X")) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                        None => n.strip_prefix('#')?.parse().ok()?,
                    };
                    char::from_u32(code)?
                }
            };
            Some((c, semi))
        });
        match decoded {
            Some((c, semi)) => {
                out.push(c);
                rest = &after[semi + 1..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

// ---------------------------------------------------------------------------------------------
// Notes

/// Maps a component ID into the note id alphabet: the bytes `[A-Za-z0-9._-]` stay, every other
/// byte, `:` included, becomes `:XX` (two upper-case hex digits). `:` never stands for itself,
/// so the mapping is injective (it can be undone); an ID whose mapping is longer than
/// [`MAX_NOTE_ID_LEN`], or is `.` or `..`, is refused.
pub fn note_id(component_id: &str) -> std::result::Result<NoteId, NoteError> {
    let mut s = String::with_capacity(component_id.len());
    for b in component_id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            s.push(char::from(b));
        } else {
            s.push_str(&format!(":{b:02X}"));
        }
        if s.len() > MAX_NOTE_ID_LEN {
            break;
        }
    }
    NoteId::parse(&s)
}

/// The note's category: the first of `categories` that is not generic (see
/// [`GENERIC_CATEGORIES`]) and fits `max_chars`.
pub fn category(categories: &[String], max_chars: usize) -> Option<String> {
    categories
        .iter()
        .map(|c| c.trim())
        .find(|c| {
            !c.is_empty()
                && !c.starts_with("X-")
                && !GENERIC_CATEGORIES.iter().any(|g| g.eq_ignore_ascii_case(c))
                && c.chars().count() <= max_chars
        })
        .map(str::to_owned)
}

/// `keywords` as hashtags: trimmed, whitespace collapsed, deduplicated ignoring case (first
/// spelling kept), those over the length bound dropped, at most `max_hashtags`. Also returns how
/// many were dropped for the bounds.
pub fn hashtags(keywords: &[String], limits: &NoteLimits) -> (Vec<String>, usize) {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut dropped = 0;
    for k in keywords {
        let k = collapse(k);
        if k.is_empty() || !seen.insert(k.to_lowercase()) {
            continue;
        }
        if k.chars().count() > limits.max_hashtag_chars || out.len() == limits.max_hashtags {
            dropped += 1;
        } else {
            out.push(k);
        }
    }
    (out, dropped)
}

/// The first `max` characters of `s`, and whether anything was cut.
fn truncate(s: String, max: usize) -> (String, bool) {
    match s.char_indices().nth(max) {
        Some((i, _)) => (s[..i].trim_end().to_owned(), true),
        None => (s, false),
    }
}

/// A note's image: a PNG icon as the tarball holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Icon {
    /// Width in pixels, 64 or 128.
    pub size: u32,
    pub png: Vec<u8>,
}

/// A note with what the relations and the images need.
#[derive(Debug, Clone, PartialEq)]
pub struct AppNote {
    pub line: NoteLine,
    pub component_id: String,
    pub package: Option<String>,
    pub extends: Vec<String>,
    pub icon: Icon,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CorpusStats {
    /// Component documents, and how many of each `Type`.
    pub components: usize,
    pub types: BTreeMap<String, usize>,
    /// Why the others are no notes (the first reason that applies, in this order).
    pub without_id: usize,
    pub duplicate_ids: usize,
    pub refused_ids: usize,
    pub without_name: usize,
    pub without_summary: usize,
    /// No `cached` icon of 64 or 128 px (at scale 1).
    pub without_icon: usize,
    /// Cached icons named but in neither tarball, or not PNG there.
    pub icon_not_in_tarball: usize,
    pub icon_not_png: usize,
    pub invalid: usize,
    pub notes: usize,
    pub with_description: usize,
    pub with_hashtags: usize,
    pub with_category: usize,
    pub with_128px_icon: usize,
    pub with_64px_icon_only: usize,
    pub hashtags_dropped: usize,
    pub titles_truncated: usize,
    pub contents_truncated: usize,
    pub categories: usize,
}

/// Builds the notes of `components` with the icons in `icons_64` / `icons_128` (name -> file
/// bytes), sorted by note id.
pub fn notes(
    components: Vec<Component>,
    icons_64: &HashMap<String, Vec<u8>>,
    icons_128: &HashMap<String, Vec<u8>>,
    limits: &NoteLimits,
    stats: &mut CorpusStats,
) -> Vec<AppNote> {
    let mut out: BTreeMap<NoteId, AppNote> = BTreeMap::new();
    let mut categories = HashSet::new();
    for c in components {
        stats.components += 1;
        *stats.types.entry(c.kind.clone()).or_default() += 1;
        let id = match note_id(&c.id) {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(component = %c.id, document = c.document, "component skipped: {e}");
                stats.refused_ids += 1;
                continue;
            }
        };
        if out.contains_key(&id) {
            tracing::warn!(component = %c.id, document = c.document, "component skipped: its ID appeared before");
            stats.duplicate_ids += 1;
            continue;
        }
        let Some(name) = c.name.as_deref().map(collapse).filter(|n| !n.is_empty()) else {
            stats.without_name += 1;
            continue;
        };
        let Some(summary) = c.summary.as_deref().map(collapse).filter(|s| !s.is_empty()) else {
            stats.without_summary += 1;
            continue;
        };
        let icon = match pick_icon(&c.icons, icons_64, icons_128) {
            Ok(icon) => icon,
            Err(why) => {
                match why {
                    NoIcon::None => stats.without_icon += 1,
                    NoIcon::NotInTarball => stats.icon_not_in_tarball += 1,
                    NoIcon::NotPng => stats.icon_not_png += 1,
                }
                continue;
            }
        };
        let description = c.description.as_deref().map(html_to_text).filter(|d| !d.is_empty());
        let content = match &description {
            Some(d) => format!("{summary}\n{d}"),
            None => summary,
        };
        let (title, cut_title) = truncate(name, limits.max_title_chars);
        let (content, cut_content) = truncate(content, limits.max_content_chars);
        let (tags, dropped) = hashtags(&c.keywords, limits);
        let note = Note { title, content, hashtags: tags, category: category(&c.categories, limits.max_hashtag_chars) };
        if let Err(e) = note.check(limits) {
            tracing::warn!(component = %c.id, document = c.document, "component skipped: {e}");
            stats.invalid += 1;
            continue;
        }
        stats.with_description += usize::from(description.is_some());
        stats.with_hashtags += usize::from(!note.hashtags.is_empty());
        stats.with_category += usize::from(note.category.is_some());
        stats.with_128px_icon += usize::from(icon.size == 128);
        stats.with_64px_icon_only += usize::from(icon.size == 64);
        stats.hashtags_dropped += dropped;
        stats.titles_truncated += usize::from(cut_title);
        stats.contents_truncated += usize::from(cut_content);
        categories.extend(note.category.clone());
        let line = NoteLine { note_id: id.clone(), note };
        out.insert(id, AppNote { line, component_id: c.id, package: c.package, extends: c.extends, icon });
    }
    stats.notes = out.len();
    stats.categories = categories.len();
    out.into_values().collect()
}

enum NoIcon {
    None,
    NotInTarball,
    NotPng,
}

/// The 128 px icon when the tarball has it as a PNG, else the 64 px one.
fn pick_icon(
    icons: &[CachedIcon],
    icons_64: &HashMap<String, Vec<u8>>,
    icons_128: &HashMap<String, Vec<u8>>,
) -> std::result::Result<Icon, NoIcon> {
    let mut why = NoIcon::None;
    for (size, set) in [(128, icons_128), (64, icons_64)] {
        for i in icons.iter().filter(|i| i.width == size && i.scale == 1) {
            match set.get(&i.name) {
                Some(png) if png.starts_with(&PNG_SIGNATURE) => return Ok(Icon { size, png: png.clone() }),
                Some(_) => why = NoIcon::NotPng,
                None if matches!(why, NoIcon::None) => why = NoIcon::NotInTarball,
                None => {}
            }
        }
    }
    Err(why)
}

// ---------------------------------------------------------------------------------------------
// Icons

/// The cached icon names of `components` at `size` px (scale 1).
pub fn wanted_icons(components: &[Component], size: u32) -> HashSet<String> {
    components
        .iter()
        .flat_map(|c| &c.icons)
        .filter(|i| i.width == size && i.scale == 1)
        .map(|i| i.name.clone())
        .collect()
}

/// The members of the icon tarball `path` (read through [`compress::open`]) named in `wanted`,
/// name -> bytes. A member's name is its path without a leading `./` and, where there is one,
/// the `WxH/` folder (Debian's tarballs hold the files at the top; other generators put them
/// under `64x64/`).
pub fn read_icons(path: &Path, wanted: &HashSet<String>) -> Result<HashMap<String, Vec<u8>>> {
    let io = |source| AppStreamError::Io { path: path.to_owned(), source };
    let mut archive = tar::Archive::new(compress::open(path).map_err(io)?);
    let mut out = HashMap::new();
    for entry in archive.entries().map_err(io)? {
        let mut entry = entry.map_err(io)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let member = entry.path().map_err(io)?.to_string_lossy().into_owned();
        let name = icon_member_name(&member);
        if wanted.contains(name) && !out.contains_key(name) {
            let name = name.to_owned();
            let mut bytes = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut bytes).map_err(io)?;
            out.insert(name, bytes);
        }
    }
    Ok(out)
}

fn icon_member_name(member: &str) -> &str {
    let m = member.strip_prefix("./").unwrap_or(member);
    match m.split_once('/') {
        Some((dir, rest))
            if dir.split_once('x').is_some_and(|(w, h)| w.parse::<u32>().is_ok() && h.parse::<u32>().is_ok()) =>
        {
            rest
        }
        _ => m,
    }
}

// ---------------------------------------------------------------------------------------------
// Packages

/// What the relations need of the binary `Packages` index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackageIndex {
    /// package -> its source package (`Source` without a version; the package itself when absent).
    pub source: HashMap<String, String>,
    /// package -> `Depends` then `Recommends` names (first alternatives).
    pub depends: HashMap<String, Vec<String>>,
    /// virtual name -> the packages that provide it.
    pub providers: HashMap<String, Vec<String>>,
}

impl PackageIndex {
    pub fn read(path: &Path) -> Result<Self> {
        let reader = compress::open(path).map_err(|source| AppStreamError::Io { path: path.to_owned(), source })?;
        Self::from_reader(reader).map_err(|source| AppStreamError::Packages { path: path.to_owned(), source })
    }

    /// Reads deb822 stanzas; the last stanza of a package wins.
    pub fn from_reader(reader: impl BufRead) -> std::result::Result<Self, Deb822Error> {
        let mut index = Self::default();
        for stanza in Stanzas::new(reader) {
            index.add(&stanza?);
        }
        for p in index.providers.values_mut() {
            p.sort_unstable();
            p.dedup();
        }
        Ok(index)
    }

    fn add(&mut self, s: &Stanza) {
        let Some(name) = s.get("Package").filter(|n| !n.is_empty()) else { return };
        let source = s.get("Source").and_then(|v| v.split_whitespace().next()).unwrap_or(name);
        self.source.insert(name.to_owned(), source.to_owned());
        let deps =
            RELATION_FIELDS.iter().filter_map(|f| s.get(f)).flat_map(relation_names).map(str::to_owned).collect();
        self.depends.insert(name.to_owned(), deps);
        for v in s.get("Provides").into_iter().flat_map(relation_names) {
            self.providers.entry(v.to_owned()).or_default().push(name.to_owned());
        }
    }

    /// The package a relation name stands for: itself, or its only provider.
    fn resolve<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        if self.source.contains_key(name) {
            return Some(name);
        }
        match self.providers.get(name).map(Vec::as_slice) {
            Some([only]) => Some(only),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Relations

/// The kinds of relatedness, one bit each in [`Relations::pairs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    SameSource = 1,
    Dependency = 2,
    Extends = 4,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RelationStats {
    /// Notes whose package is not in the `Packages` index (their source is taken to be the
    /// package itself; they have no dependencies).
    pub packages_not_in_index: usize,
    /// Source packages with 2+ notes, and the pairs within them.
    pub source_groups: usize,
    pub same_source_pairs: usize,
    /// Packages of notes that the packages of more than `max_dependents` notes depend on, with
    /// that number.
    pub hub_packages: BTreeMap<String, usize>,
    /// (package, dependency) links between two notes' packages, hubs left out.
    pub dependency_links: usize,
    pub dependency_pairs: usize,
    /// `Extends` entries naming a note, those naming none, and the pairs.
    pub extends_links: usize,
    pub extends_unresolved: usize,
    pub extends_pairs: usize,
    /// Distinct unordered pairs of any kind, the notes in them, the pairs whose two notes both
    /// have a category, and those whose two notes have the same one.
    pub union_pairs: usize,
    pub notes_in_pairs: usize,
    pub pairs_both_categorised: usize,
    pub pairs_sharing_category: usize,
}

/// The related pairs and the relation groups as sessions.
#[derive(Debug, Clone, PartialEq)]
pub struct Relations {
    /// Unordered pairs (a < b) -> the [`Relation`] bits that support them.
    pub pairs: BTreeMap<(NoteId, NoteId), u8>,
    /// One per relation group: `source:<source package>` (its notes), `depends:<package>-><dependency>`
    /// (the notes of both packages), `extends:<note>-><note>`; sorted by id.
    pub sessions: Vec<Session>,
    pub stats: RelationStats,
}

impl Relations {
    /// Both directions of every pair, scored by the number of relation kinds that support it;
    /// sorted by `a`, then score (descending), then `b`.
    pub fn directed_pairs(&self) -> Vec<Pair> {
        let mut out: Vec<Pair> = self
            .pairs
            .iter()
            .flat_map(|((a, b), kinds)| {
                let score = f64::from(kinds.count_ones());
                [Pair { a: a.clone(), b: b.clone(), score }, Pair { a: b.clone(), b: a.clone(), score }]
            })
            .collect();
        out.sort_by(|x, y| x.a.cmp(&y.a).then(y.score.total_cmp(&x.score)).then_with(|| x.b.cmp(&y.b)));
        out
    }
}

/// The relations between `notes` (see the module documentation).
pub fn relations(notes: &[AppNote], index: &PackageIndex, max_dependents: usize) -> Relations {
    let mut pairs: BTreeMap<(NoteId, NoteId), u8> = BTreeMap::new();
    let mut sessions: Vec<Session> = Vec::new();
    let mut stats = RelationStats::default();
    let mut add = |a: &NoteId, b: &NoteId, kind: Relation| {
        if a != b {
            let key = if a < b { (a.clone(), b.clone()) } else { (b.clone(), a.clone()) };
            *pairs.entry(key).or_default() |= kind as u8;
        }
    };

    // Notes by package, packages by source.
    let mut by_package: BTreeMap<&str, Vec<&NoteId>> = BTreeMap::new();
    for n in notes {
        if let Some(p) = &n.package {
            by_package.entry(p).or_default().push(&n.line.note_id);
        }
    }
    let mut by_source: BTreeMap<&str, Vec<&NoteId>> = BTreeMap::new();
    for (&p, ids) in &by_package {
        let source = index.source.get(p).map_or_else(
            || {
                stats.packages_not_in_index += ids.len();
                p
            },
            String::as_str,
        );
        by_source.entry(source).or_default().extend(ids);
    }
    for (source, ids) in &mut by_source {
        if ids.len() < 2 {
            continue;
        }
        ids.sort_unstable();
        stats.source_groups += 1;
        for (i, a) in ids.iter().enumerate() {
            for b in &ids[i + 1..] {
                add(a, b, Relation::SameSource);
            }
        }
        sessions
            .push(Session { session: format!("source:{source}"), notes: ids.iter().map(|&id| id.clone()).collect() });
    }

    // Dependency links between the notes' packages: (package, dependency), both with notes.
    let mut links: BTreeSet<(&str, &str)> = BTreeSet::new();
    for &p in by_package.keys() {
        for dep in index.depends.get(p).into_iter().flatten() {
            if let Some(d) = index.resolve(dep).filter(|d| *d != p && by_package.contains_key(d)) {
                links.insert((p, d));
            }
        }
    }
    let mut dependents: HashMap<&str, usize> = HashMap::new();
    for &(p, d) in &links {
        *dependents.entry(d).or_default() += by_package[p].len();
    }
    for (&d, &n) in &dependents {
        if n > max_dependents {
            stats.hub_packages.insert(d.to_owned(), n);
        }
    }
    for &(p, d) in &links {
        if stats.hub_packages.contains_key(d) {
            continue;
        }
        stats.dependency_links += 1;
        let mut session: Vec<NoteId> = Vec::new();
        for a in &by_package[p] {
            for b in &by_package[d] {
                add(a, b, Relation::Dependency);
            }
        }
        for id in by_package[p].iter().chain(&by_package[d]) {
            if !session.contains(id) {
                session.push((*id).clone());
            }
        }
        sessions.push(Session { session: format!("depends:{p}->{d}"), notes: session });
    }

    // Addons.
    let known: HashSet<&NoteId> = notes.iter().map(|n| &n.line.note_id).collect();
    for n in notes {
        for target in &n.extends {
            match note_id(target).ok().filter(|t| known.contains(t) && *t != n.line.note_id) {
                Some(t) => {
                    stats.extends_links += 1;
                    add(&n.line.note_id, &t, Relation::Extends);
                    let session = format!("extends:{}->{t}", n.line.note_id);
                    sessions.push(Session { session, notes: vec![n.line.note_id.clone(), t] });
                }
                None => stats.extends_unresolved += 1,
            }
        }
    }

    let category: HashMap<&NoteId, Option<&str>> =
        notes.iter().map(|n| (&n.line.note_id, n.line.note.category.as_deref())).collect();
    let mut in_pairs: HashSet<&NoteId> = HashSet::new();
    for ((a, b), &kinds) in &pairs {
        stats.same_source_pairs += usize::from(kinds & Relation::SameSource as u8 != 0);
        stats.dependency_pairs += usize::from(kinds & Relation::Dependency as u8 != 0);
        stats.extends_pairs += usize::from(kinds & Relation::Extends as u8 != 0);
        if let (Some(Some(x)), Some(Some(y))) = (category.get(a), category.get(b)) {
            stats.pairs_both_categorised += 1;
            stats.pairs_sharing_category += usize::from(x == y);
        }
        in_pairs.insert(a);
        in_pairs.insert(b);
    }
    stats.union_pairs = pairs.len();
    stats.notes_in_pairs = in_pairs.len();
    sessions.sort_by(|a, b| a.session.cmp(&b.session));
    sessions.dedup_by(|a, b| a.session == b.session);
    Relations { pairs, sessions, stats }
}

// ---------------------------------------------------------------------------------------------
// The whole corpus

/// The notes, relations and header read from one suite's files.
#[derive(Debug, Clone)]
pub struct Corpus {
    pub header: Header,
    /// Sorted by note id.
    pub notes: Vec<AppNote>,
    pub relations: Relations,
    pub stats: CorpusStats,
}

/// Reads `lists` (the notes held to `limits`) and builds the relations.
pub fn read_corpus(lists: &AppStreamLists, limits: &NoteLimits, max_dependents: usize) -> Result<Corpus> {
    let path = &lists.components;
    let io = |source| AppStreamError::Io { path: path.clone(), source };
    let mut text = String::new();
    compress::open(path).map_err(io)?.read_to_string(&mut text).map_err(io)?;
    let (header, components, without_id) = parse_dep11(&text).map_err(|e| AppStreamError::Dep11 {
        path: path.clone(),
        document: e.document,
        msg: e.msg,
    })?;
    drop(text);
    tracing::info!(components = components.len(), origin = ?header.origin, "read DEP-11 components");

    let icons = |file: &Option<PathBuf>, size| match file {
        Some(f) => read_icons(f, &wanted_icons(&components, size)),
        None => Ok(HashMap::new()),
    };
    let icons_64 = icons(&lists.icons_64, 64)?;
    let icons_128 = icons(&lists.icons_128, 128)?;
    tracing::info!(icons_64 = icons_64.len(), icons_128 = icons_128.len(), "read icons");

    let mut stats = CorpusStats { without_id, ..CorpusStats::default() };
    let notes = notes(components, &icons_64, &icons_128, limits, &mut stats);
    stats.components += without_id;
    let index = PackageIndex::read(&lists.packages)?;
    let relations = relations(&notes, &index, max_dependents);
    tracing::info!(
        notes = stats.notes,
        with_128px_icon = stats.with_128px_icon,
        union_pairs = relations.stats.union_pairs,
        same_source = relations.stats.same_source_pairs,
        dependency = relations.stats.dependency_pairs,
        extends = relations.stats.extends_pairs,
        "built AppStream notes and relations"
    );
    Ok(Corpus { header, notes, relations, stats })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write;

    /// A small DEP-11 stream: the header, two applications of one source package (one with a
    /// 128 px icon), an addon of the first, one component without an icon and one whose ID needs
    /// mapping.
    pub(crate) const FIXTURE: &str = r#"---
File: DEP-11
Version: '1.0'
Origin: debian-trixie-main
MediaBaseUrl: https://appstream.debian.org/media/trixie
Time: 20250808T201448
---
Type: desktop-application
ID: org.example.Maps
Package: maps
Name:
  de: Karten
  C: Maps
Summary:
  C: Find places   around the world
Description:
  de: >-
    <p>Nein</p>
  C: >-
    <p>Maps gives you quick access to maps
    all across the world.</p>

    <p>It allows you to:</p>

    <ul>
      <li>Search for <em>places</em> &amp; addresses</li>
      <li>See &quot;routes&quot;</li>
    </ul>
Keywords:
  C:
  - map
  - Map
  - '2048'
  - route
Categories:
- GTK
- GNOME
- X-GNOME-Utilities
- Utility
- Maps
Icon:
  cached:
  - name: maps_org.example.Maps.png
    width: 48
    height: 48
  - name: maps_org.example.Maps.png
    width: 64
    height: 64
  - name: maps_org.example.Maps.png
    width: 128
    height: 128
  - name: maps_org.example.Maps.png
    width: 64
    height: 64
    scale: 2
  stock: org.example.Maps
---
Type: desktop-application
ID: xiterm+thai.desktop
Package: maps-extra
Name:
  C: 1.10
Summary:
  C: Terminal
Categories:
- Qt
Icon:
  cached:
  - name: maps-extra_xiterm+thai.png
    width: 64
    height: 64
---
Type: addon
ID: org.example.Maps.plugin
Package: maps-plugin
Extends:
- org.example.Maps
- org.example.Missing
Name:
  C: Maps plugin
Summary:
  C: More maps
Icon:
  cached:
  - name: maps-plugin_plugin.png
    width: 64
    height: 64
---
Type: console-application
ID: org.example.NoIcon
Package: maps
Name:
  C: No icon
Summary:
  C: Skipped
Icon:
  stock: utilities-terminal
---
Type: generic
Package: noid
Name:
  C: Without an ID
"#;

    pub(crate) const PACKAGES: &str = "\
Package: maps
Source: maps-src (1.0-1)
Depends: libc6 (>= 2.34), maps-data
Recommends: maps-extra | other

Package: maps-extra
Source: maps-src
Depends: maps-data

Package: maps-plugin
Depends: maps (= 1.0-1), libc6

Package: maps-data
Provides: maps-data-virtual

Package: libc6
";

    pub(crate) fn png(tag: &str) -> Vec<u8> {
        let mut v = PNG_SIGNATURE.to_vec();
        v.extend_from_slice(tag.as_bytes());
        v
    }

    /// A gzip-compressed tarball of `members` (path, bytes).
    pub(crate) fn tar_gz(path: &Path, members: &[(&str, Vec<u8>)]) {
        let gz = flate2::write::GzEncoder::new(std::fs::File::create(path).unwrap(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for (name, data) in members {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap().flush().unwrap();
    }

    fn parsed() -> (Header, Vec<Component>, usize) {
        parse_dep11(FIXTURE).unwrap()
    }

    #[test]
    fn dep11_documents_map_to_components() {
        let (header, components, without_id) = parsed();
        assert_eq!(header.origin.as_deref(), Some("debian-trixie-main"));
        assert_eq!(header.version.as_deref(), Some("1.0"));
        assert_eq!(header.media_base_url.as_deref(), Some("https://appstream.debian.org/media/trixie"));
        assert_eq!(without_id, 1);
        let ids: Vec<_> = components.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["org.example.Maps", "xiterm+thai.desktop", "org.example.Maps.plugin", "org.example.NoIcon"]);
        let maps = &components[0];
        assert_eq!(
            (maps.document, maps.kind.as_str(), maps.package.as_deref()),
            (2, "desktop-application", Some("maps"))
        );
        assert_eq!(maps.name.as_deref(), Some("Maps"));
        assert_eq!(maps.keywords, ["map", "Map", "2048", "route"]);
        assert_eq!(maps.categories, ["GTK", "GNOME", "X-GNOME-Utilities", "Utility", "Maps"]);
        assert_eq!(maps.icons.len(), 4);
        assert_eq!(maps.icons[3], CachedIcon { name: "maps_org.example.Maps.png".into(), width: 64, scale: 2 });
        // A plain scalar that looks like a number stays the text as written.
        assert_eq!(components[1].name.as_deref(), Some("1.10"));
        assert_eq!(components[2].extends, ["org.example.Maps", "org.example.Missing"]);
        assert!(components[3].icons.is_empty());
    }

    #[test]
    fn bad_streams_name_the_document() {
        let e = parse_dep11("---\nType: x\n").unwrap_err();
        assert_eq!(e.document, 1);
        assert!(e.msg.contains("DEP-11 header"), "{}", e.msg);
        let e = parse_dep11("---\nFile: DEP-11\n---\nID: a\n---\nID: [unclosed\n").unwrap_err();
        assert_eq!(e.document, 3, "{e:?}");
        assert!(parse_dep11("").is_err());
    }

    #[test]
    fn html_becomes_text_lines() {
        let (_, components, _) = parsed();
        assert_eq!(
            html_to_text(components[0].description.as_deref().unwrap()),
            "Maps gives you quick access to maps all across the world.\nIt allows you to:\n\
             - Search for places & addresses\n- See \"routes\""
        );
        assert_eq!(
            html_to_text(
                "<p>Steps:</p><ol><li><p>one</p></li><li>two &lt;b&gt; &#x41;&#66; &bogus; a&b</li></ol>\
                 <p>1 < 2 <x></p>"
            ),
            "Steps:\n1. one\n2. two <b> AB &bogus; a&b\n1 < 2 <x>"
        );
        assert_eq!(html_to_text(""), "");
    }

    #[test]
    fn component_ids_map_injectively() {
        let ok = |s: &str| note_id(s).unwrap().to_string();
        assert_eq!(ok("org.gnome.Maps"), "org.gnome.Maps");
        assert_eq!(ok("firefox-esr.desktop"), "firefox-esr.desktop");
        assert_eq!(ok("xgalaga++.desktop"), "xgalaga:2B:2B.desktop");
        assert_eq!(ok("a:b"), "a:3Ab");
        assert_eq!(ok("é"), ":C3:A9");
        assert!(note_id(".").is_err());
        assert!(note_id(&"+".repeat(43)).is_err());
        assert!(note_id(&"a".repeat(128)).is_ok());
    }

    fn unmap(id: &str) -> Vec<u8> {
        let b = id.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b':' {
                out.push(u8::from_str_radix(&id[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        out
    }

    proptest! {
        #[test]
        fn note_ids_can_be_undone(s in "\\PC{1,40}") {
            if let Ok(id) = note_id(&s) {
                prop_assert_eq!(unmap(id.as_str()), s.as_bytes());
            }
        }
    }

    #[test]
    fn categories_skip_generic_ones() {
        let c = |v: &[&str]| category(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>(), 100);
        assert_eq!(c(&["GTK", "GNOME", "X-GNOME-Utilities", "Utility", "Maps"]).as_deref(), Some("Utility"));
        assert_eq!(c(&["Qt", "KDE", "Education", "Math"]).as_deref(), Some("Education"));
        assert_eq!(c(&["Qt", "Application"]), None);
        assert_eq!(c(&[]), None);
    }

    #[test]
    fn hashtags_deduplicate_within_limits() {
        let limits = NoteLimits { max_hashtags: 3, max_hashtag_chars: 5, ..NoteLimits::default() };
        let k: Vec<String> = ["map", " Map ", "toolong", "", "a  b", "c", "d"].map(String::from).to_vec();
        assert_eq!(hashtags(&k, &limits), (vec!["map".to_string(), "a b".into(), "c".into()], 2));
    }

    #[test]
    fn icon_tarball_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("icons-64x64.tar.gz");
        tar_gz(
            &path,
            &[
                ("a_a.png", png("a")),
                ("./b_b.png", png("b")),
                ("64x64/c_c.png", png("c")),
                ("other/d_d.png", png("d")),
                ("unwanted.png", png("u")),
            ],
        );
        let wanted: HashSet<String> =
            ["a_a.png", "b_b.png", "c_c.png", "d_d.png", "missing.png"].map(String::from).into();
        let got = read_icons(&path, &wanted).unwrap();
        let mut names: Vec<_> = got.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["a_a.png", "b_b.png", "c_c.png"]);
        assert_eq!(got["c_c.png"], png("c"));
        assert!(matches!(read_icons(&dir.path().join("none.tar.gz"), &wanted), Err(AppStreamError::Io { .. })));
    }

    pub(crate) fn icon_sets() -> (HashMap<String, Vec<u8>>, HashMap<String, Vec<u8>>) {
        let i64: HashMap<String, Vec<u8>> = [
            ("maps_org.example.Maps.png", png("maps64")),
            ("maps-extra_xiterm+thai.png", png("xiterm64")),
            ("maps-plugin_plugin.png", png("plugin64")),
        ]
        .map(|(k, v)| (k.to_owned(), v))
        .into();
        let i128: HashMap<String, Vec<u8>> = [("maps_org.example.Maps.png".to_owned(), png("maps128"))].into();
        (i64, i128)
    }

    #[test]
    fn components_become_notes() {
        let (_, components, _) = parsed();
        let (i64, i128) = icon_sets();
        let mut stats = CorpusStats::default();
        let notes = notes(components, &i64, &i128, &NoteLimits::default(), &mut stats);
        let ids: Vec<_> = notes.iter().map(|n| n.line.note_id.as_str()).collect();
        assert_eq!(ids, ["org.example.Maps", "org.example.Maps.plugin", "xiterm:2Bthai.desktop"]);
        let maps = &notes[0];
        assert_eq!(maps.line.note.title, "Maps");
        assert!(maps.line.note.content.starts_with("Find places around the world\nMaps gives you"));
        assert_eq!(maps.line.note.hashtags, ["map", "2048", "route"]);
        assert_eq!(maps.line.note.category.as_deref(), Some("Utility"));
        assert_eq!(maps.icon, Icon { size: 128, png: png("maps128") });
        let xiterm = &notes[2];
        assert_eq!((xiterm.line.note.title.as_str(), xiterm.line.note.content.as_str()), ("1.10", "Terminal"));
        assert_eq!(xiterm.line.note.category, None);
        assert_eq!(xiterm.icon.size, 64);
        assert_eq!((stats.components, stats.notes, stats.without_icon), (4, 3, 1));
        assert_eq!((stats.with_128px_icon, stats.with_64px_icon_only, stats.with_description), (1, 2, 1));
        assert_eq!(stats.types.get("addon"), Some(&1));

        // An icon that is no PNG, or in no tarball, makes no note.
        let (_, components, _) = parsed();
        let bad: HashMap<String, Vec<u8>> = [("maps_org.example.Maps.png".to_owned(), b"GIF89a".to_vec())].into();
        let mut stats = CorpusStats::default();
        assert!(super::notes(components, &bad, &HashMap::new(), &NoteLimits::default(), &mut stats).is_empty());
        assert_eq!((stats.icon_not_png, stats.icon_not_in_tarball, stats.without_icon), (1, 2, 1));
    }

    fn note(id: &str, package: &str, category: Option<&str>, extends: &[&str]) -> AppNote {
        AppNote {
            line: NoteLine {
                note_id: NoteId::parse(id).unwrap(),
                note: Note { title: id.into(), category: category.map(str::to_owned), ..Note::default() },
            },
            component_id: id.into(),
            package: Some(package.into()),
            extends: extends.iter().map(|s| s.to_string()).collect(),
            icon: Icon { size: 64, png: png(id) },
        }
    }

    #[test]
    fn relations_of_three_kinds() {
        // Packages: a1 and a2 from source `a`; b depends on a1 (and on the hub h, which c1..c3
        // also depend on); d recommends a virtual name only `a2` provides; e extends b.
        let index = PackageIndex::from_reader(
            "Package: a1\nSource: a (1)\n\nPackage: a2\nSource: a\nProvides: virt\n\n\
             Package: b\nDepends: a1 (>= 1), h, libc6\n\nPackage: h\n\n\
             Package: c1\nDepends: h\n\nPackage: c2\nRecommends: h\n\nPackage: c3\nDepends: h | b\n\n\
             Package: d\nRecommends: virt, b | h\n\nPackage: e\n"
                .as_bytes(),
        )
        .unwrap();
        let notes = vec![
            note("a1", "a1", Some("Game"), &[]),
            note("a2", "a2", Some("Game"), &[]),
            note("b", "b", Some("Game"), &[]),
            note("c1", "c1", None, &[]),
            note("c2", "c2", None, &[]),
            note("c3", "c3", None, &[]),
            note("d", "d", Some("Office"), &[]),
            note("e", "e", Some("Game"), &["b", "gone", "e"]),
            note("h", "h", None, &[]),
            note("x", "not-in-index", None, &[]),
        ];
        let r = relations(&notes, &index, 3);
        let got: Vec<(&str, &str, u8)> = r.pairs.iter().map(|((a, b), k)| (a.as_str(), b.as_str(), *k)).collect();
        assert_eq!(
            got,
            [
                ("a1", "a2", Relation::SameSource as u8),
                ("a1", "b", Relation::Dependency as u8),
                ("a2", "d", Relation::Dependency as u8),
                ("b", "d", Relation::Dependency as u8),
                ("b", "e", Relation::Extends as u8),
            ]
        );
        let s = &r.stats;
        assert_eq!(s.hub_packages, BTreeMap::from([("h".to_string(), 4)]));
        assert_eq!((s.source_groups, s.same_source_pairs, s.dependency_links, s.dependency_pairs), (1, 1, 3, 3));
        assert_eq!((s.extends_links, s.extends_unresolved, s.extends_pairs), (1, 2, 1));
        assert_eq!((s.union_pairs, s.notes_in_pairs, s.packages_not_in_index), (5, 5, 1));
        assert_eq!((s.pairs_both_categorised, s.pairs_sharing_category), (5, 3));
        let sessions: Vec<&str> = r.sessions.iter().map(|s| s.session.as_str()).collect();
        assert_eq!(sessions, ["depends:b->a1", "depends:d->a2", "depends:d->b", "extends:e->b", "source:a"]);
        assert_eq!(r.sessions[4].notes, [notes[0].line.note_id.clone(), notes[1].line.note_id.clone()]);

        // With a higher hub bound, h's dependents are linked to it too.
        let r = relations(&notes, &index, 4);
        assert!(r.stats.hub_packages.is_empty());
        assert_eq!(r.stats.dependency_pairs, 7);

        // A pair that two kinds support scores 2, in both directions.
        let notes = vec![note("a1", "a1", None, &[]), note("a2", "a2", None, &["a1"])];
        let r = relations(&notes, &index, 3);
        let directed: Vec<_> = r.directed_pairs().iter().map(|p| (p.a.to_string(), p.b.to_string(), p.score)).collect();
        assert_eq!(directed, [("a1".into(), "a2".into(), 2.0), ("a2".into(), "a1".into(), 2.0)]);
    }

    #[test]
    fn fixture_relations() {
        let (_, components, _) = parsed();
        let (i64, i128) = icon_sets();
        let notes = notes(components, &i64, &i128, &NoteLimits::default(), &mut CorpusStats::default());
        let index = PackageIndex::from_reader(PACKAGES.as_bytes()).unwrap();
        let r = relations(&notes, &index, DEFAULT_MAX_DEPENDENTS);
        let got: Vec<(&str, &str, u8)> = r.pairs.iter().map(|((a, b), k)| (a.as_str(), b.as_str(), *k)).collect();
        assert_eq!(
            got,
            [
                ("org.example.Maps", "org.example.Maps.plugin", Relation::Dependency as u8 | Relation::Extends as u8),
                ("org.example.Maps", "xiterm:2Bthai.desktop", Relation::SameSource as u8 | Relation::Dependency as u8),
            ]
        );
    }

    #[test]
    fn apt_options_enable_both_icon_sizes() {
        let o = apt_options();
        assert!(o.contains(&"Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=true".to_string()));
        assert!(o.contains(&"Acquire::IndexTargets::deb::DEP-11-icons-large::DefaultEnabled=true".to_string()));
        assert!(o.contains(
            &"Acquire::IndexTargets::deb::DEP-11-icons-large::MetaKey=$(COMPONENT)/dep11/icons-128x128.tar".to_string()
        ));
    }
}
