//! Notes with images over real HTTP, against SQLite, Postgres and pgvector, served by a tiny
//! multimodal checkpoint (the tiny text model, a random image encoder, a fresh connector):
//! `PUT` with a base64 image, the stored vector against the model's own mICL embedding of the
//! note and its image, features reused for a second note with the same image, `GET /related`,
//! bad and oversized images refused with nothing written, the batch, a delete, a restart, and a
//! re-index that embeds the image notes from their stored features. A text-only checkpoint
//! refuses images.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use notellm_artifacts::multimodal::{init_multimodal, MultimodalInit};
use notellm_http::api::HttpConfig;
use notellm_http::server::{self, ServiceConfig};
use notellm_model::config::Family;
use notellm_model::multimodal::{MultimodalNoteLlm, QFormerConfig};
use notellm_model::DeviceSpec;
use notellm_note::{Embedding, Note, NoteId};
use notellm_service::batcher::BatcherConfig;
use notellm_service::ServiceLimits;
use notellm_store::{Store, StoreOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};

use common::Backend;

/// The image limit the servers below run with: small, so that a 413 is cheap to provoke.
const MAX_IMAGE_BYTES: usize = 8 * 1024;

/// A multimodal checkpoint `dir/<name>` on the tiny text model `dir/text`, with the encoder in
/// `vision` (made once per encoder seed).
fn multimodal(dir: &Path, name: &str, encoder_seed: u64, version: &str) -> PathBuf {
    let text = dir.join("text");
    if !text.exists() {
        common::tiny_model(dir, "text", Family::Llama, 1);
    }
    let vision = dir.join(format!("vision-{encoder_seed}"));
    if !vision.exists() {
        notellm_artifacts::vision::random_encoder(&vision, &common::tiny_vision(), encoder_seed).unwrap();
    }
    let out = dir.join(name);
    let qformer =
        QFormerConfig { hidden: 16, layers: 2, heads: 2, ffn: 32, queries: 4, cross_every: 2, layer_norm_eps: 1e-12 };
    let opts = MultimodalInit { qformer: Some(qformer), late_fusion: true, model_version: Some(version.into()) };
    init_multimodal(&text, &vision, &out, &opts).unwrap();
    out
}

