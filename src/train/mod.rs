//! Training: related-pair mining from behaviour logs and the NoteLLM recipe (GCL + CSFT).

pub mod mining;

pub mod examples;
pub mod loss;
pub mod model;
pub mod optim;
pub mod trainer;
