//! The service core (layer rule: over `notellm-store`, `notellm-index` and `notellm-model`;
//! nothing here knows HTTP): every operation the HTTP layer offers, over the store (source of truth),
//! the HNSW index (a cache of it) and the micro-batcher (the model). `api/` is a thin transport
//! over this.
//!
//! The parts, one idea each: [`App`] (this file: the operations), the write gate (`gate.rs`:
//! the write-ordering rule, the dirty flag), the serving slot (`serving.rs`: what serves and its
//! epoch), the restore (`restore.rs`), `/suggest-tags` (`suggest.rs`), the answer cache
//! (`related_cache.rs`), the micro-batcher (`batcher.rs`), and the re-index (`reindex/`), which
//! drives an `App` through its methods only.
//!
//! Write ordering. A write embeds first (outside any lock), then, inside the write gate (its
//! notes' stripes and the gate's shared side), commits to the store and updates the index. Two
//! writes of one note therefore reach store and index in the same order, and a snapshot (which
//! holds the gate's exclusive side) sees an index that holds exactly the store's changes up to
//! the seq it is tagged with.
//!
//! What serves is one [`Serving`] (model version, batcher, index, snapshot folder), swapped whole
//! by a restore or a re-index, and only while the gate is held. A request takes the current
//! `Serving` once, so its answer comes from one model version; a write that embedded with a
//! model that was switched out before it entered the gate embeds again with the new one. The
//! store checks the version too, at commit: a write embedded by a model that another process's
//! re-index replaced is refused, and embeds again once this process serves the new model
//! (`follow.rs`), or is answered 503 when it cannot.
//!
//! `GET /related` answers are cached per (note, k) for one generation of what serves
//! (`related_cache.rs`): the serving epoch (incremented by every swap) and the index's version
//! (incremented around every index write), so a cached answer is always the one a new search
//! would give.

pub mod batcher;
mod error;
mod follow;
mod gate;
pub mod metrics;
pub mod reindex;
mod related_cache;
mod restore;
mod serving;
mod suggest;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;

pub use error::{AppError, Conflict};
pub use follow::{FollowConfig, FollowStatus, HEARTBEAT_TIMEOUT};
pub use notellm_model::image_input::{ImageError, ImageLimits};
pub use reindex::{ReindexError, ReindexRequest, ReindexState, ReindexStatus, Reindexer};
pub use related_cache::{CacheMetrics, Generation, RelatedCache, RelatedKey};
pub use serving::{snapshot_dir, IndexBackend, Serving, ServingTemplate, Vectors};
pub use suggest::{
    SuggestConfig, SuggestFrom, Suggested, SuggestionSource, DEFAULT_SUGGEST_FLOOR, DEFAULT_SUGGEST_MIN_SHARE,
    DEFAULT_SUGGEST_NEIGHBOURS, DEFAULT_SUGGEST_TEMPERATURE, DEFAULT_VOTE_RULE, MAX_SUGGEST_NEIGHBOURS,
};

use crate::batcher::ImageSource;
use crate::follow::Follow;
use crate::gate::{Held, WriteGate};
use crate::metrics::Metrics;
use crate::serving::ServingSlot;
use notellm_index::{Hit, NoteIndex};
use notellm_model::features::{from_f16_bytes, to_f16_bytes};
use notellm_model::image_input::ImageInput;
use notellm_note::{Embedding, ModelVersion, Note, NoteId, NoteLimits};
use notellm_store::{content_hash_with_image, NoteWrite, Store, StoreError, StoredImage, StoredNote};

/// `--related-cache-entries`' default: about 70 MB of answers at k = 20.
pub const DEFAULT_RELATED_CACHE_ENTRIES: usize = 65_536;

/// Most times one write is embedded: each retry follows a switch of the serving model that
/// happened while it was embedded (switches take a whole re-index each, so one retry is the rule).
const MAX_WRITE_ATTEMPTS: usize = 4;

/// Limits on what clients may send (validated in `api/`, enforced here too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceLimits {
    pub max_k: usize,
    pub max_notes_per_batch: usize,
    /// The bounds of every note written (HTTP and `notellm ingest`).
    pub note: NoteLimits,
    pub max_suggest_hashtags: usize,
    /// The bounds of a note's image.
    pub image: ImageLimits,
}

