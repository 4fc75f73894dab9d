//! The project's dataset directory: what `notellm data debian` writes and what `notellm train`
//! and `notellm eval` read. Any source of notes and behaviour can produce it.
//!
//! ```text
//! DIR/notes.jsonl        one note per line: {"note_id","title","content","hashtags":[..],"category"}
//!                        (the notes JSONL of `notellm embed` / `notellm ingest`)
//! DIR/sessions.jsonl     the behaviour log: {"session":"<id>","notes":["<note_id>",..]} per line,
//!                        the notes one user engaged with in one session
//! DIR/pairs.jsonl        mined related pairs over all notes: {"a","b","score"} (a -> b)
//! DIR/split/train.txt    note ids, one per line (and val.txt, test.txt): a split *by note*
//! DIR/pairs.train.jsonl  the mined pairs whose two notes are both in the split (also .val, .test)
//! DIR/categories.txt     the closed category list, one per line, sorted
//! DIR/manifest.json      how the directory was made: source files, parameters, seed, counts
//! DIR/images/<note_id>.png  optional: the note's image (`notellm data appstream` writes them)
//! ```

use std::collections::HashMap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::jsonl::NoteLine;
use notellm_model::image_input::{decode, ImageInput, ImageLimits};
use notellm_note::{Note, NoteId};

pub const NOTES_FILE: &str = "notes.jsonl";
pub const SESSIONS_FILE: &str = "sessions.jsonl";
pub const PAIRS_FILE: &str = "pairs.jsonl";
pub const SPLIT_DIR: &str = "split";
pub const CATEGORIES_FILE: &str = "categories.txt";
pub const MANIFEST_FILE: &str = "manifest.json";
pub const IMAGES_DIR: &str = "images";

/// Where the image of note `id` lives in the dataset directory `dir` (whether or not it exists).
pub fn image_file(dir: &Path, id: &NoteId) -> PathBuf {
    dir.join(IMAGES_DIR).join(format!("{id}.png"))
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {msg}")]
    Malformed { path: PathBuf, line: usize, msg: String },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// One user session of the behaviour log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub session: String,
    pub notes: Vec<NoteId>,
}

/// A related pair `a -> b` with its co-occurrence score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pair {
    pub a: NoteId,
    pub b: NoteId,
    pub score: f64,
}

/// The three parts of a split by note.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    Train,
    Val,
    Test,
}

impl Part {
    pub const ALL: [Part; 3] = [Part::Train, Part::Val, Part::Test];

    pub fn name(self) -> &'static str {
        match self {
            Part::Train => "train",
            Part::Val => "val",
            Part::Test => "test",
        }
    }

    pub fn ids_path(self, dir: &Path) -> PathBuf {
        dir.join(SPLIT_DIR).join(format!("{}.txt", self.name()))
    }

    pub fn pairs_path(self, dir: &Path) -> PathBuf {
        dir.join(format!("pairs.{}.jsonl", self.name()))
    }
}

/// A loaded dataset directory (without the sessions, which only mining reads).
#[derive(Debug, Clone)]
pub struct Dataset {
    pub dir: PathBuf,
    /// Every note, in file order.
    pub notes: Vec<NoteLine>,
    /// note id -> index into `notes`.
    pub by_id: HashMap<NoteId, usize>,
    pub categories: Vec<String>,
    ids: HashMap<Part, Vec<NoteId>>,
    pairs: HashMap<Part, Vec<Pair>>,
}

