//! Micro-batching in front of the model.
//!
//! Embedding: a bounded queue feeds one inference thread (never the async runtime). The thread
//! drains what is queued into a window of up to four batches (waiting at most `max_wait` while
//! it holds less than one batch), sorts the window by length, and cuts it into batches of at most
//! `max_batch_notes` and the padded token budget `max_batch_tokens` (`longest x count`, since a
//! batch is padded): similar lengths share a batch, so little compute goes to padding, as in
//! `notellm embed`. One batch runs at a time, so under load batches grow by themselves (TEI's
//! lesson: no fixed time window is needed; `max_wait` only helps a trickle). A request whose
//! client went away before its batch started is dropped. A request that can never fit the
//! budget is refused up front.
//!
//! Generation (`/suggest-tags`) has its own bounded queue and worker threads (its concurrency
//! limit), so slow generation never holds up embedding.
//!
//! A full queue is an immediate error (the caller answers 503/429 with `Retry-After`), never
//! unbounded memory and never a panic.
//!
//! Background embedding (a re-index) shares the cores through [`Foreground`]: it runs a chunk
//! only while no live note is queued or being embedded, and never at the same time as a live
//! batch, so live writes wait at most for one background chunk.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::metrics::Metrics;
use notellm_model::{batching, GenerateOptions, NoteLlm, Suggestion};
use notellm_note::{Embedding, Note};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatcherConfig {
    pub max_batch_notes: usize,
    /// Padded tokens per batch (`longest x count`).
    pub max_batch_tokens: usize,
    pub max_wait: Duration,
    pub queue_capacity: usize,
    pub gen_queue_capacity: usize,
    /// Generation worker threads: the number of `/suggest-tags` requests running at once.
    pub gen_workers: usize,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        Self {
            max_batch_notes: 32,
            max_batch_tokens: 8192,
            max_wait: Duration::from_millis(2),
            queue_capacity: 1024,
            gen_queue_capacity: 16,
            gen_workers: 1,
        }
    }
}

/// The batcher's two bounded queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// Notes waiting to be embedded.
    Embed,
    /// Notes waiting for hashtags and a category.
    Generate,
}

impl Queue {
    /// The `queue` label of the batcher's metrics.
    pub fn label(self) -> &'static str {
        match self {
            Queue::Embed => "embed",
            Queue::Generate => "generate",
        }
    }
}

impl std::fmt::Display for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Queue::Embed => "embedding",
            Queue::Generate => "generation",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("the {queue} queue is full")]
    QueueFull { queue: Queue },
    #[error("the note is {tokens} tokens long; at most {max} fit in a batch")]
    TooLong { tokens: usize, max: usize },
    #[error("the note cannot be embedded: {0}")]
    Input(String),
    #[error("inference failed: {0}")]
    Model(String),
    #[error("the inference worker has stopped")]
    Closed,
}

/// How busy the live embedding path is, for background work that must yield to it.
#[derive(Debug, Default)]
pub struct Foreground {
    /// Live notes queued or being embedded.
    pending: AtomicUsize,
    /// Held while a batch runs, live or background: the two never compete for the cores.
    compute: Mutex<()>,
}

impl Foreground {
    /// No live note is queued or being embedded.
    pub fn is_idle(&self) -> bool {
        self.pending.load(Ordering::SeqCst) == 0
    }

    /// Runs `f` (one batch's inference) while no other batch runs.
    pub fn exclusive<T>(&self, f: impl FnOnce() -> T) -> T {
        // A batch that panicked leaves nothing behind the lock to repair.
        let _g = self.compute.lock().unwrap_or_else(|e| e.into_inner());
        f()
    }

    fn done(&self, n: usize) {
        // Never below zero, whatever the order of increments and decrements.
        let _ = self.pending.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| Some(p.saturating_sub(n)));
    }
}

/// Queued notes drained into one sorting window, in batches.
const WINDOW_BATCHES: usize = 4;

struct EmbedJob {
    ids: Vec<u32>,
    reply: oneshot::Sender<Result<Embedding, BatchError>>,
    enqueued: Instant,
}

struct GenJob {
    note: Note,
    max_hashtags: usize,
    reply: oneshot::Sender<Result<Suggestion, BatchError>>,
}

/// Handle to the inference threads; cheap to share behind an `Arc`.
pub struct Batcher {
    embed_tx: SyncSender<EmbedJob>,
    gen_tx: SyncSender<GenJob>,
    model: Arc<NoteLlm>,
    cfg: BatcherConfig,
    metrics: Metrics,
    alive: Arc<AtomicBool>,
    foreground: Arc<Foreground>,
}

