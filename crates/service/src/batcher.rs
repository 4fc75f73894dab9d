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
//! A note with an image (a multimodal checkpoint) queues with its image: the encoder's stored
//! features (the image was seen before) or the encoder's input pixels. Such notes batch among
//! themselves, cut by the same budgets over their whole mICL sequences: the batch's new images
//! go through the frozen encoder together, then every note runs its mICL prompt with its
//! image's features, and each answer carries those features for the store.
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

use candle_core::Tensor;
use tokio::sync::oneshot;

use crate::metrics::Metrics;
use notellm_model::multimodal::MultimodalNoteLlm;
use notellm_model::{batching, GenerateOptions, ServedModel, Suggestion};
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

/// A note's image as the batcher takes it.
pub enum ImageSource {
    /// The encoder's features (`[tokens, width]`, before its final norm), stored earlier.
    Features(Tensor),
    /// The encoder's input (`VisionConfig::pixels`): encoded in the batch.
    Pixels(Vec<f32>),
}

/// What an embedding job answers: the embedding, with the image's features for an image note.
type Embedded = (Embedding, Option<Tensor>);

struct EmbedJob {
    /// The prompt's ids: the text prompt, or the note half of the mICL prompt.
    ids: Vec<u32>,
    /// Input vectors the job costs in a batch (`ids.len()`, or the whole mICL sequence).
    len: usize,
    image: Option<ImageSource>,
    reply: oneshot::Sender<Result<Embedded, BatchError>>,
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
    model: Arc<ServedModel>,
    cfg: BatcherConfig,
    metrics: Metrics,
    alive: Arc<AtomicBool>,
    foreground: Arc<Foreground>,
}

impl Batcher {
    pub fn spawn(model: Arc<ServedModel>, cfg: BatcherConfig, metrics: Metrics) -> std::io::Result<Self> {
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
        // A sentence encoder cannot generate: no generation worker, and `suggest` refuses.
        let gen_workers = if model.text().is_some() { cfg.gen_workers.max(1) } else { 0 };
        for i in 0..gen_workers {
            let (model, metrics, rx) = (model.clone(), metrics.clone(), gen_rx.clone());
            std::thread::Builder::new()
                .name(format!("notellm-gen-{i}"))
                .spawn(move || gen_worker(&rx, &model, &metrics))?;
        }
        Ok(Self { embed_tx, gen_tx, model, cfg, metrics, alive, foreground })
    }

    /// Whether the model can generate hashtags and a category (it has an LLM).
    pub fn can_generate(&self) -> bool {
        self.model.text().is_some()
    }

