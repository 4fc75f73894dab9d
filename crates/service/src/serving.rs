//! What serves: one model version's model (behind its batcher), its index and its snapshot
//! folder, swapped as one value. A request takes the current [`Serving`] once and uses only it,
//! so every answer comes from exactly one model version, whatever a re-index swaps meanwhile.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use candle_core::Device;

use crate::batcher::{Batcher, BatcherConfig};
use crate::gate::Held;
use crate::metrics::Metrics;
use crate::related_cache::Generation;
use notellm_index::{IndexConfig, IndexError, NoteIndex};
use notellm_model::NoteLlm;
use notellm_note::ModelVersion;

/// One model version, serving.
pub struct Serving {
    pub version: ModelVersion,
    pub batcher: Arc<Batcher>,
    pub index: Arc<NoteIndex>,
    /// `<data-dir>/index/<model_version>/`.
    pub snapshot_dir: PathBuf,
}

impl Serving {
    /// The same model with another index (a restore).
    pub(super) fn with_index(&self, index: NoteIndex) -> Self {
        Self {
            version: self.version.clone(),
            batcher: self.batcher.clone(),
            index: Arc::new(index),
            snapshot_dir: self.snapshot_dir.clone(),
        }
    }
}

/// The slot what serves lives in, and how many times it was swapped: the serving half of a
/// [`Generation`]. Readers take the current [`Serving`] once per request; a swap (a restore or a
/// re-index switch) needs the write gate held, so no write is between store and index then.
pub(crate) struct ServingSlot(RwLock<Current>);

struct Current {
    serving: Arc<Serving>,
    epoch: u64,
}

impl ServingSlot {
    pub(crate) fn new(serving: Serving) -> Self {
        Self(RwLock::new(Current { serving: Arc::new(serving), epoch: 0 }))
    }

    /// What serves now.
    pub(crate) fn get(&self) -> Arc<Serving> {
        self.current().0
    }

    /// What serves now and its generation, read together (a swap holds the write lock).
    pub(crate) fn current(&self) -> (Arc<Serving>, Generation) {
        let c = self.0.read().unwrap_or_else(|e| e.into_inner());
        let generation = Generation { serving: c.epoch, index: c.serving.index.version() };
        (c.serving.clone(), generation)
    }

    /// Puts `serving` in the slot; every answer cached so far came from the one it replaces.
    pub(crate) fn swap(&self, serving: Serving, _held: &Held<'_>) {
        let serving = Arc::new(serving);
        let mut c = self.0.write().unwrap_or_else(|e| e.into_inner());
        c.serving = serving;
        c.epoch += 1;
    }
}

/// How to build a [`Serving`] for another checkpoint (a re-index): the running one's settings.
#[derive(Debug, Clone)]
pub struct ServingTemplate {
    pub batcher: BatcherConfig,
    /// HNSW settings; `dim` is replaced by the new model's.
    pub index: IndexConfig,
    pub data_dir: PathBuf,
    pub device: Device,
}

impl ServingTemplate {
    /// An empty index for `model`'s vectors, with these settings.
    pub fn index_for(&self, model: &NoteLlm) -> Result<NoteIndex, IndexError> {
        NoteIndex::new(IndexConfig { dim: model.embedding_dim(), ..self.index.clone() })
    }

    /// `model` serving with `index`: its batcher started, snapshots under its version's folder.
    /// The one way a [`Serving`] is made (at start and by a re-index).
    pub fn serve(&self, model: Arc<NoteLlm>, index: Arc<NoteIndex>, metrics: &Metrics) -> std::io::Result<Serving> {
        let version = model.version().clone();
        let batcher = Batcher::spawn(model, self.batcher.clone(), metrics.clone())?;
        Ok(Serving {
            snapshot_dir: snapshot_dir(&self.data_dir, &version.0),
            version,
            batcher: Arc::new(batcher),
            index,
        })
    }
}

/// Snapshots live per model version: vectors of two models never share an index.
pub fn snapshot_dir(data_dir: &Path, model_version: &str) -> PathBuf {
    let safe: String =
        model_version.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
    data_dir.join("index").join(safe)
}