impl Batcher {
    pub fn spawn(model: Arc<NoteLlm>, cfg: BatcherConfig, metrics: Metrics) -> std::io::Result<Self> {
        let (embed_tx, embed_rx) = mpsc::sync_channel(cfg.queue_capacity.max(1));
        let (gen_tx, gen_rx) = mpsc::sync_channel(cfg.gen_queue_capacity.max(1));
        let alive = Arc::new(AtomicBool::new(true));
        let foreground = Arc::new(Foreground::default());
        {
            let (model, cfg, metrics, alive) = (model.clone(), cfg.clone(), metrics.clone(), alive.clone());
            let fg = foreground.clone();
            std::thread::Builder::new().name("notellm-embed".into()).spawn(move || {
                embed_worker(embed_rx, &model, &cfg, &metrics, &fg);
                alive.store(false, Ordering::SeqCst);
            })?;
        }
        let gen_rx = Arc::new(Mutex::new(gen_rx));
        for i in 0..cfg.gen_workers.max(1) {
            let (model, metrics, rx) = (model.clone(), metrics.clone(), gen_rx.clone());
            std::thread::Builder::new()
                .name(format!("notellm-gen-{i}"))
                .spawn(move || gen_worker(&rx, &model, &metrics))?;
        }
        Ok(Self { embed_tx, gen_tx, model, cfg, metrics, alive, foreground })
    }

    pub fn model(&self) -> &NoteLlm {
        &self.model
    }

    /// The live embedding path's load, for background work that yields to it.
    pub fn foreground(&self) -> Arc<Foreground> {
        self.foreground.clone()
    }

    pub fn config(&self) -> &BatcherConfig {
        &self.cfg
    }

    /// Whether the embedding thread is running.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Tokenises `note` and queues it; checks that it can ever fit a batch.
    fn enqueue(&self, note: &Note) -> Result<oneshot::Receiver<Result<Embedding, BatchError>>, BatchError> {
        let ids = self.model.embedding_ids(note).map_err(|e| BatchError::Input(e.to_string()))?;
        if ids.len() > self.cfg.max_batch_tokens {
            return Err(BatchError::TooLong { tokens: ids.len(), max: self.cfg.max_batch_tokens });
        }
        let (reply, rx) = oneshot::channel();
        // Counted before it is queued: the worker may answer it before try_send returns.
        self.foreground.pending.fetch_add(1, Ordering::SeqCst);
        match self.embed_tx.try_send(EmbedJob { ids, reply, enqueued: Instant::now() }) {
            Ok(()) => {
                self.metrics.queue_depth.with_label_values(&[Queue::Embed.label()]).inc();
                Ok(rx)
            }
            Err(TrySendError::Full(_)) => {
                self.foreground.done(1);
                self.metrics.queue_rejected.with_label_values(&[Queue::Embed.label()]).inc();
                Err(BatchError::QueueFull { queue: Queue::Embed })
            }
            Err(TrySendError::Disconnected(_)) => {
                self.foreground.done(1);
                Err(BatchError::Closed)
            }
        }
    }

    /// Embeds one note through the micro-batcher.
    pub async fn embed(&self, note: &Note) -> Result<Embedding, BatchError> {
        let rx = self.enqueue(note)?;
        rx.await.unwrap_or(Err(BatchError::Closed))
    }

    /// Embeds several notes; they join the queue together and share batches. One result each.
    pub async fn embed_many(&self, notes: &[Note]) -> Vec<Result<Embedding, BatchError>> {
        let queued: Vec<_> = notes.iter().map(|n| self.enqueue(n)).collect();
        let mut out = Vec::with_capacity(queued.len());
        for q in queued {
            out.push(match q {
                Ok(rx) => rx.await.unwrap_or(Err(BatchError::Closed)),
                Err(e) => Err(e),
            });
        }
        out
    }

    /// Generates hashtags and a category on a generation worker.
    pub async fn suggest(&self, note: Note, max_hashtags: usize) -> Result<Suggestion, BatchError> {
        let (reply, rx) = oneshot::channel();
        match self.gen_tx.try_send(GenJob { note, max_hashtags, reply }) {
            Ok(()) => self.metrics.queue_depth.with_label_values(&[Queue::Generate.label()]).inc(),
            Err(TrySendError::Full(_)) => {
                self.metrics.queue_rejected.with_label_values(&[Queue::Generate.label()]).inc();
                return Err(BatchError::QueueFull { queue: Queue::Generate });
            }
            Err(TrySendError::Disconnected(_)) => return Err(BatchError::Closed),
        }
        rx.await.unwrap_or(Err(BatchError::Closed))
    }
}

