//! The re-index's own thread: embeds chunks with the new model and inserts them into the new
//! index, never on the async runtime and at a lower priority than live embedding.
//!
//! Priority: a chunk waits until no live note is queued or being embedded
//! ([`Foreground::is_idle`]), then runs while no live batch does ([`Foreground::exclusive`]), so
//! a live write waits at most for one chunk. Under a load that never leaves the model idle a
//! chunk waits at most [`MAX_DEFER`], so that a saturated service still re-indexes, at about
//! one chunk per `MAX_DEFER`. While the switch holds writes, chunks do not yield: live notes
//! queued then are writes that will wait for the switch anyway.
//!
//! A note with an image comes with its stored image features; a multimodal checkpoint embeds
//! it with its mICL prompt (the image notes of a chunk in one pass), a text-only one with the
//! text prompt alone.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Tensor;
use tokio::sync::oneshot;

use super::ReindexError;
use crate::batcher::Foreground;
use crate::metrics::Metrics;
use notellm_index::NoteIndex;
use notellm_model::ServedModel;
use notellm_note::{Embedding, Note, NoteId};

/// Longest a chunk yields to live batches before it runs anyway.
pub const MAX_DEFER: Duration = Duration::from_secs(1);
/// How often a waiting chunk looks again.
const POLL: Duration = Duration::from_millis(2);

type Reply = Result<Vec<(NoteId, Embedding)>, ReindexError>;

/// A note to embed, with its image's stored features (`[tokens, width]`) when it has one.
pub(super) type ToEmbed = (NoteId, Note, Option<Tensor>);

struct Work {
    /// Notes to embed.
    embed: Vec<ToEmbed>,
    /// Vectors already at hand (reused from an earlier attempt): indexed only.
    ready: Vec<(NoteId, Embedding)>,
    /// Wait for the live path to be idle first.
    yield_to_live: bool,
    reply: oneshot::Sender<Reply>,
}

/// Handle to the thread; it stops when the handle is dropped.
pub(super) struct Embedder {
    /// Unbounded, but the job awaits each chunk before it sends the next: one at a time.
    tx: Sender<Work>,
}

impl Embedder {
    pub(super) fn spawn(
        model: Arc<ServedModel>,
        index: Arc<NoteIndex>,
        foreground: Arc<Foreground>,
        metrics: Metrics,
    ) -> Result<Self, ReindexError> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("notellm-reindex".into())
            .spawn(move || worker(&rx, &model, &index, &foreground, &metrics))
            .map_err(|e| ReindexError::Internal(format!("cannot start the re-index thread: {e}")))?;
        Ok(Self { tx })
    }

    /// Embeds `embed`, inserts those vectors and `ready` into the new index, and returns the
    /// embedded ones (in order). `yield_to_live`: wait (up to [`MAX_DEFER`]) for an idle moment.
    pub(super) async fn run(&self, embed: Vec<ToEmbed>, ready: Vec<(NoteId, Embedding)>, yield_to_live: bool) -> Reply {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Work { embed, ready, yield_to_live, reply })
            .map_err(|_| ReindexError::Internal("the re-index thread stopped".into()))?;
        rx.await.unwrap_or_else(|_| Err(ReindexError::Internal("the re-index thread stopped".into())))
    }
}

fn worker(rx: &Receiver<Work>, model: &ServedModel, index: &NoteIndex, fg: &Foreground, m: &Metrics) {
    while let Ok(w) = rx.recv() {
        let result = chunk(w.embed, w.ready, w.yield_to_live, model, index, fg, m);
        let _ = w.reply.send(result);
    }
}

fn chunk(
    embed: Vec<ToEmbed>,
    mut ready: Vec<(NoteId, Embedding)>,
    yield_to_live: bool,
    model: &ServedModel,
    index: &NoteIndex,
    fg: &Foreground,
    m: &Metrics,
) -> Reply {
    let mut embedded = Vec::with_capacity(embed.len());
    if let Some((first, _, _)) = embed.first() {
        let waiting = Instant::now();
        while yield_to_live && !fg.is_idle() && waiting.elapsed() < MAX_DEFER {
            std::thread::sleep(POLL);
        }
        let _span = tracing::debug_span!("reindex_chunk", size = embed.len()).entered();
        let out = fg.exclusive(|| std::panic::catch_unwind(AssertUnwindSafe(|| embed_notes(model, &embed))));
        let fail = |reason: String| ReindexError::Embed { id: first.to_string(), reason };
        let vectors = match out {
            Ok(Ok(v)) if v.len() == embed.len() => v,
            Ok(Ok(v)) => return Err(fail(format!("{} vectors for {} notes", v.len(), embed.len()))),
            Ok(Err(e)) => return Err(fail(e.to_string())),
            Err(_) => return Err(fail("the model panicked".into())),
        };
        m.reindex_embedded.inc_by(embed.len() as u64);
        embedded.extend(embed.into_iter().map(|(id, _, _)| id).zip(vectors));
    }
    ready.extend(embedded.iter().cloned());
    index.upsert_batch(&ready)?;
    Ok(embedded)
}

/// The new model's vectors of `embed`, in order: the text notes in one pass, the image notes
/// (a multimodal checkpoint) in another.
fn embed_notes(model: &ServedModel, embed: &[ToEmbed]) -> notellm_model::Result<Vec<Embedding>> {
    let (images, texts): (Vec<usize>, Vec<usize>) = match model.multimodal() {
        Some(_) => (0..embed.len()).partition(|&i| embed[i].2.is_some()),
        None => (Vec::new(), (0..embed.len()).collect()),
    };
    let mut out: Vec<Option<Embedding>> = vec![None; embed.len()];
    let notes: Vec<Note> = texts.iter().map(|&i| embed[i].1.clone()).collect();
    for (&i, e) in texts.iter().zip(model.embed(&notes)?) {
        out[i] = Some(e);
    }
    if let (Some(mm), false) = (model.multimodal(), images.is_empty()) {
        let ids = images.iter().map(|&i| mm.note_ids(&embed[i].1)).collect::<notellm_model::Result<Vec<_>>>()?;
        let features: Vec<Tensor> = images.iter().filter_map(|&i| embed[i].2.clone()).collect();
        let stacked = Tensor::stack(&features, 0)?.to_device(mm.encoder().device())?;
        for (&i, e) in images.iter().zip(mm.embed_ids(&ids, &stacked)?) {
            out[i] = Some(e);
        }
    }
    out.into_iter()
        .enumerate()
        .map(|(i, e)| e.ok_or_else(|| notellm_model::ModelError::Input(format!("note {i} of the chunk got no vector"))))
        .collect()
}
