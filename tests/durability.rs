//! Durability of the real binary: acknowledged notes survive `kill -9`, and after a restart
//! `/related` answers are identical, whether the index comes back by replaying the store (no
//! snapshot: killed) or from the snapshot written at a graceful shutdown (SIGTERM). Runs against
//! SQLite and Postgres.

mod common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use notellm::model::config::Family;
use serde_json::{json, Value};

struct Proc {
    child: Child,
    base: String,
}

/// A failed assertion must not leave a server running.
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawn(model: &Path, data: &Path, db: &[(&str, String)]) -> Proc {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_notellm"))
        .args(["serve", "--device", "cpu", "--listen", &format!("127.0.0.1:{port}")])
        .env("NOTELLM_MODEL", model)
        .env("NOTELLM_DATA_DIR", data)
        .env("NOTELLM_LOG", "warn")
        .env_remove("DATABASE_URL")
        .envs(db.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Proc { child, base: format!("http://127.0.0.1:{port}") }
}

async fn wait_ready(p: &mut Proc, http: &reqwest::Client) {
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
        let body = json!({ "title": n.title, "content": n.content, "hashtags": n.hashtags, "category": n.category });
        let r = http.put(format!("{}/notes/{id}", p.base)).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 201);
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

    // graceful stop writes a snapshot; the next start loads it
    let pid = p.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = p.child.wait().unwrap();
    assert!(status.success(), "graceful shutdown exit: {status}");
    drop(p);
    let snapshots = data.join("index");
    assert!(std::fs::read_dir(&snapshots).map(|mut d| d.next().is_some()).unwrap_or(false), "no snapshot written");
    let mut p = spawn(&model, &data, &db);
    wait_ready(&mut p, &http).await;
    assert_eq!(related_all(&p, &http, &acked).await, before, "answers changed after snapshot restore");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_kill_on_sqlite() {
    scenario(Vec::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_kill_on_postgres() {
    let url = std::env::var("TEST_DATABASE_URL")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".into());
    match sqlx::PgPool::connect(&url).await {
        Ok(p) => p.close().await,
        Err(e) if std::env::var_os("CI").is_some() => panic!("CI is set but Postgres at {url} is unreachable: {e}"),
        Err(e) => return eprintln!("skipping: Postgres unreachable ({e}); set TEST_DATABASE_URL"),
    }
    let schema = format!("nl_dur_{:016x}", rand::random::<u64>());
    scenario(vec![("NOTELLM_DATABASE_URL", url.clone()), ("NOTELLM_DATABASE_SCHEMA", schema.clone())]).await;
    if let Ok(p) = sqlx::PgPool::connect(&url).await {
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).execute(&p).await;
        p.close().await;
    }
}
