//! Replica mode over real HTTP: two `notellm serve --follow` processes (the real binary) on one
//! Postgres schema. A write accepted by either is served alike by both, from the stored vector
//! (the other never embeds it); updates and deletes propagate; a listener whose connection is
//! killed loses its notifications and the poll still catches up; a re-index switch made on one
//! replica is followed by the other, and writes through the other during switches back and forth
//! are never stored under a replaced model; a replica on another network namespace whose link to
//! Postgres is cut turns not-ready and converges when it is back; and modes that cannot work are refused at start (replicas
//! or pgvector on SQLite, replica mode with pgvector).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notellm_model::config::Family;
use notellm_note::{Note, NoteId};
use notellm_store::{Store, StoreOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};

use common::{Backend, Proc};

const K: usize = 5;

/// A replica of `backend`'s store with its own data directory.
fn replica(model: &Path, data: &Path, backend: &Backend) -> Proc {
    common::spawn(model, data, &replica_env(backend.url.clone().unwrap_or_default(), backend))
}

/// Replica mode on `url` (with `backend`'s schema), following quickly.
fn replica_env(url: String, backend: &Backend) -> [(&'static str, String); 6] {
    [
        ("DATABASE_URL", url),
        ("NOTELLM_DATABASE_SCHEMA", backend.schema.clone().unwrap_or_default()),
        ("NOTELLM_FOLLOW", "true".to_owned()),
        ("NOTELLM_FOLLOW_INTERVAL", "0.3".to_owned()),
        ("NOTELLM_MAX_FOLLOW_LAG", "10".to_owned()),
        ("NOTELLM_HNSW_EF_SEARCH", "64".to_owned()),
    ]
}

async fn get(http: &reqwest::Client, url: String) -> (StatusCode, Value) {
    let r = http.get(url).send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn put(http: &reqwest::Client, p: &Proc, id: &str, n: &Note) -> i64 {
    let body = json!({ "title": n.title, "content": n.content, "hashtags": n.hashtags, "category": n.category });
    let r = http.put(format!("{}/notes/{id}", p.base)).json(&body).send().await.unwrap();
    assert!(r.status().is_success(), "PUT {id}: {}", r.status());
    r.json::<Value>().await.unwrap()["seq"].as_i64().expect("a write that changed something has a seq")
}

async fn related(http: &reqwest::Client, p: &Proc, id: &str) -> (StatusCode, Value) {
    get(http, format!("{}/related/{id}?k={K}", p.base)).await
}

async fn metric(http: &reqwest::Client, p: &Proc, name: &str) -> f64 {
    let text = http.get(format!("{}/metrics", p.base)).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no metric {name}"))
}

/// Waits until `p` has applied every change up to `seq`, and returns its `/readyz` body.
async fn wait_applied(http: &reqwest::Client, p: &Proc, seq: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (st, v) = get(http, format!("{}/readyz", p.base)).await;
        if st == StatusCode::OK && v["follow"]["applied_seq"].as_i64().unwrap_or(0) >= seq {
            return v;
        }
        assert!(Instant::now() < deadline, "replica {} never applied seq {seq}: {st} {v}", p.base);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs a re-index of `p` to `model` and waits for it to finish; returns the new version.
async fn reindex(http: &reqwest::Client, p: &Proc, model: &Path) -> String {
    let r = http.post(format!("{}/admin/reindex", p.base)).json(&json!({ "model": model })).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, v) = get(http, format!("{}/admin/reindex", p.base)).await;
        if v["state"] == "done" {
            return v["to_version"].as_str().unwrap().to_owned();
        }
        assert!(!["failed", "cancelled"].contains(&v["state"].as_str().unwrap_or("")), "{v}");
        assert!(Instant::now() < deadline, "the re-index never finished: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `p` is ready and serves model `version`.
async fn wait_serving(http: &reqwest::Client, p: &Proc, version: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (st, v) = get(http, format!("{}/readyz", p.base)).await;
        if st == StatusCode::OK && v["model_version"] == version {
            return;
        }
        assert!(Instant::now() < deadline, "replica {} never served {version}: {st} {v}", p.base);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ids and scores of a `/related` answer.
fn hits(v: &Value) -> Vec<(String, f64)> {
    v["related"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["note_id"].as_str().unwrap().to_owned(), (h["score"].as_f64().unwrap() * 1e4).round() / 1e4))
        .collect()
}

/// Both replicas give the same answer for `id` (they hold the same vectors; at this size the
/// HNSW search is exhaustive).
async fn assert_alike(http: &reqwest::Client, a: &Proc, b: &Proc, id: &str) {
    let ((sa, va), (sb, vb)) = (related(http, a, id).await, related(http, b, id).await);
    assert_eq!((sa, sb), (StatusCode::OK, StatusCode::OK), "{va} / {vb}");
    assert_eq!(hits(&va), hits(&vb), "replicas disagree on {id}");
    assert_eq!(va["model_version"], vb["model_version"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_serve_each_others_writes_alike() {
    let Some(backend) = Backend::postgres("nl_replicas").await else { return };
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model(dir.path(), "model", Family::Llama, 1);
    let http = reqwest::Client::new();
    let mut a = replica(&model, &dir.path().join("a"), &backend);
    let mut b = replica(&model, &dir.path().join("b"), &backend);
    common::wait_ready(&mut a, &http).await;
    common::wait_ready(&mut b, &http).await;

    let notes = common::notes(24, 3);
    let mut last = 0;
    for (id, n) in &notes[..20] {
        last = put(&http, &a, id, n).await;
    }
    let ready = wait_applied(&http, &b, last).await;
    assert_eq!(ready["notes"], 20, "{ready}");
    for (id, _) in notes.iter().take(5) {
        assert_alike(&http, &a, &b, id).await;
    }
    assert_eq!(metric(&http, &b, "notellm_embedded_notes_total").await, 0.0, "B applies stored vectors");
    assert_eq!(metric(&http, &b, "notellm_follow_applied_changes_total").await, 20.0);
    assert_eq!(metric(&http, &b, "notellm_follow_lag_seq").await, 0.0);

    // Writes to B reach A the same way, and A does not apply its own writes twice.
    for (id, n) in &notes[20..] {
        last = put(&http, &b, id, n).await;
    }
    wait_applied(&http, &a, last).await;
    assert_alike(&http, &a, &b, &notes[22].0).await;
    assert_eq!(metric(&http, &a, "notellm_follow_applied_changes_total").await, 4.0);

    // An update and a delete on A.
    let (moved, gone) = (&notes[0].0, &notes[1].0);
    let mut changed = notes[7].1.clone();
    changed.title = format!("{} (edited)", changed.title);
    let seq = put(&http, &a, moved, &changed).await;
    let r = http.delete(format!("{}/notes/{gone}", a.base)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // The delete's seq is the next one (no other writer here).
    wait_applied(&http, &b, seq + 1).await;
    assert_alike(&http, &a, &b, moved).await;
    assert_eq!(related(&http, &b, gone).await.0, StatusCode::NOT_FOUND);
    for (id, _) in notes.iter().skip(2).take(6) {
        let (_, v) = related(&http, &b, id).await;
        assert!(hits(&v).iter().all(|(h, _)| h != gone), "B still serves the deleted note: {v}");
    }

    // Kill every listening connection: the notification of the next write is lost, and the
    // poll applies it anyway; the listener is rebuilt.
    let pool = sqlx::PgPool::connect(backend.url.as_deref().unwrap()).await.unwrap();
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE (query ILIKE 'LISTEN %' OR query = $1) AND pid <> pg_backend_pid()) AS t",
    )
    .bind(notellm_store::HEARTBEAT_SQL)
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    assert!(killed >= 2, "both replicas listen: {killed}");
    let seq = put(&http, &a, &notes[2].0, &notes[9].1).await;
    wait_applied(&http, &b, seq).await;
    assert_alike(&http, &a, &b, &notes[2].0).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(&http, &b, "notellm_follow_reconnects_total").await < 1.0 {
        assert!(Instant::now() < deadline, "B never noticed its lost listener");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    drop((a, b));
    backend.drop().await;
}

/// Two ready replicas A and B of tiny model A (32-d) on `backend`, and model B (24-d) to switch
/// them to.
struct Switching {
    dir: tempfile::TempDir,
    model_a: std::path::PathBuf,
    model_b: std::path::PathBuf,
    a: Proc,
    b: Proc,
}

async fn switching_replicas(backend: &Backend, http: &reqwest::Client) -> Switching {
    let dir = tempfile::tempdir().unwrap();
    let model_a = common::tiny_model(dir.path(), "model-a", Family::Llama, 1);
    let model_b = common::tiny_model_seeded(dir.path(), "model-b", Family::Llama, 1, 8, 24);
    let mut a = replica(&model_a, &dir.path().join("a"), backend);
    let mut b = replica(&model_a, &dir.path().join("b"), backend);
    common::wait_ready(&mut a, http).await;
    common::wait_ready(&mut b, http).await;
    Switching { dir, model_a, model_b, a, b }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reindex_switch_on_one_replica_is_followed_by_the_other() {
    let Some(backend) = Backend::postgres("nl_replicas_switch").await else { return };
    let http = reqwest::Client::new();
    let Switching { dir: _dir, model_b, a, b, .. } = switching_replicas(&backend, &http).await;
    let notes = common::notes(12, 5);
    for (id, n) in &notes {
        put(&http, &a, id, n).await;
    }

    let version = reindex(&http, &a, &model_b).await;
    // B loads the recorded checkpoint and serves the new version, with every note.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (st, v) = get(&http, format!("{}/readyz", b.base)).await;
        if st == StatusCode::OK && v["model_version"] == version.as_str() && v["notes"] == notes.len() {
            break;
        }
        assert!(Instant::now() < deadline, "B never followed the switch: {st} {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metric(&http, &b, "notellm_follow_switches_total{outcome=\"done\"}").await, 1.0);
    for (id, _) in notes.iter().take(4) {
        assert_alike(&http, &a, &b, id).await;
    }
    // Writes go on, on either replica, under the new version.
    let seq = put(&http, &b, &notes[0].0, &notes[5].1).await;
    wait_applied(&http, &a, seq).await;
    assert_alike(&http, &a, &b, &notes[0].0).await;
    assert_eq!(metric(&http, &a, "notellm_follow_switches_total{outcome=\"done\"}").await, 0.0, "A switched itself");

    drop((a, b));
    backend.drop().await;
}

/// Writers through the follower B, each PUTting its own ids.
const WRITERS: usize = 3;
/// Ids each writer cycles through.
const IDS_PER_WRITER: usize = 8;

/// What one writer got acknowledged: the last note of each of its ids, how many PUTs, and the
/// model versions that answered them.
#[derive(Default)]
struct Acked {
    notes: BTreeMap<String, Note>,
    puts: usize,
    versions: BTreeSet<String>,
}

/// Writer `w` through `base` until `stop`: its ids `w<w>-<k>`, each PUT with new content and
/// retried after a 503 (the replica follows a switch, or could not follow it in time) until it
/// is acknowledged, so that the last acknowledged note of an id is the one it last sent.
async fn write_until(http: reqwest::Client, base: String, w: usize, stop: Arc<AtomicBool>) -> Acked {
    let texts = common::notes(24, 100 + w as u64);
    let mut acked = Acked::default();
    let mut round = 0;
    while !stop.load(Ordering::SeqCst) {
        let id = format!("w{w}-{}", round % IDS_PER_WRITER);
        let mut note = texts[round % texts.len()].1.clone();
        note.title = format!("{} (round {round})", note.title);
        let body = json!({ "title": note.title, "content": note.content, "hashtags": note.hashtags, "category": note.category });
        let deadline = Instant::now() + Duration::from_secs(30);
        let answer = loop {
            let r = http.put(format!("{base}/notes/{id}")).json(&body).send().await.unwrap();
            let status = r.status();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            if status.is_success() {
                break v;
            }
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "PUT {id}: {v}");
            assert!(Instant::now() < deadline, "PUT {id} refused for 30 s: {v}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        acked.versions.insert(answer["model_version"].as_str().unwrap_or_default().to_owned());
        acked.notes.insert(id, note);
        acked.puts += 1;
        round += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    acked
}

/// PUTs through the follower B go on while A re-indexes the store back and forth. A write that B
/// embedded with the replaced model as a switch committed is refused by the store, and B follows
/// the switch and embeds it again (or answers 503, and the writer retries): afterwards every
/// stored note carries the active version, both replicas index every one of them, and each
/// acknowledged write is what both serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_a_follower_during_switches_are_never_stranded() {
    let Some(backend) = Backend::postgres("nl_replicas_race").await else { return };
    let http = reqwest::Client::new();
    let Switching { dir, model_a, model_b, a, b } = switching_replicas(&backend, &http).await;
    let notes = common::notes(40, 17);
    let mut last = 0;
    for (id, n) in &notes {
        last = put(&http, &a, id, n).await;
    }
    wait_applied(&http, &b, last).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> =
        (0..WRITERS).map(|w| tokio::spawn(write_until(http.clone(), b.base.clone(), w, stop.clone()))).collect();
    let mut switched_to = Vec::new();
    for target in [&model_b, &model_a, &model_b] {
        // B writes with the model it serves for a while before each switch.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let version = reindex(&http, &a, target).await;
        wait_serving(&http, &b, &version).await;
        switched_to.push(version);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let mut acked = Acked::default();
    for w in writers {
        let got = w.await.unwrap();
        acked.notes.extend(got.notes);
        acked.puts += got.puts;
        acked.versions.extend(got.versions);
    }
    let version = switched_to.last().unwrap().clone();
    let both: BTreeSet<String> = switched_to.iter().cloned().collect();
    assert_eq!(acked.versions, both, "B acknowledged writes under both models");

    // Every note in the store carries the active version.
    let opts = StoreOptions { schema: backend.schema.clone(), max_connections: 2, ..StoreOptions::default() };
    let store = Store::connect_with(backend.url.as_deref(), dir.path(), &opts).await.unwrap();
    let active = store.active_model().await.unwrap().expect("the store was switched").model_version;
    assert_eq!(active.0, version);
    let mut stored: Vec<String> = Vec::new();
    let mut after: Option<NoteId> = None;
    loop {
        let page = store.scan_embeddings(after.as_ref(), 500).await.unwrap();
        let Some((id, _, _)) = page.last() else { break };
        after = Some(id.clone());
        for (id, _, v) in &page {
            assert_eq!(*v, active, "note {id} is stored under model {v}, the store's active model is {active}");
            stored.push(id.to_string());
        }
    }
    assert_eq!(stored.len(), notes.len() + acked.notes.len(), "the initial notes and every writer's ids");
    let max = store.max_seq().await.unwrap();
    store.close().await;

    // Both replicas index every stored note with it, and serve each acknowledged write.
    for p in [&a, &b] {
        let ready = wait_applied(&http, p, max).await;
        let expected = (Some(version.as_str()), Some(stored.len() as u64));
        assert_eq!((ready["model_version"].as_str(), ready["notes"].as_u64()), expected, "{ready}");
        for (id, n) in &acked.notes {
            let (st, v) = get(&http, format!("{}/notes/{id}", p.base)).await;
            assert_eq!(st, StatusCode::OK, "{id}: {v}");
            let expected = (Some(n.title.as_str()), Some(n.content.as_str()));
            assert_eq!((v["title"].as_str(), v["content"].as_str()), expected, "{id}: {v}");
            assert_eq!(v["model_version"], version.as_str(), "{id}: {v}");
        }
        for id in &stored {
            let (st, v) = related(&http, p, id).await;
            let answer = (st, v["model_version"].as_str());
            assert_eq!(answer, (StatusCode::OK, Some(version.as_str())), "{id} on {}: {v}", p.base);
        }
    }
    eprintln!(
        "{} writes through B during {} switches; {} embedded again after a switch",
        acked.puts,
        switched_to.len(),
        metric(&http, &b, "notellm_writes_reembedded_total").await
    );

    drop((a, b));
    backend.drop().await;
}

/// A replica on another "host" whose only route to Postgres is a link the test cuts: it turns
/// not-ready within the store probe's bound while cut off (and keeps answering reads from its
/// index), and once the link is back it converges on every change made meanwhile, whose
/// notifications it never got (its listener was rebuilt while the link was down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_postgres_turns_unready_and_converges_when_back() {
    if !common::netns::available() {
        return;
    }
    let Some(backend) = Backend::postgres("nl_replicas_cut").await else { return };
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model(dir.path(), "model", Family::Llama, 1);
    let http = reqwest::Client::new();

    let link = common::netns::Link::create();
    let mut url = reqwest::Url::parse(backend.url.as_deref().unwrap()).unwrap();
    let db = common::netns::resolve(url.host_str().unwrap(), url.port().unwrap_or(5432));
    link.expose_to_replica(db.port(), db);
    url.set_host(Some(common::netns::GATEWAY)).unwrap();
    let env = replica_env(url.to_string(), &backend);
    let port = common::free_port();
    let launcher = ["ip", "netns", "exec", link.replica.as_str()];
    let child = common::serve_command(&launcher, &model, &dir.path().join("b"), &env, &format!("127.0.0.1:{port}"))
        .spawn()
        .unwrap();
    let mut b = Proc { child, base: format!("http://{}", link.reach_replica(port)) };
    let mut a = replica(&model, &dir.path().join("a"), &backend);
    common::wait_ready(&mut a, &http).await;
    common::wait_ready(&mut b, &http).await;

    let notes = common::notes(24, 11);
    let mut last = 0;
    for (id, n) in &notes[..12] {
        last = put(&http, &a, id, n).await;
    }
    wait_applied(&http, &b, last).await;
    assert_alike(&http, &a, &b, &notes[0].0).await;

    link.set(false);
    let cut = Instant::now();
    let why = loop {
        let (st, v) = get(&http, format!("{}/readyz", b.base)).await;
        if st == StatusCode::SERVICE_UNAVAILABLE {
            break v;
        }
        assert!(cut.elapsed() < Duration::from_secs(10), "B still ready {:?} after the cut: {v}", cut.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("B not ready {:.1}s after the cut: {why}", cut.elapsed().as_secs_f64());
    // Writes go on at A meanwhile: new notes, an update and a delete.
    for (id, n) in &notes[12..] {
        put(&http, &a, id, n).await;
    }
    let seq = put(&http, &a, &notes[3].0, &notes[20].1).await;
    let gone = &notes[4].0;
    let r = http.delete(format!("{}/notes/{gone}", a.base)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    last = seq + 1; // the delete's (A is the only writer)
    assert_eq!(related(&http, &b, &notes[1].0).await.0, StatusCode::OK, "B serves reads from its index while cut off");
    // Stay cut off past the listener's heartbeat timeout, so the listener is rebuilt and the
    // notifications of the writes above are lost for good.
    let reconnects = metric(&http, &b, "notellm_follow_reconnects_total").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&http, &b, "notellm_follow_reconnects_total").await <= reconnects {
        assert!(Instant::now() < deadline, "B never gave up its silent listener");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(get(&http, format!("{}/readyz", b.base)).await.0 == StatusCode::SERVICE_UNAVAILABLE);

    link.set(true);
    let back = Instant::now();
    let deadline = back + Duration::from_secs(60);
    loop {
        let (st, v) = get(&http, format!("{}/readyz", b.base)).await;
        if st == StatusCode::OK && v["follow"]["applied_seq"].as_i64().unwrap_or(0) >= last {
            assert_eq!(v["notes"], notes.len() - 1, "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "B never converged after the link came back: {st} {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("B converged {:.1}s after the link came back", back.elapsed().as_secs_f64());
    for (id, _) in notes.iter().filter(|(id, _)| id != gone) {
        assert_alike(&http, &a, &b, id).await;
    }
    assert_eq!(related(&http, &b, gone).await.0, StatusCode::NOT_FOUND);
    assert_eq!(metric(&http, &b, "notellm_embedded_notes_total").await, 0.0, "B applies stored vectors");

    drop((a, b, link));
    backend.drop().await;
}

/// `notellm serve` with `args` and no database URL (SQLite) exits with an error containing `want`.
fn refused(model: &Path, data: &Path, args: &[&str], env: &[(&str, String)], want: &str) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_notellm"))
        .args(["serve", "--device", "cpu", "--listen", "127.0.0.1:0"])
        .args(args)
        .env("NOTELLM_MODEL", model)
        .env("NOTELLM_DATA_DIR", data)
        .env_remove("DATABASE_URL")
        .env_remove("NOTELLM_DATABASE_URL")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    assert!(!out.status.success(), "{args:?} started");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(want), "{args:?}: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modes_that_cannot_work_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model(dir.path(), "model", Family::Llama, 1);
    let data = dir.path().join("data");
    refused(&model, &data, &["--follow"], &[], "--follow (replica mode) needs the shared Postgres store");
    refused(&model, &data, &["--index", "pgvector"], &[], "the pgvector index needs the Postgres store");
    let Some(backend) = Backend::postgres("nl_refused").await else { return };
    let pg =
        [("DATABASE_URL", backend.url.clone().unwrap()), ("NOTELLM_DATABASE_SCHEMA", backend.schema.clone().unwrap())];
    refused(&model, &data, &["--follow", "--index", "pgvector"], &pg, "needs no following");
    backend.drop().await;
}
