//! Pretraining (`run_pretraining.py`): micro-batches from shards ([`batch`]), the MLM + NSP
//! objective ([`loss`]), and the accumulate-then-NVLAMB step ([`trainer`]). Reading shards,
//! checkpoint files and logs are the binary's.

pub mod batch;
pub mod checkpoint;
pub mod loss;
pub mod trainer;

pub use batch::PretrainingBatch;
pub use loss::PretrainingLoss;
pub use trainer::{evaluate, MlmEvaluation, Pretrainer, StepReport};
