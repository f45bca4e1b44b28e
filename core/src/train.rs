//! One optimizer step of any of the recipe's trainings: each micro-batch's loss is divided by the
//! number of micro-batches and back-propagated, the gradients accumulate, then [`Lamb`] steps every
//! parameter at the schedule's rate. Pretraining and fine-tuning differ only in the model, the
//! loss and the optimizer's configuration.
//!
//! In a data-parallel job the accumulated gradients (and the losses, for the logs) are averaged
//! over the ranks before the step ([`DataParallel`]), once per optimizer step.
//!
//! Under float16 the loss is scaled before the backward pass and the step is skipped when a
//! gradient overflowed ([`LossScaler`]); at every precision a step whose gradients are not finite
//! changes nothing, and too many of them in a row end training with an error.

use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor};
use futures_lite::future::block_on;

use crate::distributed::DataParallel;
use crate::error::{CollectiveError, TrainingError};
use crate::model::cpu::on_pool;
use crate::optim::{module_params, Lamb, LambConfig, LossScaler, LrSchedule, StepOutcome};

/// What one step did.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainStep {
    /// Optimizer steps taken after this one (1-based; unchanged when it was skipped).
    pub step: u64,
    /// Its learning rate.
    pub lr: f64,
    /// Each loss term summed over the micro-batches of `term / micro-batches` (the reference's
    /// logged values).
    pub losses: Vec<f64>,
    /// Global gradient norm before clipping (inf or NaN when the step was skipped).
    pub global_grad_norm: f64,
    /// Whether the optimizer stepped.
    pub outcome: StepOutcome,
    /// The loss scale this step's gradients carried.
    pub loss_scale: f64,
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
    /// Loss scaling and the divergence guard (no scaling unless set).
    pub loss_scaler: LossScaler,
    /// The other ranks of a data-parallel job, if any: gradients and losses are averaged with
    /// them after accumulation.
    pub data_parallel: Option<DataParallel>,
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
            loss_scaler: LossScaler::default(),
            data_parallel: None,
        }
    }

    /// Joins a data-parallel job: the model becomes rank 0's, gradients and losses are averaged
    /// with the other ranks from the next step on, and this rank draws its own dropout masks
    /// (seed + rank, as the reference seeds its processes).
    pub fn join(&mut self, data_parallel: DataParallel) -> Result<(), CollectiveError> {
        self.model = data_parallel.broadcast_module(self.model.clone())?;
        self.seed = self
            .seed
            .wrapping_add(data_parallel.collective.rank() as u64);
        self.data_parallel = Some(data_parallel);
        Ok(())
    }

    /// Optimizer steps taken.
    pub fn step_count(&self) -> u64 {
        self.optimizer.step_count()
    }

    /// One optimizer step over `micro_batches`; `loss` gives the terms whose sum is minimised.
    /// A step with inf/NaN gradients is skipped (see [`LossScaler`]); an error means training
    /// has diverged and the model is the one before this step.
    ///
    /// Blocks until the device reports the losses; in a browser on WebGPU use
    /// [`Self::step_async`].
    pub fn step<T: Sync>(
        &mut self,
        micro_batches: &[T],
        loss: impl Fn(&M, &T) -> Vec<Tensor<AB, 1>> + Send,
    ) -> Result<TrainStep, TrainingError> {
        block_on(self.step_async(micro_batches, loss))
    }

    /// [`Self::step`], reading the losses and gradient norm back without blocking.
    ///
    /// On the CPU backend the forward and backward passes and the optimizer's update run on its
    /// pool's threads (see `model::cpu::on_pool`); the gradients' all-reduce does not, so that
    /// ranks which are threads of one process never wait for each other on a thread the pool
    /// may need.
    pub async fn step_async<T: Sync>(
        &mut self,
        micro_batches: &[T],
        loss: impl Fn(&M, &T) -> Vec<Tensor<AB, 1>> + Send,
    ) -> Result<TrainStep, TrainingError> {
        let next = self.step_count() + 1;
        AB::seed(
            &self.device,
            self.seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(next),
        );
        let accumulation = micro_batches.len().max(1) as f64;
        let loss_scale = self.loss_scaler.scale();
        // Borrowed mutably (and moved in) so that the closure is `Send` for a model that is only
        // `Send`.
        let model = &mut self.model;
        let (mut accumulator, mut sums) = on_pool::<AB, _>(move || {
            let model: &M = model;
            let mut accumulator = GradientsAccumulator::new();
            let mut sums: Vec<Tensor<AB::InnerBackend, 1>> = Vec::new();
            for batch in micro_batches {
                let terms = loss(model, batch);
                let objective = terms
                    .iter()
                    .cloned()
                    .reduce(|a, b| a + b)
                    .expect("a loss has at least one term")
                    * (loss_scale / accumulation);
                let grads = GradientsParams::from_grads(objective.backward(), model);
                accumulator.accumulate(model, grads);
                for (index, term) in terms.into_iter().enumerate() {
                    let term = term.inner() / accumulation;
                    if index < sums.len() {
                        sums[index] = sums[index].clone() + term;
                    } else {
                        sums.push(term);
                    }
                }
            }
            (accumulator, sums)
        });
        let grads = accumulator.grads();
        let (mut params, placement) = module_params(&self.model, &grads);
        // The gathered gradients are then the only holders of their buffers, which the CPU step
        // writes its results over.
        drop(grads);
        if let Some(data_parallel) = &self.data_parallel {
            data_parallel.average(&mut params, &mut sums)?;
        }
        // One fused reduction over every gradient, read back once: the overflow check.
        let squared_norm = self.optimizer.squared_grad_norm(&params);
        let scaled_norm = scalar_async(squared_norm.squared.clone()).await.sqrt();
        let outcome = self.loss_scaler.update(scaled_norm.is_finite())?;
        let lr = self.schedule.lr(next);
        let global_grad_norm = match outcome {
            StepOutcome::Applied => {
                let optimizer = &mut self.optimizer;
                let step = on_pool::<AB, _>(move || {
                    optimizer.step_scaled(lr, params, squared_norm, loss_scale)
                });
                self.model = placement.scatter(self.model.clone(), step.values);
                scaled_norm / loss_scale
            }
            StepOutcome::Skipped => scaled_norm,
        };
        let mut losses = Vec::with_capacity(sums.len());
        for sum in sums {
            losses.push(scalar_async(sum).await);
        }
        Ok(TrainStep {
            step: self.step_count(),
            lr,
            losses,
            global_grad_norm,
            outcome,
            loss_scale,
        })
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

#[cfg(all(test, feature = "ndarray"))]
mod tests {
    use super::*;
    use crate::distributed::Collective;
    use crate::model::{BertForSequenceClassification, TokenBatch};
    use crate::optim::{DivergenceGuard, LossScaling};
    use crate::BertConfig;
    use burn::backend::{Autodiff, NdArray};
    use burn::module::Module;
    use burn::tensor::TensorData;

    type AB = Autodiff<NdArray>;
    type Model = BertForSequenceClassification<AB>;

    /// A tiny classifier. Tests that compare trainers clone one model: the backend's seed is
    /// global, so concurrent tests could otherwise interleave their draws.
    fn model() -> Model {
        model_on()
    }

    /// [`model`] on backend `B`.
    fn model_on<B: AutodiffBackend>() -> BertForSequenceClassification<B> {
        let config = BertConfig {
            vocab_size: 30,
            hidden_size: 16,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            intermediate_size: 32,
            max_position_embeddings: 8,
            hidden_dropout_prob: 0.0,
            attention_probs_dropout_prob: 0.0,
            ..BertConfig::base()
        };
        let model = BertForSequenceClassification::new(&config, 2, &Default::default());
        // Parameters are initialised lazily, on first use: without this each clone would draw
        // its own values.
        let record = model.clone().into_record();
        model.load_record(record)
    }

    fn trainer<B: AutodiffBackend>(
        model: BertForSequenceClassification<B>,
        scaling: LossScaling,
    ) -> Trainer<B, BertForSequenceClassification<B>> {
        let mut trainer = Trainer::new(
            model,
            LambConfig::default(),
            LrSchedule::poly_warm_up(1e-2, 0.0, 100),
            1,
            Default::default(),
        );
        trainer.loss_scaler = LossScaler::new(scaling, DivergenceGuard::default());
        trainer
    }

    /// Mean cross-entropy of `rows` (token ids) against their `labels`.
    fn classification_loss<B: AutodiffBackend>(
        model: &BertForSequenceClassification<B>,
        rows: Vec<Vec<i64>>,
        labels: Vec<i64>,
    ) -> Tensor<B, 1> {
        let config = BertConfig {
            vocab_size: 30,
            max_position_embeddings: 8,
            ..BertConfig::base()
        };
        let device = Default::default();
        let count = labels.len();
        let batch = TokenBatch {
            input_ids: rows,
            token_type_ids: None,
            attention_mask: None,
        };
        let logits = model.forward(batch.to_input(&config, &device).unwrap());
        cross_entropy(
            logits,
            Tensor::from_data(TensorData::new(labels, [count]), &device),
        )
    }

    /// The loss of two fixed rows, times `factor` (inf injects an overflow).
    fn loss(model: &Model, factor: &f32) -> Vec<Tensor<AB, 1>> {
        let rows = vec![vec![2, 5, 6, 3], vec![2, 9, 7, 3]];
        vec![classification_loss(model, rows, vec![0, 1]) * *factor]
    }

    fn weights<B: AutodiffBackend>(
        trainer: &Trainer<B, BertForSequenceClassification<B>>,
    ) -> Vec<f32> {
        let layer = &trainer.model.bert.encoder.layers[0];
        let mut values = layer
            .attention
            .query
            .weight
            .val()
            .into_data()
            .to_vec()
            .unwrap();
        values.extend(
            trainer
                .model
                .classifier
                .weight
                .val()
                .into_data()
                .to_vec::<f32>()
                .unwrap(),
        );
        values
    }

    #[test]
    fn an_overflowing_gradient_skips_the_step_and_changes_no_weight() {
        let mut trainer = trainer(model(), LossScaling::dynamic());
        let before = weights(&trainer);
        let skipped = trainer.step(&[f32::INFINITY], loss).unwrap();
        assert_eq!(skipped.outcome, StepOutcome::Skipped);
        assert!(!skipped.global_grad_norm.is_finite());
        assert_eq!(
            weights(&trainer),
            before,
            "a skipped step changes no weight"
        );
        assert_eq!(trainer.step_count(), 0, "nor the schedule's step");
        assert!(trainer.optimizer.moments().is_empty(), "nor the moments");
        assert_eq!(trainer.loss_scaler.scale(), 2f64.powi(19));

        let applied = trainer.step(&[1.0], loss).unwrap();
        assert_eq!(applied.outcome, StepOutcome::Applied);
        assert_eq!(applied.step, 1);
        assert_eq!(applied.loss_scale, 2f64.powi(19));
        assert_ne!(weights(&trainer), before);
    }

    #[test]
    fn scaled_steps_equal_unscaled_ones() {
        let start = model();
        let mut plain = trainer(start.clone(), LossScaling::None);
        let mut scaled = trainer(start, LossScaling::Fixed(1024.0));
        for _ in 0..3 {
            let a = plain.step(&[1.0, 1.0], loss).unwrap();
            let b = scaled.step(&[1.0, 1.0], loss).unwrap();
            assert!((a.losses[0] - b.losses[0]).abs() < 1e-6, "{a:?} {b:?}");
            let relative = (a.global_grad_norm - b.global_grad_norm).abs() / a.global_grad_norm;
            assert!(relative < 1e-5, "{a:?} {b:?}");
        }
        for (a, b) in weights(&plain).iter().zip(weights(&scaled)) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    /// The loss of one sequence against its class.
    fn row_loss(model: &Model, row: &(Vec<i64>, i64)) -> Vec<Tensor<AB, 1>> {
        vec![classification_loss(model, vec![row.0.clone()], vec![row.1])]
    }

    #[test]
    fn two_ranks_equal_one_rank_with_twice_the_batch() {
        let rows: Vec<(Vec<i64>, i64)> = (0..8)
            .map(|i| (vec![2, 4 + i, 11 + 2 * i, 3], i % 2))
            .collect();
        // One rank: each step accumulates the four rows of both ranks' micro-batches.
        let start = model();
        let mut single = trainer(start.clone(), LossScaling::None);
        let mut single_losses = Vec::new();
        for step in rows.chunks(4) {
            single_losses.push(single.step(step, row_loss).unwrap().losses[0]);
        }
        // Two ranks: rank r takes rows r and r + 2 of each step (two micro-batches of one row).
        let handles: Vec<_> = crate::distributed::LocalGroup::ranks(2)
            .into_iter()
            .map(|rank| {
                let rows = rows.clone();
                let start = start.clone();
                std::thread::spawn(move || {
                    let r = rank.rank();
                    let mut trainer = trainer(start, LossScaling::None);
                    let data_parallel = DataParallel {
                        collective: std::sync::Arc::new(rank),
                        reduce_in_half: false,
                    };
                    if r == 1 {
                        // A different start: the broadcast from rank 0 must replace it.
                        let tripled = trainer.model.classifier.weight.val().inner() * 3.0;
                        trainer.model.classifier.weight =
                            burn::module::Param::from_tensor(Tensor::from_inner(tripled));
                    }
                    trainer.join(data_parallel).unwrap();
                    let mut losses = Vec::new();
                    for step in rows.chunks(4) {
                        let mine = [step[r].clone(), step[r + 2].clone()];
                        losses.push(trainer.step(&mine, row_loss).unwrap().losses[0]);
                    }
                    (weights(&trainer), losses)
                })
            })
            .collect();
        for handle in handles {
            let (weights_of_rank, losses) = handle.join().unwrap();
            for (a, b) in weights(&single).iter().zip(&weights_of_rank) {
                assert!((a - b).abs() < 1e-6, "{a} vs {b}");
            }
            for (a, b) in single_losses.iter().zip(&losses) {
                assert!((a - b).abs() < 1e-6, "logged loss {a} vs {b}");
            }
        }
    }

    #[test]
    fn ranks_on_threads_outnumbering_the_cpu_pool_all_finish() {
        // On Flex the passes run on rayon's pool, the all-reduce outside it: were it inside, ranks
        // that are threads of one process, more of them than the pool has threads, would hold
        // every pool thread waiting for a rank that needs one.
        type OnFlex = Autodiff<burn::backend::flex::Flex>;
        let ranks = rayon::current_num_threads() + 2;
        let start = model_on::<OnFlex>();
        let (done, finished) = std::sync::mpsc::channel();
        for rank in crate::distributed::LocalGroup::ranks(ranks) {
            let (start, done) = (start.clone(), done.clone());
            std::thread::spawn(move || {
                let r = rank.rank() as i64;
                let mut trainer = trainer(start, LossScaling::None);
                let data_parallel = DataParallel {
                    collective: std::sync::Arc::new(rank),
                    reduce_in_half: false,
                };
                trainer.join(data_parallel).unwrap();
                for step in 0..2 {
                    let rows = [vec![2, 4 + r, 5 + step, 3]];
                    trainer
                        .step(&rows, |model, row| {
                            vec![classification_loss(model, vec![row.clone()], vec![r % 2])]
                        })
                        .unwrap();
                }
                done.send(weights(&trainer)).unwrap();
            });
        }
        let timeout = std::time::Duration::from_secs(120);
        let weights: Vec<Vec<f32>> = (0..ranks)
            .map(|_| {
                finished
                    .recv_timeout(timeout)
                    .expect("every rank finishes its steps")
            })
            .collect();
        assert!(
            weights.iter().all(|w| w == &weights[0]),
            "the ranks' weights agree"
        );
    }

    #[test]
    fn diverging_training_stops_with_an_error() {
        let mut trainer = trainer(model(), LossScaling::None);
        trainer.loss_scaler.guard.max_consecutive_skips = 2;
        let before = weights(&trainer);
        trainer.step(&[f32::NAN], loss).unwrap();
        let error = trainer.step(&[f32::NAN], loss).unwrap_err();
        assert!(matches!(
            error,
            TrainingError::TooManySkippedSteps { skipped: 2, .. }
        ));
        assert_eq!(weights(&trainer), before);
    }
}
