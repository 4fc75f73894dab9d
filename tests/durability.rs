//! Durability of the real binary: acknowledged notes survive `kill -9`, and after a restart
//! `/related` answers are identical, whether the index comes back by replaying the store (no
//! snapshot: killed) or from the snapshot written at a graceful shutdown (SIGTERM). Runs against
//! SQLite and Postgres.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{drop_schema, postgres_url, spawn, wait_ready, Proc};

use notellm_model::config::Family;
use serde_json::{json, Value};

async fn related_all(p: &Proc, http: &reqwest::Client, ids: &[String]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for id in ids {
        let r = http.get(format!("{}/related/{id}?k=10", p.base)).send().await.unwrap();
        assert!(r.status().is_success(), "{id}: {}", r.status());
        out.insert(id.clone(), r.json::<Value>().await.unwrap()["related"].clone());
    }
    out
}

async fn scenario(db: Vec<(&'static str, String)>) {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model(dir.path(), "m", Family::Llama, 1);
    let data = dir.path().join("data");
    let http = reqwest::Client::new();

    let mut p = spawn(&model, &data, &db);
    wait_ready(&mut p, &http).await;
    let notes = common::notes(40, 9);
    let mut acked = Vec::new();
    for (id, n) in &notes {
        put(&p, &http, id, n).await;
        acked.push(id.clone());
    }
    let gone = acked.remove(7);
    assert_eq!(http.delete(format!("{}/notes/{gone}", p.base)).send().await.unwrap().status(), 204);
    let before = related_all(&p, &http, &acked).await;

    // kill -9: no graceful shutdown, no snapshot
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    drop(p);
    let mut p = spawn(&model, &data, &db);
    wait_ready(&mut p, &http).await;
    for id in &acked {
        assert_eq!(http.get(format!("{}/notes/{id}", p.base)).send().await.unwrap().status(), 200, "{id} lost");
    }
    assert_eq!(http.get(format!("{}/notes/{gone}", p.base)).send().await.unwrap().status(), 404);
    assert_eq!(related_all(&p, &http, &acked).await, before, "answers changed after kill -9 and replay");

    // graceful stop writes a snapshot of the in-process index (pgvector: the store is the index,
    // and there is none); the next start loads it
    stop(p);
    let snapshots = data.join("index");
    let written = std::fs::read_dir(&snapshots).map(|mut d| d.next().is_some()).unwrap_or(false);
    let pgvector = db.iter().any(|(k, v)| *k == "NOTELLM_INDEX" && v == "pgvector");
    assert_eq!(written, !pgvector, "a snapshot is written exactly with the in-process index");
    let mut p = spawn(&model, &data, &db);
    wait_ready(&mut p, &http).await;
    assert_eq!(related_all(&p, &http, &acked).await, before, "answers changed after snapshot restore");
}

async fn put(p: &Proc, http: &reqwest::Client, id: &str, n: &notellm_note::Note) {
    let body = json!({ "title": n.title, "content": n.content, "hashtags": n.hashtags, "category": n.category });
    let r = http.put(format!("{}/notes/{id}", p.base)).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 201, "PUT {id}");
}

/// SIGTERM: a graceful stop, which writes a snapshot when the index changed.
fn stop(mut p: Proc) {
    let pid = p.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = p.child.wait().unwrap();
    assert!(status.success(), "graceful shutdown exit: {status}");
}

/// The ids `/related/{id}` returns with a k above the corpus size: every other indexed note.
async fn related_ids(p: &Proc, http: &reqwest::Client, id: &str) -> std::collections::BTreeSet<String> {
    let r = http.get(format!("{}/related/{id}?k=1000", p.base)).send().await.unwrap();
    assert!(r.status().is_success(), "{id}: {}", r.status());
    let body: Value = r.json().await.unwrap();
    body["related"].as_array().unwrap().iter().map(|h| h["note_id"].as_str().unwrap().to_owned()).collect()
}

