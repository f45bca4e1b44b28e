//! One optimizer step of any of the recipe's trainings: each micro-batch's loss is divided by the
//! number of micro-batches and back-propagated, the gradients accumulate, then [`Lamb`] steps every
//! parameter at the schedule's rate. Pretraining and fine-tuning differ only in the model, the
//! loss and the optimizer's configuration.

use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor};
use futures_lite::future::block_on;

use crate::optim::{Lamb, LambConfig, LrSchedule};

/// What one step did.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainStep {
    /// The optimizer step just taken (1-based).
    pub step: u64,
    /// Its learning rate.
    pub lr: f64,
    /// Each loss term summed over the micro-batches of `term / micro-batches` (the reference's
    /// logged values).
    pub losses: Vec<f64>,
    /// Global gradient norm before clipping.
    pub global_grad_norm: f64,
}

/// A model with its optimizer and schedule.
#[derive(Debug, Clone)]
pub struct Trainer<AB: AutodiffBackend, M: AutodiffModule<AB>> {
    /// The model being trained.
    pub model: M,
    /// The optimizer and its moments.
    pub optimizer: Lamb<AB::InnerBackend>,
    /// Learning rate by step.
    pub schedule: LrSchedule,
    /// Seed of dropout; re-seeded every step, so a resumed run draws the same masks.
    pub seed: u64,
    /// Where the model lives.
    pub device: AB::Device,
}

impl<AB: AutodiffBackend, M: AutodiffModule<AB>> Trainer<AB, M> {
    /// A trainer at step 0.
    pub fn new(
        model: M,
        optimizer: LambConfig,
        schedule: LrSchedule,
        seed: u64,
        device: AB::Device,
    ) -> Self {
        Self {
            model,
            optimizer: Lamb::new(optimizer),
            schedule,
            seed,
            device,
        }
    }

    /// Optimizer steps taken.
    pub fn step_count(&self) -> u64 {
        self.optimizer.step_count()
    }

    /// One optimizer step over `micro_batches`; `loss` gives the terms whose sum is minimised.
    ///
    /// Blocks until the device reports the losses; in a browser on WebGPU use
    /// [`Self::step_async`].
    pub fn step<T>(
        &mut self,
        micro_batches: &[T],
        loss: impl Fn(&M, &T) -> Vec<Tensor<AB, 1>>,
    ) -> TrainStep {
        block_on(self.step_async(micro_batches, loss))
    }

    /// [`Self::step`], reading the losses and gradient norm back without blocking.
    pub async fn step_async<T>(
        &mut self,
        micro_batches: &[T],
        loss: impl Fn(&M, &T) -> Vec<Tensor<AB, 1>>,
    ) -> TrainStep {
        let next = self.step_count() + 1;
        AB::seed(
            &self.device,
            self.seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(next),
        );
        let accumulation = micro_batches.len().max(1) as f64;
        let mut accumulator = GradientsAccumulator::new();
        let mut sums: Vec<Tensor<AB::InnerBackend, 1>> = Vec::new();
        for batch in micro_batches {
            let terms = loss(&self.model, batch);
            let objective = terms
                .iter()
                .cloned()
                .reduce(|a, b| a + b)
                .expect("a loss has at least one term")
                / accumulation;
            let grads = GradientsParams::from_grads(objective.backward(), &self.model);
            accumulator.accumulate(&self.model, grads);
            for (index, term) in terms.into_iter().enumerate() {
                let term = term.inner() / accumulation;
                if index < sums.len() {
                    sums[index] = sums[index].clone() + term;
                } else {
                    sums.push(term);
                }
            }
        }
        let grads = accumulator.grads();
        let lr = self.schedule.lr(next);
        let (model, global_grad_norm) = self.optimizer.step_module(lr, self.model.clone(), &grads);
        self.model = model;
        let mut losses = Vec::with_capacity(sums.len());
        for sum in sums {
            losses.push(scalar_async(sum).await);
        }
        TrainStep {
            step: next,
            lr,
            losses,
            global_grad_norm: scalar_async(global_grad_norm).await,
        }
    }
}

/// Mean cross-entropy of `logits` `[N, C]` against class ids `labels` `[N]`.
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, labels: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    let n = labels.dims()[0];
    log_softmax(logits, 1)
        .gather(1, labels.reshape([n, 1]))
        .neg()
        .mean()
}

/// Reads a `[1]` tensor back to the host (NaN when the device fails).
pub fn scalar<B: Backend>(tensor: Tensor<B, 1>) -> f64 {
    block_on(scalar_async(tensor))
}

/// [`scalar`] without blocking.
pub async fn scalar_async<B: Backend>(tensor: Tensor<B, 1>) -> f64 {
    match tensor.into_data_async().await {
        Ok(data) => data
            .convert::<f64>()
            .to_vec::<f64>()
            .map_or(f64::NAN, |v| v[0]),
        Err(_) => f64::NAN,
    }
}