    /// The checkpoint served, with its multimodal parts when it has them.
    pub fn served(&self) -> &ServedModel {
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

    /// Tokenises `note` and queues it (with its image, for a multimodal checkpoint); checks
    /// that it can ever fit a batch.
    fn enqueue(
        &self,
        note: &Note,
        image: Option<ImageSource>,
    ) -> Result<oneshot::Receiver<Result<Embedded, BatchError>>, BatchError> {
        let input = |e: notellm_model::ModelError| BatchError::Input(e.to_string());
        let (ids, len) = match (&image, self.model.multimodal()) {
            (None, _) => {
                let ids = self.model.embedding_ids(note).map_err(input)?;
                let len = ids.len();
                (ids, len)
            }
            (Some(_), Some(mm)) => {
                let ids = mm.note_ids(note).map_err(input)?;
                let len = mm.seq_len(ids.len());
                (ids, len)
            }
            (Some(_), None) => {
                return Err(BatchError::Input(format!(
                    "model {} is text-only and takes no images",
                    self.model.version()
                )))
            }
        };
        if len > self.cfg.max_batch_tokens {
            return Err(BatchError::TooLong { tokens: len, max: self.cfg.max_batch_tokens });
        }
        let (reply, rx) = oneshot::channel();
        // Counted before it is queued: the worker may answer it before try_send returns.
        self.foreground.pending.fetch_add(1, Ordering::SeqCst);
        match self.embed_tx.try_send(EmbedJob { ids, len, image, reply, enqueued: Instant::now() }) {
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
        let rx = self.enqueue(note, None)?;
        Ok(rx.await.unwrap_or(Err(BatchError::Closed))?.0)
    }

    /// Embeds several notes; they join the queue together and share batches. One result each.
    pub async fn embed_many(&self, notes: &[Note]) -> Vec<Result<Embedding, BatchError>> {
        let inputs = notes.iter().map(|n| (n, None)).collect();
        self.embed_inputs(inputs).await.into_iter().map(|r| r.map(|(e, _)| e)).collect()
    }

    /// Embeds several notes, each with its image when it has one (a multimodal checkpoint); an
    /// image note's answer carries its image's features. One result each, in order.
    pub async fn embed_with_images(
        &self,
        notes: Vec<(&Note, Option<ImageSource>)>,
    ) -> Vec<Result<(Embedding, Option<Tensor>), BatchError>> {
        self.embed_inputs(notes).await
    }

    async fn embed_inputs(&self, notes: Vec<(&Note, Option<ImageSource>)>) -> Vec<Result<Embedded, BatchError>> {
        let queued: Vec<_> = notes.into_iter().map(|(n, image)| self.enqueue(n, image)).collect();
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
        if !self.can_generate() {
            return Err(BatchError::Input(format!(
                "model {} is a sentence encoder and cannot generate hashtags or a category; its suggestions come \
                 from the nearest notes' vote (--suggest-from neighbours)",
                self.model.version()
            )));
        }
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
fn embed_worker(rx: Receiver<EmbedJob>, model: &ServedModel, cfg: &BatcherConfig, m: &Metrics, fg: &Foreground) {
    let depth = m.queue_depth.with_label_values(&[Queue::Embed.label()]);
    let cap = cfg.max_batch_notes.max(1) * WINDOW_BATCHES;
    let batch_notes = cfg.max_batch_notes.max(1);
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
        // Text notes and image notes batch apart (two prompts); within each, similar lengths
        // together, then cut by the budget: little padding per batch.
        let (images, texts): (Vec<EmbedJob>, Vec<EmbedJob>) = window.into_iter().partition(|j| j.image.is_some());
        for group in [texts, images] {
            if !group.is_empty() {
                run_group(group, model, cfg, m, fg);
            }
        }
    }
    tracing::info!("embedding worker stopped");
}

/// Cuts one kind of job (all text, or all image notes) into batches and runs them.
fn run_group(group: Vec<EmbedJob>, model: &ServedModel, cfg: &BatcherConfig, m: &Metrics, fg: &Foreground) {
    let dropped = m.requests_dropped.with_label_values(&[Queue::Embed.label(), "client_gone"]);
    let batch_notes = cfg.max_batch_notes.max(1);
    let lens: Vec<usize> = group.iter().map(|j| j.len).collect();
    let mut jobs: Vec<Option<EmbedJob>> = group.into_iter().map(Some).collect();
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
            match model.multimodal() {
                Some(mm) if batch[0].image.is_some() => fg.exclusive(|| run_image_batch(batch, mm, m)),
                _ => fg.exclusive(|| run_batch(batch, model, m)),
            }
            fg.done(n);
        }
    }
}

/// Runs one batch, sorted by length (`batching::by_length`).
fn run_batch(mut batch: Vec<EmbedJob>, model: &ServedModel, m: &Metrics) {
    let n = batch.len();
    let real: usize = batch.iter().map(|j| j.len).sum();
    let padded = batch.last().map_or(0, |j| j.len) * n;
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
                let _ = job.reply.send(Ok((e, None)));
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

/// Runs one batch of image notes: the images without stored features through the encoder
/// together, then every note's mICL prompt with its image's features.
fn run_image_batch(batch: Vec<EmbedJob>, model: &MultimodalNoteLlm, m: &Metrics) {
    let n = batch.len();
    let padded = batch.last().map_or(0, |j| j.len) * n;
    let waited = batch.first().map_or(0.0, |j| j.enqueued.elapsed().as_secs_f64());
    let fresh = batch.iter().filter(|j| matches!(j.image, Some(ImageSource::Pixels(_)))).count();
    let span =
        tracing::debug_span!("image_batch", size = n, tokens = padded, encoded = fresh, waited_ms = waited * 1e3);
    let _e = span.enter();
    let started = Instant::now();
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| image_batch(&batch, model)));
    let secs = started.elapsed().as_secs_f64();
    m.batch_size.observe(n as f64);
    m.batch_tokens.observe(padded as f64);
    m.inference_duration.observe(secs);
    tracing::debug!(secs, "image batch done");
    match result {
        Ok(Ok((embs, features))) => {
            m.embedded_notes.inc_by(n as u64);
            m.images_encoded.inc_by(fresh as u64);
            for ((job, e), f) in batch.into_iter().zip(embs).zip(features) {
                let _ = job.reply.send(Ok((e, Some(f))));
            }
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "image embedding batch failed");
            for job in batch {
                let _ = job.reply.send(Err(BatchError::Model(e.to_string())));
            }
        }
        Err(_) => {
            tracing::error!("image embedding batch panicked");
            for job in batch {
                let _ = job.reply.send(Err(BatchError::Model("internal error".into())));
            }
        }
    }
}

/// The embeddings of a batch of image notes and each image's features (`[tokens, width]`).
fn image_batch(batch: &[EmbedJob], model: &MultimodalNoteLlm) -> notellm_model::Result<(Vec<Embedding>, Vec<Tensor>)> {
    let enc = model.encoder();
    let s = enc.config().image_size;
    let pixels: Vec<&[f32]> = batch
        .iter()
        .filter_map(|j| match &j.image {
            Some(ImageSource::Pixels(p)) => Some(p.as_slice()),
            _ => None,
        })
        .collect();
    let mut encoded = if pixels.is_empty() {
        Vec::new()
    } else {
        let flat: Vec<f32> = pixels.concat();
        let input = Tensor::from_vec(flat, (pixels.len(), 3, s, s), enc.device())?;
        // Rounded to f16 as the store keeps them: a note embeds alike whether its image's
        // features were just computed or read back (a reuse, a re-index).
        let hidden = enc
            .forward(&input)?
            .hidden
            .to_device(&candle_core::Device::Cpu)?
            .to_dtype(candle_core::DType::F16)?
            .to_dtype(candle_core::DType::F32)?;
        (0..pixels.len()).map(|i| hidden.get(i)).collect::<candle_core::Result<Vec<_>>>()?
    }
    .into_iter();
    let mut features = Vec::with_capacity(batch.len());
    for job in batch {
        features.push(match &job.image {
            Some(ImageSource::Features(f)) => f.clone(),
            _ => encoded
                .next()
                .ok_or_else(|| notellm_model::ModelError::Input("an image note lost its pixels".into()))?,
        });
    }
    let stacked = Tensor::stack(&features, 0)?.to_device(enc.device())?;
    let ids: Vec<Vec<u32>> = batch.iter().map(|j| j.ids.clone()).collect();
    Ok((model.embed_ids(&ids, &stacked)?, features))
}

fn gen_worker(rx: &Mutex<Receiver<GenJob>>, model: &ServedModel, m: &Metrics) {
    let Some(model) = model.text() else { return };
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
