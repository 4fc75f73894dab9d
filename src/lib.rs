//! notellm: NoteLLM related-note recommendation.
//!
//! Layers, top to bottom (dependencies point downwards only):
//! `api` -> `batcher` / `index` / `store` -> `model` -> `prompt` / `note`.

pub mod batcher;
pub mod commands;
pub mod config;
pub mod index;
pub mod jsonl;
pub mod metrics;
pub mod model;
pub mod note;
pub mod progress;
pub mod prompt;
pub mod store;
