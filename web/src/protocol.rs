//! What the page and its training worker say to each other. Messages travel as JSON text; the
//! model files and the trained weights travel beside them as byte arrays.

use bert_core::finetune::FineTuning;
use serde::{Deserialize, Serialize};

/// Which backend to train or answer on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BackendChoice {
    /// WebGPU when the browser offers an adapter, else the CPU.
    #[default]
    Auto,
    /// burn's CPU backend compiled to wasm.
    Cpu,
}

impl BackendChoice {
    /// From a page address's `backend` query parameter (`cpu`; anything else is automatic).
    pub fn from_query(value: Option<&str>) -> Self {
        match value {
            Some("cpu") => Self::Cpu,
            _ => Self::Auto,
        }
    }
}

/// The questions to fine-tune on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TrainingData {
    /// `bert-native quickstart`'s fictional encyclopedia, generated in the browser.
    Synthetic {
        /// People in the encyclopedia (its size grows with them).
        people: usize,
    },
    /// A SQuAD v1.1 JSON file the visitor uploaded.
    Uploaded {
        /// Its file name (for messages).
        name: String,
        /// Its text.
        json: String,
    },
}

/// A fine-tuning request (the model files come beside it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainRequest {
    /// Batch, learning rate, epochs, warm-up, seed.
    pub settings: FineTuning,
    /// What to train on.
    pub data: TrainingData,
    /// Part of the paragraphs held out to score before and after.
    pub held_out_fraction: f64,
    /// Tokens per window.
    pub max_seq_length: usize,
    /// Tokens between window starts.
    pub doc_stride: usize,
    /// Where to train.
    pub backend: BackendChoice,
}

/// When a held-out score was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Before the first step.
    Before,
    /// After the last.
    After,
}

/// What the worker reports, in order: `Backend`, `Data`, `Evaluated` (before), `Step`s,
/// `Evaluated` (after), `Finished` (with the weights); or `Failed` at any point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TrainEvent {
    /// The backend the worker trains on.
    Backend {
        /// The WebGPU adapter's name, or "CPU (wasm)".
        label: String,
    },
    /// The data, split and windowed.
    Data {
        /// Training questions.
        train_questions: usize,
        /// Held-out questions.
        held_out_questions: usize,
        /// Training windows.
        windows: usize,
        /// Optimizer steps planned.
        steps: u64,
    },
    /// Exact match and F1 on the held-out questions.
    Evaluated {
        /// Before or after training.
        phase: Phase,
        /// Exact match (0-100).
        exact_match: f64,
        /// F1 (0-100).
        f1: f64,
    },
    /// One optimizer step done.
    Step {
        /// Its number (1-based).
        step: u64,
        /// Steps planned.
        steps: u64,
        /// Its loss.
        loss: f64,
        /// Its learning rate.
        lr: f64,
        /// Seconds since training began.
        elapsed_s: f64,
    },
    /// Training is over; the weights (safetensors) and `config.json` come beside this message.
    Finished {
        /// Training seconds.
        seconds: f64,
        /// Training sequences per second.
        sequences_per_second: f64,
    },
    /// Training stopped.
    Failed {
        /// Why.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_events_survive_the_json_round_trip() {
        let request = TrainRequest {
            settings: FineTuning {
                train_batch_size: 8,
                gradient_accumulation_steps: 1,
                learning_rate: 2e-4,
                epochs: 1.0,
                warmup_proportion: 0.1,
                max_steps: Some(5),
                seed: 1,
            },
            data: TrainingData::Synthetic { people: 20 },
            held_out_fraction: 0.2,
            max_seq_length: 128,
            doc_stride: 64,
            backend: BackendChoice::Cpu,
        };
        let text = serde_json::to_string(&request).unwrap();
        assert_eq!(
            serde_json::from_str::<TrainRequest>(&text).unwrap(),
            request
        );
        let event: TrainEvent = serde_json::from_str(
            r#"{"kind":"evaluated","phase":"after","exact_match":50.0,"f1":60.0}"#,
        )
        .unwrap();
        assert_eq!(
            event,
            TrainEvent::Evaluated {
                phase: Phase::After,
                exact_match: 50.0,
                f1: 60.0
            }
        );
        assert_eq!(BackendChoice::from_query(Some("cpu")), BackendChoice::Cpu);
        assert_eq!(BackendChoice::from_query(None), BackendChoice::Auto);
    }
}