/// Forms batches from the queue and runs them until every sender is gone.
fn embed_worker(rx: Receiver<EmbedJob>, model: &NoteLlm, cfg: &BatcherConfig, m: &Metrics, fg: &Foreground) {
    let depth = m.queue_depth.with_label_values(&[Queue::Embed.label()]);
    let dropped = m.requests_dropped.with_label_values(&[Queue::Embed.label(), "client_gone"]);
    let batch_notes = cfg.max_batch_notes.max(1);
    let cap = batch_notes * WINDOW_BATCHES;
    while let Ok(first) = rx.recv() {
        depth.dec();
        // Drain what is queued into one window, waiting up to max_wait only while it holds less
        // than a batch.
        let mut window = vec![first];
        let deadline = Instant::now() + cfg.max_wait;
        while window.len() < cap {
            let next = match rx.try_recv() {
                Ok(j) => j,
                Err(mpsc::TryRecvError::Disconnected) => break,
                Err(mpsc::TryRecvError::Empty) if window.len() >= batch_notes => break,
                Err(mpsc::TryRecvError::Empty) => {
                    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                        Ok(j) => j,
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                    }
                }
            };
            depth.dec();
            window.push(next);
        }
        // Similar lengths together, then cut by the budget: little padding per batch.
        let lens: Vec<usize> = window.iter().map(|j| j.ids.len()).collect();
        let mut jobs: Vec<Option<EmbedJob>> = window.into_iter().map(Some).collect();
        for indices in batching::by_length(&lens, batch_notes, cfg.max_batch_tokens) {
            let mut batch: Vec<EmbedJob> = indices.iter().filter_map(|&i| jobs[i].take()).collect();
            batch.retain(|j| {
                let gone = j.reply.is_closed();
                if gone {
                    dropped.inc();
                    fg.done(1);
                }
                !gone
            });
            if !batch.is_empty() {
                let n = batch.len();
                fg.exclusive(|| run_batch(batch, model, m));
                fg.done(n);
            }
        }
    }
    tracing::info!("embedding worker stopped");
}

/// Runs one batch, sorted by length (`batching::by_length`).
fn run_batch(mut batch: Vec<EmbedJob>, model: &NoteLlm, m: &Metrics) {
    let n = batch.len();
    let real: usize = batch.iter().map(|j| j.ids.len()).sum();
    let padded = batch.last().map_or(0, |j| j.ids.len()) * n;
    let waited = batch.first().map_or(0.0, |j| j.enqueued.elapsed().as_secs_f64());
    let span = tracing::debug_span!("batch", size = n, tokens = padded, waited_ms = waited * 1e3);
    let _e = span.enter();
    let seqs: Vec<Vec<u32>> = batch.iter_mut().map(|j| std::mem::take(&mut j.ids)).collect();
    let started = Instant::now();
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| model.embed_ids(&seqs)));
    let secs = started.elapsed().as_secs_f64();
    m.batch_size.observe(n as f64);
    m.batch_tokens.observe(padded as f64);
    m.batch_padding.observe(if padded == 0 { 0.0 } else { 1.0 - real as f64 / padded as f64 });
    m.inference_duration.observe(secs);
    tracing::debug!(secs, "batch done");
    match result {
        Ok(Ok(embs)) => {
            m.embedded_notes.inc_by(n as u64);
            for (job, e) in batch.into_iter().zip(embs) {
                let _ = job.reply.send(Ok(e));
            }
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "embedding batch failed");
            for job in batch {
                let _ = job.reply.send(Err(BatchError::Model(e.to_string())));
            }
        }
        Err(_) => {
            tracing::error!("embedding batch panicked");
            for job in batch {
                let _ = job.reply.send(Err(BatchError::Model("internal error".into())));
            }
        }
    }
}

fn gen_worker(rx: &Mutex<Receiver<GenJob>>, model: &NoteLlm, m: &Metrics) {
    let depth = m.queue_depth.with_label_values(&[Queue::Generate.label()]);
    let dropped = m.requests_dropped.with_label_values(&[Queue::Generate.label(), "client_gone"]);
    loop {
        let job = {
            let Ok(guard) = rx.lock() else { return };
            match guard.recv() {
                Ok(j) => j,
                Err(_) => return,
            }
        };
        depth.dec();
        if job.reply.is_closed() {
            dropped.inc();
            continue;
        }
        let _span = tracing::debug_span!("generate", max_hashtags = job.max_hashtags).entered();
        let started = Instant::now();
        let opts = GenerateOptions::default();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| model.suggest(&job.note, job.max_hashtags, &opts)));
        m.generation_duration.observe(started.elapsed().as_secs_f64());
        let reply = match result {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(BatchError::Model(e.to_string())),
            Err(_) => Err(BatchError::Model("internal error".into())),
        };
        let _ = job.reply.send(reply);
    }
}
