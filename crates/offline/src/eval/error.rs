//! Errors of the evaluation library: bad inputs name what is wrong; model and data errors pass
//! through unchanged.

use crate::data::DataError;
use notellm_model::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A test pair names a note that is not in the evaluated pool.
    #[error("pair {a} -> {b}: note {missing} is not in the pool of {pool} notes")]
    NotInPool { a: String, b: String, missing: String, pool: usize },
    /// Inputs that do not fit together (lengths, dimensions, options).
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = EvalError> = std::result::Result<T, E>;
