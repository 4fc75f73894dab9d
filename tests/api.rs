//! The service over real HTTP, against SQLite and against Postgres: every endpoint, every error
//! shape, write authentication, overload answers, and micro-batching seen through /metrics.

mod common;

use std::sync::Arc;
use std::time::Duration;

use notellm_http::api::HttpConfig;
use notellm_http::server::{self, ServiceConfig};
use notellm_model::config::Family;
use notellm_model::vote::VoteRule;
use notellm_model::DeviceSpec;
use notellm_service::batcher::BatcherConfig;
use notellm_service::{ServiceLimits, SuggestFrom};
use reqwest::StatusCode;
use serde_json::{json, Value};

use common::Backend;

struct Server {
    base: String,
    /// The probe listener's base URL, when it was started with one ([`start_with`]).
    probe_base: Option<String>,
    http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.task).await;
    }
}

async fn start(backend: &Backend, tweak: impl FnOnce(&mut ServiceConfig, &mut HttpConfig)) -> Server {
    start_with(backend, tweak, false).await
}

/// [`start`], with a probe listener (`--probe-listen`) on a port of its own when `probes`.
async fn start_with(
    backend: &Backend,
    tweak: impl FnOnce(&mut ServiceConfig, &mut HttpConfig),
    probes: bool,
) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = common::tiny_model(dir.path(), "m", Family::Llama, 1);
    let mut cfg = ServiceConfig {
        model_dir,
        device: DeviceSpec::Cpu,
        data_dir: dir.path().join("data"),
        database_url: backend.url.clone(),
        database_schema: backend.schema.clone(),
        batcher: BatcherConfig { max_wait: Duration::from_millis(5), ..Default::default() },
        limits: ServiceLimits { max_k: 50, max_notes_per_batch: 8, ..Default::default() },
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
    let mut http = HttpConfig { body_limit_bytes: 64 * 1024, ..Default::default() };
    tweak(&mut cfg, &mut http);
    let app = server::build(&cfg).await.unwrap();
    let listener = server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let probe_listener = if probes { Some(server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap()) } else { None };
    let probe_base = probe_listener.as_ref().map(|l| format!("http://{}", l.local_addr().unwrap()));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server::run_with_probes(app, http, listener, probe_listener, Duration::from_secs(3600), async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    let s = Server { base, probe_base, http: reqwest::Client::new(), stop: Some(tx), task, _dir: dir };
    for _ in 0..200 {
        if let Ok(r) = s.http.get(s.url("/readyz")).send().await {
            if r.status() == StatusCode::OK {
                return s;
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

fn assert_error(v: &Value, code: &str) {
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}

fn note_json(i: usize) -> Value {
    let (_, n) = &common::notes(i + 1, 77)[i];
    json!({ "title": n.title, "content": n.content, "hashtags": n.hashtags, "category": n.category })
}

async fn put(s: &Server, id: &str, body: &Value) -> (StatusCode, Value) {
    json_of(s.http.put(s.url(&format!("/notes/{id}"))).json(body).send().await.unwrap()).await
}

async fn endpoints(backend: Backend) {
    let s = start(&backend, |_, _| {}).await;
    let (st, v) = json_of(s.http.get(s.url("/healthz")).send().await.unwrap()).await;
    assert_eq!((st, v["status"].as_str()), (StatusCode::OK, Some("ok")));

    // create, unchanged, updated
    for i in 0..12 {
        let (st, v) = put(&s, &format!("n{i}"), &note_json(i)).await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        assert_eq!(v["status"], "created");
        assert!(v["seq"].as_i64().unwrap() > 0);
    }
    let (st, v) = put(&s, "n0", &note_json(0)).await;
    assert_eq!((st, v["status"].as_str()), (StatusCode::OK, Some("unchanged")));
    let mut changed = note_json(0);
    changed["title"] = "completely different title".into();
    let (st, v) = put(&s, "n0", &changed).await;
    assert_eq!((st, v["status"].as_str()), (StatusCode::OK, Some("updated")));

    // read back
    let (st, v) = json_of(s.http.get(s.url("/notes/n0")).send().await.unwrap()).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["title"], "completely different title");
    assert!(v["model_version"].as_str().is_some());

    // related: k results, never itself, scores sorted
    let (st, v) = json_of(s.http.get(s.url("/related/n1?k=5")).send().await.unwrap()).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let rel = v["related"].as_array().unwrap();
    assert_eq!(rel.len(), 5);
    assert!(rel.iter().all(|r| r["note_id"] != "n1"));
    let scores: Vec<f64> = rel.iter().map(|r| r["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    let (_, v) = json_of(s.http.get(s.url("/related/n1")).send().await.unwrap()).await;
    assert_eq!(v["related"].as_array().unwrap().len(), 11, "default k=20 capped by the 11 other notes");

    // delete: gone from GET and from every later /related at once
    let r = s.http.delete(s.url("/notes/n2")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (st, v) = json_of(s.http.get(s.url("/notes/n2")).send().await.unwrap()).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_error(&v, "not_found");
    for id in ["n1", "n3", "n4"] {
        let (_, v) = json_of(s.http.get(s.url(&format!("/related/{id}?k=50"))).send().await.unwrap()).await;
        assert!(v["related"].as_array().unwrap().iter().all(|r| r["note_id"] != "n2"), "{v}");
    }
    let (st, v) = json_of(s.http.delete(s.url("/notes/n2")).send().await.unwrap()).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_error(&v, "not_found");

    // draft related (nothing stored) and suggest-tags
    let (st, v) = json_of(
        s.http
            .post(s.url("/related"))
            .json(&json!({"title": "beach sunset", "content": "hotel island", "k": 3}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["related"].as_array().unwrap().len(), 3);
    assert!(v.get("note_id").is_none());
    let (st, v) = json_of(
        s.http
            .post(s.url("/suggest-tags"))
            .json(&json!({"title": "yoga", "content": "morning stretch", "max_hashtags": 2}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(v["hashtags"].as_array().unwrap().len() <= 2);
    assert!(["travel", "food", "tech", "fashion", "fitness", "home"].contains(&v["category"].as_str().unwrap()));
    assert_eq!(v["source"], "neighbours", "{v}");

    // batch: per-note results in input order, bad notes reported, good ones stored
    let body = json!({ "notes": [
        { "note_id": "b1", "title": "a note", "content": "with text" },
        { "note_id": "bad id!", "title": "x" },
        { "note_id": "b2", "title": "" },
        { "note_id": "n3", "title": "replaced", "content": "new text" },
        { "title": "no id" },
        { "note_id": 7, "title": "a number for an id" },
        { "note_id": "b1", "title": "the same id again" },
        { "note_id": "..", "title": "a dot segment" },
    ]});
    let (st, v) = json_of(s.http.post(s.url("/notes:batch")).json(&body).send().await.unwrap()).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let res = v["results"].as_array().unwrap();
    assert_eq!(res.len(), 8);
    assert_eq!(res[0]["status"], "created");
    let failed = |i: usize| (res[i]["status"].as_str(), res[i]["error"]["code"].as_str());
    assert_eq!(failed(1), (Some("error"), Some("invalid_note_id")));
    assert_eq!(failed(2), (Some("error"), Some("invalid_request")));
    assert_eq!(res[3]["status"], "updated");
    assert_eq!((failed(4), &res[4]["note_id"]), ((Some("error"), Some("invalid_note_id")), &Value::Null));
    assert_eq!(failed(5), (Some("error"), Some("invalid_note_id")));
    assert_eq!((failed(6), res[6]["note_id"].as_str()), ((Some("error"), Some("duplicate_note_id")), Some("b1")));
    assert_eq!(failed(7), (Some("error"), Some("invalid_note_id")));
    let (_, b1) = json_of(s.http.get(s.url("/notes/b1")).send().await.unwrap()).await;
    assert_eq!(b1["title"], "a note", "the first entry of a repeated id is the one written");
    let too_many =
        json!({ "notes": (0..9).map(|i| json!({"note_id": format!("x{i}"), "title": "t"})).collect::<Vec<_>>() });
    let (st, v) = json_of(s.http.post(s.url("/notes:batch")).json(&too_many).send().await.unwrap()).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&v, "invalid_request");
    // A NUL character (Postgres cannot store it): 422 on both stores, never a retryable 503, and
    // in a batch it fails only its own note.
    let (st, v) = put(&s, "nul", &json!({"title": "a\u{0}b", "content": "text"})).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_error(&v, "invalid_request");
    assert!(v["error"]["message"].as_str().unwrap().contains("NUL"), "{v}");
    let body = json!({ "notes": [
        { "note_id": "nul1", "title": "fine", "content": "text" },
        { "note_id": "nul2", "title": "t", "content": "x\u{0}y" },
        { "note_id": "nul3", "title": "fine too", "hashtags": ["ok"] },
    ]});
    let (st, v) = json_of(s.http.post(s.url("/notes:batch")).json(&body).send().await.unwrap()).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let res = v["results"].as_array().unwrap();
    let statuses: Vec<_> = res.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["created", "error", "created"], "{v}");
    assert_eq!(res[1]["error"]["code"], "invalid_request", "{v}");
    for (id, want) in [("nul", StatusCode::NOT_FOUND), ("nul1", StatusCode::OK), ("nul2", StatusCode::NOT_FOUND)] {
        assert_eq!(s.http.get(s.url(&format!("/notes/{id}"))).send().await.unwrap().status(), want, "{id}");
    }

    // metrics
    let text = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        text.contains("notellm_http_requests_total{method=\"PUT\",route=\"/notes/{note_id}\",status=\"201\"} 12"),
        "{text}"
    );
    assert!(text.contains("notellm_notes_indexed 14"), "{text}");
    assert!(text.contains("notellm_build_info"));

    // gzip for clients that accept it, except bodies that fit in one packet
    let gz = |path: &str| s.http.get(s.url(path)).header("accept-encoding", "gzip").send();
    let r = gz("/metrics").await.unwrap();
    assert_eq!(r.headers().get("content-encoding").map(|v| v.to_str().unwrap()), Some("gzip"));
    let r = gz("/related/n1?k=3").await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().get("content-encoding").is_none(), "a ~200-byte answer is sent as is");

    // OpenAPI
    let (st, v) = json_of(s.http.get(s.url("/openapi.json")).send().await.unwrap()).await;
    assert_eq!(st, StatusCode::OK);
    assert!(v["paths"]["/related/{note_id}"].is_object());
    // The bounds it states are this server's (max_k 50, 8 notes per batch).
    assert_eq!(v["paths"]["/related/{note_id}"]["get"]["parameters"][1]["schema"]["maximum"], 50);
    assert_eq!(v["components"]["schemas"]["BatchBody"]["properties"]["notes"]["maxItems"], 8);
    s.stop().await;
}

async fn errors(backend: Backend) {
    let s = start(&backend, |_, _| {}).await;
    put(&s, "a", &note_json(0)).await;
    let cases: Vec<(reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (s.http.put(s.url("/notes/bad%20id")).json(&note_json(1)), StatusCode::UNPROCESSABLE_ENTITY, "invalid_note_id"),
        (
            s.http.put(s.url(&format!("/notes/{}", "x".repeat(129)))).json(&note_json(1)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_note_id",
        ),
        (s.http.get(s.url("/related/%C3%A9")), StatusCode::UNPROCESSABLE_ENTITY, "invalid_note_id"),
        (
            s.http.put(s.url("/notes/b")).header("content-type", "application/json").body("{\"title\": "),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            s.http
                .put(s.url("/notes/b"))
                .header("content-type", "application/json")
                .body(b"{\"title\": \"\xff\xfe\"}".to_vec()),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (s.http.put(s.url("/notes/b")).body("{}"), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
        (
            s.http.put(s.url("/notes/b")).json(&json!({"title": " ", "content": ""})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            s.http.put(s.url("/notes/b")).json(&json!({"title": "t", "colour": "red"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (s.http.put(s.url("/notes/b")).json(&json!({"title": 5})), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (
            s.http.put(s.url("/notes/b")).json(&json!({"title": "t".repeat(1001)})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            s.http.put(s.url("/notes/b")).json(&json!({"title": "t", "content": "c".repeat(70_000)})),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (s.http.get(s.url("/related/a?k=0")), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (s.http.get(s.url("/related/a?k=-1")), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (s.http.get(s.url("/notes/%ff")), StatusCode::UNPROCESSABLE_ENTITY, "invalid_note_id"),
        (s.http.get(s.url("/related/%ff%fe")), StatusCode::UNPROCESSABLE_ENTITY, "invalid_note_id"),
        (s.http.delete(s.url("/notes/%ff")), StatusCode::UNPROCESSABLE_ENTITY, "invalid_note_id"),
        (s.http.get(s.url("/related/a?k=51")), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (s.http.get(s.url("/related/a?k=many")), StatusCode::BAD_REQUEST, "invalid_query"),
        (s.http.get(s.url("/related/nope")), StatusCode::NOT_FOUND, "not_found"),
        (s.http.get(s.url("/notes/nope")), StatusCode::NOT_FOUND, "not_found"),
        (s.http.get(s.url("/no/such/route")), StatusCode::NOT_FOUND, "not_found"),
        (s.http.post(s.url("/healthz")), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        (
            s.http.post(s.url("/related")).json(&json!({"title": "t", "k": 0})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (s.http.post(s.url("/related")).json(&json!([1, 2])), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        // An array of a note's fields is no note: every body is an object.
        (
            s.http.put(s.url("/notes/arr")).json(&json!(["a title", "some content"])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            s.http.post(s.url("/related")).json(&json!(["a title", "some content"])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            s.http.post(s.url("/suggest-tags")).json(&json!({"title": "t", "max_hashtags": 0})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            s.http.post(s.url("/suggest-tags")).json(&json!({"title": "", "content": ""})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            s.http.post(s.url("/notes:batch")).json(&json!({"notes": []})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
    ];
    for (i, (req, status, code)) in cases.into_iter().enumerate() {
        let (st, v) = json_of(req.send().await.unwrap()).await;
        assert_eq!(st, status, "case {i}: {v}");
        assert_error(&v, code);
    }
    s.stop().await;
}

async fn auth(backend: Backend) {
    let s = start(&backend, |_, h| h.api_key = Some("s3cret".into())).await;
    let (st, v) = put(&s, "a", &note_json(0)).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_error(&v, "unauthorized");
    let r = s.http.put(s.url("/notes/a")).bearer_auth("wrong").json(&note_json(0)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let r = s.http.put(s.url("/notes/a")).bearer_auth("s3cret").json(&note_json(0)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // The scheme is case-insensitive (RFC 7235).
    let r = s.http.put(s.url("/notes/a")).header("authorization", "bearer s3cret").json(&note_json(0)).send().await;
    assert_eq!(r.unwrap().status(), StatusCode::OK);
    for req in [
        s.http.delete(s.url("/notes/a")),
        s.http.post(s.url("/notes:batch")).json(&json!({"notes": [{"note_id": "z", "title": "t"}]})),
    ] {
        assert_eq!(req.send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    }
    // reads need no key
    assert_eq!(s.http.get(s.url("/related/a")).send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(s.http.get(s.url("/notes/a")).send().await.unwrap().status(), StatusCode::OK);
    s.stop().await;
}

async fn overload_and_batching(backend: Backend) {
    let s = Arc::new(
        start(&backend, |c, _| {
            c.batcher.gen_queue_capacity = 1;
            c.batcher.gen_workers = 1;
            // the generation queue is what this measures
            c.suggest.from = SuggestFrom::Generate;
            c.batcher.max_wait = Duration::from_millis(20);
        })
        .await,
    );
    // 64 concurrent single-note PUTs share batches
    let puts: Vec<_> = (0..64)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { put(&s, &format!("c{i}"), &note_json(i % 40)).await.0 })
        })
        .collect();
    for p in puts {
        assert_eq!(p.await.unwrap(), StatusCode::CREATED);
    }
    let text = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let metric = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    let (count, sum) = (metric("notellm_batch_size_count"), metric("notellm_batch_size_sum"));
    assert_eq!(sum, 64.0);
    assert!(count < 64.0, "64 concurrent PUTs ran in {count} batches: no micro-batching");

    // generation queue of 1: a burst gets 429 with Retry-After
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move {
                let r = s
                    .http
                    .post(s.url("/suggest-tags"))
                    .json(&json!({"title": "gym", "content": "cardio"}))
                    .send()
                    .await
                    .unwrap();
                let retry = r.headers().get("retry-after").map(|h| h.to_str().unwrap().to_owned());
                let (st, v) = json_of(r).await;
                (st, v, retry)
            })
        })
        .collect();
    let mut limited = 0;
    for c in calls {
        let (st, v, retry) = c.await.unwrap();
        if st == StatusCode::TOO_MANY_REQUESTS {
            limited += 1;
            assert_error(&v, "too_many_requests");
            assert_eq!(retry.as_deref(), Some("1"));
        } else {
            assert_eq!(st, StatusCode::OK, "{v}");
        }
    }
    assert!(limited > 0, "a burst of 10 against a queue of 1 should be refused in part");
    Arc::into_inner(s).unwrap().stop().await;
}

/// A counter or gauge's value in a /metrics text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.split(' ').next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

async fn suggest(s: &Server, body: Value) -> Value {
    let (st, v) = json_of(s.http.post(s.url("/suggest-tags")).json(&body).send().await.unwrap()).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    v
}

fn tags_of(v: &Value) -> Vec<&str> {
    v["hashtags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect()
}

async fn suggestions(backend: Backend) {
    // The tiny model's embeddings are random: the plain vote (every neighbour counts by its
    // cosine, no floor, no share) keeps this a test of the plumbing.
    let s = start(&backend, |c, _| c.suggest.rule = VoteRule::default()).await;
    let draft = json!({"title": "sunset hike", "content": "beach trail at dusk", "max_hashtags": 3});
    // nothing indexed: generated
    let v = suggest(&s, draft.clone()).await;
    assert_eq!(v["source"], "generated", "{v}");
    // Four notes, fewer than the 10 neighbours that vote, so all of them vote whatever the
    // embeddings: three with the same category and two tags, and one with a hashtag only.
    for i in 0..3 {
        let body = json!({"title": format!("trip {i}"), "content": "island hotel", "hashtags": ["beach", "sunset"], "category": "travel"});
        assert_eq!(put(&s, &format!("t{i}"), &body).await.0, StatusCode::CREATED);
    }
    let body = json!({"title": "odd", "content": "one", "hashtags": ["zzz-rare"]});
    assert_eq!(put(&s, "odd", &body).await.0, StatusCode::CREATED);
    let v = suggest(&s, draft.clone()).await;
    assert_eq!(v["source"], "neighbours", "{v}");
    assert_eq!(v["category"], "travel", "{v}");
    let tags = tags_of(&v);
    assert_eq!(&tags[..2], ["beach", "sunset"], "{v}");
    assert!(tags.len() <= 3 && tags[2..].iter().all(|t| *t == "zzz-rare"), "{v}");
    // max_hashtags bounds the answer
    let mut one = draft.clone();
    one["max_hashtags"] = 1.into();
    let v = suggest(&s, one).await;
    assert_eq!(tags_of(&v), ["beach"], "{v}");
    // deleted notes no longer vote; with none left, generated again
    for id in ["t0", "t1", "t2", "odd"] {
        assert_eq!(
            s.http.delete(s.url(&format!("/notes/{id}"))).send().await.unwrap().status(),
            StatusCode::NO_CONTENT
        );
    }
    let v = suggest(&s, draft).await;
    assert_eq!(v["source"], "generated", "{v}");
    let metrics = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("notellm_suggestions_total{source=\"neighbours\"} 2"), "{metrics}");
    assert!(metrics.contains("notellm_suggestions_total{source=\"generated\"} 2"), "{metrics}");
    s.stop().await;

    // --suggest-from generate: always generated
    let s = start(&backend, |c, _| c.suggest.from = SuggestFrom::Generate).await;
    let body = json!({"title": "trip", "content": "island", "hashtags": ["beach"], "category": "travel"});
    assert_eq!(put(&s, "t", &body).await.0, StatusCode::CREATED);
    let v = suggest(&s, json!({"title": "sunset hike", "content": "beach"})).await;
    assert_eq!(v["source"], "generated", "{v}");
    s.stop().await;
}

/// A small deployment of notes on unrelated topics, served by all-MiniLM-L6-v2 with the
/// default vote rule: each draft is answered from the notes on its own topic, and a draft on
/// none of them gets nothing, never the deployment's majority (under the plain vote every note
/// of a small deployment votes).
async fn suggestions_follow_the_draft(backend: Backend) {
    let Some(encoder) = common::minilm_dir().cloned() else { return };
    let s = start(&backend, |c, _| c.model_dir = encoder).await;
    let notes = [
        (
            "travel-1",
            "Three days in Lisbon",
            "Trams, miradouros and custard tarts: our city break itinerary.",
            &["travel", "city-break"][..],
            "travel",
        ),
        (
            "travel-2",
            "Backpacking across Japan",
            "Rail pass, hostels and temples from Tokyo to Kyoto.",
            &["travel", "japan"][..],
            "travel",
        ),
        (
            "food-1",
            "Sourdough starter from scratch",
            "Flour, water and patience: feeding schedule and first loaf.",
            &["baking", "bread"][..],
            "food",
        ),
        (
            "food-2",
            "Weeknight ramen",
            "A quick broth, soft eggs and noodles in thirty minutes.",
            &["cooking", "japan"][..],
            "food",
        ),
        (
            "food-3",
            "Lemon drizzle cake",
            "A moist sponge with a sharp lemon glaze, baked in one tin.",
            &["baking", "dessert"][..],
            "food",
        ),
        (
            "code-1",
            "Error handling in Rust",
            "Result, the question mark operator and thiserror for libraries.",
            &["programming", "rust"][..],
            "programming",
        ),
        (
            "code-2",
            "Python type hints in practice",
            "Gradual typing with mypy in a large codebase.",
            &["programming", "python"][..],
            "programming",
        ),
        (
            "run-1",
            "Training for a first marathon",
            "Sixteen weeks of long runs, tempo sessions and rest days.",
            &["running", "marathon"][..],
            "sport",
        ),
    ];
    for (id, title, content, hashtags, category) in notes {
        let body = json!({"title": title, "content": content, "hashtags": hashtags, "category": category});
        assert_eq!(put(&s, id, &body).await.0, StatusCode::CREATED);
    }
    let ask = |title: &str, content: &str| json!({"title": title, "content": content, "max_hashtags": 3});
    let travel =
        suggest(&s, ask("Weekend in Porto", "Port wine cellars, azulejos and a walk along the Douro river.")).await;
    let bread =
        suggest(&s, ask("Focaccia recipe", "Olive oil, rosemary and a long proof: baking an airy focaccia.")).await;
    let rust = suggest(&s, ask("Async Rust with tokio", "Futures, the runtime and spawning tasks in Rust.")).await;
    for v in [&travel, &bread, &rust] {
        assert_eq!(v["source"], "neighbours", "{v}");
    }
    assert_eq!(travel["category"], "travel", "{travel}");
    assert_eq!(bread["category"], "food", "{bread}");
    assert_eq!(rust["category"], "programming", "{rust}");
    assert!(tags_of(&travel).contains(&"travel") && !tags_of(&travel).contains(&"programming"), "{travel}");
    assert!(tags_of(&bread).contains(&"baking") && !tags_of(&bread).contains(&"programming"), "{bread}");
    assert!(tags_of(&rust).contains(&"programming") && !tags_of(&rust).contains(&"baking"), "{rust}");
    // The three drafts do not share one answer.
    assert!(tags_of(&travel) != tags_of(&bread) && tags_of(&bread) != tags_of(&rust), "{travel} {bread} {rust}");
    // A draft on none of the four topics: no note is similar enough to vote, so no answer (an
    // encoder cannot generate one), never the deployment's majority (which the plain vote gave).
    let far = suggest(&s, ask("Lattice QCD", "Quark confinement and gluon fields computed on a spacetime grid.")).await;
    assert_eq!(far["source"], "neighbours", "{far}");
    assert!(tags_of(&far).is_empty() && far["category"].is_null(), "{far}");
    s.stop().await;
}

async fn cache_counts(s: &Server) -> (f64, f64) {
    let text = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    (metric(&text, "notellm_related_cache_hits_total"), metric(&text, "notellm_related_cache_misses_total"))
}

async fn related_ids(s: &Server, id: &str) -> Vec<String> {
    let (st, v) = json_of(s.http.get(s.url(&format!("/related/{id}?k=5"))).send().await.unwrap()).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    v["related"].as_array().unwrap().iter().map(|r| r["note_id"].as_str().unwrap().to_owned()).collect()
}

/// The answer cache never shows what a write changed: a note deleted is gone from the very next
/// `/related`, a close neighbour PUT is in it, also while other readers keep refilling the cache
/// from before the write. "twin" has n1's text, hence n1's vector: cosine 1, first in n1's answer.
async fn related_cache(backend: Backend) {
    let s = Arc::new(start(&backend, |_, _| {}).await);
    for i in 0..12 {
        assert_eq!(put(&s, &format!("n{i}"), &note_json(i)).await.0, StatusCode::CREATED);
    }
    let first = related_ids(&s, "n1").await;
    let (hits0, misses0) = cache_counts(&s).await;
    assert_eq!(related_ids(&s, "n1").await, first, "same answer from the cache");
    let (hits1, misses1) = cache_counts(&s).await;
    assert_eq!((hits1 - hits0, misses1 - misses0), (1.0, 0.0), "the second read was a hit");
    let text = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metric(&text, "notellm_related_cache_entries") >= 1.0);

    // Readers hammer the cache while the writer inserts and deletes the twin: each check
    // starts after the write's answer came back.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|r| {
            let (s, stop) = (s.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    related_ids(&s, ["n1", "n3", "n5"][(n as usize + r) % 3]).await;
                    n += 1;
                }
                n
            })
        })
        .collect();
    for round in 0..8 {
        let (st, v) = put(&s, "twin", &note_json(1)).await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        let after_put = related_ids(&s, "n1").await;
        assert_eq!(after_put.first().map(String::as_str), Some("twin"), "round {round}: {after_put:?}");
        assert_eq!(related_ids(&s, "n1").await, after_put, "round {round}: the cached copy");
        let r = s.http.delete(s.url("/notes/twin")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        for id in ["n1", "n3", "n5"] {
            let ids = related_ids(&s, id).await;
            assert!(!ids.iter().any(|i| i == "twin"), "round {round}: deleted twin in {id}'s answer {ids:?}");
        }
        assert_eq!(related_ids(&s, "n1").await, first, "round {round}: back to the answer before the twin");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.await.unwrap() > 0);
    }

    // A deleted note that was in cached answers leaves all of them.
    let gone = first[0].clone();
    assert_eq!(s.http.delete(s.url(&format!("/notes/{gone}"))).send().await.unwrap().status(), StatusCode::NO_CONTENT);
    assert!(!related_ids(&s, "n1").await.contains(&gone));
    let (st, v) = json_of(s.http.get(s.url(&format!("/related/{gone}"))).send().await.unwrap()).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "a deleted note's own cached answer is not served: {v}");
    let (hits, _) = cache_counts(&s).await;
    assert!(hits > hits1, "readers were served from the cache between writes");
    Arc::into_inner(s).unwrap().stop().await;
}

/// With the cache disabled every read is a search, and nothing is counted.
async fn related_cache_disabled(backend: Backend) {
    let s = start(&backend, |c, _| c.related_cache_entries = 0).await;
    for i in 0..6 {
        put(&s, &format!("n{i}"), &note_json(i)).await;
    }
    let first = related_ids(&s, "n1").await;
    assert_eq!(related_ids(&s, "n1").await, first);
    assert_eq!(cache_counts(&s).await, (0.0, 0.0));
    s.stop().await;
}

common::on_backend!(
    on_sqlite,
    Some(Backend::sqlite()),
    endpoints,
    errors,
    auth,
    overload_and_batching,
    related_cache,
    related_cache_disabled,
    suggestions,
    suggestions_follow_the_draft
);
common::on_backend!(
    on_postgres,
    Backend::postgres("nl_api").await,
    endpoints,
    errors,
    auth,
    overload_and_batching,
    related_cache,
    related_cache_disabled,
    suggestions
);
// With --index pgvector the answer cache is off: its tests stay with the in-process index.
common::on_backend!(
    on_pgvector,
    Backend::pgvector("nl_api_vec").await,
    endpoints,
    errors,
    auth,
    overload_and_batching,
    related_cache_disabled,
    suggestions
);

/// Raw HTTP/1.1 over TCP, for what a client library will not send: a trickled header, a body
/// shorter than its `Content-Length`, connections held open doing nothing.
mod raw {
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    pub async fn connect(base: &str) -> TcpStream {
        TcpStream::connect(base.trim_start_matches("http://")).await.unwrap()
    }

    /// Everything the server sends until it closes the connection or `within` passes; and
    /// whether it closed.
    pub async fn read_until_closed(s: &mut TcpStream, within: Duration) -> (String, bool) {
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
                Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
            }
        }
    }

    /// Sends `bytes` one at a time, `every` apart, until the peer stops taking them.
    pub async fn trickle(s: &mut TcpStream, bytes: &[u8], every: Duration) {
        for b in bytes {
            if s.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
    }
}

/// `--concurrency-limit` bounds the requests in flight over every route together: with a limit
/// of 1, a PUT whose body is still arriving holds the one permit, and a request to another
/// route is shed with 503 `overloaded`. (tower's per-layer semaphore, applied by the router
/// once per route, made it one limit per route: the second request was served.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_limit_spans_every_route() {
    use tokio::io::AsyncWriteExt;
    let s = start(&Backend::sqlite(), |_, h| h.concurrency_limit = 1).await;
    let mut held = raw::connect(&s.base).await;
    let head = "PUT /notes/slow HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 64\r\n\r\n{";
    held.write_all(head.as_bytes()).await.unwrap();
    // The PUT is in its handler, reading its body, once the server has read the head.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = s.http.get(s.url("/openapi.json")).send().await.unwrap();
    let retry = r.headers().get("retry-after").map(|h| h.to_str().unwrap().to_owned());
    let (st, v) = json_of(r).await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_error(&v, "overloaded");
    assert_eq!(retry.as_deref(), Some("1"));
    drop(held);
    // The permit comes back when the held request ends.
    let mut served = false;
    for _ in 0..100 {
        if s.http.get(s.url("/openapi.json")).send().await.unwrap().status() == StatusCode::OK {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "the permit never came back");
    s.stop().await;
}

/// Request limits before any handler: a long URI is 414, a declared body over the limit 413 at
/// once, a body that trickles in past its deadline 408; all in the JSON error shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_limits_answer_in_json_before_any_handler() {
    let s = start(&Backend::sqlite(), |_, h| {
        h.body_read_timeout = Duration::from_secs(1);
        h.request_timeout = Duration::from_secs(10);
    })
    .await;
    let long = format!("/related/a?k=5&pad={}", "x".repeat(9000));
    let (st, v) = json_of(s.http.get(s.url(&long)).send().await.unwrap()).await;
    assert_eq!(st, StatusCode::URI_TOO_LONG, "{v}");
    assert_error(&v, "uri_too_long");

    // 413 at once, though no byte of the 10 MB body was sent.
    let mut c = raw::connect(&s.base).await;
    use tokio::io::AsyncWriteExt;
    c.write_all(
        b"PUT /notes/big HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 10000000\r\n\r\n",
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let (text, closed) = raw::read_until_closed(&mut c, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("\"body_too_large\""), "{text}");
    assert!(closed && started.elapsed() < Duration::from_secs(3), "413 not at once: {:?}", started.elapsed());

    // A body sent a byte every 200 ms: 408 at its 1 s deadline, long before the 10 s request
    // timeout (504) and though bytes keep arriving.
    let mut c = raw::connect(&s.base).await;
    let body = serde_json::to_vec(&note_json(0)).unwrap();
    let head = format!(
        "PUT /notes/slow HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let (mut rd, mut wr) = c.into_split();
    let sender = tokio::spawn(async move {
        for b in body {
            if wr.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut text = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(8), async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 4096];
        while let Ok(n) = rd.read(&mut buf).await {
            if n == 0 {
                break;
            }
            text.extend_from_slice(&buf[..n]);
            if text.windows(4).any(|w| w == b"\r\n\r\n") && text.ends_with(b"}}") {
                break;
            }
        }
    })
    .await;
    sender.abort();
    let text = String::from_utf8_lossy(&text);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"body_timeout\""), "{text}");
    assert!(started.elapsed() < Duration::from_secs(5), "408 late: {:?}", started.elapsed());
    let (st, _) = json_of(s.http.get(s.url("/notes/slow")).send().await.unwrap()).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "a timed-out body wrote nothing");
    s.stop().await;
}

/// Connections are bounded: a trickled header and an idle keep-alive connection are closed at
/// the header timeout, and with every slot held by idle clients a new /healthz is still
/// answered (a probe slot) within seconds, not when the idle clients time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_bounded_and_probes_stay_answerable() {
    use notellm_http::connections::ConnectionLimits;
    let s = start(&Backend::sqlite(), |_, h| {
        h.connections =
            ConnectionLimits { header_read_timeout: Duration::from_secs(1), max_connections: 64, probe_slots: 2 };
    })
    .await;
    // Slowloris: a byte of the request line every 300 ms; closed at about 1 s.
    let mut c = raw::connect(&s.base).await;
    let started = std::time::Instant::now();
    raw::trickle(
        &mut c,
        b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-pad: aaaaaaaaaaaaaaaaaaaa",
        Duration::from_millis(300),
    )
    .await;
    let (text, closed) = raw::read_until_closed(&mut c, Duration::from_secs(5)).await;
    assert!(closed, "slowloris connection still open after {:?}: {text}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    // An idle keep-alive connection: answered, then closed at about 1 s of idleness.
    let mut c = raw::connect(&s.base).await;
    use tokio::io::AsyncWriteExt;
    c.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let started = std::time::Instant::now();
    let (text, closed) = raw::read_until_closed(&mut c, Duration::from_secs(4)).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(closed, "idle keep-alive connection still open after {:?}", started.elapsed());
    let m = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metric(&m, "notellm_http_connections_closed_total{reason=\"header_timeout\"}") >= 2.0, "{m}");
    s.stop().await;

    // Every slot held: 4 regular connections with a 20 s header timeout, 2 probe slots.
    let s = start(&Backend::sqlite(), |_, h| {
        h.connections =
            ConnectionLimits { header_read_timeout: Duration::from_secs(20), max_connections: 4, probe_slots: 2 };
    })
    .await;
    // 3 regular slots (the test client holds the fourth), 2 probe slots, 1 in the backlog.
    let mut idle = Vec::new();
    for _ in 0..6 {
        idle.push(raw::connect(&s.base).await);
    }
    let probe = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let started = std::time::Instant::now();
    let r = probe.get(s.url("/healthz")).timeout(Duration::from_secs(15)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(8), "/healthz waited {:?}", started.elapsed());
    let m = s.http.get(s.url("/metrics")).timeout(Duration::from_secs(15)).send().await.unwrap().text().await.unwrap();
    assert!(metric(&m, "notellm_http_connections") <= 6.0, "more open than the slots: {m}");
    assert!(metric(&m, "notellm_http_connections_total{slot=\"probe\"}") >= 1.0, "{m}");
    drop(idle);
    s.stop().await;
}

/// A tmpfs of `size` mounted for the test's life (lazily unmounted on drop, a panic included).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// `None` where this process may not mount (not root, no CAP_SYS_ADMIN).
    fn mount(dir: &std::path::Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The SQLite store on a disk that fills up: writes answer 507 `insufficient_storage` (not a
/// retryable 503 without a reason), `/readyz` stays 200 for reads but says writes are refused,
/// `/related` keeps answering, and once space is freed writes succeed again with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_507_and_recovers_without_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let mnt = root.path().join("disk");
    let Some(_disk) = Tmpfs::mount(&mnt, "8m") else {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root and must be able to mount a tmpfs");
        eprintln!("skipped: cannot mount a tmpfs here (not root)");
        return;
    };
    let data = mnt.join("data");
    let s = start(&Backend::sqlite(), |c, _| c.data_dir = data.clone()).await;
    for i in 0..5 {
        assert_eq!(put(&s, &format!("n{i}"), &note_json(i)).await.0, StatusCode::CREATED);
    }
    // Fill the disk but for a little room.
    let filler = mnt.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    let mut full = None;
    for i in 5..2000 {
        let (st, v) = put(&s, &format!("n{i}"), &note_json(i % 200)).await;
        if st != StatusCode::CREATED {
            full = Some((i, st, v));
            break;
        }
    }
    let (first_refused, st, v) = full.expect("the disk never filled");
    assert_eq!(st, StatusCode::INSUFFICIENT_STORAGE, "{v}");
    assert_error(&v, "insufficient_storage");
    // Refused again (the connection is not left broken), and said so by /readyz and /metrics.
    let (st, v) = put(&s, "again", &note_json(1)).await;
    assert_eq!(st, StatusCode::INSUFFICIENT_STORAGE, "{v}");
    let (st, v) = json_of(s.http.get(s.url("/readyz")).send().await.unwrap()).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["writes"], "refused: the store is out of space", "{v}");
    let m = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert_eq!(metric(&m, "notellm_store_full"), 1.0);
    let (st, _) = json_of(s.http.get(s.url("/related/n1?k=3")).send().await.unwrap()).await;
    assert_eq!(st, StatusCode::OK, "reads go on");
    // Space back: the same server writes again.
    std::fs::remove_file(&filler).unwrap();
    let (st, v) = put(&s, "after", &note_json(2)).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let (_, v) = json_of(s.http.get(s.url("/readyz")).send().await.unwrap()).await;
    assert_eq!(v["writes"], "accepted", "{v}");
    let (st, v) = json_of(s.http.get(s.url("/notes/after")).send().await.unwrap()).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(json_of(s.http.get(s.url("/notes/again")).send().await.unwrap()).await.0, StatusCode::NOT_FOUND);
    eprintln!("the disk filled at note {first_refused}");
    s.stop().await;
}

/// What hyper refuses before routing is JSON too: a request line and headers past the
/// connection's read buffer (exactly `MAX_HEAD_BYTES` of unfinished headers: the server reads
/// them all, so no unread rest resets the connection before the client reads the answer; with
/// hyper's default buffer of about 400 KB the server waited for more instead), a request line
/// that is not HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_parser_refuses_answer_in_json() {
    use tokio::io::AsyncWriteExt;
    let s = start(&Backend::sqlite(), |_, _| {}).await;
    let head = "GET /related/a HTTP/1.1\r\nhost: x\r\nx-pad: ";
    let long_head = format!("{head}{}", "a".repeat(notellm_http::connections::MAX_HEAD_BYTES - head.len()));
    assert_eq!(long_head.len(), notellm_http::connections::MAX_HEAD_BYTES);
    let cases = [(long_head, 431, "headers_too_large"), ("NOT HTTP\r\n\r\n".to_owned(), 400, "malformed_request")];
    for (req, status, code) in cases {
        let mut c = raw::connect(&s.base).await;
        let _ = c.write_all(req.as_bytes()).await;
        let (text, _) = raw::read_until_closed(&mut c, Duration::from_secs(5)).await;
        assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text}");
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
        assert_error(&v, code);
    }
    s.stop().await;
}

/// HTTP/1.0 is served (health checkers and load generators send it) and, without keep-alive,
/// its connection closes after the answer; an HTTP/2 prior-knowledge preface, which hyper alone
/// closes without a word, is answered 505 `http_version_not_supported` in JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_is_served_and_an_http_2_preface_is_answered() {
    use tokio::io::AsyncWriteExt;
    let s = start(&Backend::sqlite(), |_, _| {}).await;
    let mut c = raw::connect(&s.base).await;
    c.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").await.unwrap();
    let started = std::time::Instant::now();
    let (text, closed) = raw::read_until_closed(&mut c, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.0 200 "), "{text}");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
    assert_eq!(v["status"], "ok", "{v}");
    // Closed after the answer, not by the 10 s header timeout that closes an idle connection.
    assert!(closed && started.elapsed() < Duration::from_secs(3), "open after {:?}: {text}", started.elapsed());

    // HTTP/2 with prior knowledge: the preface and an empty SETTINGS frame, as clients send them.
    let mut c = raw::connect(&s.base).await;
    c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.unwrap();
    let (text, closed) = raw::read_until_closed(&mut c, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 505 "), "{text:?}");
    assert!(closed, "{text}");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
    assert_error(&v, "http_version_not_supported");
    // The server is unharmed.
    let (st, _) = json_of(s.http.get(s.url("/healthz")).send().await.unwrap()).await;
    assert_eq!(st, StatusCode::OK);
    s.stop().await;
}

/// The probe listener (`--probe-listen`): while idle clients hold every connection of the
/// service's port and more wait in its backlog (a /healthz there is not answered for tens of
/// seconds), /healthz and /readyz on the probe port answer within a second. It serves the probe
/// routes and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_listener_answers_while_clients_hold_every_connection() {
    use notellm_http::connections::ConnectionLimits;
    use tokio::io::AsyncWriteExt;
    const MAX_CONNECTIONS: usize = 8;
    const PROBE_SLOTS: usize = 2;
    let s = start_with(
        &Backend::sqlite(),
        |_, h| {
            h.connections = ConnectionLimits {
                header_read_timeout: Duration::from_secs(20),
                max_connections: MAX_CONNECTIONS,
                probe_slots: PROBE_SLOTS,
            };
        },
        true,
    )
    .await;
    let probes = s.probe_base.clone().unwrap();
    // Every regular slot (the test client holds one too), every probe slot, and 40 in the backlog.
    let mut idle = Vec::new();
    for _ in 0..MAX_CONNECTIONS + PROBE_SLOTS + 40 {
        idle.push(raw::connect(&s.base).await);
    }
    // The service's port is saturated: a /healthz there waits in the backlog.
    let mut c = raw::connect(&s.base).await;
    c.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let (text, _) = raw::read_until_closed(&mut c, Duration::from_secs(1)).await;
    assert!(text.is_empty(), "the service's port answered at once, so the test held too few connections: {text}");

    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let get = |path: &str| client.get(format!("{probes}{path}")).timeout(Duration::from_secs(1)).send();
    for path in ["/healthz", "/readyz"] {
        let started = std::time::Instant::now();
        let r = get(path).await.unwrap_or_else(|e| panic!("{path} on the probe port: {e}"));
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert!(started.elapsed() < Duration::from_secs(1), "{path} took {:?}", started.elapsed());
    }
    let m = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(metric(&m, "notellm_http_connections_total{slot=\"probe_listener\"}") >= 2.0, "{m}");
    // Nothing but the probes there.
    for path in ["/notes/n1", "/openapi.json", "/admin/reindex"] {
        let (st, v) = json_of(get(path).await.unwrap()).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{path}: {v}");
        assert_error(&v, "not_found");
    }
    drop(c);
    drop(idle);
    s.stop().await;
}
