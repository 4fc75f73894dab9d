//! A store outage, seen from outside: the real binary talks to Postgres through a TCP proxy the
//! test can take down (connections refused, like a stopped server). While it is down, `/readyz`
//! and every request that needs the store answer at once with a JSON 503 and `Retry-After`
//! instead of waiting for a connection, `/related` keeps answering from the index, and once the
//! store is back, writes succeed again without a restart.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{drop_schema, postgres_url, spawn, wait_ready};
use notellm_model::config::Family;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Forwards `127.0.0.1:<port>` to Postgres while up; down, it neither listens nor keeps any
/// connection open.
struct Proxy {
    port: u16,
    target: String,
    running: Mutex<Option<JoinHandle<()>>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let port = common::free_port();
        let p = Proxy { port, target, running: Mutex::new(None), conns: Arc::default() };
        p.up().await;
        p
    }

    async fn up(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        let (target, conns) = (self.target.clone(), self.conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let target = target.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                conns.lock().unwrap().push(conn);
            }
        });
        *self.running.lock().unwrap() = Some(accept);
    }

    async fn down(&self) {
        let running = self.running.lock().unwrap().take();
        if let Some(accept) = running {
            accept.abort();
            let _ = accept.await;
        }
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

/// Status, `Retry-After` and body of a request, and how long it took.
async fn timed(req: reqwest::RequestBuilder) -> (u16, Option<String>, Value, Duration) {
    let started = Instant::now();
    let r = req.timeout(Duration::from_secs(30)).send().await.unwrap();
    let status = r.status().as_u16();
    let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let body = r.json::<Value>().await.unwrap_or(Value::Null);
    (status, retry, body, started.elapsed())
}

/// Polls `/readyz` until it answers `want` (or panics after `within`).
async fn await_ready_status(http: &reqwest::Client, base: &str, want: u16, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (status, ..) = timed(http.get(format!("{base}/readyz"))).await;
        if status == want {
            return;
        }
        assert!(Instant::now() < deadline, "/readyz never answered {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_fails_fast_and_heals_without_a_restart() {
    let Some(url) = postgres_url().await else { return };
    let parsed = reqwest::Url::parse(&url).unwrap();
    let target = format!("{}:{}", parsed.host_str().unwrap(), parsed.port().unwrap_or(5432));
    let proxy = Proxy::start(target).await;
    let mut via_proxy = parsed.clone();
    via_proxy.set_host(Some("127.0.0.1")).unwrap();
    via_proxy.set_port(Some(proxy.port)).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model(dir.path(), "m", Family::Llama, 1);
    let schema = format!("nl_out_{:016x}", rand::random::<u64>());
    let db = vec![("NOTELLM_DATABASE_URL", via_proxy.to_string()), ("NOTELLM_DATABASE_SCHEMA", schema.clone())];
    let http = reqwest::Client::new();
    let mut p = spawn(&model, &dir.path().join("data"), &db);
    wait_ready(&mut p, &http).await;
    let note = |i: usize| json!({ "title": format!("note {i}"), "content": format!("about topic {i}") });
    for i in 0..3 {
        let (status, ..) = timed(http.put(format!("{}/notes/n{i}", p.base)).json(&note(i))).await;
        assert_eq!(status, 201);
    }

    proxy.down().await;
    // The probe (every second) notices; then readiness says so at once.
    await_ready_status(&http, &p.base, 503, Duration::from_secs(15)).await;
    let (status, retry, body, took) = timed(http.get(format!("{}/readyz", p.base))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("not_ready")), "{body}");
    assert!(retry.is_some(), "a 503 without Retry-After");
    assert!(took < Duration::from_secs(2), "/readyz took {took:?} with the store down");
    let requests = [
        http.put(format!("{}/notes/n9", p.base)).json(&note(9)),
        http.get(format!("{}/notes/n0", p.base)),
        http.delete(format!("{}/notes/n1", p.base)),
    ];
    for req in requests {
        let (status, retry, body, took) = timed(req).await;
        assert_eq!((status, body["error"]["code"].as_str()), (503, Some("store_unavailable")), "{body}");
        assert!(retry.is_some(), "a 503 without Retry-After: {body}");
        // The pool would wait its acquire timeout for a connection; a known outage does not.
        assert!(took < Duration::from_secs(2), "took {took:?} with the store known down");
    }
    // Reads that need only the index keep answering.
    let (status, _, body, _) = timed(http.get(format!("{}/related/n0?k=2", p.base))).await;
    assert_eq!(status, 200, "{body}");

    proxy.up().await;
    await_ready_status(&http, &p.base, 200, Duration::from_secs(15)).await;
    let (status, _, body, _) = timed(http.put(format!("{}/notes/n9", p.base)).json(&note(9))).await;
    assert_eq!(status, 201, "{body}");
    let (status, _, body, _) = timed(http.get(format!("{}/notes/n0", p.base))).await;
    assert_eq!((status, body["title"].as_str()), (200, Some("note 0")));
    let metrics = http.get(format!("{}/metrics", p.base)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "notellm_store_up 1"), "{metrics}");
    drop(p);
    drop_schema(&url, &schema).await;
}
