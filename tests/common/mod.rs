//! Shared test fixtures: a deterministic synthetic note corpus and tiny checkpoints built from
//! it with `notellm model init` code (nothing downloaded).
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

use notellm::model::config::Family;
use notellm::model::init::{init_model, InitOptions, Preset};
use notellm::note::Note;
use rand::{rngs::StdRng, Rng, SeedableRng};

const TOPICS: &[(&str, &[&str])] = &[
    ("travel", &["mountain", "beach", "hotel", "flight", "hiking", "trail", "island", "museum", "sunset", "backpack"]),
    (
        "food",
        &["noodles", "recipe", "spicy", "bakery", "coffee", "dumplings", "sauce", "dessert", "breakfast", "grill"],
    ),
    ("tech", &["laptop", "compiler", "kernel", "database", "python", "rust", "server", "network", "battery", "camera"]),
    ("fashion", &["dress", "sneakers", "jacket", "vintage", "denim", "scarf", "makeup", "lipstick", "outfit", "silk"]),
    ("fitness", &["running", "yoga", "protein", "stretch", "marathon", "squat", "cardio", "gym", "swimming", "bike"]),
    ("home", &["kitchen", "garden", "sofa", "lamp", "plants", "storage", "paint", "curtain", "shelf", "candle"]),
];
const COMMON: &[&str] =
    &["the", "a", "my", "with", "and", "for", "today", "best", "new", "really", "tips", "guide", "love", "week"];

/// `n` notes drawn from a fixed seed; lengths vary from a few words to ~120.
pub fn notes(n: usize, seed: u64) -> Vec<(String, Note)> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let (cat, words) = TOPICS[rng.random_range(0..TOPICS.len())];
            let pick = |k: usize, rng: &mut StdRng| -> Vec<String> {
                (0..k)
                    .map(|_| {
                        if rng.random_bool(0.6) {
                            words[rng.random_range(0..words.len())]
                        } else {
                            COMMON[rng.random_range(0..COMMON.len())]
                        }
                        .to_owned()
                    })
                    .collect()
            };
            let title = pick(rng.random_range(2..8), &mut rng).join(" ");
            let len = [3, 10, 30, 60, 120][rng.random_range(0..5)];
            let content = pick(len, &mut rng).join(" ") + ".";
            let hashtags =
                (0..rng.random_range(0..4)).map(|_| words[rng.random_range(0..words.len())].to_owned()).collect();
            (format!("n{i}"), Note { title, content, hashtags, category: Some(cat.to_owned()) })
        })
        .collect()
}

/// Writes the corpus as notes JSONL (with `note_id`).
pub fn write_corpus(path: &Path, notes: &[(String, Note)]) {
    let mut f = std::fs::File::create(path).unwrap();
    for (id, n) in notes {
        let mut v = serde_json::to_value(n).unwrap();
        v["note_id"] = id.clone().into();
        writeln!(f, "{v}").unwrap();
    }
}

/// A tiny checkpoint of `family` in `dir/<name>`, trained on the synthetic corpus.
pub fn tiny_model(dir: &Path, name: &str, family: Family, shards: usize) -> PathBuf {
    let corpus = dir.join("corpus.jsonl");
    if !corpus.exists() {
        write_corpus(&corpus, &notes(400, 1));
    }
    let out = dir.join(name);
    let opts = InitOptions {
        preset: Preset::Tiny,
        family,
        vocab_size: 1200,
        embedding_dim: 32,
        seed: 7,
        shards,
        model_version: None,
    };
    init_model(&corpus, &out, &opts).unwrap();
    out
}

pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}
