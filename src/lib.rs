//! notellm: NoteLLM related-note recommendation.
//!
//! Layers, top to bottom (dependencies point downwards only):
//! `api` -> `batcher` / `index` / `store` -> `model` -> `prompt` / `note`.

pub mod index;
pub mod model;
pub mod note;
pub mod prompt;
pub mod store;
