//! Assembling a NoteLLM-2 checkpoint (`notellm model init-multimodal`): a text checkpoint, the
//! frozen image encoder beside it and a freshly initialised connector (Q-Former, visual MLP,
//! `<IMG_EMB>` vector, late-fusion gate), named by a `multimodal` section added to
//! `notellm.json`. The text checkpoint's files are copied unchanged; training then moves the
//! connector and the LLM's top layers.

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};

use notellm_model::config::{NoteLlmConfig, NOTELLM_FILE};
use notellm_model::error::{ModelError, Result};
use notellm_model::multimodal::{
    Connector, MultimodalConfig, QFormerConfig, CONNECTOR_WEIGHTS_FILE, MICL_PROMPT_VERSION,
};
use notellm_model::vision::VisionConfig;
use notellm_model::CheckpointFiles;

/// Where the encoder goes inside the checkpoint.
pub const VISION_SUBDIR: &str = "vision";

#[derive(Debug, Clone)]
pub struct MultimodalInit {
    /// `None`: [`QFormerConfig::small`] for the encoder's width.
    pub qformer: Option<QFormerConfig>,
    pub late_fusion: bool,
    /// `None`: the text checkpoint's version with `+micl`.
    pub model_version: Option<String>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io { path: path.to_owned(), source }
}

/// Copies every regular file of `from` into `to` (not recursive).
fn copy_files(from: &Path, to: &Path, skip: &[&str]) -> Result<()> {
    std::fs::create_dir_all(to).map_err(io(to))?;
    for entry in std::fs::read_dir(from).map_err(io(from))? {
        let entry = entry.map_err(io(from))?;
        let path = entry.path();
        let name = entry.file_name();
        if !path.is_file() || skip.iter().any(|s| name == *s) {
            continue;
        }
        let dest = to.join(&name);
        std::fs::copy(&path, &dest).map_err(io(&dest))?;
    }
    Ok(())
}

/// Writes the multimodal checkpoint `out` from the text checkpoint `text` and the encoder
/// directory `vision` (`notellm model import-vision`). `out` must not exist yet.
pub fn init_multimodal(text: &Path, vision: &Path, out: &Path, opts: &MultimodalInit) -> Result<MultimodalConfig> {
    let files = CheckpointFiles::open(text)?;
    if files.notellm.multimodal.is_some() {
        return Err(ModelError::Input(format!("{} is already a multimodal checkpoint", text.display())));
    }
    let vcfg = VisionConfig::load(vision)?;
    if out.exists() {
        return Err(ModelError::Input(format!("{} exists; choose a new directory", out.display())));
    }
    let tmp = out.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let cfg = MultimodalConfig {
        micl_prompt_version: MICL_PROMPT_VERSION.into(),
        vision: VISION_SUBDIR.into(),
        qformer: opts.qformer.clone().unwrap_or_else(|| QFormerConfig::small(vcfg.width, vcfg.heads)),
        late_fusion: opts.late_fusion,
    };
    copy_files(text, &tmp, &[NOTELLM_FILE])?;
    crate::vision::copy_encoder(vision, &tmp.join(VISION_SUBDIR))?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    Connector::new(&cfg, vcfg.width, files.decoder.hidden_size, vb)?;
    let weights = tmp.join(CONNECTOR_WEIGHTS_FILE);
    varmap.save(&weights).map_err(|e| ModelError::Tensor {
        file: weights.display().to_string(),
        tensor: "-".into(),
        msg: e.to_string(),
    })?;
    let notellm = NoteLlmConfig {
        model_version: opts.model_version.clone().unwrap_or_else(|| format!("{}+micl", files.notellm.model_version)),
        multimodal: Some(cfg.clone()),
        ..files.notellm
    };
    notellm.validate()?;
    let json = serde_json::to_string_pretty(&notellm).map_err(|e| ModelError::Input(e.to_string()))?;
    let path = tmp.join(NOTELLM_FILE);
    std::fs::write(&path, json).map_err(io(&path))?;
    std::fs::rename(&tmp, out).map_err(io(out))?;
    let params: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
    tracing::info!(out = %out.display(), connector_params_m = params as f64 / 1e6, "multimodal checkpoint written");
    Ok(cfg)
}
