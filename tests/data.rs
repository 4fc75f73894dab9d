//! `notellm data debian` end to end on real apt stanzas (`tests/fixtures/debian`, see its
//! README): the fixture files are lz4-compressed into a temporary lists directory under apt's
//! names, the pipeline writes a dataset directory, and `Dataset::load` reads it back.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};

use notellm_offline::commands::data::{self as cmd, DebianArgs};
use notellm_offline::data::dataset::{self, read_jsonl, read_lines};
use notellm_offline::data::debian;
use notellm_offline::data::{Dataset, Pair, Part, Session};
use notellm_offline::jsonl::NoteLine;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/debian");
const MAIN: &str = "deb.debian.org_debian_dists_bookworm_main";

fn write_lz4(path: &Path, data: &[u8]) {
    let mut enc = lz4_flex::frame::FrameEncoder::new(std::fs::File::create(path).unwrap());
    enc.write_all(data).unwrap();
    enc.finish().unwrap();
}

/// A lists directory with the fixtures as bookworm main, plus files that must be ignored.
fn lists_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (fixture, name) in [("Packages", "binary-amd64_Packages"), ("Translation-en", "i18n_Translation-en")] {
        let data = std::fs::read(Path::new(FIXTURES).join(fixture)).unwrap();
        write_lz4(&dir.path().join(format!("{MAIN}_{name}.lz4")), &data);
    }
    // A smaller suite (not the default) and a file that is no list.
    let security = "Package: growisofs\nDescription: not this one\nSection: video\n";
    std::fs::write(
        dir.path().join("deb.debian.org_debian-security_dists_bookworm-security_main_binary-amd64_Packages"),
        security,
    )
    .unwrap();
    std::fs::write(dir.path().join("deb.debian.org_debian_dists_bookworm_InRelease"), "x").unwrap();
    dir
}

fn args(lists: &Path, out: PathBuf) -> DebianArgs {
    DebianArgs { val_share: 0.2, test_share: 0.2, seed: 7, ..DebianArgs::new(out, lists.to_owned()) }
}

fn files_of(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_of(&p).into_iter().map(|(k, v)| (Path::new(p.file_name().unwrap()).join(k), v)));
        } else {
            out.insert(PathBuf::from(p.file_name().unwrap()), std::fs::read(&p).unwrap());
        }
    }
    out
}

