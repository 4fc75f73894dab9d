//! Which checkpoint a start loads, after a re-index.
//!
//! The deployment names a checkpoint (`--model` / `NOTELLM_MODEL`), which a re-index does not
//! change: a restart after a switch would load the model the switch replaced, whose vectors are
//! no longer in the store (every `/related` would answer 409). So the switch records the new
//! checkpoint's directory in the store, and a start whose `--model` is exactly the version that
//! switch replaced loads the recorded checkpoint instead, with a warning to update the
//! deployment. Any other `--model` is loaded as given: a deliberate change of model, served
//! with an empty index for the notes of other versions until a re-index (also warned about).

use std::path::{Path, PathBuf};

use notellm_model::config::{NoteLlmConfig, NOTELLM_FILE};
use notellm_store::Store;

/// The checkpoint directory to load: `flag_dir`, or the last re-index's checkpoint when
/// `flag_dir` holds the version that re-index replaced (see the module doc).
pub async fn resolve_model_dir(store: &Store, flag_dir: &Path) -> PathBuf {
    let active = match store.active_model().await {
        Ok(Some(a)) => a,
        Ok(None) => return flag_dir.to_owned(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the store's active model; loading --model as given");
            return flag_dir.to_owned();
        }
    };
    let version_in = |dir: &Path| NoteLlmConfig::from_file(&dir.join(NOTELLM_FILE)).map(|c| c.model_version);
    // An unreadable --model is reported by the model load itself.
    let Ok(flag_version) = version_in(flag_dir) else { return flag_dir.to_owned() };
    if flag_version == active.model_version.0 {
        return flag_dir.to_owned();
    }
    if flag_version != active.previous_version.0 {
        tracing::warn!(
            model = %flag_dir.display(),
            model_version = %flag_version,
            stored_version = %active.model_version,
            "--model is not the version the store's vectors were re-indexed to: its index starts without \
             them and their /related answers 409 until `notellm reindex --model` this checkpoint"
        );
        return flag_dir.to_owned();
    }
    match version_in(&active.model_dir) {
        Ok(v) if v == active.model_version.0 => {
            tracing::warn!(
                model = %flag_dir.display(),
                model_version = %flag_version,
                reindexed_to = %active.model_version,
                loading = %active.model_dir.display(),
                "--model names the version a re-index replaced; loading the re-indexed checkpoint instead. \
                 Point --model / NOTELLM_MODEL at it to silence this"
            );
            active.model_dir
        }
        Ok(v) => {
            tracing::error!(
                recorded = %active.model_dir.display(),
                holds = %v,
                expected = %active.model_version,
                "the re-indexed checkpoint now holds another version; serving --model {flag_version}: \
                 notes of {} answer 409 until the checkpoint is restored or `notellm reindex` runs",
                active.model_version
            );
            flag_dir.to_owned()
        }
        Err(e) => {
            tracing::error!(
                recorded = %active.model_dir.display(),
                error = %e,
                "the re-indexed checkpoint is unusable; serving --model {flag_version}: notes of {} answer \
                 409 until the checkpoint is restored (or --model names a copy of it) or `notellm reindex` runs",
                active.model_version
            );
            flag_dir.to_owned()
        }
    }
}
