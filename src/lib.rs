//! notellm: NoteLLM related-note recommendation.
//!
//! Layers, top to bottom (dependencies point downwards only):
//! `api` -> `service` -> `batcher` / `index` / `store` -> `model` -> `prompt` / `note`.

pub mod api;
pub mod batcher;
pub mod commands;
pub mod config;
pub mod data;
pub mod eval;
pub mod index;
pub mod jsonl;
pub mod metrics;
pub mod model;
pub mod note;
pub mod progress;
pub mod prompt;
pub mod server;
pub mod service;
pub mod store;
pub mod train;