async fn snapshots_rejected(p: &Proc, http: &reqwest::Client) -> u64 {
    let text = http.get(format!("{}/metrics", p.base)).send().await.unwrap().text().await.unwrap();
    let line = text.lines().find(|l| l.starts_with("notellm_snapshots_rejected_total ")).expect("metric exported");
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// A backup of the store and its restore (the files of SQLite, `pg_dump` + `psql` of Postgres).
trait Backup {
    fn take(&self);
    fn restore(&self);
}

/// A snapshot the store contradicts is rebuilt from the store, never followed: the store is
/// restored from a backup taken before the snapshot and written to again by another process
/// (so its seq passes the snapshot's, but with another history), then the manifest's seq is
/// edited. Each time the service must serve exactly what the store holds, and keep following it.
async fn contradicted_snapshot(db: Vec<(&'static str, String)>, backup: &dyn Backup, data: &Path, dir: &Path) {
    // The other writer must reach the same store: SQLite's file sits in the data directory.
    let writer_db = if db.is_empty() {
        vec![("NOTELLM_DATABASE_URL", format!("sqlite:{}", data.join("notellm.sqlite").display()))]
    } else {
        db.clone()
    };
    let model = common::tiny_model(dir, "m", Family::Llama, 1);
    let other = dir.join("other-data");
    let http = reqwest::Client::new();
    let notes = common::notes(46, 21);
    let (a, rest) = notes.split_at(20);
    let (b, rest) = rest.split_at(10);
    let (d, e) = rest.split_at(15);

    let mut p = spawn(&model, data, &db);
    wait_ready(&mut p, &http).await;
    for (id, n) in a {
        put(&p, &http, id, n).await;
    }
    stop(p); // snapshot at seq 20
    backup.take();
    let mut p = spawn(&model, data, &db);
    wait_ready(&mut p, &http).await;
    for (id, n) in b {
        put(&p, &http, id, n).await;
    }
    assert_eq!(http.delete(format!("{}/notes/{}", p.base, a[7].0)).send().await.unwrap().status(), 204);
    stop(p); // snapshot at seq 31: B indexed, a[7] gone
    backup.restore(); // the store is back at seq 20: no B, a[7] there
                      // Another process (its own data directory, no snapshot) writes D: seqs 21-35.
    let mut q = spawn(&model, &other, &writer_db);
    wait_ready(&mut q, &http).await;
    for (id, n) in d {
        put(&q, &http, id, n).await;
    }
    stop(q);

    let mut p = spawn(&model, data, &db);
    wait_ready(&mut p, &http).await;
    for (id, _) in b {
        assert_eq!(http.get(format!("{}/related/{id}", p.base)).send().await.unwrap().status(), 404, "{id} served");
    }
    let stored: std::collections::BTreeSet<String> = a.iter().chain(d).map(|(id, _)| id.clone()).collect();
    let expect = |of: &str| stored.iter().filter(|id| id.as_str() != of).cloned().collect();
    assert_eq!(related_ids(&p, &http, &a[0].0).await, expect(&a[0].0), "not exactly the store");
    assert_eq!(related_ids(&p, &http, &a[7].0).await, expect(&a[7].0), "the restored note is not served");
    assert_eq!(snapshots_rejected(&p, &http).await, 1, "the snapshot at seq 31 was not counted as rejected");
    stop(p); // a valid snapshot at seq 35

    // A hand-edited seq: the manifest's checksum no longer matches; rebuilt, then followed.
    // `<data>/index/<model version>/`: one version here.
    let index = std::fs::read_dir(data.join("index")).unwrap().next().unwrap().unwrap().path();
    let current = std::fs::read_to_string(index.join("index.current")).unwrap();
    let manifest_path = index.join(current.trim()).join("manifest.json");
    let mut manifest: Value = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    assert_eq!(manifest["position"]["seq"], 35);
    manifest["position"]["seq"] = json!(1_035);
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    let mut p = spawn(&model, data, &db);
    wait_ready(&mut p, &http).await;
    assert_eq!(snapshots_rejected(&p, &http).await, 0, "a corrupt manifest is unusable, not contradicted");
    assert_eq!(related_ids(&p, &http, &a[0].0).await, expect(&a[0].0));
    let (e_id, e_note) = &e[0];
    put(&p, &http, e_id, e_note).await; // seq 36
    assert!(related_ids(&p, &http, &a[0].0).await.contains(e_id));
    stop(p);
    let mut p = spawn(&model, data, &db);
    wait_ready(&mut p, &http).await;
    assert_eq!(snapshots_rejected(&p, &http).await, 0, "its own valid snapshot rejected");
    let mut with_e = expect(&a[0].0);
    with_e.insert(e_id.clone());
    assert_eq!(related_ids(&p, &http, &a[0].0).await, with_e, "a write after the rebuild was lost at restart");
    stop(p);
}

struct SqliteFiles {
    data: std::path::PathBuf,
    saved: std::path::PathBuf,
}

impl SqliteFiles {
    const FILES: [&'static str; 3] = ["notellm.sqlite", "notellm.sqlite-wal", "notellm.sqlite-shm"];
}

impl Backup for SqliteFiles {
    fn take(&self) {
        std::fs::create_dir_all(&self.saved).unwrap();
        for f in Self::FILES {
            let _ = std::fs::remove_file(self.saved.join(f));
            if self.data.join(f).exists() {
                std::fs::copy(self.data.join(f), self.saved.join(f)).unwrap();
            }
        }
    }

    fn restore(&self) {
        for f in Self::FILES {
            let _ = std::fs::remove_file(self.data.join(f));
            if self.saved.join(f).exists() {
                std::fs::copy(self.saved.join(f), self.data.join(f)).unwrap();
            }
        }
    }
}

struct PgDump {
    url: String,
    schema: String,
    file: std::path::PathBuf,
}

impl Backup for PgDump {
    fn take(&self) {
        let out = Command::new("pg_dump")
            .args(["--no-owner", "--schema", &self.schema, "--file"])
            .arg(&self.file)
            .arg(&self.url)
            .output()
            .expect("pg_dump (PostgreSQL's client tools) on PATH");
        assert!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn restore(&self) {
        let drop = format!("DROP SCHEMA {} CASCADE", self.schema);
        for args in [vec!["-c", drop.as_str()], vec!["-f", self.file.to_str().unwrap()]] {
            let out = Command::new("psql")
                .args(["-q", "-v", "ON_ERROR_STOP=1"])
                .args(&args)
                .arg(&self.url)
                .output()
                .expect("psql on PATH");
            assert!(out.status.success(), "psql {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_the_store_contradicts_is_rebuilt_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let backup = SqliteFiles { data: data.clone(), saved: dir.path().join("backup") };
    contradicted_snapshot(Vec::new(), &backup, &data, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_the_store_contradicts_is_rebuilt_on_postgres() {
    let Some(url) = postgres_url().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let schema = format!("nl_dur_{:016x}", rand::random::<u64>());
    let backup = PgDump { url: url.clone(), schema: schema.clone(), file: dir.path().join("backup.sql") };
    let db = vec![("NOTELLM_DATABASE_URL", url.clone()), ("NOTELLM_DATABASE_SCHEMA", schema.clone())];
    contradicted_snapshot(db, &backup, &data, dir.path()).await;
    drop_schema(&url, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_kill_on_sqlite() {
    scenario(Vec::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_kill_on_postgres() {
    let Some(url) = postgres_url().await else { return };
    let schema = format!("nl_dur_{:016x}", rand::random::<u64>());
    scenario(vec![("NOTELLM_DATABASE_URL", url.clone()), ("NOTELLM_DATABASE_SCHEMA", schema.clone())]).await;
    drop_schema(&url, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_kill_on_pgvector() {
    let Some(url) = postgres_url().await else { return };
    let schema = format!("nl_dur_vec_{:016x}", rand::random::<u64>());
    let db = vec![
        ("NOTELLM_DATABASE_URL", url.clone()),
        ("NOTELLM_DATABASE_SCHEMA", schema.clone()),
        ("NOTELLM_INDEX", "pgvector".to_owned()),
    ];
    scenario(db).await;
    drop_schema(&url, &schema).await;
}