#[test]
fn debian_pipeline_writes_a_loadable_dataset() {
    let lists = lists_dir();
    let out = tempfile::tempdir().unwrap();
    let manifest = cmd::run(&args(lists.path(), out.path().to_owned())).unwrap();
    let dir = out.path();

    // Notes: one per package, sorted, '+' mapped to '_'.
    let notes: Vec<NoteLine> = read_jsonl(&dir.join(dataset::NOTES_FILE)).unwrap();
    let ids: Vec<&str> = notes.iter().map(|n| n.note_id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "backup-manager",
            "brasero-cdrkit",
            "burner-cdrkit",
            "cdrkit-doc",
            "cedar-backup3",
            "dvd_rw-tools",
            "genisoimage",
            "growisofs",
            "libc6",
            "libgcc-s1",
            "libstdc__6",
            "python3",
            "python3-pycdlib",
            "wodim",
            "xorriso",
        ]
    );
    let note = |id: &str| &notes.iter().find(|n| n.note_id.as_str() == id).unwrap().note;
    let geniso = note("genisoimage");
    assert_eq!(geniso.title, "Creates ISO-9660 CD-ROM filesystem images");
    assert!(
        geniso.content.starts_with(
            "genisoimage is a pre-mastering program for creating ISO-9660 CD-ROM filesystem images, which can then \
             be written to CD or DVD media using the wodim program."
        ),
        "{}",
        geniso.content
    );
    assert!(
        geniso.content.contains(
            "Macintosh HFS filesystem.\n\nThe package also includes extra tools useful for working with ISO images:\n \
             * mkzftree - create ISO-9660 image with compressed contents\n * dirsplit"
        ),
        "paragraphs and verbatim lines are kept: {}",
        geniso.content
    );
    assert_eq!(geniso.category.as_deref(), Some("otherosfs"));
    assert_eq!(&geniso.hashtags[..3], ["hardware::storage", "hardware::storage:cd", "hardware::storage:dvd"]);
    assert!(geniso.hashtags.iter().all(|t| !t.is_empty() && t.trim() == t));
    assert!(note("burner-cdrkit").hashtags.is_empty());
    assert_eq!(note("cdrkit-doc").category.as_deref(), Some("doc"), "contrib/ is stripped");
    // xorriso's long description is only in Packages (hand-edited fixture): reflowed prose,
    // verbatim lines kept on their own lines.
    let xorriso = &note("xorriso").content;
    assert!(xorriso.starts_with("xorriso is a command line and dialog application, which creates, loads, manipulates, and writes ISO-9660 file system images with Rock Ridge extensions.\n\nIt maps"), "{xorriso}");
    assert!(xorriso.contains("\n\nSupported optical media types:\n - CD-R, CD-RW\n - DVD-R,"), "{xorriso}");
    assert!(notes.iter().all(|n| !n.note.title.is_empty() && !n.note.content.is_empty()));
    assert_eq!(
        read_lines(&dir.join(dataset::CATEGORIES_FILE)).unwrap(),
        ["admin", "doc", "gnome", "libs", "otherosfs", "python", "video"]
    );

    // Sessions: resolved dependency lists with at least 2 notes, by package.
    let sessions: Vec<Session> = read_jsonl(&dir.join(dataset::SESSIONS_FILE)).unwrap();
    let got: Vec<(&str, Vec<&str>)> =
        sessions.iter().map(|s| (s.session.as_str(), s.notes.iter().map(|n| n.as_str()).collect())).collect();
    let want: Vec<(&str, Vec<&str>)> = vec![
        // debconf | debconf-2.0 and perl:any are not in the fixture.
        ("backup-manager", vec!["dvd_rw-tools", "genisoimage", "wodim"]),
        ("brasero-cdrkit", vec!["libc6", "genisoimage", "growisofs", "wodim"]),
        ("burner-cdrkit", vec!["libc6", "genisoimage", "growisofs", "wodim"]),
        ("cdrkit-doc", vec!["wodim", "genisoimage"]),
        ("cedar-backup3", vec!["python3", "dvd_rw-tools", "wodim", "genisoimage"]),
        // libgcc1 is virtual, provided by libgcc-s1 only.
        ("dvd_rw-tools", vec!["genisoimage", "growisofs", "libc6", "libgcc-s1", "libstdc__6"]),
        ("genisoimage", vec!["libc6", "wodim", "cdrkit-doc"]),
        ("growisofs", vec!["libc6", "libgcc-s1", "libstdc__6"]),
        ("libstdc__6", vec!["libc6", "libgcc-s1"]),
        ("python3-pycdlib", vec!["genisoimage", "python3"]),
        ("wodim", vec!["libc6", "genisoimage", "cdrkit-doc"]),
    ];
    assert_eq!(got, want);

    // Pairs: s(genisoimage -> wodim) sums 1/N_u over backup-manager (3), brasero-cdrkit (4),
    // burner-cdrkit (4), cdrkit-doc (2) and cedar-backup3 (4).
    let pairs: Vec<Pair> = read_jsonl(&dir.join(dataset::PAIRS_FILE)).unwrap();
    let of = |a: &str| pairs.iter().filter(|p| p.a.as_str() == a).collect::<Vec<_>>();
    let top = of("genisoimage")[0];
    assert_eq!(top.b.as_str(), "wodim");
    assert!((top.score - (1.0 / 3.0 + 1.0 / 4.0 + 1.0 / 4.0 + 1.0 / 2.0 + 1.0 / 4.0)).abs() < 1e-12);
    // python3 occurs in two sessions, each with genisoimage: 1/2 + 1/4.
    let py: Vec<(&str, f64)> = of("python3").iter().map(|p| (p.b.as_str(), p.score)).collect();
    assert_eq!(py.iter().map(|p| p.0).collect::<Vec<_>>(), ["genisoimage", "dvd_rw-tools", "wodim"]);
    assert!((py[0].1 - 0.75).abs() < 1e-12 && (py[1].1 - 0.25).abs() < 1e-12);
    assert!(pairs.iter().all(|p| p.a != p.b && p.score > 0.0));
    let mut sorted = pairs.clone();
    sorted.sort_by(|x, y| x.a.cmp(&y.a).then(y.score.total_cmp(&x.score)).then(x.b.cmp(&y.b)));
    assert_eq!(sorted, pairs);

    // Split by note: disjoint parts covering every note; part pairs stay inside their part.
    let mut all = BTreeSet::new();
    let mut part_of = BTreeMap::new();
    for part in Part::ALL {
        for id in read_lines(&part.ids_path(dir)).unwrap() {
            assert!(all.insert(id.clone()), "{id} in two parts");
            part_of.insert(id, part);
        }
    }
    assert_eq!(all.len(), notes.len());
    let mut in_parts = 0;
    for part in Part::ALL {
        let pp: Vec<Pair> = read_jsonl(&part.pairs_path(dir)).unwrap();
        assert!(pp.iter().all(|p| part_of[p.a.as_str()] == part && part_of[p.b.as_str()] == part));
        let want: Vec<&Pair> =
            pairs.iter().filter(|p| part_of[p.a.as_str()] == part && part_of[p.b.as_str()] == part).collect();
        assert_eq!(pp.iter().collect::<Vec<_>>(), want);
        in_parts += pp.len();
    }
    let c = &manifest.counts;
    assert_eq!((c.split_notes.train, c.split_notes.val, c.split_notes.test), (9, 3, 3));
    assert_eq!((c.notes, c.sessions, c.pairs), (15, 11, pairs.len()));
    assert_eq!(in_parts + c.cross_part_pairs, pairs.len());
    assert_eq!(c.corpus.resolved_via_provides, 2);

    // The manifest names the sources and parameters.
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(dataset::MANIFEST_FILE)).unwrap()).unwrap();
    assert_eq!(m["suite"], "bookworm");
    assert_eq!(m["seed"], 7);
    assert_eq!(m["mining"]["top_t"], 10);
    let files = m["files"].as_array().unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(files[0]["name"], format!("{MAIN}_binary-amd64_Packages.lz4"));
    assert!(files.iter().all(|f| f["sha256"].as_str().unwrap().len() == 64));

    // The trainer's and evaluator's loader reads it.
    let ds = Dataset::load(dir).unwrap();
    assert_eq!(ds.notes.len(), 15);
    assert_eq!(ds.ids(Part::Test).len(), 3);
    assert_eq!(ds.categories.len(), 7);
    assert_eq!(ds.pairs(Part::Train).len(), c.split_pairs.train);
}

