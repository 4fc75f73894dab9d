//! The micro-batcher over the real (tiny) model: concurrent requests share batches and get the
//! same embeddings as direct calls; full queues refuse instead of growing.

mod common;

use std::sync::Arc;
use std::time::Duration;

use candle_core::Device;
use notellm_model::config::Family;
use notellm_model::{NoteLlm, ServedModel};
use notellm_service::batcher::{BatchError, Batcher, BatcherConfig, Queue};
use notellm_service::metrics::Metrics;

fn setup(dir: &std::path::Path, cfg: BatcherConfig) -> (Arc<ServedModel>, Batcher, Metrics) {
    let model = NoteLlm::load(&common::tiny_model(dir, "m", Family::Llama, 1), &Device::Cpu).unwrap();
    let model = Arc::new(ServedModel::from(model));
    let metrics = Metrics::new().unwrap();
    let b = Batcher::spawn(model.clone(), cfg, metrics.clone()).unwrap();
    (model, b, metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_batches_and_match_direct_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = BatcherConfig { max_wait: Duration::from_millis(20), ..Default::default() };
    let (model, batcher, metrics) = setup(dir.path(), cfg);
    let batcher = Arc::new(batcher);
    let notes: Vec<_> = common::notes(64, 21).into_iter().map(|(_, n)| n).collect();
    let tasks: Vec<_> = notes
        .iter()
        .cloned()
        .map(|n| {
            let b = batcher.clone();
            tokio::spawn(async move { b.embed(&n).await })
        })
        .collect();
    for (t, n) in tasks.into_iter().zip(&notes) {
        let got = t.await.unwrap().unwrap();
        let want = model.embed(std::slice::from_ref(n)).unwrap();
        let c = got.cosine(&want[0]);
        assert!(c >= 0.99999, "cosine {c}");
    }
    let batches = metrics.batch_size.get_sample_count();
    let notes_seen = metrics.batch_size.get_sample_sum();
    assert_eq!(notes_seen as usize, 64);
    assert!(batches < 64, "64 concurrent requests ran in {batches} batches: no batching happened");
    assert_eq!(metrics.embedded_notes.get(), 64);
    assert_eq!(metrics.queue_depth.with_label_values(&["embed"]).get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_generation_queue_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = BatcherConfig { gen_queue_capacity: 1, gen_workers: 1, ..Default::default() };
    let (_m, batcher, metrics) = setup(dir.path(), cfg);
    let note = common::notes(1, 2).remove(0).1;
    let calls: Vec<_> = (0..12).map(|_| batcher.suggest(note.clone(), 3)).collect();
    let results = futures_join_all(calls).await;
    let refused = results.iter().filter(|r| matches!(r, Err(BatchError::QueueFull { queue: Queue::Generate }))).count();
    let served = results.iter().filter(|r| r.is_ok()).count();
    assert!(refused >= 9 && served >= 1 && refused + served == 12, "refused {refused}, served {served}");
    assert_eq!(metrics.queue_rejected.with_label_values(&["generate"]).get() as usize, refused);
}

#[tokio::test]
async fn a_note_that_can_never_fit_is_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = BatcherConfig { max_batch_tokens: 20, ..Default::default() };
    let (_m, batcher, _) = setup(dir.path(), cfg);
    let note = common::notes(1, 2).remove(0).1;
    match batcher.embed(&note).await {
        Err(BatchError::TooLong { max: 20, tokens }) => assert!(tokens > 20),
        other => panic!("{other:?}"),
    }
}

/// Polls all futures concurrently in one task (each first poll happens before any completes).
async fn futures_join_all<F: std::future::Future>(fs: Vec<F>) -> Vec<F::Output> {
    let mut handles = Vec::new();
    let mut fs: Vec<_> = fs.into_iter().map(Box::pin).collect();
    let mut done: Vec<Option<F::Output>> = fs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, d) in fs.iter_mut().zip(done.iter_mut()) {
            if d.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *d = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    handles.extend(done.into_iter().map(|d| d.expect("all done")));
    handles
}
