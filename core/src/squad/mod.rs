//! SQuAD v1.1 (`run_squad.py`): the dataset format and its examples ([`data`]), the sliding-window
//! features ([`features`]), from logits to answers ([`postprocess`]), and the official metric
//! ([`metric`]).

pub mod data;
pub mod features;
pub mod metric;
pub mod postprocess;
pub mod predict;
pub mod train;

pub use data::{read_examples, SquadDataset, SquadExample};
pub use features::{convert_examples_to_features, features_batch, FeatureConfig, SquadFeature};
pub use metric::{evaluate, evaluate_answers, SquadScores};
pub use postprocess::{best_answers, Answer, AnswerConfig, WindowLogits};
pub use predict::{
    answers_by_question, predict_dataset_async, window_logits, window_logits_async, PredictError,
};
pub use train::qa_loss;