impl Dataset {
    pub fn load(dir: &Path) -> Result<Self> {
        let notes: Vec<NoteLine> = read_jsonl(&dir.join(NOTES_FILE))?;
        let mut by_id = HashMap::with_capacity(notes.len());
        for (i, n) in notes.iter().enumerate() {
            if by_id.insert(n.note_id.clone(), i).is_some() {
                return Err(DataError::Invalid(format!("{}: note {} appears twice", NOTES_FILE, n.note_id)));
            }
        }
        let categories = read_lines(&dir.join(CATEGORIES_FILE))?;
        let mut ids = HashMap::new();
        let mut pairs = HashMap::new();
        for part in Part::ALL {
            let path = part.ids_path(dir);
            let list = read_lines(&path)?
                .into_iter()
                .enumerate()
                .map(|(i, s)| {
                    let id = NoteId::parse(&s).map_err(|e| DataError::Malformed {
                        path: path.clone(),
                        line: i + 1,
                        msg: e.to_string(),
                    })?;
                    if by_id.contains_key(&id) {
                        Ok(id)
                    } else {
                        Err(DataError::Malformed { path: path.clone(), line: i + 1, msg: format!("unknown note {id}") })
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            let p: Vec<Pair> = read_jsonl(&part.pairs_path(dir))?;
            if let Some(bad) = p.iter().find(|p| !by_id.contains_key(&p.a) || !by_id.contains_key(&p.b)) {
                return Err(DataError::Invalid(format!(
                    "{}: pair {} -> {} names an unknown note",
                    part.pairs_path(dir).display(),
                    bad.a,
                    bad.b
                )));
            }
            ids.insert(part, list);
            pairs.insert(part, p);
        }
        Ok(Self { dir: dir.to_owned(), notes, by_id, categories, ids, pairs })
    }

    pub fn ids(&self, part: Part) -> &[NoteId] {
        self.ids.get(&part).map_or(&[], Vec::as_slice)
    }

    pub fn pairs(&self, part: Part) -> &[Pair] {
        self.pairs.get(&part).map_or(&[], Vec::as_slice)
    }

    pub fn note(&self, id: &NoteId) -> Option<&Note> {
        self.by_id.get(id).map(|&i| &self.notes[i].note)
    }

    /// The image file of note `id`, when the note is in the dataset and has one
    /// (`DIR/images/<note_id>.png`).
    pub fn image_path(&self, id: &NoteId) -> Option<PathBuf> {
        let path = image_file(&self.dir, id);
        (self.by_id.contains_key(id) && path.is_file()).then_some(path)
    }

    /// The image of note `id`, read and decoded (the bounds are generous: dataset images are
    /// the project's own files, not a client's); an error when the note has none or it does
    /// not decode.
    pub fn image(&self, id: &NoteId) -> Result<ImageInput> {
        let path = self
            .image_path(id)
            .ok_or_else(|| DataError::Invalid(format!("note {id} has no image in {}", self.dir.display())))?;
        let bytes = std::fs::read(&path).map_err(|source| DataError::Io { path: path.clone(), source })?;
        decode(&bytes, &DATASET_IMAGES).map_err(|e| DataError::Invalid(format!("{}: {e}", path.display())))
    }
}

/// Bounds on a dataset's images.
const DATASET_IMAGES: ImageLimits = ImageLimits { max_bytes: 64 << 20, max_side: 16_384 };

/// Reads a JSONL file of `T`, naming the file and line of the first bad line.
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let f = std::fs::File::open(path).map_err(|source| DataError::Io { path: path.to_owned(), source })?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|source| DataError::Io { path: path.to_owned(), source })?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).map_err(|e| DataError::Malformed {
            path: path.to_owned(),
            line: i + 1,
            msg: e.to_string(),
        })?);
    }
    Ok(out)
}

/// Writes `items` as JSONL (creating parent directories).
pub fn write_jsonl<T: Serialize>(path: &Path, items: impl IntoIterator<Item = T>) -> Result<usize> {
    let io = |source| DataError::Io { path: path.to_owned(), source };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let mut w = BufWriter::new(std::fs::File::create(path).map_err(io)?);
    let mut n = 0;
    for item in items {
        serde_json::to_writer(&mut w, &item).map_err(|e| io(e.into()))?;
        w.write_all(b"\n").map_err(io)?;
        n += 1;
    }
    w.flush().map_err(io)?;
    Ok(n)
}

/// Non-empty trimmed lines of a text file.
pub fn read_lines(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io { path: path.to_owned(), source })?;
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect())
}

/// Writes one item per line.
pub fn write_lines<S: AsRef<str>>(path: &Path, lines: impl IntoIterator<Item = S>) -> Result<()> {
    let io = |source| DataError::Io { path: path.to_owned(), source };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let mut w = BufWriter::new(std::fs::File::create(path).map_err(io)?);
    for l in lines {
        w.write_all(l.as_ref().as_bytes()).map_err(io)?;
        w.write_all(b"\n").map_err(io)?;
    }
    w.flush().map_err(io)
}

/// A split *by note*: every note in exactly one part, each part sorted by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub train: Vec<NoteId>,
    pub val: Vec<NoteId>,
    pub test: Vec<NoteId>,
}

