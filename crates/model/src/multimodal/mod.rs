//! NoteLLM-2: a note with an image, embedded by the text checkpoint's LLM with the image's
//! features in its prompt (mICL) and fused back in after it (late fusion).
//!
//! A multimodal checkpoint is a text checkpoint plus three things, all named by the
//! `multimodal` section of its `notellm.json` ([`MultimodalConfig`]):
//!
//! ```text
//! DIR/notellm.json            "multimodal": {micl_prompt_version, vision, qformer, late_fusion}
//! DIR/<vision>/               the frozen image encoder (vision.json + model.safetensors)
//! DIR/multimodal.safetensors  the connector: qformer.*, projection.*, img_emb_token, fusion.*
//! ```
//!
//! The mICL prompt (`notellm2-micl-v1`), as one sequence of input vectors:
//!
//! ```text
//! [BOS]Extract the image information, compress it into one word for recommendation. {'image': <IMG>}. The compression word is:"<IMG_EMB>". <the category prompt of the note, through [EMB]>
//! ```
//!
//! `<IMG>` is the image's visual tokens (the Q-Former's queries through the MLP), `<IMG_EMB>` a
//! learned vector of the connector. The image embedding is the last layer's state right before
//! `<IMG_EMB>`; it sees the instruction and the image only (the decoder is causal). The note
//! embedding is the state right before `[EMB]`, as in the text model; it sees both. Late fusion
//! ([`fusion::LateFusion`]) then mixes the image's CLS feature into both, and the text model's
//! head maps them to the embedding size. A note without an image keeps the text model's own
//! prompt and embedding ([`crate::NoteLlm::embed`]).

pub mod fusion;
pub mod layers;
pub mod qformer;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::decoder::{Decoder, PaddedBatch, Padding};
use crate::error::{ModelError, Result};
use crate::prompt::{self, Variant};
use crate::vision::VisionEncoder;
use crate::{NoteLlm, NoteLlmConfig, NoteTokenizer};
use fusion::{LateFusion, VisualProjection};
use notellm_note::{Embedding, Note};
pub use qformer::{QFormer, QFormerConfig};

/// The prompt this build speaks for notes with an image.
pub const MICL_PROMPT_VERSION: &str = "notellm2-micl-v1";
/// The image half's instruction.
pub const IMAGE_INSTRUCTION: &str = "Extract the image information, compress it into one word for recommendation.";
/// The connector's weights inside a multimodal checkpoint.
pub const CONNECTOR_WEIGHTS_FILE: &str = "multimodal.safetensors";

/// `notellm.json`'s `multimodal` section: present only in a multimodal checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultimodalConfig {
    /// Must equal [`MICL_PROMPT_VERSION`].
    pub micl_prompt_version: String,
    /// The frozen encoder's directory, relative to the checkpoint.
    pub vision: String,
    pub qformer: QFormerConfig,
    /// Whether the CLS feature is fused into the embeddings after the LLM.
    pub late_fusion: bool,
}

impl MultimodalConfig {
    pub fn validate(&self) -> Result<()> {
        if self.micl_prompt_version != MICL_PROMPT_VERSION {
            return Err(ModelError::Input(format!(
                "multimodal.micl_prompt_version {:?} is not supported (this build speaks {MICL_PROMPT_VERSION:?})",
                self.micl_prompt_version
            )));
        }
        let vision = Path::new(&self.vision);
        if self.vision.is_empty() || vision.is_absolute() || vision.components().any(|c| c.as_os_str() == "..") {
            return Err(ModelError::Input(format!(
                "multimodal.vision {:?} must be a directory inside the checkpoint",
                self.vision
            )));
        }
        self.qformer.validate()
    }
}

/// Everything between the frozen encoder and the LLM, and after it: the trained part of
/// NoteLLM-2.
#[derive(Debug, Clone)]
pub struct Connector {
    qformer: QFormer,
    projection: VisualProjection,
    /// `[hidden]`: the `<IMG_EMB>` input vector.
    img_emb: Tensor,
    fusion: Option<LateFusion>,
}