#[test]
fn same_inputs_and_seed_give_identical_files() {
    let lists = lists_dir();
    let (a, b, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    cmd::run(&args(lists.path(), a.path().to_owned())).unwrap();
    cmd::run(&args(lists.path(), b.path().to_owned())).unwrap();
    let (fa, fb) = (files_of(a.path()), files_of(b.path()));
    assert_eq!(fa.len(), 11, "{:?}", fa.keys().collect::<Vec<_>>());
    assert_eq!(fa, fb);
    // Another seed changes the split, not the notes.
    cmd::run(&DebianArgs { seed: 8, ..args(lists.path(), c.path().to_owned()) }).unwrap();
    let fc = files_of(c.path());
    assert_eq!(fa[Path::new("notes.jsonl")], fc[Path::new("notes.jsonl")]);
    assert_ne!(fa[Path::new("split/test.txt")], fc[Path::new("split/test.txt")]);
}

#[test]
fn suites_mirrors_and_uncompressed_lists() {
    let lists = lists_dir();
    let found = debian::find_lists(lists.path(), None).unwrap();
    assert_eq!(found.suite, "bookworm");
    assert_eq!((found.packages.len(), found.translations.len()), (1, 1));

    // A second mirror of the same suite, uncompressed: read after the first, so its stanza wins.
    let growisofs = std::fs::read_to_string(Path::new(FIXTURES).join("Packages"))
        .unwrap()
        .split("\n\n")
        .find(|s| s.starts_with("Package: growisofs\n"))
        .unwrap()
        .replace("Description: DVD+-RW/R recorder", "Description: replaced by the second mirror");
    std::fs::write(lists.path().join("mirror.example_debian_dists_bookworm_main_binary-amd64_Packages"), growisofs)
        .unwrap();
    let found = debian::find_lists(lists.path(), None).unwrap();
    assert_eq!(found.packages.len(), 2);
    let corpus = debian::read_corpus(&found).unwrap();
    assert_eq!(corpus.stats.replaced, 1);
    let g = corpus.notes.iter().find(|n| n.note_id.as_str() == "growisofs").unwrap();
    assert_eq!(g.note.title, "replaced by the second mirror");
    assert!(!g.note.content.is_empty(), "same Description-md5, so the translation still applies");

    // An explicit suite; it needs its Translation-en.
    let err = debian::find_lists(lists.path(), Some("bookworm-security")).unwrap_err().to_string();
    assert!(err.contains("no `*_main_i18n_Translation-en[.lz4]` file of suite \"bookworm-security\""), "{err}");
    std::fs::write(
        lists.path().join("deb.debian.org_debian-security_dists_bookworm-security_main_i18n_Translation-en"),
        "Package: growisofs\nDescription-md5: 0\nDescription-en: x\n y\n",
    )
    .unwrap();
    let sec = debian::find_lists(lists.path(), Some("bookworm-security")).unwrap();
    let corpus = debian::read_corpus(&sec).unwrap();
    assert_eq!(corpus.notes.len(), 1);
    assert_eq!(corpus.notes[0].note.title, "not this one");
    assert!(corpus.notes[0].note.content.is_empty());
    assert_eq!((corpus.stats.translations, corpus.stats.without_content), (1, 1));

    let err = debian::find_lists(lists.path(), Some("trixie")).unwrap_err().to_string();
    assert!(err.contains("\"trixie\""), "{err}");
    let empty = tempfile::tempdir().unwrap();
    let err = cmd::run(&DebianArgs::new(empty.path().join("out"), empty.path().to_owned())).unwrap_err().to_string();
    assert!(err.contains("no `*_main_binary-amd64_Packages[.lz4]` file"), "{err}");
}

#[test]
fn errors_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let name = "x_dists_s_main_binary-amd64_Packages";
    let path = dir.path().join(name);
    std::fs::write(dir.path().join("x_dists_s_main_i18n_Translation-en"), "").unwrap();
    let cases = [
        ("Package: a\nDescription: A\n\nPackage: b\n  continued\nno colon\n", "line 6: expected `Field: value`"),
        ("Package: a\nDescription: A\n\nPackage: b_c\nDescription: B\n", ":4: package name \"b_c\" contains '_'"),
        ("Package: a\nDescription: A\n\nPackage: b\nSection: x\n", ":4: package \"b\" has no Description"),
    ];
    for (text, want) in cases {
        std::fs::write(&path, text).unwrap();
        let lists = debian::find_lists(dir.path(), None).unwrap();
        let err = debian::read_corpus(&lists).unwrap_err().to_string();
        assert!(err.contains(name) && err.contains(want), "{err}");
    }
    // A corrupt lz4 file is an error naming it too.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(dir.path().join(format!("{name}.lz4")), b"not lz4 at all").unwrap();
    let lists = debian::find_lists(dir.path(), None).unwrap();
    let err = debian::read_corpus(&lists).unwrap_err().to_string();
    assert!(err.contains(&format!("{name}.lz4: line 1: cannot read")), "{err}");
}