/// `--max-image-bytes`' default: an image this size, in base64, fits the default 1 MiB body.
pub const DEFAULT_MAX_IMAGE_BYTES: usize = 512 << 10;

impl Default for ServiceLimits {
    fn default() -> Self {
        Self {
            max_k: 1000,
            max_notes_per_batch: 256,
            note: NoteLimits::default(),
            max_suggest_hashtags: 10,
            image: ImageLimits { max_bytes: DEFAULT_MAX_IMAGE_BYTES, ..ImageLimits::default() },
        }
    }
}

/// A note to write: its id, its text and, for a multimodal checkpoint, its checked image.
#[derive(Debug, Clone)]
pub struct NoteUpload {
    pub id: NoteId,
    pub note: Note,
    pub image: Option<Arc<ImageInput>>,
}

impl NoteUpload {
    /// A note without an image.
    pub fn text(id: NoteId, note: Note) -> Self {
        Self { id, note, image: None }
    }
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteStatus {
    Created,
    Updated,
    Unchanged,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PutOutcome {
    pub note_id: NoteId,
    pub status: WriteStatus,
    /// The store's change sequence of this write (absent when unchanged).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
    pub model_version: ModelVersion,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RelatedNote {
    pub note_id: NoteId,
    pub score: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Related {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note_id: Option<NoteId>,
    pub model_version: ModelVersion,
    pub related: Vec<RelatedNote>,
}

/// How an [`App`] serves: the settings that are not its parts.
#[derive(Debug, Clone, Default)]
pub struct AppOptions {
    pub limits: ServiceLimits,
    /// Most `GET /related` answers cached (0: no cache).
    pub related_cache_entries: usize,
    pub suggest: SuggestConfig,
    /// Replica mode (`follow.rs`); `None`: this process is the store's only writer.
    pub follow: Option<FollowConfig>,
}

pub struct App {
    pub store: Store,
    /// Swapped whole when restored or re-indexed; readers clone the `Arc`.
    serving: ServingSlot,
    /// `GET /related` answers (JSON bodies) by (note, k), for one generation.
    related_cache: RelatedCache<Bytes>,
    /// How to build a `Serving` for another checkpoint.
    template: ServingTemplate,
    pub metrics: Metrics,
    pub limits: ServiceLimits,
    /// How `/suggest-tags` answers (`suggest.rs`).
    suggest: SuggestConfig,
    gate: WriteGate,
    /// The index is restored and writes are accepted.
    ready: AtomicBool,
    /// A background rebuild of the index (too many tombstones) is running.
    rebuilding: Arc<AtomicBool>,
    /// The last write failed because the store is out of space (cleared by the next write that
    /// succeeds); `/readyz` says so while reads go on.
    storage_full: AtomicBool,
    /// Replica mode: following the other replicas' writes (`follow.rs`).
    follow: Follow,
}

impl App {
    pub fn new(store: Store, serving: Serving, template: ServingTemplate, metrics: Metrics, opts: AppOptions) -> Self {
        let AppOptions { limits, related_cache_entries, suggest, follow } = opts;
        let cache_metrics = CacheMetrics {
            hits: metrics.related_cache_hits.clone(),
            misses: metrics.related_cache_misses.clone(),
            entries: metrics.related_cache_entries.clone(),
        };
        Self {
            store,
            serving: ServingSlot::new(serving),
            related_cache: RelatedCache::new(related_cache_entries, cache_metrics),
            template,
            metrics,
            limits,
            suggest,
            gate: WriteGate::new(),
            ready: AtomicBool::new(false),
            rebuilding: Arc::new(AtomicBool::new(false)),
            storage_full: AtomicBool::new(false),
            follow: Follow::new(follow),
        }
    }

    /// The model version, batcher and index serving now.
    pub fn serving(&self) -> Arc<Serving> {
        self.serving.get()
    }

    fn current(&self) -> (Arc<Serving>, Generation) {
        self.serving.current()
    }

    fn generation(&self) -> Generation {
        self.current().1
    }

    /// How a `Serving` for another checkpoint is built (a re-index).
    pub(crate) fn template(&self) -> &ServingTemplate {
        &self.template
    }

    /// Holds every write out (a snapshot, a restore, a re-index switch).
    pub(crate) async fn hold_writes(&self) -> Held<'_> {
        self.gate.hold().await
    }

    /// Makes `serving` what serves; writes are held meanwhile (the caller says, through
    /// `held`, whether its index now matches a snapshot on disk).
    pub(crate) fn swap_serving(&self, serving: Serving, held: &Held<'_>) {
        self.serving.swap(serving, held);
    }

    /// The in-process index currently serving (`None` with the pgvector backend).
    pub fn hnsw(&self) -> Option<Arc<NoteIndex>> {
        self.serving().hnsw().cloned()
    }

    /// The model version currently serving.
    pub fn model_version(&self) -> ModelVersion {
        self.serving().version.clone()
    }

    /// `/suggest-tags`' default number of hashtags: the serving checkpoint's.
    pub fn default_hashtags(&self) -> usize {
        self.serving().batcher.served().hashtag_count()
    }

    /// The index is restored and writes are accepted.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    fn require_ready(&self) -> Result<(), AppError> {
        if self.is_ready() {
            Ok(())
        } else {
            Err(AppError::NotReady("the index is being restored".into()))
        }
    }

    /// [`require_ready`](Self::require_ready), and this replica serves the store's model (it is
    /// not following a re-index switch it has not loaded yet).
    fn require_writable(&self) -> Result<(), AppError> {
        self.require_ready()?;
        match self.follow.blocked() {
            Some(why) => Err(AppError::NotReady(why)),
            None => Ok(()),
        }
    }

    fn store_err(&self, op: &str, e: notellm_store::StoreError) -> AppError {
        self.metrics.store_errors.with_label_values(&[op]).inc();
        tracing::error!(op, kind = e.kind(), error = %e, "store operation failed");
        if e.is_storage_full() && !self.storage_full.swap(true, Ordering::SeqCst) {
            self.metrics.store_full.set(1);
        }
        e.into()
    }

    /// A write reached the store: it has space again, if it had run out.
    fn store_wrote(&self) {
        if self.storage_full.swap(false, Ordering::SeqCst) {
            self.metrics.store_full.set(0);
            tracing::info!("the store accepts writes again");
        }
    }

    /// Why writes are refused now, when they are for a reason reads are not (the store is out of
    /// space); `None` while they are accepted.
    pub fn writes_refused(&self) -> Option<&'static str> {
        self.storage_full.load(Ordering::SeqCst).then_some("the store is out of space")
    }

    /// `notellm_build_info` names the model version serving now.
    pub(crate) fn relabel_build_info(&self, from: &ModelVersion, to: &ModelVersion) {
        let (pkg, backend) = (env!("CARGO_PKG_VERSION"), self.store.backend());
        let _ = self.metrics.build_info.remove_label_values(&[pkg, &from.0, backend]);
        self.metrics.build_info.with_label_values(&[pkg, &to.0, backend]).set(1.0);
    }

    /// Before a scrape: with pgvector, `notellm_notes_indexed` is the store's count (one
    /// `count(*)`, on every replica alike); the in-process index keeps its gauges current itself.
    pub async fn refresh_store_gauges(&self) {
        if self.hnsw().is_none() && self.is_ready() {
            match self.store.count().await {
                Ok(n) => self.metrics.notes_indexed.set(i64::try_from(n).unwrap_or(i64::MAX)),
                Err(e) => {
                    self.store_err("count", e);
                }
            }
        }
    }

    pub(crate) fn update_index_gauges(&self) {
        if let Some(index) = self.hnsw() {
            self.metrics.notes_indexed.set(index.len() as i64);
            self.metrics.index_tombstones.set(index.tombstones() as i64);
        }
    }

    /// Embeds, stores and indexes one note; a re-PUT of unchanged content is a no-op.
    pub async fn put_note(&self, id: NoteId, note: Note) -> Result<PutOutcome, AppError> {
        self.put_notes(vec![(id, note)])
            .await?
            .pop()
            .unwrap_or_else(|| Err(AppError::Internal("note was not processed".into())))
    }

    /// Several notes: embedded together, stored in one transaction, then indexed. One result per
    /// input, in order; a note that fails to embed does not stop the others.
    pub async fn put_notes(&self, items: Vec<(NoteId, Note)>) -> Result<Vec<Result<PutOutcome, AppError>>, AppError> {
        self.put_uploads(items.into_iter().map(|(id, note)| NoteUpload::text(id, note)).collect()).await
    }

    /// [`put_notes`](Self::put_notes) of notes that may carry an image. An image note needs a
    /// multimodal checkpoint (else its result is [`AppError::Invalid`]); its image's features
    /// are read from the store when another note has the same image, else the batch encodes
    /// it, and they are stored with the note.
    pub async fn put_uploads(&self, items: Vec<NoteUpload>) -> Result<Vec<Result<PutOutcome, AppError>>, AppError> {
        self.require_writable()?;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let serving = self.serving();
            if let Some(results) = self.put_with(&serving, &items).await? {
                return Ok(results);
            }
            if attempts >= MAX_WRITE_ATTEMPTS {
                return Err(AppError::NotReady(format!(
                    "the model was switched {attempts} times while this write was embedded; retry"
                )));
            }
            tracing::info!(from = %serving.version, "models were switched while embedding a write; embedding again");
        }
    }

