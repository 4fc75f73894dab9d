//! `notellm reindex` over real HTTP, against SQLite and Postgres: a re-index from model A to
//! model B while writes and reads go on (every answer is one version's, the end state equals
//! exact search over B's embeddings, deletes are honoured, a restart with the old `--model`
//! serves B), its failure paths (bad checkpoints, cancel, auth), and a `kill -9` of the real
//! binary mid-way followed by a resumed re-index.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notellm_artifacts::init::{init_model, InitOptions, Preset};
use notellm_http::api::HttpConfig;
use notellm_http::server::{self, ServiceConfig};
use notellm_model::config::Family;
use notellm_model::{DeviceSpec, ServedModel};
use notellm_note::Note;
use notellm_service::batcher::BatcherConfig;
use notellm_service::ServiceLimits;
use reqwest::StatusCode;
use serde_json::{json, Value};

use common::Backend;

const K: usize = 10;
const VERSION_A: &str = "init-tiny-seed7";
const VERSION_B: &str = "init-tiny-seed8";

/// Tiny checkpoints A (seed 7, 32-d) and B (seed 8, 24-d: the new index has another dimension).
fn models(dir: &Path) -> (PathBuf, PathBuf) {
    let corpus = dir.join("corpus.jsonl");
    common::write_corpus(&corpus, &common::notes(400, 1));
    let make = |name: &str, seed: u64, dim: usize| {
        let out = dir.join(name);
        let opts = InitOptions {
            preset: Preset::Tiny,
            family: Family::Llama,
            vocab_size: 1200,
            embedding_dim: dim,
            seed,
            shards: 1,
            model_version: None,
        };
        init_model(&corpus, &out, &opts).unwrap();
        out
    };
    (make("model-a", 7, 32), make("model-b", 8, 24))
}

