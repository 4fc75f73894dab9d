//! The offline commands behind the CLI, as library functions over readers and writers so that
//! they are testable without a process.

pub mod data;
pub mod embed;
pub mod eval;
pub mod ingest;