/// A PNG of one colour and a diagonal band, `side` px, with noise from `seed` (a larger side
/// makes a larger file).
fn png(seed: u32, side: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(side, side, |x, y| {
        let band = (x + y) % 16 < 8;
        let n = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503) ^ seed.wrapping_mul(97)) % 64;
        let base = (seed * 53 % 256) as u8;
        image::Rgb([if band { base } else { 255 - base }, (n * 3) as u8, (seed * 31 % 256) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn sha256_hex(bytes: &[u8]) -> String {
    notellm_model::image_input::ImageHash::of(bytes).to_hex()
}

fn note(i: usize) -> Note {
    let (_, n) = &common::notes(i + 1, 91)[i];
    n.clone()
}

fn body(n: &Note, image: Option<&[u8]>) -> Value {
    let mut v = json!({ "title": n.title, "content": n.content, "hashtags": n.hashtags, "category": n.category });
    if let Some(bytes) = image {
        v["image"] = json!(b64(bytes));
    }
    v
}

struct Server {
    base: String,
    http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
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

    async fn put(&self, id: &str, body: &Value) -> (StatusCode, Value) {
        json_of(self.http.put(self.url(&format!("/notes/{id}"))).json(body).send().await.unwrap()).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        json_of(self.http.get(self.url(path)).send().await.unwrap()).await
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = self.http.get(self.url("/metrics")).send().await.unwrap().text().await.unwrap();
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
    }
}

fn config(backend: &Backend, model_dir: &Path, data: &Path) -> ServiceConfig {
    ServiceConfig {
        model_dir: model_dir.to_owned(),
        device: DeviceSpec::Cpu,
        data_dir: data.to_owned(),
        database_url: backend.url.clone(),
        database_schema: backend.schema.clone(),
        batcher: BatcherConfig { max_wait: Duration::from_millis(5), ..Default::default() },
        limits: ServiceLimits {
            max_k: 50,
            max_notes_per_batch: 8,
            image: notellm_service::ImageLimits { max_bytes: MAX_IMAGE_BYTES, max_side: 512 },
            ..Default::default()
        },
        hnsw_m: 16,
        hnsw_ef_construction: 100,
        hnsw_ef_search: 64,
        rebuild_tombstone_share: 0.2,
        snapshot_interval: Duration::from_secs(3600),
        related_cache_entries: 1024,
        suggest: Default::default(),
        follow: None,
        index: backend.index(),
    }
}

async fn start(cfg: &ServiceConfig) -> Server {
    let app = server::build(cfg).await.unwrap();
    let listener = server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let http_cfg = HttpConfig { body_limit_bytes: 256 * 1024, ..Default::default() };
    let task = tokio::spawn(async move {
        server::run(app, http_cfg, listener, Duration::from_secs(3600), async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    let s = Server { base, http: reqwest::Client::new(), stop: Some(tx), task };
    for _ in 0..400 {
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

/// The store the server writes, opened beside it (to read stored vectors and images).
async fn store_of(backend: &Backend, data: &Path) -> Store {
    let opts = StoreOptions { schema: backend.schema.clone(), pgvector: backend.pgvector, ..Default::default() };
    Store::connect_with(backend.url.as_deref(), data, &opts).await.unwrap()
}

/// The model's own embedding of `note` with the image in `png` (features rounded to f16, as
/// they are stored).
fn reference(model: &MultimodalNoteLlm, note: &Note, png: &[u8]) -> Embedding {
    let img = image::load_from_memory(png).unwrap();
    let features = model.image_features(&[img]).unwrap();
    let features = features.to_dtype(candle_core::DType::F16).unwrap().to_dtype(candle_core::DType::F32).unwrap();
    model.embed(std::slice::from_ref(note), &features).unwrap().remove(0).note
}

fn assert_close(a: &Embedding, b: &Embedding, tol: f32) {
    let d = a.as_slice().iter().zip(b.as_slice()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    assert!(d <= tol, "embeddings differ by {d}");
}

fn id(s: &str) -> NoteId {
    NoteId::parse(s).unwrap()
}

async fn stored_vector(store: &Store, note: &str) -> Embedding {
    store.get_embedding(&id(note)).await.unwrap().unwrap().0
}

async fn images_end_to_end(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = multimodal(dir.path(), "mm-a", 3, "mm-a");
    let data = dir.path().join("data");
    let cfg = config(&backend, &model_dir, &data);
    let s = start(&cfg).await;
    let model = MultimodalNoteLlm::load(&model_dir, &candle_core::Device::Cpu).unwrap();
    let store = store_of(&backend, &data).await;
    let (img_a, img_b) = (png(1, 24), png(2, 24));

    // A note with an image: stored with its image's hash, embedded by mICL with that image.
    let (st, v) = s.put("a", &body(&note(0), Some(&img_a))).await;
    assert_eq!((st, v["status"].as_str()), (StatusCode::CREATED, Some("created")), "{v}");
    assert_eq!(v["model_version"], "mm-a");
    let (st, got) = s.get("/notes/a").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(got["image_sha256"], sha256_hex(&img_a), "{got}");
    let want_a = reference(&model, &note(0), &img_a);
    assert_close(&stored_vector(&store, "a").await, &want_a, 1e-5);
    let image = store.image(&id("a")).await.unwrap().unwrap();
    assert_eq!(
        (image.image_hash.as_str(), image.tokens as usize),
        (sha256_hex(&img_a).as_str(), common::tiny_vision().tokens())
    );
    assert_eq!(s.metric("notellm_images_encoded_total").await, 1.0);

    // The same text without the image is another note: the text prompt, another vector.
    let (st, _) = s.put("a-text", &body(&note(0), None)).await;
    assert_eq!(st, StatusCode::CREATED);
    assert_close(&stored_vector(&store, "a-text").await, &model.text().embed(&[note(0)]).unwrap()[0], 1e-5);
    assert_eq!(s.get("/notes/a-text").await.1.get("image_sha256"), None);

    // A second note with the same image reuses the stored features: nothing is encoded.
    let (st, _) = s.put("b", &body(&note(1), Some(&img_a))).await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(s.metric("notellm_images_encoded_total").await, 1.0);
    assert_eq!(s.metric("notellm_image_features_reused_total").await, 1.0);
    assert_close(&stored_vector(&store, "b").await, &reference(&model, &note(1), &img_a), 1e-5);

    // Unchanged re-PUT: a no-op; another image: an update, with the new image.
    let (st, v) = s.put("a", &body(&note(0), Some(&img_a))).await;
    assert_eq!((st, v["status"].as_str()), (StatusCode::OK, Some("unchanged")), "{v}");
    let (st, v) = s.put("a", &body(&note(0), Some(&img_b))).await;
    assert_eq!((st, v["status"].as_str()), (StatusCode::OK, Some("updated")), "{v}");
    assert_eq!(s.get("/notes/a").await.1["image_sha256"], sha256_hex(&img_b));
    assert_close(&stored_vector(&store, "a").await, &reference(&model, &note(0), &img_b), 1e-5);

    // GET /related ranks image and text notes together, by the stored vectors.
    let (st, r) = s.get("/related/b?k=10").await;
    assert_eq!(st, StatusCode::OK, "{r}");
    let related = r["related"].as_array().unwrap();
    let ids: Vec<&str> = related.iter().map(|h| h["note_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2, "{r}");
    assert!(ids.contains(&"a") && ids.contains(&"a-text"), "{r}");
    let b_vec = stored_vector(&store, "b").await;
    for h in related {
        let other = stored_vector(&store, h["note_id"].as_str().unwrap()).await;
        let cos: f32 = b_vec.as_slice().iter().zip(other.as_slice()).map(|(x, y)| x * y).sum();
        assert!((h["score"].as_f64().unwrap() as f32 - cos).abs() < 1e-4, "{h} vs {cos}");
    }

    // Refused images: nothing is written.
    let refused = [
        (json!("not base64!"), StatusCode::UNPROCESSABLE_ENTITY, "invalid_image"),
        (json!(b64(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")), StatusCode::UNPROCESSABLE_ENTITY, "invalid_image"),
        (json!(b64(&png(3, 24)[..40])), StatusCode::UNPROCESSABLE_ENTITY, "invalid_image"),
        (json!(b64(&png(4, 200))), StatusCode::PAYLOAD_TOO_LARGE, "image_too_large"),
        (json!(""), StatusCode::UNPROCESSABLE_ENTITY, "invalid_image"),
    ];
    assert!(png(4, 200).len() > MAX_IMAGE_BYTES);
    for (image, status, code) in refused {
        let mut v = body(&note(2), None);
        v["image"] = image;
        let (st, e) = s.put("refused", &v).await;
        assert_eq!((st, e["error"]["code"].as_str()), (status, Some(code)), "{e}");
        assert_eq!(s.get("/notes/refused").await.0, StatusCode::NOT_FOUND);
    }
    // A draft is embedded by its text: `image` is refused there.
    let mut draft = body(&note(2), Some(&img_a));
    draft["k"] = json!(3);
    let r = s.http.post(s.url("/related")).json(&draft).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // The batch: image notes, a text note and a bad image, each with its own result.
    let mut items = vec![];
    for (i, image) in [(3, Some(png(5, 24))), (4, None), (5, Some(png(6, 24)))] {
        let mut v = body(&note(i), image.as_deref());
        v["note_id"] = json!(format!("n{i}"));
        items.push(v);
    }
    let mut bad = body(&note(6), None);
    bad["note_id"] = json!("n6");
    bad["image"] = json!(b64(b"\x89PNG\r\n\x1a\nbroken"));
    items.push(bad);
    let r = s.http.post(s.url("/notes:batch")).json(&json!({ "notes": items })).send().await.unwrap();
    let (st, v) = json_of(r).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let results = v["results"].as_array().unwrap();
    let statuses: Vec<&str> = results.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["created", "created", "created", "error"], "{v}");
    assert_eq!(results[3]["error"]["code"], "invalid_image");
    assert_close(&stored_vector(&store, "n3").await, &reference(&model, &note(3), &png(5, 24)), 1e-5);
    assert_close(&stored_vector(&store, "n5").await, &reference(&model, &note(5), &png(6, 24)), 1e-5);
    assert!(store.image(&id("n4")).await.unwrap().is_none());

    // A delete takes the image with it.
    let r = s.http.delete(s.url("/notes/n5")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(store.image(&id("n5")).await.unwrap().is_none());

    // A restart serves the same answers without any image sent again.
    let before = s.get("/related/b?k=10").await.1;
    s.stop().await;
    let s = start(&cfg).await;
    let after = s.get("/related/b?k=10").await.1;
    assert_eq!(before["related"], after["related"]);

    // A re-index to another connector on the same encoder embeds the image notes from their
    // stored features: the vectors are the new model's mICL embeddings of the original images.
    let next_dir = multimodal(dir.path(), "mm-b", 3, "mm-b");
    let next = MultimodalNoteLlm::load(&next_dir, &candle_core::Device::Cpu).unwrap();
    let (st, v) = reindex(&s, &next_dir).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{v}");
    let done = wait_reindex(&s).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(s.get("/related/b?k=10").await.1["model_version"], "mm-b");
    assert_close(&stored_vector(&store, "a").await, &reference(&next, &note(0), &img_b), 1e-5);
    assert_close(&stored_vector(&store, "b").await, &reference(&next, &note(1), &img_a), 1e-5);
    assert_close(&stored_vector(&store, "n4").await, &next.text().embed(&[note(4)]).unwrap()[0], 1e-5);

    // One with another encoder would need the images again: refused up front.
    let other = multimodal(dir.path(), "mm-c", 4, "mm-c");
    let (st, v) = reindex(&s, &other).await;
    assert_eq!((st, v["error"]["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_model")), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("encoder"), "{v}");
    store.close().await;
    s.stop().await;
}

async fn reindex(s: &Server, model: &Path) -> (StatusCode, Value) {
    let body = json!({ "model": model.display().to_string(), "batch_notes": 2 });
    json_of(s.http.post(s.url("/admin/reindex")).json(&body).send().await.unwrap()).await
}

async fn wait_reindex(s: &Server) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (st, v) = s.get("/admin/reindex").await;
        assert_eq!(st, StatusCode::OK, "{v}");
        if ["done", "failed", "cancelled"].contains(&v["state"].as_str().unwrap_or("")) {
            return v;
        }
        assert!(Instant::now() < deadline, "re-index did not finish: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

common::on_backend!(on_sqlite, Some(Backend::sqlite()), images_end_to_end);
common::on_backend!(on_postgres, Backend::postgres("nl_img").await, images_end_to_end);
common::on_backend!(on_pgvector, Backend::pgvector("nl_img_vec").await, images_end_to_end);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_only_checkpoint_refuses_images_and_keeps_serving_text() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = common::tiny_model(dir.path(), "text", Family::Llama, 1);
    let s = start(&config(&Backend::sqlite(), &model_dir, &dir.path().join("data"))).await;
    let (st, e) = s.put("a", &body(&note(0), Some(&png(1, 24)))).await;
    assert_eq!((st, e["error"]["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_request")), "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("multimodal"), "{e}");
    assert_eq!(s.get("/notes/a").await.0, StatusCode::NOT_FOUND);
    let (st, _) = s.put("a", &body(&note(0), None)).await;
    assert_eq!(st, StatusCode::CREATED);
    s.stop().await;
}

/// The batcher embeds a mixed queue of image and text notes (images encoded in the batch, or
/// from stored features) exactly as the model embeds each note alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batcher_embeds_image_notes_as_the_model_does_alone() {
    use notellm_service::batcher::{Batcher, ImageSource};
    let dir = tempfile::tempdir().unwrap();
    let model_dir = multimodal(dir.path(), "mm", 3, "mm");
    let model = MultimodalNoteLlm::load(&model_dir, &candle_core::Device::Cpu).unwrap();
    let pngs: Vec<Vec<u8>> = (0..4).map(|i| png(10 + i, 20 + 4 * i)).collect();
    let cfg = model.encoder().config().clone();
    let served = std::sync::Arc::new(notellm_model::ServedModel::from(
        MultimodalNoteLlm::load(&model_dir, &candle_core::Device::Cpu).unwrap(),
    ));
    let batcher = Batcher::spawn(
        served,
        BatcherConfig { max_wait: Duration::from_millis(20), ..Default::default() },
        notellm_service::metrics::Metrics::new().unwrap(),
    )
    .unwrap();
    let notes: Vec<Note> = (0..6).map(note).collect();
    let features_of = |png: &[u8]| {
        let img = image::load_from_memory(png).unwrap();
        let f = model.image_features(&[img]).unwrap().get(0).unwrap();
        f.to_dtype(candle_core::DType::F16).unwrap().to_dtype(candle_core::DType::F32).unwrap()
    };
    let source = |i: usize| -> Option<ImageSource> {
        match i {
            0 | 2 => Some(ImageSource::Pixels(cfg.pixels(&image::load_from_memory(&pngs[i]).unwrap()))),
            3 => Some(ImageSource::Features(features_of(&pngs[3]))),
            _ => None,
        }
    };
    let inputs: Vec<(&Note, Option<ImageSource>)> = notes.iter().enumerate().map(|(i, n)| (n, source(i))).collect();
    let out = batcher.embed_with_images(inputs).await;
    for (i, r) in out.into_iter().enumerate() {
        let (e, features) = r.unwrap();
        match i {
            0 | 2 | 3 => {
                assert_close(&e, &reference(&model, &notes[i], &pngs[i]), 1e-5);
                let f = features.expect("an image note answers its features");
                let want = features_of(&pngs[i]);
                let d: f32 = (f - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap();
                assert!(d < 1e-6, "features differ by {d}");
            }
            _ => {
                assert!(features.is_none());
                assert_close(&e, &model.text().embed(&notes[i..=i]).unwrap()[0], 1e-5);
            }
        }
    }
}