/// The service in this process, over a real listener.
struct Server {
    base: String,
    http: reqwest::Client,
    key: Option<String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// A service in another process.
    fn remote(base: &str, http: &reqwest::Client) -> Self {
        Self { base: base.to_owned(), http: http.clone(), key: None, stop: None, task: None }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn auth(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

async fn start(model: &Path, data: &Path, backend: &Backend, key: Option<&str>) -> Server {
    let cfg = ServiceConfig {
        model_dir: model.to_owned(),
        device: DeviceSpec::Cpu,
        data_dir: data.to_owned(),
        database_url: backend.url.clone(),
        database_schema: backend.schema.clone(),
        batcher: BatcherConfig { max_wait: Duration::from_millis(2), ..Default::default() },
        limits: ServiceLimits { max_k: 50, max_notes_per_batch: 64, ..Default::default() },
        hnsw_m: 16,
        hnsw_ef_construction: 100,
        hnsw_ef_search: 64,
        rebuild_tombstone_share: 0.2,
        snapshot_interval: Duration::from_secs(3600),
        // On, so that every /related below also goes through the answer cache.
        related_cache_entries: 4096,
        suggest: Default::default(),
        follow: None,
        index: backend.index(),
    };
    let http = HttpConfig { api_key: key.map(str::to_owned), ..Default::default() };
    let app = server::build(&cfg).await.unwrap();
    let listener = server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server::run(app, http, listener, Duration::from_secs(3600), async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    let s =
        Server { base, http: reqwest::Client::new(), key: key.map(str::to_owned), stop: Some(tx), task: Some(task) };
    wait_ready(&s.http, &s.base, None).await;
    s
}

async fn wait_ready(http: &reqwest::Client, base: &str, mut child: Option<&mut Child>) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
            if r.status() == StatusCode::OK {
                return r.json().await.unwrap();
            }
        }
        if let Some(c) = child.as_deref_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                panic!("server exited early: {status}");
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("server never became ready");
}

async fn json_of(r: reqwest::Response) -> (StatusCode, Value) {
    let status = r.status();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text:?}")))
}

fn body(n: &Note) -> Value {
    json!({ "title": n.title, "content": n.content, "hashtags": n.hashtags, "category": n.category })
}

async fn put(s: &Server, id: &str, n: &Note) -> Value {
    let (st, v) =
        json_of(s.auth(s.http.put(s.url(&format!("/notes/{id}")))).json(&body(n)).send().await.unwrap()).await;
    assert!(st.is_success(), "PUT {id}: {st} {v}");
    v
}

async fn put_batch(s: &Server, notes: &[(String, Note)]) {
    for chunk in notes.chunks(64) {
        let items: Vec<Value> = chunk
            .iter()
            .map(|(id, n)| {
                let mut v = body(n);
                v["note_id"] = id.clone().into();
                v
            })
            .collect();
        let r = s.auth(s.http.post(s.url("/notes:batch"))).json(&json!({ "notes": items })).send().await.unwrap();
        let (st, v) = json_of(r).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert!(v["results"].as_array().unwrap().iter().all(|r| r["status"] != "error"), "{v}");
    }
}

async fn delete(s: &Server, id: &str) {
    let r = s.auth(s.http.delete(s.url(&format!("/notes/{id}")))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT, "DELETE {id}");
}

async fn related(s: &Server, id: &str) -> (StatusCode, Value) {
    json_of(s.http.get(s.url(&format!("/related/{id}?k={K}"))).send().await.unwrap()).await
}

async fn admin(s: &Server, method: reqwest::Method, body: Option<Value>) -> (StatusCode, Value) {
    let mut r = s.auth(s.http.request(method, s.url("/admin/reindex")));
    if let Some(b) = body {
        r = r.json(&b);
    }
    json_of(r.send().await.unwrap()).await
}

/// Polls `GET /admin/reindex` until the job ends.
async fn wait_finished(s: &Server) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (st, v) = admin(s, reqwest::Method::GET, None).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        if ["done", "failed", "cancelled"].contains(&v["state"].as_str().unwrap_or("")) {
            return v;
        }
        assert!(Instant::now() < deadline, "re-index did not finish: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn metric(s: &Server, line_start: &str) -> f64 {
    let text = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in /metrics"))
}

/// `notellm reindex` (the real binary) against `base`; returns (success, stdout, stderr).
fn cli_reindex(base: &str, model: &Path, extra: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_notellm"))
        .args(["reindex", "--server", base, "--model", model.to_str().unwrap(), "--poll-ms", "50"])
        .args(extra)
        .env("NOTELLM_LOG", "warn")
        .env_remove("NOTELLM_API_KEY")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Embeddings of `notes` by one model, computed here (one note at a time).
fn embeddings(model: &Path, notes: &BTreeMap<String, Note>) -> HashMap<String, Vec<f32>> {
    let m = ServedModel::load(model, &DeviceSpec::Cpu.open().unwrap()).unwrap();
    notes.iter().map(|(id, n)| (id.clone(), m.embed(std::slice::from_ref(n)).unwrap()[0].as_slice().to_vec())).collect()
}

/// A `/related` answer's scores are the cosines of `version`'s vectors, for every hit we know.
fn check_scores(v: &Value, q: &str, embs: &HashMap<String, Vec<f32>>) -> usize {
    let mut checked = 0;
    for h in v["related"].as_array().unwrap() {
        if let Some(e) = embs.get(h["note_id"].as_str().unwrap()) {
            let want = common::cosine(&embs[q], e);
            let got = h["score"].as_f64().unwrap() as f32;
            assert!(
                (got - want).abs() < 2e-3,
                "{q} -> {}: score {got}, {} says {want}: {v}",
                h["note_id"],
                v["model_version"]
            );
            checked += 1;
        }
    }
    checked
}

/// What the writer did, in order: the final content of every note (None: deleted).
type Expected = Arc<Mutex<BTreeMap<String, Option<Note>>>>;

/// Writes creates, updates, deletes and batches one after another until `stop`; never touches
/// the stable notes `n0..n59`.
async fn writer(s: Arc<Server>, expected: Expected, stop: Arc<AtomicBool>) -> usize {
    let pool = common::notes(2000, 55);
    let mut deletable: Vec<String> = (100..130).map(|i| format!("n{i}")).collect();
    let mut i = 0;
    while !stop.load(Ordering::SeqCst) {
        let fresh = pool[i % pool.len()].1.clone();
        match i % 4 {
            0 => {
                let id = format!("w{i}");
                put(&s, &id, &fresh).await;
                expected.lock().unwrap().insert(id.clone(), Some(fresh));
                deletable.push(id);
            }
            1 => {
                let id = format!("n{}", 60 + (i / 4) % 40);
                put(&s, &id, &fresh).await;
                expected.lock().unwrap().insert(id, Some(fresh));
            }
            2 => {
                if let Some(id) = (!deletable.is_empty()).then(|| deletable.remove(0)) {
                    delete(&s, &id).await;
                    expected.lock().unwrap().insert(id, None);
                }
            }
            _ => {
                let notes: Vec<(String, Note)> =
                    (0..3).map(|j| (format!("x{i}-{j}"), pool[(i + j + 7) % pool.len()].1.clone())).collect();
                put_batch(&s, &notes).await;
                let mut e = expected.lock().unwrap();
                for (id, n) in notes {
                    e.insert(id, Some(n));
                }
            }
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    i
}

/// Note id -> embedding, of one model version.
type Vectors = HashMap<String, Vec<f32>>;

/// Reads `/related` of the stable notes until `stop`: every answer is 200, of version A or B,
/// never A again once B was seen, and scored with that version's vectors only.
async fn reader(
    s: Arc<Server>,
    stable: Vec<String>,
    embs: Arc<(Vectors, Vectors)>,
    stop: Arc<AtomicBool>,
    seed: usize,
) -> (usize, usize, usize) {
    let (mut a, mut b, mut checked) = (0, 0, 0);
    let mut i = seed;
    while !stop.load(Ordering::SeqCst) {
        let q = &stable[i % stable.len()];
        let (st, v) = related(&s, q).await;
        assert_eq!(st, StatusCode::OK, "{q}: {v}");
        match v["model_version"].as_str() {
            Some(VERSION_A) => {
                assert_eq!(b, 0, "an answer of A after one of B: {v}");
                a += 1;
                checked += check_scores(&v, q, &embs.0);
            }
            Some(VERSION_B) => {
                b += 1;
                checked += check_scores(&v, q, &embs.1);
            }
            other => panic!("answer of version {other:?}: {v}"),
        }
        i += 7;
    }
    (a, b, checked)
}

async fn reindex_under_load(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (model_a, model_b) = models(dir.path());
    let data = dir.path().join("data");
    let s = Arc::new(start(&model_a, &data, &backend, None).await);

    let initial: Vec<(String, Note)> = common::notes(200, 21).into_iter().collect();
    put_batch(&s, &initial).await;
    let expected: Expected =
        Arc::new(Mutex::new(initial.iter().map(|(id, n)| (id.clone(), Some(n.clone()))).collect()));
    let stable: BTreeMap<String, Note> = initial[..60].iter().cloned().collect();
    let embs = Arc::new((embeddings(&model_a, &stable), embeddings(&model_b, &stable)));
    let stable_ids: Vec<String> = stable.keys().cloned().collect();
    let (st, v) = related(&s, "n0").await;
    assert_eq!((st, v["model_version"].as_str()), (StatusCode::OK, Some(VERSION_A)), "{v}");

    let stop = Arc::new(AtomicBool::new(false));
    let w = tokio::spawn(writer(s.clone(), expected.clone(), stop.clone()));
    let readers: Vec<_> = (0..2)
        .map(|r| tokio::spawn(reader(s.clone(), stable_ids.clone(), embs.clone(), stop.clone(), r * 13)))
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;

    // The CLI starts the re-index and follows it; chunks of two notes make it last long enough
    // for writes to land in every phase.
    let base = s.base.clone();
    let b_dir = model_b.clone();
    let (ok, stdout, stderr) =
        tokio::task::spawn_blocking(move || cli_reindex(&base, &b_dir, &["--batch-notes", "2"])).await.unwrap();
    assert!(ok, "notellm reindex failed:\n{stderr}");
    assert!(stderr.contains(&format!("re-index done: {VERSION_B} serves")), "{stderr}");
    let status: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!((status["state"].as_str(), status["to_version"].as_str()), (Some("done"), Some(VERSION_B)), "{status}");
    assert_eq!(status["from_version"], VERSION_A);
    // Notes written during the re-index come through the change log instead of the scan.
    let (done, caught_up) = (status["notes_done"].as_u64().unwrap(), status["changes_applied"].as_u64().unwrap());
    assert!(done + caught_up >= 200, "{status}");
    assert!(status["changes_applied"].as_u64().unwrap() > 0, "no write landed during the re-index: {status}");
    assert!(status["write_hold_secs"].as_f64().unwrap() < 10.0, "{status}");

    // Writes after the switch are embedded by B.
    let after = common::notes(3, 99);
    for (j, (_, n)) in after.iter().enumerate() {
        let id = format!("after{j}");
        assert_eq!(put(&s, &id, n).await["model_version"], VERSION_B);
        expected.lock().unwrap().insert(id, Some(n.clone()));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::SeqCst);
    let writes = w.await.unwrap();
    let (mut seen_a, mut seen_b, mut checked) = (0, 0, 0);
    for r in readers {
        let (a, b, c) = r.await.unwrap();
        (seen_a, seen_b, checked) = (seen_a + a, seen_b + b, checked + c);
    }
    assert!(seen_a > 0 && seen_b > 0, "reads saw A {seen_a} times and B {seen_b} times");
    assert!(checked > 100, "only {checked} scores checked");
    eprintln!("{writes} writes, {seen_a} answers of A and {seen_b} of B during the re-index; {status}");

    // The end state: every note as last written, all of B, /related equal to exact search over
    // B's embeddings of the final contents.
    let expected = expected.lock().unwrap().clone();
    let live: BTreeMap<String, Note> = expected.iter().filter_map(|(k, v)| Some((k.clone(), v.clone()?))).collect();
    let b_embs = embeddings(&model_b, &live);
    let (_, ready) = json_of(s.http.get(s.url("/readyz")).send().await.unwrap()).await;
    // pgvector: /readyz has no in-process index to count; the gauge counts the store.
    let notes =
        if backend.pgvector { Some(metric(&s, "notellm_notes_indexed").await as u64) } else { ready["notes"].as_u64() };
    assert_eq!((ready["model_version"].as_str(), notes), (Some(VERSION_B), Some(live.len() as u64)));
    for (id, n) in &expected {
        let (st, v) = json_of(s.http.get(s.url(&format!("/notes/{id}"))).send().await.unwrap()).await;
        match n {
            Some(n) => {
                assert_eq!(st, StatusCode::OK, "{id} lost");
                assert_eq!((v["title"].as_str(), v["content"].as_str()), (Some(&*n.title), Some(&*n.content)), "{id}");
                assert_eq!(v["model_version"], VERSION_B, "{id}: {v}");
            }
            None => assert_eq!(st, StatusCode::NOT_FOUND, "{id} was deleted: {v}"),
        }
    }
    let mut answers = BTreeMap::new();
    for id in live.keys() {
        let (st, v) = related(&s, id).await;
        assert_eq!((st, v["model_version"].as_str()), (StatusCode::OK, Some(VERSION_B)), "{id}: {v}");
        let mut exact: Vec<(f32, &String)> =
            b_embs.iter().filter(|(o, _)| *o != id).map(|(o, e)| (common::cosine(&b_embs[id], e), o)).collect();
        exact.sort_by(|x, y| y.0.total_cmp(&x.0));
        let hits = v["related"].as_array().unwrap();
        assert_eq!(hits.len(), K);
        for (rank, h) in hits.iter().enumerate() {
            let hid = h["note_id"].as_str().unwrap();
            assert!(live.contains_key(hid), "{id}: deleted note {hid} in {v}");
            let score = h["score"].as_f64().unwrap() as f32;
            assert!((score - common::cosine(&b_embs[id], &b_embs[hid])).abs() < 2e-3, "{id}: {hid} scored {score}");
            assert!(
                (score - exact[rank].0).abs() < 2e-3,
                "{id}: rank {rank} is {hid} ({score}), exact {:?}",
                exact[rank]
            );
        }
        answers.insert(id.clone(), v);
    }
    assert_eq!(metric(&s, "notellm_reindex_runs_total{outcome=\"done\"}").await, 1.0);
    assert_eq!(metric(&s, "notellm_reindex_running").await, 0.0);
    assert_eq!(metric(&s, "notellm_reindex_state{state=\"done\"}").await, 1.0);
    assert!(metric(&s, "notellm_reindex_embedded_notes_total").await >= 200.0);
    assert_eq!(metric(&s, "notellm_reindex_write_hold_seconds_count").await, 1.0);
    let build = format!("notellm_build_info{{model_version=\"{VERSION_B}\"");
    assert_eq!(metric(&s, &build).await, 1.0);
    Arc::into_inner(s).unwrap().stop().await;

    // A restart whose --model still names A serves B (the store recorded the switch), with the
    // same answers.
    let s = start(&model_a, &data, &backend, None).await;
    let (_, ready) = json_of(s.http.get(s.url("/readyz")).send().await.unwrap()).await;
    assert_eq!(ready["model_version"], VERSION_B, "{ready}");
    for (id, before) in &answers {
        let (st, v) = related(&s, id).await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(&v, before, "{id} changed across the restart");
    }
    assert_eq!(put(&s, "post-restart", &common::notes(1, 5)[0].1).await["model_version"], VERSION_B);
    s.stop().await;
}

async fn reindex_failures(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (model_a, model_b) = models(dir.path());
    let key = "k3y";
    let s = start(&model_a, &dir.path().join("data"), &backend, Some(key)).await;
    put_batch(&s, &common::notes(300, 4)).await;
    let post = |model: String, batch: Option<usize>| {
        let mut b = json!({ "model": model });
        if let Some(n) = batch {
            b["batch_notes"] = n.into();
        }
        b
    };

    // Guarded by the API key.
    let r = s.http.post(s.url("/admin/reindex")).json(&post(model_b.display().to_string(), None)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(s.http.get(s.url("/admin/reindex")).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let (st, v) = admin(&s, reqwest::Method::GET, None).await;
    assert_eq!((st, v["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")), "{v}");
    let (st, _) = admin(&s, reqwest::Method::DELETE, None).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "nothing to cancel");

    // Refused up front, with the reason.
    let missing = dir.path().join("no-such-model");
    let (st, v) = admin(&s, reqwest::Method::POST, Some(post(missing.display().to_string(), None))).await;
    assert_eq!((st, v["error"]["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_model")), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("no-such-model"), "{v}");
    let broken = dir.path().join("broken");
    copy_dir(&model_b, &broken);
    std::fs::write(broken.join("notellm.json"), "{ not json").unwrap();
    let (st, v) = admin(&s, reqwest::Method::POST, Some(post(broken.display().to_string(), None))).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("notellm.json"), "{v}");
    // Named as the client named it: the server's resolved path stays in the server.
    let link = dir.path().join("link-to-a-checkpoint");
    std::os::unix::fs::symlink(&broken, &link).unwrap();
    let (st, v) = admin(&s, reqwest::Method::POST, Some(post(link.display().to_string(), None))).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("link-to-a-checkpoint") && !message.contains("broken"), "{v}");
    let (st, v) = admin(&s, reqwest::Method::POST, Some(post(model_a.display().to_string(), None))).await;
    assert_eq!((st, v["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("already_serving")), "{v}");
    let (st, v) = admin(&s, reqwest::Method::POST, Some(post(model_b.display().to_string(), Some(0)))).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{v}");

    // The CLI says why and exits non-zero.
    let (ok, _, stderr) = cli_reindex(&s.base, &missing, &["--api-key", key]);
    assert!(!ok && stderr.contains("invalid_model") && stderr.contains("no-such-model"), "{stderr}");
    let (ok, _, stderr) = cli_reindex(&s.base, &model_b, &[]);
    assert!(!ok && stderr.contains("401"), "{stderr}");

    // Weights that do not load: accepted (the files are there), then failed; A keeps serving.
    let bad_weights = dir.path().join("bad-weights");
    copy_dir(&model_b, &bad_weights);
    std::fs::write(bad_weights.join("model.safetensors"), b"nope").unwrap();
    let (st, v) = admin(&s, reqwest::Method::POST, Some(post(bad_weights.display().to_string(), None))).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{v}");
    let end = wait_finished(&s).await;
    assert_eq!(end["state"], "failed", "{end}");
    assert!(end["error"].as_str().unwrap().contains("model.safetensors"), "{end}");
    let (ok, _, stderr) = cli_reindex(&s.base, &bad_weights, &["--api-key", key]);
    assert!(!ok && stderr.contains("failed") && stderr.contains(VERSION_A), "{stderr}");
    let (st, v) = related(&s, "n1").await;
    assert_eq!((st, v["model_version"].as_str()), (StatusCode::OK, Some(VERSION_A)), "{v}");
    assert_eq!(put(&s, "n1", &common::notes(1, 8)[0].1).await["model_version"], VERSION_A);
    assert_eq!(metric(&s, "notellm_reindex_runs_total{outcome=\"failed\"}").await, 2.0);

    // A cancelled re-index leaves A serving; the next one reuses what it staged.
    let (st, v) = admin(&s, reqwest::Method::POST, Some(post(model_b.display().to_string(), Some(1)))).await;
    assert_eq!((st, v["state"].as_str()), (StatusCode::ACCEPTED, Some("loading")), "{v}");
    let (st, v) = admin(&s, reqwest::Method::POST, Some(post(model_b.display().to_string(), Some(1)))).await;
    assert_eq!((st, v["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("reindex_running")), "{v}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, v) = admin(&s, reqwest::Method::GET, None).await;
        if v["notes_done"].as_u64().unwrap_or(0) >= 20 {
            break;
        }
        assert!(v["state"] == "embedding" || v["state"] == "loading", "{v}");
        assert!(Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (st, _) = admin(&s, reqwest::Method::DELETE, None).await;
    assert_eq!(st, StatusCode::ACCEPTED);
    let end = wait_finished(&s).await;
    assert_eq!(end["state"], "cancelled", "{end}");
    let staged = end["notes_done"].as_u64().unwrap();
    let (st, v) = related(&s, "n2").await;
    assert_eq!((st, v["model_version"].as_str()), (StatusCode::OK, Some(VERSION_A)), "{v}");
    let (ok, stdout, stderr) = cli_reindex(&s.base, &model_b, &["--api-key", key, "--batch-notes", "16"]);
    assert!(ok, "{stderr}");
    let status: Value = serde_json::from_str(stdout.trim()).unwrap();
    let reused = status["notes_reused"].as_u64().unwrap();
    // Every note the cancelled attempt staged is unchanged since, so reused.
    assert!(reused >= staged, "reused {reused} of {staged} staged: {status}");
    let (st, v) = related(&s, "n2").await;
    assert_eq!((st, v["model_version"].as_str()), (StatusCode::OK, Some(VERSION_B)), "{v}");
    s.stop().await;
}

/// A re-index from NoteLLM (the tiny model A, 32-d) to the sentence encoder all-MiniLM-L6-v2
/// (384-d) and back, while writes and reads go on: no request fails, every answer is one model's
/// and scored by that model's vectors, and after each switch `/related` is that model's exact
/// search. On pgvector each dimension has its own index over the one `vec` column.
async fn reindex_across_families(backend: Backend) {
    let Some(encoder) = common::minilm_dir().cloned() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (model_a, _) = models(dir.path());
    let data = dir.path().join("data");
    let s = Arc::new(start(&model_a, &data, &backend, None).await);
    let initial: Vec<(String, Note)> = common::notes(130, 31).into_iter().collect();
    put_batch(&s, &initial).await;
    let expected: Expected =
        Arc::new(Mutex::new(initial.iter().map(|(id, n)| (id.clone(), Some(n.clone()))).collect()));
    let stable: BTreeMap<String, Note> = initial[..60].iter().cloned().collect();
    let vectors: HashMap<String, Vectors> = [
        (VERSION_A.to_owned(), embeddings(&model_a, &stable)),
        (notellm_model::encoder::DEFAULT_VERSION.to_owned(), embeddings(&encoder, &stable)),
    ]
    .into();
    let stop = Arc::new(AtomicBool::new(false));
    let w = tokio::spawn(writer(s.clone(), expected.clone(), stop.clone()));
    let reads = {
        let (s, stop, vectors) = (s.clone(), stop.clone(), vectors.clone());
        let ids: Vec<String> = stable.keys().cloned().collect();
        tokio::spawn(async move {
            let mut versions: Vec<String> = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let q = &ids[i % ids.len()];
                let (st, v) = related(&s, q).await;
                assert_eq!(st, StatusCode::OK, "{q}: {v}");
                let version = v["model_version"].as_str().unwrap().to_owned();
                let embs = vectors.get(&version).unwrap_or_else(|| panic!("an answer of {version}: {v}"));
                check_scores(&v, q, embs);
                if versions.last() != Some(&version) {
                    versions.push(version);
                }
                i += 7;
            }
            versions
        })
    };
    for (target, version) in [(encoder.clone(), notellm_model::encoder::DEFAULT_VERSION), (model_a.clone(), VERSION_A)]
    {
        let (st, v) = admin(&s, reqwest::Method::POST, Some(json!({ "model": target, "batch_notes": 8 }))).await;
        assert_eq!(st, StatusCode::ACCEPTED, "{v}");
        let done = wait_finished(&s).await;
        assert_eq!((done["state"].as_str(), done["to_version"].as_str()), (Some("done"), Some(version)), "{done}");
        let (st, v) = related(&s, "n0").await;
        assert_eq!((st, v["model_version"].as_str()), (StatusCode::OK, Some(version)), "{v}");
        // scored by this model's vectors (the hits among the stable notes; the rest are the writer's)
        assert!(check_scores(&v, "n0", &vectors[version]) > 0, "{v}");
        // The encoder has no LLM: its suggestions are the neighbours' vote.
        let r = s.http.post(s.url("/suggest-tags")).json(&json!({"title": stable["n1"].title, "content": ""}));
        let (st, v) = json_of(r.send().await.unwrap()).await;
        assert_eq!((st, v["source"].as_str()), (StatusCode::OK, Some("neighbours")), "{version}: {v}");
    }
    stop.store(true, Ordering::SeqCst);
    let writes = w.await.unwrap();
    let versions = reads.await.unwrap();
    assert_eq!(
        versions,
        [VERSION_A, notellm_model::encoder::DEFAULT_VERSION, VERSION_A],
        "answers flipped back and forth"
    );
    // The end state is A's exact search over the notes as last written.
    let expected = expected.lock().unwrap().clone();
    let live: BTreeMap<String, Note> = expected.iter().filter_map(|(k, v)| Some((k.clone(), v.clone()?))).collect();
    let a_embs = embeddings(&model_a, &live);
    for id in live.keys().take(40) {
        let (st, v) = related(&s, id).await;
        assert_eq!((st, v["model_version"].as_str()), (StatusCode::OK, Some(VERSION_A)), "{id}: {v}");
        let mut exact: Vec<f32> =
            a_embs.iter().filter(|(o, _)| *o != id).map(|(_, e)| common::cosine(&a_embs[id], e)).collect();
        exact.sort_by(|x, y| y.total_cmp(x));
        for (rank, h) in v["related"].as_array().unwrap().iter().enumerate() {
            let score = h["score"].as_f64().unwrap() as f32;
            assert!((score - exact[rank]).abs() < 2e-3, "{id}: rank {rank} scored {score}, exact {}", exact[rank]);
        }
    }
    eprintln!("{writes} writes during two re-indexes across 32 and 384 dimensions");
    Arc::into_inner(s).unwrap().stop().await;
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

common::on_backend!(on_sqlite, Some(Backend::sqlite()), reindex_under_load, reindex_failures, reindex_across_families);
common::on_backend!(
    on_postgres,
    Backend::postgres("nl_reidx").await,
    reindex_under_load,
    reindex_failures,
    reindex_across_families
);
common::on_backend!(on_pgvector, Backend::pgvector("nl_reidx_vec").await, reindex_under_load, reindex_across_families);

/// The real binary, killed with `kill -9` in the middle of a re-index: after a restart the old
/// model serves every note, and a new re-index resumes from the vectors already staged.
async fn killed_mid_reindex(db: Vec<(&'static str, String)>) {
    let dir = tempfile::tempdir().unwrap();
    let (model_a, model_b) = models(dir.path());
    let data = dir.path().join("data");
    let http = reqwest::Client::new();

    let mut p = common::spawn(&model_a, &data, &db);
    wait_ready(&http, &p.base, Some(&mut p.child)).await;
    let s = Server::remote(&p.base, &http);
    let notes = common::notes(400, 6);
    put_batch(&s, &notes).await;
    let (st, v) = admin(&s, reqwest::Method::POST, Some(json!({ "model": model_b, "batch_notes": 1 }))).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{v}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let (_, v) = admin(&s, reqwest::Method::GET, None).await;
        assert_eq!(v["state"].as_str().map(|st| st == "embedding" || st == "loading"), Some(true), "{v}");
        let done = v["notes_done"].as_u64().unwrap_or(0);
        if done >= 40 {
            break done;
        }
        assert!(Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    drop(p);

    // The old model serves, consistently: every note, version A.
    let mut p = common::spawn(&model_a, &data, &db);
    let ready = wait_ready(&http, &p.base, Some(&mut p.child)).await;
    assert_eq!((ready["model_version"].as_str(), ready["notes"].as_u64()), (Some(VERSION_A), Some(400)), "{ready}");
    let s = Server::remote(&p.base, &http);
    for (id, _) in notes.iter().step_by(25) {
        let (st, v) = related(&s, id).await;
        assert_eq!((st, v["model_version"].as_str()), (StatusCode::OK, Some(VERSION_A)), "{id}: {v}");
    }
    assert_eq!(admin(&s, reqwest::Method::GET, None).await.0, StatusCode::NOT_FOUND, "a new process has no job");

    // Retried: what the killed run staged is reused.
    let (ok, stdout, stderr) = cli_reindex(&p.base, &model_b, &["--batch-notes", "32"]);
    assert!(ok, "{stderr}");
    let status: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(status["notes_reused"].as_u64().unwrap() >= done, "staged {done} before the kill: {status}");
    assert_eq!(status["notes_done"], 400, "{status}");

    // kill -9 right after the switch: the next start (still --model A) serves B from the store.
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    drop(p);
    let mut p = common::spawn(&model_a, &data, &db);
    let ready = wait_ready(&http, &p.base, Some(&mut p.child)).await;
    assert_eq!((ready["model_version"].as_str(), ready["notes"].as_u64()), (Some(VERSION_B), Some(400)), "{ready}");
    let s = Server::remote(&p.base, &http);
    for (id, _) in notes.iter().step_by(25) {
        let (st, v) = related(&s, id).await;
        assert_eq!((st, v["model_version"].as_str()), (StatusCode::OK, Some(VERSION_B)), "{id}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_reindex_on_sqlite() {
    killed_mid_reindex(Vec::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_reindex_on_postgres() {
    let Some(b) = Backend::postgres("nl_reidx").await else { return };
    let (Some(url), Some(schema)) = (b.url.clone(), b.schema.clone()) else { return };
    killed_mid_reindex(vec![("NOTELLM_DATABASE_URL", url), ("NOTELLM_DATABASE_SCHEMA", schema)]).await;
    b.drop().await;
}