impl Connector {
    /// Builds (from a `VarMap`: freshly initialised) or loads the connector for an encoder of
    /// `vision_width` and an LLM of `hidden`.
    pub fn new(cfg: &MultimodalConfig, vision_width: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            qformer: QFormer::new(&cfg.qformer, vision_width, vb.pp("qformer"))?,
            projection: VisualProjection::new(cfg.qformer.hidden, hidden, vb.pp("projection"))?,
            img_emb: vb.get_with_hints(hidden, "img_emb_token", Init::Randn { mean: 0.0, stdev: 0.02 })?,
            fusion: if cfg.late_fusion { Some(LateFusion::new(vision_width, hidden, vb.pp("fusion"))?) } else { None },
        })
    }

    /// Image tokens `[b, tokens, vision_width]` -> visual tokens `[b, queries, hidden]`.
    pub fn visual_tokens(&self, image: &Tensor) -> Result<Tensor> {
        self.projection.forward(&self.qformer.forward(image)?)
    }

    /// Late fusion of states `[b, hidden]` with the images' CLS features (identity without it).
    pub fn fuse(&self, h: &Tensor, cls: &Tensor) -> Result<Tensor> {
        match &self.fusion {
            Some(f) => f.forward(h, cls),
            None => Ok(h.clone()),
        }
    }

    pub fn queries(&self) -> usize {
        self.qformer.config().queries
    }
}

/// The mICL prompt's constant parts, tokenised once.
#[derive(Debug, Clone)]
pub struct MiclPrompt {
    /// `[BOS]<image instruction> {'image': `
    before_image: Vec<u32>,
    /// `}. The compression word is:"` — its last token's state is the image embedding.
    after_image: Vec<u32>,
}

/// Where a note's sequence puts things.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MiclLayout {
    pub before: usize,
    pub visual: usize,
    pub after: usize,
    pub note: usize,
}

impl MiclLayout {
    /// Index of the state taken as the image embedding (right before `<IMG_EMB>`).
    pub fn image_position(&self) -> usize {
        self.before + self.visual + self.after - 1
    }

    /// Index of the `<IMG_EMB>` input vector.
    pub fn img_emb_position(&self) -> usize {
        self.before + self.visual + self.after
    }

    /// Index of the state taken as the note embedding (right before `[EMB]`).
    pub fn note_position(&self) -> usize {
        self.seq_len() - 1
    }

    /// Input vectors of the whole sequence.
    pub fn seq_len(&self) -> usize {
        self.before + self.visual + self.after + 1 + self.note
    }
}

impl MiclPrompt {
    /// The constant parts for a checkpoint's tokenizer and `notellm.json`.
    pub fn new(tok: &NoteTokenizer, cfg: &NoteLlmConfig) -> Result<Self> {
        let bos = cfg.bos_token.as_deref().unwrap_or("");
        let before_image = tok.encode(&format!("{bos}{IMAGE_INSTRUCTION} {{'image': "))?;
        let after_image = tok.encode(&format!("}}. {}", prompt::EMB_CUE))?;
        if after_image.is_empty() {
            return Err(ModelError::Tokenizer("the mICL prompt's image cue tokenised to nothing".into()));
        }
        Ok(Self { before_image, after_image })
    }

    /// The note half's token ids: `". ` and the category prompt without BOS, ending right
    /// before `[EMB]`.
    pub fn note_ids(&self, tok: &NoteTokenizer, cfg: &NoteLlmConfig, note: &Note) -> Result<Vec<u32>> {
        let mut specials = tok.specials().clone();
        specials.bos = None;
        let p = prompt::render(note, Variant::Category, cfg.limits(), &specials, tok);
        let mut ids = tok.encode(&format!("\". {}", p.through_emb))?;
        match ids.iter().rposition(|&t| t == tok.emb_id) {
            Some(pos) if pos > 0 => {
                ids.truncate(pos);
                Ok(ids)
            }
            _ => Err(ModelError::Tokenizer(format!(
                "the tokenizer did not produce the {} token for the mICL prompt",
                cfg.emb_token
            ))),
        }
    }

    pub fn layout(&self, visual: usize, note_ids: &[u32]) -> MiclLayout {
        MiclLayout { before: self.before_image.len(), visual, after: self.after_image.len(), note: note_ids.len() }
    }
}

/// The two states of a batch of image notes, after late fusion and before the head.
#[derive(Debug, Clone)]
pub struct MiclStates {
    /// `[b, hidden]`: what retrieval uses.
    pub note: Tensor,
    /// `[b, hidden]`: the image's own embedding (the mICL loss's second view).
    pub image: Tensor,
}

