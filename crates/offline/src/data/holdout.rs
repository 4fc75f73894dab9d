//! `notellm data holdout`: a validation set that can decide between training runs, carved out of
//! a dataset's training notes.
//!
//! The split's own validation part is small (Debian: 1,269 notes and 132 pairs in a pool of
//! 300-600): differences of several recall points on it are noise. This moves a seeded sample of
//! training notes into the validation part, so that a training run never sees them and the pairs
//! among them judge it. The test part is left exactly as it is (files copied byte for byte).
//!
//! What changes, written into a new dataset directory (the source is not touched):
//! - `split/val.txt` = the old validation notes plus the held-out ones; `split/train.txt` loses
//!   them;
//! - `pairs.val.jsonl` = the old validation pairs plus every training pair whose two notes were
//!   both held out; training pairs with one held-out note are dropped (they would leak the
//!   held-out note into training);
//! - `manifest.json` records the source, the seed and the counts.
//!
//! Random notes (not dense ones) keep the validation pairs representative of the training
//! pairs: with `n` of `N` training notes held out, about `(n / N)^2` of the training pairs fall
//! among them (Debian: 4,500 of 58,995 notes keep ~1,500 of 259,004 pairs).

use std::collections::HashSet;
use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

use super::dataset::{
    read_jsonl, read_lines, write_jsonl, write_lines, DataError, Pair, Part, Result, CATEGORIES_FILE, NOTES_FILE,
    PAIRS_FILE, SESSIONS_FILE,
};
use notellm_note::NoteId;

/// What `notellm data holdout` did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HoldoutManifest {
    pub source: String,
    pub seed: u64,
    pub held_out_notes: usize,
    pub train_notes: usize,
    pub val_notes: usize,
    pub test_notes: usize,
    pub train_pairs: usize,
    /// Validation pairs in all, and of them those among the held-out notes.
    pub val_pairs: usize,
    pub held_out_pairs: usize,
    /// Training pairs with exactly one held-out note, dropped.
    pub dropped_pairs: usize,
}

