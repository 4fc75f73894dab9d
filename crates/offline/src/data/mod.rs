//! Datasets for training and evaluation: the dataset directory format ([`dataset`]) and the
//! sources that produce it.

pub mod appstream;
pub mod apt;
pub mod compress;
pub mod dataset;
pub mod deb822;
pub mod debian;
pub mod holdout;

pub use dataset::{DataError, Dataset, Pair, Part, Session, Split};
