//! What serves: one model version's model (behind its batcher), its index and its snapshot
//! folder, swapped as one value. A request takes the current [`Serving`] once and uses only it,
//! so every answer comes from exactly one model version, whatever a re-index swaps meanwhile.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;

use crate::batcher::{Batcher, BatcherConfig};
use notellm_index::{IndexConfig, NoteIndex};
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
    /// The batcher's model serving with `index`, snapshotting under `data_dir`.
    pub fn new(batcher: Arc<Batcher>, index: NoteIndex, data_dir: &Path) -> Self {
        let version = batcher.model().version().clone();
        Self { snapshot_dir: snapshot_dir(data_dir, &version.0), version, batcher, index: Arc::new(index) }
    }

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

/// How to build a [`Serving`] for another checkpoint (a re-index): the running one's settings.
#[derive(Debug, Clone)]
pub struct ServingTemplate {
    pub batcher: BatcherConfig,
    /// HNSW settings; `dim` is replaced by the new model's.
    pub index: IndexConfig,
    pub data_dir: PathBuf,
    pub device: Device,
}

/// Snapshots live per model version: vectors of two models never share an index.
pub fn snapshot_dir(data_dir: &Path, model_version: &str) -> PathBuf {
    let safe: String =
        model_version.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
    data_dir.join("index").join(safe)
}