/// Runs the mICL prompt of each note (its note-half ids, [`MiclPrompt::note_ids`]) with its
/// image's encoder features (`[b, tokens, vision_width]`, before the encoder's final norm)
/// through `decoder`, right-padded to one length; each row computes what it would alone.
pub fn micl_forward(
    decoder: &Decoder,
    prompt: &MiclPrompt,
    connector: &Connector,
    notes: &[Vec<u32>],
    image: &Tensor,
    pad_id: u32,
) -> Result<MiclStates> {
    let (b, _, _) = image.dims3()?;
    if b != notes.len() || b == 0 {
        return Err(ModelError::Input(format!("{} notes but {b} images", notes.len())));
    }
    if let Some(i) = notes.iter().position(Vec::is_empty) {
        return Err(ModelError::Input(format!("note {i} has no tokens")));
    }
    let _span = tracing::debug_span!("micl_batch", size = b).entered();
    let device = decoder.device();
    let dtype = decoder.dtype();
    let table = decoder.token_embeddings();
    let lookup =
        |ids: &[u32]| -> Result<Tensor> { Ok(table.index_select(&Tensor::from_slice(ids, ids.len(), device)?, 0)?) };
    let visual = connector.visual_tokens(&image.to_dtype(dtype)?)?;
    let q = visual.dim(1)?;
    let before = lookup(&prompt.before_image)?;
    let after = lookup(&prompt.after_image)?;
    let img_emb = connector.img_emb.to_dtype(dtype)?.unsqueeze(0)?;
    let layouts: Vec<MiclLayout> = notes.iter().map(|n| prompt.layout(q, n)).collect();
    let t = layouts.iter().map(MiclLayout::seq_len).max().unwrap_or(0);
    let hidden = decoder.config().hidden_size;
    let rows = notes
        .iter()
        .zip(&layouts)
        .enumerate()
        .map(|(i, (ids, layout))| {
            let mut parts = vec![before.clone(), visual.get(i)?, after.clone(), img_emb.clone(), lookup(ids)?];
            if layout.seq_len() < t {
                parts.push(Tensor::zeros((t - layout.seq_len(), hidden), dtype, device)?);
            }
            Ok(Tensor::cat(&parts, 0)?)
        })
        .collect::<Result<Vec<_>>>()?;
    let x = Tensor::stack(&rows, 0)?;
    let seqs: Vec<Vec<u32>> = layouts.iter().map(|l| vec![pad_id; l.seq_len()]).collect();
    let batch = PaddedBatch::new(&seqs, Padding::Right, pad_id, device)?;
    let states = decoder.forward_from(&x, &batch, 0)?;
    let image_pos: Vec<usize> = layouts.iter().map(MiclLayout::image_position).collect();
    let note_pos: Vec<usize> = layouts.iter().map(MiclLayout::note_position).collect();
    let h_image = Decoder::gather(&states, &image_pos)?.to_dtype(DType::F32)?;
    let h_note = Decoder::gather(&states, &note_pos)?.to_dtype(DType::F32)?;
    let cls = image.narrow(1, 0, 1)?.squeeze(1)?.to_dtype(DType::F32)?;
    Ok(MiclStates { note: connector.fuse(&h_note, &cls)?, image: connector.fuse(&h_image, &cls)? })
}

/// A note's two embeddings.
#[derive(Debug, Clone, PartialEq)]
pub struct MiclEmbedding {
    pub note: Embedding,
    pub image: Embedding,
}

/// A loaded multimodal checkpoint: the text model, the frozen encoder and the connector.
#[derive(Debug)]
pub struct MultimodalNoteLlm {
    text: NoteLlm,
    encoder: VisionEncoder,
    connector: Connector,
    prompt: MiclPrompt,
    cfg: MultimodalConfig,
}