    /// One attempt of [`put_notes`](Self::put_notes) with `serving`'s model; `None` when a switch
    /// replaced it before the write committed (nothing was written): this process's own switch,
    /// before the write got the gate, or another process's, which the store refused it for
    /// (then this process serves the new model when `None` is returned).
    async fn put_with(
        &self,
        serving: &Arc<Serving>,
        items: &[NoteUpload],
    ) -> Result<Option<Vec<Result<PutOutcome, AppError>>>, AppError> {
        let version = &serving.version;
        let mut results: Vec<Option<Result<PutOutcome, AppError>>> = (0..items.len()).map(|_| None).collect();
        let mut hashes = Vec::with_capacity(items.len());
        let mut previous = Vec::with_capacity(items.len());
        let mut to_embed = Vec::new();
        for (i, NoteUpload { id, note, image }) in items.iter().enumerate() {
            let hash = content_hash_with_image(note, image.as_ref().map(|im| im.hash.to_hex()).as_deref());
            let prev = self.store.content_hash(id).await.map_err(|e| self.store_err("get", e))?;
            if prev.as_deref() == Some(hash.as_str()) && self.serves_stored(serving, id).await? {
                results[i] = Some(Ok(PutOutcome {
                    note_id: id.clone(),
                    status: WriteStatus::Unchanged,
                    seq: None,
                    model_version: version.clone(),
                }));
            } else {
                to_embed.push(i);
            }
            hashes.push(hash);
            previous.push(prev);
        }
        let sources = self.image_sources(serving, items, &mut to_embed, &mut results).await?;
        let inputs = to_embed.iter().zip(sources).map(|(&i, source)| (&items[i].note, source)).collect();
        let embedded = serving.batcher.embed_with_images(inputs).await;
        let encoder = serving.batcher.served().encoder_fingerprint().unwrap_or_default();
        let mut ok: Vec<(usize, Embedding, Option<StoredImage>)> = Vec::new();
        for (&i, r) in to_embed.iter().zip(embedded) {
            let stored = match (r, &items[i].image) {
                (Ok((e, Some(features))), Some(image)) => stored_image(image, encoder, &features).map(|s| (e, Some(s))),
                (Ok((e, _)), _) => Ok((e, None)),
                (Err(e), _) => Err(e.into()),
            };
            match stored {
                Ok((e, image)) => ok.push((i, e, image)),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        if !ok.is_empty() {
            let guard = self.gate.write(ok.iter().map(|(i, _, _)| &items[*i].id)).await;
            // What serves only changes while the gate is held, so from here it holds.
            if !Arc::ptr_eq(&self.serving(), serving) {
                return Ok(None);
            }
            let writes: Vec<NoteWrite<'_>> = ok
                .iter()
                .map(|(i, e, image)| NoteWrite {
                    id: &items[*i].id,
                    note: &items[*i].note,
                    content_hash: &hashes[*i],
                    embedding: e,
                    model_version: version,
                    image: image.as_ref(),
                })
                .collect();
            let seqs = match self.store.put_notes(&writes).await {
                Ok(seqs) => seqs,
                Err(StoreError::StaleModelVersion { written, active }) => {
                    // Following the switch needs the gate: out of it before waiting.
                    drop(guard);
                    tracing::info!(
                        written = %written,
                        active = %active,
                        "the store was switched to another model while a write was embedded; following it"
                    );
                    self.await_store_model(serving, &ModelVersion(active)).await?;
                    self.metrics.writes_reembedded.inc();
                    return Ok(None);
                }
                Err(e) => return Err(self.store_err("put", e)),
            };
            self.store_wrote();
            self.follow.wrote(seqs.iter().copied());
            let batch: Vec<(NoteId, Embedding)> =
                ok.iter().map(|(i, e, _)| (items[*i].id.clone(), e.clone())).collect();
            // pgvector: the vectors went into the store with the rows.
            if let Some(index) = serving.hnsw() {
                index.upsert_batch(&batch)?;
            }
            guard.changed();
            drop(guard);
            for ((i, _, _), seq) in ok.iter().zip(seqs) {
                let status = if previous[*i].is_some() { WriteStatus::Updated } else { WriteStatus::Created };
                results[*i] = Some(Ok(PutOutcome {
                    note_id: items[*i].id.clone(),
                    status,
                    seq: Some(seq),
                    model_version: version.clone(),
                }));
            }
            self.after_write();
        }
        Ok(Some(
            results
                .into_iter()
                .map(|r| r.unwrap_or_else(|| Err(AppError::Internal("note was not processed".into()))))
                .collect(),
        ))
    }

    /// What the batcher gets of each note in `to_embed`: nothing, or its image as stored
    /// features (another note has the same image, of the same encoder) or as the encoder's input
    /// pixels. An image note that `serving`'s checkpoint cannot take gets its error in
    /// `results` and leaves `to_embed`.
    async fn image_sources(
        &self,
        serving: &Serving,
        items: &[NoteUpload],
        to_embed: &mut Vec<usize>,
        results: &mut [Option<Result<PutOutcome, AppError>>],
    ) -> Result<Vec<Option<ImageSource>>, AppError> {
        let mm = serving.batcher.served().multimodal();
        let mut sources = Vec::with_capacity(to_embed.len());
        let mut kept = Vec::with_capacity(to_embed.len());
        for &i in to_embed.iter() {
            let Some(image) = &items[i].image else {
                sources.push(None);
                kept.push(i);
                continue;
            };
            let Some(mm) = mm else {
                results[i] = Some(Err(AppError::Invalid(format!(
                    "model {} is text-only: a note's image needs a multimodal checkpoint (`notellm model \
                     init-multimodal`); send the note without `image`",
                    serving.version
                ))));
                continue;
            };
            let encoder = mm.encoder();
            let fingerprint = encoder.fingerprint().unwrap_or_default();
            let stored = self
                .store
                .image_by_hash(fingerprint, &image.hash.to_hex())
                .await
                .map_err(|e| self.store_err("get", e))?;
            let source = match stored {
                Some(s) => {
                    let f = from_f16_bytes(&s.features, s.tokens as usize, s.width as usize)
                        .map_err(|e| AppError::Corrupt(format!("stored features of image {}: {e}", s.image_hash)))?;
                    self.metrics.image_features_reused.inc();
                    ImageSource::Features(f)
                }
                None => {
                    let (cfg, image) = (encoder.config().clone(), image.clone());
                    let pixels = tokio::task::spawn_blocking(move || cfg.pixels(&image.image))
                        .await
                        .map_err(|e| AppError::Internal(format!("image preprocessing task: {e}")))?;
                    ImageSource::Pixels(pixels)
                }
            };
            sources.push(Some(source));
            kept.push(i);
        }
        *to_embed = kept;
        Ok(sources)
    }

    pub async fn get_note(&self, id: &NoteId) -> Result<StoredNote, AppError> {
        self.store.get_note(id).await.map_err(|e| self.store_err("get", e))?.ok_or_else(note_not_found)
    }

    /// Deletes a note from the store and, at once, from every later `/related` answer.
    pub async fn delete_note(&self, id: &NoteId) -> Result<i64, AppError> {
        self.require_writable()?;
        let guard = self.gate.write([id]).await;
        let seq =
            self.store.delete_note(id).await.map_err(|e| self.store_err("delete", e))?.ok_or_else(note_not_found)?;
        self.store_wrote();
        self.follow.wrote([seq]);
        if let Some(index) = self.hnsw() {
            index.remove(id);
        }
        guard.changed();
        drop(guard);
        self.after_write();
        Ok(seq)
    }

    /// Top-k notes related to a stored note, never itself or a deleted note.
    pub async fn related(&self, id: &NoteId, k: usize) -> Result<Related, AppError> {
        self.require_ready()?;
        let (serving, generation) = self.current();
        Ok(self.search_related(serving, generation, id, k).await?.1)
    }

    /// [`related`](Self::related) as the JSON body of `GET /related/{id}`, from the answer
    /// cache when it holds one computed under the current generation (then neither the store
    /// nor the index is read). Errors are never cached.
    pub async fn related_json(&self, id: NoteId, k: usize) -> Result<Bytes, AppError> {
        self.require_ready()?;
        let (serving, generation) = self.current();
        let key = RelatedKey { id, k };
        if let Some(body) = self.related_cache.get(&key, generation) {
            return Ok(body);
        }
        let (generation, related) = self.search_related(serving, generation, &key.id, k).await?;
        let body = Bytes::from(
            serde_json::to_vec(&related).map_err(|e| AppError::Internal(format!("serializing an answer: {e}")))?,
        );
        if self.related_cache.is_enabled() {
            self.related_cache.insert(key, body.clone(), generation, || self.generation());
        }
        Ok(body)
    }

    /// One uncached `/related` search with `serving`, whose generation was read before anything
    /// else; returns the generation of the serving actually used (another after a switch).
    async fn search_related(
        &self,
        mut serving: Arc<Serving>,
        mut generation: Generation,
        id: &NoteId,
        k: usize,
    ) -> Result<(Generation, Related), AppError> {
        // The index holds the note's vector when it serves it (only vectors of the serving
        // model enter it): no store read. Otherwise the store says 404 or 409, or the note was
        // committed and is about to be indexed.
        if let Some(hits) = serving.hnsw().and_then(|index| index.related(id, k)) {
            return Ok((generation, Self::related_answer(&serving, Some(id.clone()), hits)));
        }
        let (query, version) =
            self.store.get_embedding(id).await.map_err(|e| self.store_err("get", e))?.ok_or_else(note_not_found)?;
        if version != serving.version {
            // A re-index switch commits the store's rows and then swaps the serving model, both
            // while the gate is held: a read that saw a switched row waits for the swap.
            self.gate.wait_for_holder().await;
            (serving, generation) = self.current();
        }
        if version != serving.version {
            return Err(AppError::Conflict(
                Conflict::ModelVersion,
                format!(
                    "note {id} was embedded by model {version}, this service serves {}; run `notellm reindex`",
                    serving.version
                ),
            ));
        }
        let hits = self.search(&serving, &query, k, Some(id)).await?;
        Ok((generation, Self::related_answer(&serving, Some(id.clone()), hits)))
    }

    /// Related notes for an unsaved draft (cold start); nothing is stored.
    pub async fn related_draft(&self, note: &Note, k: usize) -> Result<Related, AppError> {
        self.require_ready()?;
        let serving = self.serving();
        let e = serving.batcher.embed(note).await?;
        let hits = self.search(&serving, &e, k, None).await?;
        Ok(Self::related_answer(&serving, None, hits))
    }

    /// The `k` notes nearest to `query` among those `serving` serves, leaving out `exclude`.
    pub(crate) async fn search(
        &self,
        serving: &Serving,
        query: &Embedding,
        k: usize,
        exclude: Option<&NoteId>,
    ) -> Result<Vec<Hit>, AppError> {
        match &serving.vectors {
            Vectors::Hnsw(index) => Ok(index.search(query, k, exclude)?),
            Vectors::Pgvector { dim, ef_search } => {
                if query.dim() != *dim {
                    return Err(AppError::Internal(format!("a {}-d query for {dim}-d vectors", query.dim())));
                }
                let hits = self
                    .store
                    .nearest(query, &serving.version, k, exclude, *ef_search)
                    .await
                    .map_err(|e| self.store_err("search", e))?;
                Ok(hits.into_iter().map(|(id, score)| Hit { id, score }).collect())
            }
        }
    }

    /// Whether `serving` answers for the stored note `id` (an unchanged re-PUT is then a no-op):
    /// it is in the in-process index, or (pgvector) its stored vector is of the serving version.
    async fn serves_stored(&self, serving: &Serving, id: &NoteId) -> Result<bool, AppError> {
        Ok(match &serving.vectors {
            Vectors::Hnsw(index) => index.contains(id),
            Vectors::Pgvector { .. } => {
                let stored = self.store.get_embedding(id).await.map_err(|e| self.store_err("get", e))?;
                stored.is_some_and(|(_, v)| v == serving.version)
            }
        })
    }

    fn related_answer(serving: &Serving, id: Option<NoteId>, hits: Vec<Hit>) -> Related {
        Related {
            note_id: id,
            model_version: serving.version.clone(),
            related: hits.into_iter().map(|h| RelatedNote { note_id: h.id, score: h.score }).collect(),
        }
    }

    /// Readiness: the model thread runs, the index is restored, the store answered its last
    /// health probe and, in replica mode, the replica is not behind the store for too long nor
    /// following a re-index switch. Answers at once (no round trip).
    pub async fn readiness(&self) -> Result<(), String> {
        if !self.serving().batcher.is_alive() {
            return Err("the inference worker has stopped".into());
        }
        if !self.is_ready() {
            return Err("the index is being restored".into());
        }
        if let Some(why) = self.follow.unready() {
            return Err(why);
        }
        match self.store.unreachable() {
            Some(reason) => Err(format!("store unreachable: {reason}")),
            None => Ok(()),
        }
    }

    /// One health probe of the store (the server runs it every second): readiness and every
    /// store operation fail fast while it fails (`Store::probe`).
    pub async fn probe_store(&self, timeout: std::time::Duration) {
        let up = match self.store.probe(timeout).await {
            Ok(()) => true,
            Err(_) => {
                self.metrics.store_errors.with_label_values(&["ping"]).inc();
                false
            }
        };
        self.metrics.store_up.set(i64::from(up));
    }

    fn after_write(&self) {
        self.update_index_gauges();
        let Some(index) = self.hnsw() else { return };
        if index.needs_rebuild() && !self.rebuilding.swap(true, Ordering::SeqCst) {
            let (flag, metrics) = (self.rebuilding.clone(), self.metrics.clone());
            tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                let tombstones = index.tombstones();
                if index.rebuild() {
                    metrics.index_rebuilds.inc();
                    tracing::info!(
                        tombstones,
                        live = index.len(),
                        secs = started.elapsed().as_secs_f64(),
                        "index rebuilt"
                    );
                }
                metrics.notes_indexed.set(index.len() as i64);
                metrics.index_tombstones.set(index.tombstones() as i64);
                flag.store(false, Ordering::SeqCst);
            });
        }
    }

