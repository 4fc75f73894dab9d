//! Training: related-pair mining from behaviour logs, the NoteLLM recipe (GCL + CSFT) and
//! causal-LM pre-training of from-scratch checkpoints.

pub mod mining;

pub mod encoder;
pub mod examples;
pub mod frozen;
pub mod lm;
pub mod loss;
pub mod micl;
pub mod model;
pub mod notellm;
pub mod objective;
pub mod optim;
pub mod trainer;
