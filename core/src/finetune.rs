//! The plan of a fine-tuning run as the reference makes it (`run_squad.py`, `run_glue.py`): how
//! many optimizer steps `epochs` passes take, the linear warm-up/decay schedule over them, Adam
//! without bias correction, and which items form each step's micro-batches (shuffled per epoch).
//! The CLI and the browser both drive [`Trainer`] with it.

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use crate::data::PrepRng;
use crate::optim::{LambConfig, LrSchedule};
use crate::train::Trainer;

/// Why a fine-tuning plan is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FineTuningError {
    /// Nothing to train on.
    #[error("no training examples")]
    NoItems,
    /// The batch does not split into micro-batches.
    #[error("the batch size ({batch}) must be a positive multiple of the gradient accumulation steps ({accumulation})")]
    Batch {
        /// Sequences per optimizer step.
        batch: usize,
        /// Micro-batches per step.
        accumulation: usize,
    },
    /// A learning rate that cannot train.
    #[error("the learning rate must be positive and finite, not {0}")]
    LearningRate(f64),
}

/// A fine-tuning run's hyper-parameters (the reference's flags).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FineTuning {
    /// Sequences per optimizer step (`--train_batch_size`).
    pub train_batch_size: usize,
    /// Micro-batches per step (`--gradient_accumulation_steps`).
    pub gradient_accumulation_steps: usize,
    /// Peak learning rate (`--learning_rate`).
    pub learning_rate: f64,
    /// Passes over the data (`--num_train_epochs`).
    pub epochs: f64,
    /// Linear warm-up fraction (`--warmup_proportion`).
    pub warmup_proportion: f64,
    /// Cap on the optimizer steps (`--max_steps`).
    pub max_steps: Option<u64>,
    /// Seed of the data order and dropout (`--seed`).
    pub seed: u64,
}

impl FineTuning {
    /// Checks the settings against `items` training items and fixes the run's length.
    pub fn plan(&self, items: usize) -> Result<FineTuningPlan, FineTuningError> {
        self.plan_for_rank(items, 0, 1)
    }

    /// [`Self::plan`] for rank `rank` of a data-parallel job of `world_size` ranks, as the
    /// reference's `DistributedSampler`: `train_batch_size` is per rank, each epoch's shuffled
    /// order is padded (repeating its start) to a multiple of the world size, and every optimizer
    /// step gives each rank an equal share of `world_size * train_batch_size` items, so the
    /// averaged gradients are those of one rank with the whole batch.
    pub fn plan_for_rank(
        &self,
        items: usize,
        rank: usize,
        world_size: usize,
    ) -> Result<FineTuningPlan, FineTuningError> {
        assert!(rank < world_size, "rank {rank} of {world_size}");
        if items == 0 {
            return Err(FineTuningError::NoItems);
        }
        if self.train_batch_size == 0
            || self.gradient_accumulation_steps == 0
            || !self
                .train_batch_size
                .is_multiple_of(self.gradient_accumulation_steps)
        {
            return Err(FineTuningError::Batch {
                batch: self.train_batch_size,
                accumulation: self.gradient_accumulation_steps,
            });
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(FineTuningError::LearningRate(self.learning_rate));
        }
        let padded = items.next_multiple_of(world_size);
        let per_epoch = padded.div_ceil(self.train_batch_size * world_size) as f64;
        let steps = (per_epoch * self.epochs).ceil().max(1.0) as u64;
        let steps = self.max_steps.map_or(steps, |m| m.min(steps).max(1));
        Ok(FineTuningPlan {
            settings: self.clone(),
            items,
            steps,
            rank,
            world_size,
        })
    }
}

/// A checked fine-tuning run over a known number of items.
#[derive(Debug, Clone, PartialEq)]
pub struct FineTuningPlan {
    settings: FineTuning,
    items: usize,
    steps: u64,
    rank: usize,
    world_size: usize,
}

impl FineTuningPlan {
    /// Optimizer steps of the run.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Linear warm-up over `warmup_proportion` of the steps, then linear decay to zero.
    pub fn schedule(&self) -> LrSchedule {
        LrSchedule::LinearWarmUp {
            base_lr: self.settings.learning_rate,
            warmup: self.settings.warmup_proportion,
            total_steps: self.steps,
        }
    }

    /// A trainer for `model` with the reference's fine-tuning optimizer and this schedule.
    pub fn trainer<AB: AutodiffBackend, M: AutodiffModule<AB>>(
        &self,
        model: M,
        device: AB::Device,
    ) -> Trainer<AB, M> {
        Trainer::new(
            model,
            LambConfig::fine_tuning_adam(),
            self.schedule(),
            self.settings.seed,
            device,
        )
    }

