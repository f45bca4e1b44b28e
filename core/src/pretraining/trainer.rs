//! One optimizer step of pretraining, as `run_pretraining.py` takes it: each micro-batch's loss is
//! divided by the accumulation steps and back-propagated, the gradients accumulate, then NVLAMB
//! steps every parameter at the schedule's rate for the next step.

use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::batch::PretrainingBatch;
use crate::data::ShardArrays;
use crate::model::BertForPreTraining;
use crate::optim::{Lamb, LambConfig, LrSchedule};

/// What one optimizer step did, for the logs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// The optimizer step just taken (1-based).
    pub step: u64,
    /// Its learning rate.
    pub lr: f64,
    /// Sum over micro-batches of `(mlm + nsp) / accumulation`: the reference's logged loss.
    pub loss: f64,
    /// The masked-LM part.
    pub mlm_loss: f64,
    /// The next-sentence part.
    pub nsp_loss: f64,
    /// Global gradient norm before clipping.
    pub global_grad_norm: f64,
    /// Sequences in the step (all micro-batches).
    pub sequences: usize,
    /// Masked tokens in the step.
    pub masked_tokens: usize,
}

/// The model, its optimizer and the schedule: everything a step changes.
#[derive(Debug, Clone)]
pub struct Pretrainer<AB: AutodiffBackend> {
    /// The model being trained.
    pub model: BertForPreTraining<AB>,
    /// NVLAMB and its moments.
    pub optimizer: Lamb<AB::InnerBackend>,
    /// Learning rate by step.
    pub schedule: LrSchedule,
    /// Seed of dropout (re-seeded per step, so a resumed run draws the same masks).
    pub seed: u64,
    device: AB::Device,
}

impl<AB: AutodiffBackend> Pretrainer<AB> {
    /// A trainer at step 0.
    pub fn new(
        model: BertForPreTraining<AB>,
        lamb: LambConfig,
        schedule: LrSchedule,
        seed: u64,
        device: AB::Device,
    ) -> Self {
        Self {
            model,
            optimizer: Lamb::new(lamb),
            schedule,
            seed,
            device,
        }
    }

    /// Optimizer steps taken.
    pub fn step(&self) -> u64 {
        self.optimizer.step_count()
    }

    /// One optimizer step over `micro_batches` (their number is the accumulation).
    pub fn train_step(&mut self, micro_batches: &[ShardArrays]) -> StepReport {
        let next = self.step() + 1;
        AB::seed(
            &self.device,
            self.seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(next),
        );
        let accumulation = micro_batches.len().max(1) as f64;
        let mut accumulator = GradientsAccumulator::new();
        let mut mlm_sum: Option<Tensor<AB::InnerBackend, 1>> = None;
        let mut nsp_sum: Option<Tensor<AB::InnerBackend, 1>> = None;
        let (mut sequences, mut masked_tokens) = (0, 0);
        for arrays in micro_batches {
            let batch = PretrainingBatch::<AB>::new(arrays, &self.device);
            sequences += batch.num_rows;
            masked_tokens += batch.num_masked;
            let loss = self.model.pretraining_loss(&batch);
            let scaled = loss.total() / accumulation;
            let grads = GradientsParams::from_grads(scaled.backward(), &self.model);
            accumulator.accumulate(&self.model, grads);
            let add = |sum: Option<Tensor<AB::InnerBackend, 1>>, part: Tensor<AB, 1>| {
                let part = part.inner() / accumulation;
                Some(match sum {
                    Some(sum) => sum + part,
                    None => part,
                })
            };
            mlm_sum = add(mlm_sum, loss.mlm);
            nsp_sum = add(nsp_sum, loss.nsp);
        }
        let grads = accumulator.grads();
        let lr = self.schedule.lr(next);
        let (model, global_grad_norm) = self.optimizer.step_module(lr, self.model.clone(), &grads);
        self.model = model;
        let (mlm_loss, nsp_loss) = (mlm_sum.map_or(0.0, scalar), nsp_sum.map_or(0.0, scalar));
        StepReport {
            step: next,
            lr,
            loss: mlm_loss + nsp_loss,
            mlm_loss,
            nsp_loss,
            global_grad_norm: scalar(global_grad_norm),
            sequences,
            masked_tokens,
        }
    }

    /// Masked-LM accuracy and loss of the current model on `batches` (no gradients, no dropout).
    pub fn evaluate(&self, batches: &[ShardArrays]) -> MlmEvaluation {
        evaluate(&self.model.valid(), batches, &self.device)
    }
}

/// Reads a `[1]` tensor back to the host.
fn scalar<B: Backend>(tensor: Tensor<B, 1>) -> f64 {
    tensor
        .into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .map_or(f64::NAN, |v| v[0])
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
        let logits = model.mlm.forward(masked, model.bert.word_embeddings());
        let loss = super::loss::cross_entropy(logits.clone(), batch.masked_lm_labels.clone());
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
