//! The offline tools: dataset building (`data`, pair mining), training (`train`), evaluation
//! against baselines (`eval`), notes JSONL (`jsonl`), progress bars, and the offline commands
//! (`commands`) as library functions over readers and writers.
//!
//! Layer rule: beside the HTTP layer, over `notellm-service` (bulk ingest goes through the
//! service's pipeline), `notellm-model`, `notellm-artifacts` and `notellm-index`; the serving
//! crates never depend on it.

pub mod commands;
pub mod data;
pub mod eval;
pub mod jsonl;
pub mod progress;
pub mod train;