    /// This rank's optimizer steps in order: for each, its epoch and its micro-batches as item
    /// indices. Each epoch visits every item once in a seeded shuffle (the same on every rank; a
    /// data-parallel epoch repeats its first items to fill the ranks evenly); the last batch of
    /// an epoch may be short.
    pub fn batches(&self) -> impl Iterator<Item = (u64, Vec<Vec<usize>>)> + '_ {
        let micro = self.settings.train_batch_size / self.settings.gradient_accumulation_steps;
        let (rank, world_size) = (self.rank, self.world_size);
        (0u64..)
            .flat_map(move |epoch| {
                let mut order: Vec<usize> = (0..self.items).collect();
                PrepRng::new(self.settings.seed, epoch).shuffle(&mut order);
                let padding = self.items.next_multiple_of(world_size) - self.items;
                order.extend_from_within(..padding);
                order
                    .chunks(self.settings.train_batch_size * world_size)
                    .map(|batch| {
                        let share = batch.len() / world_size;
                        let mine = &batch[rank * share..(rank + 1) * share];
                        (epoch, mine.chunks(micro).map(<[usize]>::to_vec).collect())
                    })
                    .collect::<Vec<_>>()
            })
            .take(self.steps as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> FineTuning {
        FineTuning {
            train_batch_size: 4,
            gradient_accumulation_steps: 2,
            learning_rate: 3e-5,
            epochs: 2.0,
            warmup_proportion: 0.1,
            max_steps: None,
            seed: 7,
        }
    }

    #[test]
    fn every_epoch_visits_every_item_once_in_micro_batches() {
        let plan = settings().plan(10).unwrap();
        assert_eq!(plan.steps(), 6);
        let steps: Vec<_> = plan.batches().collect();
        assert_eq!(steps.len(), 6);
        for epoch in 0..2 {
            let mut seen: Vec<usize> = steps
                .iter()
                .filter(|(e, _)| *e == epoch)
                .flat_map(|(_, micro)| micro.iter().flatten().copied())
                .collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..10).collect::<Vec<_>>());
        }
        assert!(steps[0].1.iter().all(|micro| micro.len() == 2));
        assert_ne!(steps[0].1, steps[3].1, "each epoch is shuffled anew");
    }

    #[test]
    fn data_parallel_ranks_split_each_step_of_the_single_rank_plan() {
        // Two ranks with batch 2 against one rank with batch 4, over 10 items: 3 steps an epoch.
        let per_rank = FineTuning {
            train_batch_size: 2,
            gradient_accumulation_steps: 1,
            ..settings()
        };
        let whole = FineTuning {
            train_batch_size: 4,
            gradient_accumulation_steps: 1,
            ..settings()
        };
        let single: Vec<_> = whole.plan(10).unwrap().batches().collect();
        let ranks: Vec<Vec<_>> = (0..2)
            .map(|rank| {
                let plan = per_rank.plan_for_rank(10, rank, 2).unwrap();
                assert_eq!(plan.steps(), 6);
                plan.batches().collect()
            })
            .collect();
        for (step, (epoch, micro_batches)) in single.iter().enumerate() {
            let together: Vec<usize> = ranks
                .iter()
                .flat_map(|steps| {
                    assert_eq!(steps[step].0, *epoch);
                    steps[step].1.concat()
                })
                .collect();
            assert_eq!(together, micro_batches.concat(), "step {step}");
            assert_eq!(
                ranks[0][step].1.concat().len(),
                ranks[1][step].1.concat().len()
            );
        }

        // Three ranks over 10 items: each epoch is padded to 12 with its first two items.
        let epoch: Vec<usize> = (0..3)
            .flat_map(|rank| {
                let plan = per_rank.plan_for_rank(10, rank, 3).unwrap();
                assert_eq!(plan.steps(), 4);
                plan.batches()
                    .take(2)
                    .flat_map(|(_, micro)| micro.concat())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(epoch.len(), 12);
        let mut distinct = epoch.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn max_steps_caps_the_run_and_bad_settings_are_refused() {
        let capped = FineTuning {
            max_steps: Some(2),
            ..settings()
        };
        assert_eq!(capped.plan(10).unwrap().batches().count(), 2);
        assert_eq!(settings().plan(0), Err(FineTuningError::NoItems));
        let uneven = FineTuning {
            gradient_accumulation_steps: 3,
            ..settings()
        };
        assert!(matches!(
            uneven.plan(10),
            Err(FineTuningError::Batch { .. })
        ));
        let nan = FineTuning {
            learning_rate: f64::NAN,
            ..settings()
        };
        assert!(matches!(
            nan.plan(10),
            Err(FineTuningError::LearningRate(_))
        ));
    }
}