/// The real lists of this machine: `cargo test --test data -- --ignored --nocapture`. Flags
/// come from the NOTELLM_* variables as on the command line (`NOTELLM_DATA_APT_LISTS`,
/// `NOTELLM_MINE_TOP_T`, ...); without `NOTELLM_DATA_OUT` it writes to a temporary directory.
#[test]
#[ignore]
fn real_apt_lists() {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: DebianArgs,
    }
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let tmp = tempfile::tempdir().unwrap();
    let out = std::env::var_os("NOTELLM_DATA_OUT").map_or_else(|| tmp.path().to_owned(), PathBuf::from);
    let args = <Cli as clap::Parser>::parse_from([OsStr::new("x"), OsStr::new("--out"), out.as_os_str()]).args;
    let started = std::time::Instant::now();
    let m = cmd::run(&args).unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!("{}", serde_json::to_string_pretty(&m.counts).unwrap());
    let loaded = std::time::Instant::now();
    let ds = Dataset::load(&out).unwrap();
    println!(
        "suite {}: {} notes, {} sessions, {} pairs in {secs:.1} s (debug build); Dataset::load {:.1} s",
        m.suite,
        ds.notes.len(),
        m.counts.sessions,
        m.counts.pairs,
        loaded.elapsed().as_secs_f64()
    );
}