impl MultimodalNoteLlm {
    /// Loads the checkpoint in `dir` (f32 on CPU).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Self::with_text(NoteLlm::load(dir, device)?, dir, device)
    }

    /// The rest of the multimodal checkpoint in `dir` around its already loaded text model.
    pub fn with_text(text: NoteLlm, dir: &Path, device: &Device) -> Result<Self> {
        let cfg = text.config().multimodal.clone().ok_or_else(|| {
            ModelError::Input(format!("{} is a text-only checkpoint (notellm.json has no `multimodal`)", dir.display()))
        })?;
        let encoder = VisionEncoder::load(&dir.join(&cfg.vision), device)?;
        let weights = dir.join(CONNECTOR_WEIGHTS_FILE);
        if !weights.is_file() {
            return Err(ModelError::MissingFile { dir: dir.to_owned(), file: CONNECTOR_WEIGHTS_FILE.into() });
        }
        // SAFETY: the file is memory-mapped read-only and not modified while loaded.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], text.decoder().dtype(), device)? };
        let connector =
            Connector::new(&cfg, encoder.config().width, text.decoder().config().hidden_size, vb).map_err(|e| {
                ModelError::Tensor { file: weights.display().to_string(), tensor: "-".into(), msg: e.to_string() }
            })?;
        Self::from_parts(text, encoder, connector, cfg)
    }

    pub fn from_parts(
        text: NoteLlm,
        encoder: VisionEncoder,
        connector: Connector,
        cfg: MultimodalConfig,
    ) -> Result<Self> {
        let prompt = MiclPrompt::new(text.tokenizer(), text.config())?;
        tracing::info!(
            encoder = %encoder.config().architecture,
            width = encoder.config().width,
            queries = cfg.qformer.queries,
            qformer_layers = cfg.qformer.layers,
            late_fusion = cfg.late_fusion,
            "multimodal connector loaded"
        );
        Ok(Self { text, encoder, connector, prompt, cfg })
    }

    pub fn text(&self) -> &NoteLlm {
        &self.text
    }

    pub fn encoder(&self) -> &VisionEncoder {
        &self.encoder
    }

    pub fn config(&self) -> &MultimodalConfig {
        &self.cfg
    }

    pub fn prompt(&self) -> &MiclPrompt {
        &self.prompt
    }

    /// The encoder's features of each image (`[b, tokens, width]`, before its final norm):
    /// what a note stores so that its image is never encoded again.
    pub fn image_features(&self, images: &[image::DynamicImage]) -> Result<Tensor> {
        Ok(self.encoder.encode(images)?.hidden)
    }

    /// The mICL layout of `note` (for tests and diagnostics).
    pub fn layout(&self, note: &Note) -> Result<MiclLayout> {
        let ids = self.prompt.note_ids(self.text.tokenizer(), self.text.config(), note)?;
        Ok(self.prompt.layout(self.connector.queries(), &ids))
    }

    /// The note half's token ids of `note`'s mICL prompt ([`MiclPrompt::note_ids`]).
    pub fn note_ids(&self, note: &Note) -> Result<Vec<u32>> {
        self.prompt.note_ids(self.text.tokenizer(), self.text.config(), note)
    }

    /// Input vectors of the whole mICL sequence of a note whose note half is `note_ids` long:
    /// what a batch of image notes pays per row.
    pub fn seq_len(&self, note_ids: usize) -> usize {
        self.prompt.before_image.len() + self.connector.queries() + self.prompt.after_image.len() + 1 + note_ids
    }

    /// Fused states of notes with their images' features, before the head.
    pub fn states(&self, notes: &[Note], image: &Tensor) -> Result<MiclStates> {
        let ids = notes.iter().map(|n| self.note_ids(n)).collect::<Result<Vec<_>>>()?;
        self.states_of_ids(&ids, image)
    }

    fn states_of_ids(&self, ids: &[Vec<u32>], image: &Tensor) -> Result<MiclStates> {
        micl_forward(self.text.decoder(), &self.prompt, &self.connector, ids, image, self.text.tokenizer().pad_id)
    }

    /// The note embeddings (what retrieval uses) of already-tokenised note halves
    /// ([`note_ids`](Self::note_ids)) with their images' features (`[b, tokens, width]`).
    pub fn embed_ids(&self, ids: &[Vec<u32>], image: &Tensor) -> Result<Vec<Embedding>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let states = self.states_of_ids(ids, image)?;
        self.text.project(&states.note)
    }

    /// The note and image embeddings of notes with images (one forward pass).
    pub fn embed(&self, notes: &[Note], image: &Tensor) -> Result<Vec<MiclEmbedding>> {
        if notes.is_empty() {
            return Ok(Vec::new());
        }
        let states = self.states(notes, image)?;
        let note = self.text.project(&states.note)?;
        let image = self.text.project(&states.image)?;
        Ok(note.into_iter().zip(image).map(|(note, image)| MiclEmbedding { note, image }).collect())
    }
}
