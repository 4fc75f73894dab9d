//! The re-index's own thread: embeds chunks with the new model and inserts them into the new
//! index, never on the async runtime and at a lower priority than live embedding.
//!
//! Priority: a chunk waits until no live note is queued or being embedded
//! ([`Foreground::is_idle`]), then runs while no live batch does ([`Foreground::exclusive`]), so
//! a live write waits at most for one chunk. Under a load that never leaves the model idle a
//! chunk waits at most [`MAX_DEFER`], so that a saturated service still re-indexes, at about
//! one chunk per `MAX_DEFER`. While the switch holds writes, chunks do not yield: live notes
//! queued then are writes that will wait for the switch anyway.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::ReindexError;
use crate::batcher::Foreground;
use crate::metrics::Metrics;
use notellm_index::NoteIndex;
use notellm_model::NoteLlm;
use notellm_note::{Embedding, Note, NoteId};

/// Longest a chunk yields to live batches before it runs anyway.
pub const MAX_DEFER: Duration = Duration::from_secs(1);
/// How often a waiting chunk looks again.
const POLL: Duration = Duration::from_millis(2);

type Reply = Result<Vec<(NoteId, Embedding)>, ReindexError>;

struct Work {
    /// Notes to embed.
    embed: Vec<(NoteId, Note)>,
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
        model: Arc<NoteLlm>,
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
    pub(super) async fn run(
        &self,
        embed: Vec<(NoteId, Note)>,
        ready: Vec<(NoteId, Embedding)>,
        yield_to_live: bool,
    ) -> Reply {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Work { embed, ready, yield_to_live, reply })
            .map_err(|_| ReindexError::Internal("the re-index thread stopped".into()))?;
        rx.await.unwrap_or_else(|_| Err(ReindexError::Internal("the re-index thread stopped".into())))
    }
}

fn worker(rx: &Receiver<Work>, model: &NoteLlm, index: &NoteIndex, fg: &Foreground, m: &Metrics) {
    while let Ok(w) = rx.recv() {
        let result = chunk(w.embed, w.ready, w.yield_to_live, model, index, fg, m);
        let _ = w.reply.send(result);
    }
}

fn chunk(
    embed: Vec<(NoteId, Note)>,
    mut ready: Vec<(NoteId, Embedding)>,
    yield_to_live: bool,
    model: &NoteLlm,
    index: &NoteIndex,
    fg: &Foreground,
    m: &Metrics,
) -> Reply {
    let mut embedded = Vec::with_capacity(embed.len());
    if let Some((first, _)) = embed.first() {
        let waiting = Instant::now();
        while yield_to_live && !fg.is_idle() && waiting.elapsed() < MAX_DEFER {
            std::thread::sleep(POLL);
        }
        let notes: Vec<Note> = embed.iter().map(|(_, n)| n.clone()).collect();
        let _span = tracing::debug_span!("reindex_chunk", size = notes.len()).entered();
        let out = fg.exclusive(|| std::panic::catch_unwind(AssertUnwindSafe(|| model.embed(&notes))));
        let fail = |reason: String| ReindexError::Embed { id: first.to_string(), reason };
        let vectors = match out {
            Ok(Ok(v)) if v.len() == embed.len() => v,
            Ok(Ok(v)) => return Err(fail(format!("{} vectors for {} notes", v.len(), embed.len()))),
            Ok(Err(e)) => return Err(fail(e.to_string())),
            Err(_) => return Err(fail("the model panicked".into())),
        };
        m.reindex_embedded.inc_by(embed.len() as u64);
        embedded.extend(embed.into_iter().map(|(id, _)| id).zip(vectors));
    }
    ready.extend(embedded.iter().cloned());
    index.upsert_batch(&ready)?;
    Ok(embedded)
}