    /// Writes a snapshot of the index tagged with the store's seq, if anything changed since
    /// the last one. Writes pause for its duration (the gate), so the tag is exact.
    pub async fn snapshot(&self) -> Result<bool, AppError> {
        if !self.is_ready() || !self.gate.is_dirty() {
            self.refresh_snapshot_age();
            return Ok(false);
        }
        let held = self.gate.hold().await;
        let position = self.store_position().await?;
        let seq = position.seq;
        let serving = self.serving();
        // pgvector: the store is the index; nothing to snapshot.
        let Some(index) = serving.hnsw().cloned() else { return Ok(false) };
        let (dir, notes) = (serving.snapshot_dir.clone(), index.len());
        let started = Instant::now();
        tokio::task::spawn_blocking(move || index.save_snapshot(&dir, &position))
            .await
            .map_err(|e| AppError::Internal(format!("snapshot task: {e}")))??;
        held.matches_snapshot(false);
        drop(held);
        self.refresh_snapshot_age();
        tracing::info!(
            seq,
            notes,
            model_version = %serving.version,
            secs = started.elapsed().as_secs_f64(),
            "index snapshot written"
        );
        Ok(true)
    }

    /// Updates `notellm_snapshot_age_seconds`: 0 while the index equals its last snapshot (or
    /// the store it was restored from), else seconds since it did. Called before every scrape.
    pub fn refresh_snapshot_age(&self) {
        self.metrics.snapshot_age.set(self.gate.snapshot_age_secs());
    }
}

/// What the store keeps of a note's image: its hash and the encoder's features of it.
fn stored_image(image: &ImageInput, encoder: &str, features: &candle_core::Tensor) -> Result<StoredImage, AppError> {
    let internal = |e: notellm_model::ModelError| AppError::Internal(format!("image features: {e}"));
    let (tokens, width) = features.dims2().map_err(|e| internal(e.into()))?;
    let dim = |v: usize| u32::try_from(v).map_err(|_| AppError::Internal(format!("{v} is not a feature size")));
    Ok(StoredImage {
        image_hash: image.hash.to_hex(),
        encoder: encoder.to_owned(),
        tokens: dim(tokens)?,
        width: dim(width)?,
        features: to_f16_bytes(features).map_err(internal)?,
    })
}

fn note_not_found() -> AppError {
    AppError::NotFound("note not found".into())
}