/// Writes `out`: the dataset of `source` with `notes` seeded training notes moved into the
/// validation part.
pub fn holdout(source: &Path, out: &Path, notes: usize, seed: u64) -> Result<HoldoutManifest> {
    if source.canonicalize().ok() == out.canonicalize().ok() {
        return Err(DataError::Invalid(
            "the holdout is written to a new directory: --out must differ from --data".into(),
        ));
    }
    let ids = |part: Part| -> Result<Vec<NoteId>> {
        read_lines(&part.ids_path(source))?
            .into_iter()
            .map(|s| {
                NoteId::parse(&s).map_err(|e| DataError::Invalid(format!("{}: {e}", part.ids_path(source).display())))
            })
            .collect()
    };
    let mut train = ids(Part::Train)?;
    if notes == 0 || notes >= train.len() {
        return Err(DataError::Invalid(format!(
            "--notes must be between 1 and {} (the training notes) - 1, got {notes}",
            train.len()
        )));
    }
    train.sort_unstable();
    let mut shuffled = train.clone();
    shuffled.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let held: HashSet<NoteId> = shuffled.into_iter().take(notes).collect();
    let train: Vec<NoteId> = train.into_iter().filter(|id| !held.contains(id)).collect();
    let mut val = ids(Part::Val)?;
    val.extend(held.iter().cloned());
    val.sort_unstable();

    let train_pairs: Vec<Pair> = read_jsonl(&Part::Train.pairs_path(source))?;
    let (mut kept, mut moved, mut dropped) = (Vec::new(), Vec::new(), 0usize);
    for p in train_pairs {
        match (held.contains(&p.a), held.contains(&p.b)) {
            (false, false) => kept.push(p),
            (true, true) => moved.push(p),
            _ => dropped += 1,
        }
    }
    let mut val_pairs: Vec<Pair> = read_jsonl(&Part::Val.pairs_path(source))?;
    let held_out_pairs = moved.len();
    val_pairs.extend(moved);

    let copy = |name: &str| -> Result<()> {
        let (from, to) = (source.join(name), out.join(name));
        if from.is_file() {
            std::fs::copy(&from, &to).map_err(|e| DataError::Io { path: to.clone(), source: e })?;
        }
        Ok(())
    };
    std::fs::create_dir_all(out.join(super::dataset::SPLIT_DIR))
        .map_err(|e| DataError::Io { path: out.to_owned(), source: e })?;
    for name in [NOTES_FILE, SESSIONS_FILE, PAIRS_FILE, CATEGORIES_FILE] {
        copy(name)?;
    }
    for path in [Part::Test.ids_path(source), Part::Test.pairs_path(source)] {
        let rel = path.strip_prefix(source).map_err(|_| DataError::Invalid("test path outside the dataset".into()))?;
        copy(&rel.display().to_string())?;
    }
    write_lines(&Part::Train.ids_path(out), train.iter().map(NoteId::as_str))?;
    write_lines(&Part::Val.ids_path(out), val.iter().map(NoteId::as_str))?;
    write_jsonl(&Part::Train.pairs_path(out), &kept)?;
    write_jsonl(&Part::Val.pairs_path(out), &val_pairs)?;
    let manifest = HoldoutManifest {
        source: source.display().to_string(),
        seed,
        held_out_notes: held.len(),
        train_notes: train.len(),
        val_notes: val.len(),
        test_notes: read_lines(&Part::Test.ids_path(out))?.len(),
        train_pairs: kept.len(),
        val_pairs: val_pairs.len(),
        held_out_pairs,
        dropped_pairs: dropped,
    };
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| DataError::Invalid(e.to_string()))?;
    let path = out.join(super::dataset::MANIFEST_FILE);
    std::fs::write(&path, text).map_err(|e| DataError::Io { path, source: e })?;
    tracing::info!(
        held_out = manifest.held_out_notes,
        val_pairs = manifest.val_pairs,
        train_pairs = manifest.train_pairs,
        "holdout written"
    );
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Dataset;

    /// 40 notes in 20 pairs, a chain over them, split 30 / 4 / 6.
    fn source(dir: &Path) {
        use crate::jsonl::NoteLine;
        let id = |i: usize| NoteId::parse(&format!("n{i:02}")).unwrap();
        let lines: Vec<NoteLine> = (0..40)
            .map(|i| NoteLine {
                note_id: id(i),
                note: notellm_note::Note { title: format!("t{i}"), ..Default::default() },
            })
            .collect();
        write_jsonl(&dir.join(NOTES_FILE), &lines).unwrap();
        write_lines(&dir.join(CATEGORIES_FILE), ["c"]).unwrap();
        let parts = [(Part::Train, 0..30), (Part::Val, 30..34), (Part::Test, 34..40)];
        for (part, range) in parts {
            let r: Vec<usize> = range.collect();
            write_lines(&part.ids_path(dir), r.iter().map(|&i| format!("n{i:02}"))).unwrap();
            let pairs: Vec<Pair> = r.windows(2).map(|w| Pair { a: id(w[0]), b: id(w[1]), score: 1.0 }).collect();
            write_jsonl(&part.pairs_path(dir), &pairs).unwrap();
        }
        write_jsonl(&dir.join(PAIRS_FILE), Vec::<Pair>::new()).unwrap();
    }

    #[test]
    fn held_out_notes_leave_training_and_the_test_part_is_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let (src, out) = (dir.path().join("src"), dir.path().join("out"));
        source(&src);
        let m = holdout(&src, &out, 12, 7).unwrap();
        assert_eq!((m.held_out_notes, m.train_notes, m.val_notes, m.test_notes), (12, 18, 16, 6));
        let before = Dataset::load(&src).unwrap();
        let after = Dataset::load(&out).unwrap();
        // the test part, byte for byte
        for path in [Part::Test.ids_path(&src), Part::Test.pairs_path(&src)] {
            let rel = path.strip_prefix(&src).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(out.join(rel)).unwrap());
        }
        // no training pair touches a validation note, and every held-out pair is a validation pair
        let val: HashSet<&NoteId> = after.ids(Part::Val).iter().collect();
        assert!(after.pairs(Part::Train).iter().all(|p| !val.contains(&p.a) && !val.contains(&p.b)));
        assert!(after.pairs(Part::Val).iter().all(|p| val.contains(&p.a) && val.contains(&p.b)));
        assert_eq!(m.val_pairs, before.pairs(Part::Val).len() + m.held_out_pairs);
        assert_eq!(m.train_pairs + m.held_out_pairs + m.dropped_pairs, before.pairs(Part::Train).len());
        // seeded: the same seed, the same notes; another seed, others
        let again = dir.path().join("again");
        holdout(&src, &again, 12, 7).unwrap();
        assert_eq!(
            std::fs::read(Part::Val.ids_path(&out)).unwrap(),
            std::fs::read(Part::Val.ids_path(&again)).unwrap()
        );
        let other = dir.path().join("other");
        holdout(&src, &other, 12, 8).unwrap();
        assert_ne!(
            std::fs::read(Part::Val.ids_path(&out)).unwrap(),
            std::fs::read(Part::Val.ids_path(&other)).unwrap()
        );
    }

    #[test]
    fn bad_requests_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        source(&src);
        assert!(holdout(&src, &dir.path().join("o1"), 0, 1).is_err());
        assert!(holdout(&src, &dir.path().join("o2"), 30, 1).is_err());
        assert!(holdout(&src, &src, 5, 1).unwrap_err().to_string().contains("--out must differ"));
    }
}
