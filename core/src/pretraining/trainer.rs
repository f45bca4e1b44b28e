//! One optimizer step of pretraining, as `run_pretraining.py` takes it (see [`Trainer`]): the
//! MLM + NSP loss of each micro-batch, accumulated, then NVLAMB; and masked-LM evaluation.

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use serde::{Deserialize, Serialize};

use super::batch::PretrainingBatch;
use crate::data::ShardArrays;
use crate::error::TrainingError;
use crate::model::BertForPreTraining;
use crate::optim::StepOutcome;
use crate::train::{scalar, Trainer};

/// What one optimizer step did, for the logs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// Optimizer steps taken after this one (1-based; unchanged when it was skipped).
    pub step: u64,
    /// Its learning rate.
    pub lr: f64,
    /// Sum over micro-batches of `(mlm + nsp) / accumulation`: the reference's logged loss.
    pub loss: f64,
    /// The masked-LM part.
    pub mlm_loss: f64,
    /// The next-sentence part.
    pub nsp_loss: f64,
    /// Global gradient norm before clipping (not finite when the step was skipped).
    pub global_grad_norm: f64,
    /// Whether the optimizer stepped or skipped an overflow.
    pub outcome: StepOutcome,
    /// The loss scale of the step's gradients (1 without scaling).
    pub loss_scale: f64,
    /// Sequences in the step (all micro-batches).
    pub sequences: usize,
    /// Masked tokens in the step.
    pub masked_tokens: usize,
}

/// Pretraining's trainer: [`BertForPreTraining`] under NVLAMB.
pub type Pretrainer<AB> = Trainer<AB, BertForPreTraining<AB>>;

impl<AB: AutodiffBackend> Trainer<AB, BertForPreTraining<AB>> {
    /// One optimizer step over `micro_batches` (their number is the accumulation); an error when
    /// training has diverged (see [`crate::optim::LossScaler`]).
    pub fn train_step(
        &mut self,
        micro_batches: &[ShardArrays],
    ) -> Result<StepReport, TrainingError> {
        let device = self.device.clone();
        let (sequences, masked_tokens) = micro_batches.iter().fold((0, 0), |(s, m), arrays| {
            let masked: usize = (0..arrays.num_instances)
                .map(|r| arrays.num_predictions(r))
                .sum();
            (s + arrays.num_instances, m + masked)
        });
        let step = self.step(micro_batches, |model, arrays| {
            let loss = model.pretraining_loss(&PretrainingBatch::new(arrays, &device));
            vec![loss.mlm, loss.nsp]
        })?;
        let (mlm_loss, nsp_loss) = (step.losses[0], step.losses[1]);
        Ok(StepReport {
            step: step.step,
            lr: step.lr,
            loss: mlm_loss + nsp_loss,
            mlm_loss,
            nsp_loss,
            global_grad_norm: step.global_grad_norm,
            outcome: step.outcome,
            loss_scale: step.loss_scale,
            sequences,
            masked_tokens,
        })
    }

    /// Masked-LM accuracy and loss of the current model on `batches` (no gradients, no dropout).
    pub fn evaluate(&self, batches: &[ShardArrays]) -> MlmEvaluation {
        evaluate(&self.model.valid(), batches, &self.device)
    }
}

/// Masked-LM quality on held-out batches.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MlmEvaluation {
    /// Fraction of masked tokens whose original id is the arg-max prediction.
    pub mlm_accuracy: f64,
    /// Mean masked-LM cross-entropy.
    pub mlm_loss: f64,
    /// Masked tokens evaluated.
    pub masked_tokens: usize,
}

/// Masked-LM accuracy and loss of `model` on `batches`.
pub fn evaluate<B: Backend>(
    model: &BertForPreTraining<B>,
    batches: &[ShardArrays],
    device: &B::Device,
) -> MlmEvaluation {
    let (mut correct, mut total, mut loss_sum) = (0usize, 0usize, 0.0f64);
    for arrays in batches {
        let batch = PretrainingBatch::<B>::new(arrays, device);
        if batch.num_masked == 0 {
            continue;
        }
        let output = model.bert.forward(batch.input.clone());
        let [rows, length, hidden] = output.sequence_output.dims();
        let masked = output
            .sequence_output
            .reshape([rows * length, hidden])
            .select(0, batch.masked_lm_index.clone());
        let logits = model
            .mlm
            .forward(masked, model.bert.word_embeddings(), model.bert.precision);
        let loss = crate::train::cross_entropy(logits.clone(), batch.masked_lm_labels.clone());
        let predicted: Vec<i64> = logits
            .argmax(1)
            .into_data()
            .convert::<i64>()
            .to_vec()
            .unwrap_or_default();
        let labels: Vec<i64> = batch
            .masked_lm_labels
            .into_data()
            .convert::<i64>()
            .to_vec()
            .unwrap_or_default();
        correct += predicted
            .iter()
            .zip(&labels)
            .filter(|(p, l)| p == l)
            .count();
        total += batch.num_masked;
        loss_sum += scalar(loss) * batch.num_masked as f64;
    }
    MlmEvaluation {
        mlm_accuracy: correct as f64 / total.max(1) as f64,
        mlm_loss: loss_sum / total.max(1) as f64,
        masked_tokens: total,
    }
}