impl Split {
    /// Shuffles the (sorted, deduplicated) ids with `StdRng::seed_from_u64(seed)` and cuts
    /// `round(val_share * n)` validation notes, then `round(test_share * n)` test notes; the
    /// rest is training. The same ids and seed give the same split (for a given `rand` major
    /// version, whose `StdRng` algorithm is not promised to stay the same).
    pub fn by_note(ids: &[NoteId], val_share: f64, test_share: f64, seed: u64) -> Result<Self> {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;

        let share_ok = |s: f64| (0.0..=1.0).contains(&s);
        if !share_ok(val_share) || !share_ok(test_share) || val_share + test_share > 1.0 {
            return Err(DataError::Invalid(format!(
                "split shares must be in [0, 1] and sum to at most 1, got val {val_share} and test {test_share}"
            )));
        }
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        ids.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
        let n = ids.len() as f64;
        let n_val = (val_share * n).round() as usize;
        let n_test = ((test_share * n).round() as usize).min(ids.len() - n_val);
        let mut test = ids.split_off(n_val);
        let mut train = test.split_off(n_test);
        let mut val = ids;
        for part in [&mut train, &mut val, &mut test] {
            part.sort_unstable();
        }
        Ok(Self { train, val, test })
    }

    pub fn ids(&self, part: Part) -> &[NoteId] {
        match part {
            Part::Train => &self.train,
            Part::Val => &self.val,
            Part::Test => &self.test,
        }
    }

    /// The part of every note.
    pub fn parts(&self) -> HashMap<&NoteId, Part> {
        Part::ALL.into_iter().flat_map(|p| self.ids(p).iter().map(move |id| (id, p))).collect()
    }
}

#[cfg(test)]
mod dataset_tests {
    use super::*;

    #[test]
    fn image_paths_of_notes_that_have_one() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let id = |s: &str| NoteId::parse(s).unwrap();
        let line = |s: &str| NoteLine { note_id: id(s), note: Note { title: s.into(), ..Note::default() } };
        write_jsonl(&d.join(NOTES_FILE), [line("a"), line("b:2B")]).unwrap();
        write_lines(&d.join(CATEGORIES_FILE), [""; 0]).unwrap();
        for part in Part::ALL {
            write_lines(&part.ids_path(d), if part == Part::Train { vec!["a", "b:2B"] } else { vec![] }).unwrap();
            write_jsonl(&part.pairs_path(d), Vec::<Pair>::new()).unwrap();
        }
        std::fs::create_dir_all(d.join(IMAGES_DIR)).unwrap();
        std::fs::write(image_file(d, &id("a")), b"png").unwrap();
        std::fs::write(image_file(d, &id("stale")), b"png").unwrap();
        let data = Dataset::load(d).unwrap();
        assert_eq!(data.image_path(&id("a")), Some(d.join("images/a.png")));
        assert_eq!(data.image_path(&id("b:2B")), None);
        // Only notes of the dataset have images, whatever else lies in the folder.
        assert_eq!(data.image_path(&id("stale")), None);
    }
}

#[cfg(test)]
mod split_tests {
    use super::*;

    fn ids(n: usize) -> Vec<NoteId> {
        (0..n).map(|i| NoteId::parse(&format!("n{i}")).unwrap()).collect()
    }

    #[test]
    fn shares_seed_and_order() {
        let all = ids(1000);
        let s = Split::by_note(&all, 0.02, 0.05, 7).unwrap();
        assert_eq!((s.train.len(), s.val.len(), s.test.len()), (930, 20, 50));
        let mut joined: Vec<_> = Part::ALL.iter().flat_map(|&p| s.ids(p).to_vec()).collect();
        joined.sort();
        assert_eq!(joined, {
            let mut a = all.clone();
            a.sort();
            a
        });
        // Input order does not matter; the seed does.
        let mut reversed = all.clone();
        reversed.reverse();
        assert_eq!(Split::by_note(&reversed, 0.02, 0.05, 7).unwrap(), s);
        assert_ne!(Split::by_note(&all, 0.02, 0.05, 8).unwrap().test, s.test);
        assert!(s.test.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(s.parts().len(), 1000);
    }

    #[test]
    fn bad_shares() {
        assert!(Split::by_note(&ids(3), 0.6, 0.5, 0).is_err());
        assert!(Split::by_note(&ids(3), -0.1, 0.0, 0).is_err());
        assert!(Split::by_note(&ids(3), f64::NAN, 0.0, 0).is_err());
        let s = Split::by_note(&ids(3), 0.5, 0.5, 0).unwrap();
        assert_eq!(s.val.len() + s.test.len(), 3);
    }
}
