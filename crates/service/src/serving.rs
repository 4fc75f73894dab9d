//! What serves: one model version's model (behind its batcher), its index and its snapshot
//! folder, swapped as one value. A request takes the current [`Serving`] once and uses only it,
//! so every answer comes from exactly one model version, whatever a re-index swaps meanwhile.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use candle_core::Device;
use tokio::sync::watch;

use crate::batcher::{Batcher, BatcherConfig};
use crate::gate::Held;
use crate::metrics::Metrics;
use crate::related_cache::Generation;
use notellm_index::{IndexConfig, IndexError, NoteIndex};
use notellm_model::ServedModel;
use notellm_note::ModelVersion;

/// Which index serves `/related` (`--index`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IndexBackend {
    /// HNSW in this process's memory: a cache of the store, restored, snapshotted, followed.
    #[default]
    Hnsw,
    /// pgvector's HNSW inside Postgres, written with each note: nothing to restore, snapshot or
    /// follow, and no limit but the database's.
    Pgvector,
}

impl IndexBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            IndexBackend::Hnsw => "hnsw",
            IndexBackend::Pgvector => "pgvector",
        }
    }
}

impl std::str::FromStr for IndexBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hnsw" => Ok(IndexBackend::Hnsw),
            "pgvector" => Ok(IndexBackend::Pgvector),
            other => Err(format!("unknown index backend {other:?}: hnsw or pgvector")),
        }
    }
}

/// Where one model version's vectors are searched.
pub enum Vectors {
    /// This process's HNSW index.
    Hnsw(Arc<NoteIndex>),
    /// The store's pgvector index for vectors of `dim` (`notellm_store`'s `nearest`), searched
    /// with a beam of `ef_search`.
    Pgvector { dim: usize, ef_search: usize },
}

/// One model version, serving.
pub struct Serving {
    pub version: ModelVersion,
    pub batcher: Arc<Batcher>,
    pub vectors: Vectors,
    /// `<data-dir>/index/<model_version>/` (snapshots of an HNSW index).
    pub snapshot_dir: PathBuf,
}

impl Serving {
    /// The in-process index, when that is what serves.
    pub fn hnsw(&self) -> Option<&Arc<NoteIndex>> {
        match &self.vectors {
            Vectors::Hnsw(index) => Some(index),
            Vectors::Pgvector { .. } => None,
        }
    }

    /// The same model with another in-process index (a restore).
    pub(super) fn with_index(&self, index: NoteIndex) -> Self {
        Self {
            version: self.version.clone(),
            batcher: self.batcher.clone(),
            vectors: Vectors::Hnsw(Arc::new(index)),
            snapshot_dir: self.snapshot_dir.clone(),
        }
    }
}

/// The slot what serves lives in, and how many times it was swapped: the serving half of a
/// [`Generation`]. Readers take the current [`Serving`] once per request; a swap (a restore or a
/// re-index switch) needs the write gate held, so no write is between store and index then.
pub(crate) struct ServingSlot {
    current: RwLock<Current>,
    /// The epoch, published by every swap: what a write waits on while this process follows a
    /// re-index switch made by another ([`ServingSlot::subscribe`]).
    swaps: watch::Sender<u64>,
}

struct Current {
    serving: Arc<Serving>,
    epoch: u64,
}

impl ServingSlot {
    pub(crate) fn new(serving: Serving) -> Self {
        let (swaps, _) = watch::channel(0);
        Self { current: RwLock::new(Current { serving: Arc::new(serving), epoch: 0 }), swaps }
    }

    /// What serves now.
    pub(crate) fn get(&self) -> Arc<Serving> {
        self.current().0
    }

    /// What serves now and its generation, read together (a swap holds the write lock).
    pub(crate) fn current(&self) -> (Arc<Serving>, Generation) {
        let c = self.current.read().unwrap_or_else(|e| e.into_inner());
        let generation = Generation { serving: c.epoch, index: c.serving.hnsw().map_or(0, |i| i.version()) };
        (c.serving.clone(), generation)
    }

    /// Puts `serving` in the slot; every answer cached so far came from the one it replaces.
    pub(crate) fn swap(&self, serving: Serving, _held: &Held<'_>) {
        let serving = Arc::new(serving);
        let epoch = {
            let mut c = self.current.write().unwrap_or_else(|e| e.into_inner());
            c.serving = serving;
            c.epoch += 1;
            c.epoch
        };
        self.swaps.send_replace(epoch);
    }

    /// Sees every swap after this call (`changed()` resolves once one happened since).
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.swaps.subscribe()
    }
}

/// How to build a [`Serving`] for another checkpoint (a re-index): the running one's settings.
#[derive(Debug, Clone)]
pub struct ServingTemplate {
    pub batcher: BatcherConfig,
    /// Which index serves.
    pub backend: IndexBackend,
    /// HNSW settings; `dim` is replaced by the new model's.
    pub index: IndexConfig,
    pub data_dir: PathBuf,
    pub device: Device,
}

impl ServingTemplate {
    /// The HNSW settings of the index serving now (its dimension included).
    pub fn index_config(&self, serving: &Serving) -> IndexConfig {
        serving.hnsw().map_or_else(|| self.index.clone(), |i| i.config().clone())
    }

    /// These HNSW settings for `model`'s vectors.
    pub fn config_for(&self, model: &ServedModel) -> IndexConfig {
        IndexConfig { dim: model.embedding_dim(), ..self.index.clone() }
    }

    /// An empty index for `model`'s vectors, with these settings.
    pub fn index_for(&self, model: &ServedModel) -> Result<NoteIndex, IndexError> {
        NoteIndex::new(self.config_for(model))
    }

    /// Where `model`'s vectors are searched at start: an empty HNSW index (the restore fills it)
    /// or the store's pgvector index for its dimension.
    pub fn fresh_vectors(&self, model: &ServedModel) -> Result<Vectors, IndexError> {
        Ok(match self.backend {
            IndexBackend::Hnsw => Vectors::Hnsw(Arc::new(self.index_for(model)?)),
            IndexBackend::Pgvector => self.pgvector_for(model),
        })
    }

    /// Where `model`'s vectors are searched after a re-index built `index` for it: that index,
    /// or the store's pgvector index for its dimension.
    pub fn vectors_with(&self, model: &ServedModel, index: Arc<NoteIndex>) -> Vectors {
        match self.backend {
            IndexBackend::Hnsw => Vectors::Hnsw(index),
            IndexBackend::Pgvector => self.pgvector_for(model),
        }
    }

    fn pgvector_for(&self, model: &ServedModel) -> Vectors {
        Vectors::Pgvector { dim: model.embedding_dim(), ef_search: self.index.ef_search }
    }

    /// `model` serving from `vectors`: its batcher started, snapshots under its version's
    /// folder. The one way a [`Serving`] is made (at start and by a re-index).
    pub fn serve(&self, model: Arc<ServedModel>, vectors: Vectors, metrics: &Metrics) -> std::io::Result<Serving> {
        let version = model.version().clone();
        let batcher = Batcher::spawn(model, self.batcher.clone(), metrics.clone())?;
        Ok(Serving {
            snapshot_dir: snapshot_dir(&self.data_dir, &version.0),
            version,
            batcher: Arc::new(batcher),
            vectors,
        })
    }
}

/// Snapshots live per model version: vectors of two models never share an index.
pub fn snapshot_dir(data_dir: &Path, model_version: &str) -> PathBuf {
    let safe: String =
        model_version.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
    data_dir.join("index").join(safe)
}
