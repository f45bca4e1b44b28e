//! The order in which a rank reads pretraining shards and their samples, as `run_pretraining.py`
//! does it, and the position that makes a resumed run read exactly what the interrupted one would
//! have.
//!
//! Per epoch the sorted list of `*training*` files is shuffled with the seed `seed + epoch`; at file
//! step `f` rank `r` of `world` reads `files[(f * world + r) % n]` (plus the reference's remainder
//! term when there are more ranks than files); inside a file the samples are visited in a random
//! permutation (the reference's `RandomSampler`), drawn here from a stream of its own per (epoch,
//! file step, rank) so no generator state has to be saved.

use serde::{Deserialize, Serialize};

use super::rng::PrepRng;

/// Where a rank is in its stream of samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DataPosition {
    /// Passes over the files completed.
    pub epoch: u64,
    /// Files of this epoch completed.
    pub file_step: usize,
    /// Samples of the current file consumed.
    pub sample: usize,
}

/// The reference's file and sample order for one rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleOrder {
    num_files: usize,
    seed: u64,
    rank: usize,
    world_size: usize,
    shuffle: bool,
}

/// Stream of the file shuffles (sample permutations use streams derived from their position).
const FILE_STREAM: u64 = u64::MAX;

impl SampleOrder {
    /// The order for `rank` of `world_size` over `num_files` sorted files.
    pub fn new(num_files: usize, seed: u64, rank: usize, world_size: usize) -> Self {
        assert!(num_files > 0 && world_size > 0 && rank < world_size);
        Self {
            num_files,
            seed,
            rank,
            world_size,
            shuffle: true,
        }
    }

    /// Files in sorted order and samples in file order (`--no-shuffle`, for parity checks).
    pub fn without_shuffle(self) -> Self {
        Self {
            shuffle: false,
            ..self
        }
    }

    /// Files read per epoch (one per file step).
    pub fn file_steps(&self) -> usize {
        self.num_files
    }

    /// Index in the sorted file list of the file read at `file_step` of `epoch`.
    pub fn file(&self, epoch: u64, file_step: usize) -> usize {
        let mut files: Vec<usize> = (0..self.num_files).collect();
        if self.shuffle {
            PrepRng::new(self.seed.wrapping_add(epoch), FILE_STREAM).shuffle(&mut files);
        }
        let remainder = if self.world_size > self.num_files {
            self.world_size % self.num_files
        } else {
            0
        };
        files[(file_step * self.world_size + self.rank + remainder * file_step) % self.num_files]
    }

    /// The permutation in which this rank visits the `num_samples` samples read at `file_step`.
    pub fn samples(&self, epoch: u64, file_step: usize, num_samples: usize) -> Vec<usize> {
        let stream = (epoch << 40) ^ ((file_step as u64) << 20) ^ self.rank as u64;
        let mut order: Vec<usize> = (0..num_samples).collect();
        if self.shuffle {
            PrepRng::new(self.seed, stream).shuffle(&mut order);
        }
        order
    }

    /// The position after `position` once the current file is exhausted.
    pub fn next_file(&self, position: DataPosition) -> DataPosition {
        if position.file_step + 1 < self.num_files {
            DataPosition {
                epoch: position.epoch,
                file_step: position.file_step + 1,
                sample: 0,
            }
        } else {
            DataPosition {
                epoch: position.epoch + 1,
                file_step: 0,
                sample: 0,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_read_disjoint_files_and_every_file_each_epoch() {
        let orders: Vec<SampleOrder> = (0..4)
            .map(|rank| SampleOrder::new(8, 42, rank, 4))
            .collect();
        for epoch in 0..3 {
            let mut seen: Vec<usize> = Vec::new();
            for file_step in 0..2 {
                let step: Vec<usize> = orders.iter().map(|o| o.file(epoch, file_step)).collect();
                let mut unique = step.clone();
                unique.sort();
                unique.dedup();
                assert_eq!(
                    unique.len(),
                    4,
                    "ranks read different files at a step: {step:?}"
                );
                seen.extend(step);
            }
            seen.sort();
            assert_eq!(
                seen,
                (0..8).collect::<Vec<_>>(),
                "8 files over 2 steps of 4 ranks"
            );
        }
        assert_ne!(
            (0..8).map(|f| orders[0].file(0, f)).collect::<Vec<_>>(),
            (0..8).map(|f| orders[0].file(1, f)).collect::<Vec<_>>(),
            "each epoch reshuffles"
        );
    }

    #[test]
    fn more_ranks_than_files_follow_the_reference_remainder() {
        // world 5 over 2 files: remainder 1 shifts the file every step.
        let order = SampleOrder::new(2, 0, 3, 5);
        let mut files: Vec<usize> = (0..2).collect();
        PrepRng::new(0, FILE_STREAM).shuffle(&mut files);
        assert_eq!(order.file(0, 0), files[3 % 2]);
        assert_eq!(order.file(0, 1), files[(5 + 3 + 1) % 2]);
    }

    #[test]
    fn sample_orders_are_permutations_reproducible_by_position() {
        let order = SampleOrder::new(3, 7, 1, 2);
        let a = order.samples(2, 1, 100);
        assert_eq!(a, order.samples(2, 1, 100));
        assert_ne!(a, order.samples(2, 2, 100));
        assert_ne!(a, SampleOrder::new(3, 7, 0, 2).samples(2, 1, 100));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn without_shuffle_reads_in_file_order() {
        let order = SampleOrder::new(3, 7, 0, 1).without_shuffle();
        assert_eq!(
            (0..3).map(|f| order.file(5, f)).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert_eq!(order.samples(5, 1, 6), [0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn positions_roll_over_files_then_epochs() {
        let order = SampleOrder::new(2, 0, 0, 1);
        let start = DataPosition::default();
        let second = order.next_file(DataPosition { sample: 9, ..start });
        assert_eq!(
            second,
            DataPosition {
                epoch: 0,
                file_step: 1,
                sample: 0
            }
        );
        assert_eq!(
            order.next_file(second),
            DataPosition {
                epoch: 1,
                file_step: 0,
                sample: 0
            }
        );
    }
}
