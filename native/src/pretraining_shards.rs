//! `PretrainingShards`: the training-side reader of HDF5 shards. It lists the `*training*` files
//! of a folder, follows the reference's file and sample order for its rank ([`SampleOrder`]),
//! keeps one shard in memory, loads the next on a background thread while the current one is
//! consumed, and reports a [`DataPosition`] from which a new reader continues exactly.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use anyhow::{anyhow, bail, Context, Result};
use bert_core::data::{DataPosition, SampleOrder, ShardArrays};

use crate::shard_file::read_valid_shard;

/// What every shard must look like.
#[derive(Debug, Clone, Copy)]
pub struct ShardExpectation {
    /// `L`: tokens per instance.
    pub max_seq_length: usize,
    /// `P`: masked positions per instance.
    pub max_predictions_per_seq: usize,
    /// Ids must be below this.
    pub vocab_size: usize,
}

/// How a rank reads the shards.
#[derive(Debug, Clone, Copy)]
pub struct ReaderConfig {
    /// Seed of the file and sample order.
    pub seed: u64,
    /// This process's rank.
    pub rank: usize,
    /// Number of ranks.
    pub world_size: usize,
    /// Rows per micro-batch.
    pub batch_size: usize,
    /// `false` reads files and samples in order (`--no-shuffle`).
    pub shuffle: bool,
    /// The shape every shard must have.
    pub expectation: ShardExpectation,
}

/// The training files of a folder: names containing `training`, sorted (the reference's list).
pub fn training_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        if name.contains("training") && entry.file_type()?.is_file() {
            files.push(entry.path());
        }
    }
    files.sort();
    if files.is_empty() {
        bail!(
            "{}: no files whose name contains \"training\"",
            dir.display()
        );
    }
    Ok(files)
}

/// A shard loaded in memory with the order its samples are read in.
struct LoadedShard {
    arrays: ShardArrays,
    order: Vec<usize>,
}

/// Reads micro-batches of one rank's share of the training shards.
pub struct PretrainingShards {
    files: Vec<PathBuf>,
    order: SampleOrder,
    expectation: ShardExpectation,
    batch_size: usize,
    position: DataPosition,
    current: Option<LoadedShard>,
    prefetch: Option<(DataPosition, JoinHandle<Result<ShardArrays>>)>,
}

impl PretrainingShards {
    /// A reader over the training files of `dir`, starting at `position` (the default position
    /// starts at the beginning).
    pub fn open(dir: &Path, config: ReaderConfig, position: DataPosition) -> Result<Self> {
        if config.batch_size == 0 {
            bail!("the micro-batch size must be at least 1");
        }
        let files = training_files(dir)?;
        let order = SampleOrder::new(files.len(), config.seed, config.rank, config.world_size);
        let order = if config.shuffle {
            order
        } else {
            order.without_shuffle()
        };
        Ok(Self {
            files,
            order,
            expectation: config.expectation,
            batch_size: config.batch_size,
            position,
            current: None,
            prefetch: None,
        })
    }

    /// The training files, sorted.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The position of the next sample to be read: save it to resume.
    pub fn position(&self) -> DataPosition {
        self.position
    }

    /// The next micro-batch (the last of a shard may be smaller, as in the reference).
    pub fn next_batch(&mut self) -> Result<ShardArrays> {
        loop {
            if self.current.is_none() {
                self.load_current()?;
            }
            let shard = self.current.as_ref().expect("loaded above");
            if self.position.sample < shard.order.len() {
                let end = (self.position.sample + self.batch_size).min(shard.order.len());
                let batch = shard
                    .arrays
                    .select_rows(&shard.order[self.position.sample..end]);
                self.position.sample = end;
                return Ok(batch);
            }
            self.position = self.order.next_file(self.position);
            self.current = None;
        }
    }

    /// Loads the shard of the current position (from the prefetch when it is the one), then
    /// starts loading the following one.
    fn load_current(&mut self) -> Result<()> {
        let file = self.file_at(self.position);
        let arrays = match self.prefetch.take() {
            Some((position, handle))
                if (position.epoch, position.file_step)
                    == (self.position.epoch, self.position.file_step) =>
            {
                handle
                    .join()
                    .map_err(|_| anyhow!("the shard prefetch thread panicked"))??
            }
            _ => load(&file, self.expectation)?,
        };
        let order = self.order.samples(
            self.position.epoch,
            self.position.file_step,
            arrays.num_instances,
        );
        if self.position.sample > order.len() {
            bail!(
                "{}: the saved position (sample {}) is beyond its {} samples: the data changed since the checkpoint",
                file.display(),
                self.position.sample,
                order.len()
            );
        }
        self.current = Some(LoadedShard { arrays, order });

        let next = self.order.next_file(self.position);
        let next_file = self.file_at(next);
        let expectation = self.expectation;
        let handle = std::thread::Builder::new()
            .name("shard-prefetch".into())
            .spawn(move || load(&next_file, expectation))
            .context("cannot start the shard prefetch thread")?;
        self.prefetch = Some((next, handle));
        Ok(())
    }

    fn file_at(&self, position: DataPosition) -> PathBuf {
        self.files[self.order.file(position.epoch, position.file_step)].clone()
    }
}

/// Reads and validates a shard and checks it has the configured shape.
fn load(path: &Path, expectation: ShardExpectation) -> Result<ShardArrays> {
    let arrays = read_valid_shard(path, expectation.vocab_size)?;
    if arrays.max_seq_length != expectation.max_seq_length
        || arrays.max_predictions_per_seq != expectation.max_predictions_per_seq
    {
        bail!(
            "{}: shard has max_seq_length {} and max_predictions_per_seq {}, training expects {} and {}",
            path.display(),
            arrays.max_seq_length,
            arrays.max_predictions_per_seq,
            expectation.max_seq_length,
            expectation.max_predictions_per_seq
        );
    }
    Ok(arrays)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bert_tests::fixture;

    const EXPECT: ShardExpectation = ShardExpectation {
        max_seq_length: 128,
        max_predictions_per_seq: 20,
        vocab_size: 30522,
    };

    fn config(
        seed: u64,
        rank: usize,
        world_size: usize,
        batch_size: usize,
        expectation: ShardExpectation,
    ) -> ReaderConfig {
        ReaderConfig {
            seed,
            rank,
            world_size,
            batch_size,
            shuffle: true,
            expectation,
        }
    }

    /// A folder with three training shards (the reference's tiny shard, rows rotated) and a test one.
    fn shard_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("bert-native-reader-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let golden = read_valid_shard(&fixture("hdf5/tiny_seq128_training_0.hdf5"), 30522).unwrap();
        let n = golden.num_instances;
        for k in 0..3 {
            let rows: Vec<usize> = (0..n - k).map(|r| (r + k) % n).collect();
            crate::shard_file::write_shard(
                &dir.join(format!("c_training_{k}.hdf5")),
                &golden.select_rows(&rows),
            )
            .unwrap();
        }
        crate::shard_file::write_shard(&dir.join("c_test_0.hdf5"), &golden).unwrap();
        dir
    }

    fn read(reader: &mut PretrainingShards, batches: usize) -> Vec<ShardArrays> {
        (0..batches).map(|_| reader.next_batch().unwrap()).collect()
    }

    #[test]
    fn reads_every_training_sample_once_per_epoch_and_resumes_exactly() {
        let dir = shard_dir("resume");
        let open = |position| {
            PretrainingShards::open(&dir, config(12345, 0, 1, 5, EXPECT), position).unwrap()
        };
        let mut reader = open(DataPosition::default());
        assert_eq!(reader.files().len(), 3, "test shards are not read");
        // 16 + 15 + 14 samples in batches of 5: 4 + 3 + 3 batches per epoch.
        let epoch = read(&mut reader, 10);
        let rows: usize = epoch.iter().map(|b| b.num_instances).sum();
        assert_eq!(rows, 45);
        assert_eq!(reader.position().epoch, 0);
        let straight = read(&mut reader, 7);

        let mut first = open(DataPosition::default());
        read(&mut first, 12);
        let saved = first.position();
        let mut resumed = open(saved);
        assert_eq!(read(&mut resumed, 5), straight[2..7].to_vec());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn two_ranks_split_the_files() {
        let dir = shard_dir("ranks");
        let mut a =
            PretrainingShards::open(&dir, config(1, 0, 2, 64, EXPECT), DataPosition::default())
                .unwrap();
        let mut b =
            PretrainingShards::open(&dir, config(1, 1, 2, 64, EXPECT), DataPosition::default())
                .unwrap();
        let (first_a, first_b) = (a.next_batch().unwrap(), b.next_batch().unwrap());
        assert_ne!(
            first_a.num_instances, first_b.num_instances,
            "different shards (16/15/14 rows)"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_shards_of_another_shape_or_a_broken_one() {
        let dir = shard_dir("shape");
        let wrong = ShardExpectation {
            max_seq_length: 512,
            ..EXPECT
        };
        let mut reader =
            PretrainingShards::open(&dir, config(1, 0, 1, 4, wrong), DataPosition::default())
                .unwrap();
        let error = format!("{:#}", reader.next_batch().unwrap_err());
        assert!(
            error.contains("max_seq_length 128") && error.contains("c_training_"),
            "{error}"
        );

        std::fs::copy(
            fixture("hdf5/bad/masked_positions_descending.hdf5"),
            dir.join("c_training_1.hdf5"),
        )
        .unwrap();
        let mut reader =
            PretrainingShards::open(&dir, config(1, 0, 1, 64, EXPECT), DataPosition::default())
                .unwrap();
        let error = (0..4)
            .find_map(|_| reader.next_batch().err())
            .expect("the broken shard is reached");
        assert!(
            format!("{error:#}").contains("c_training_1.hdf5"),
            "{error:#}"
        );

        let empty = dir.join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let error =
            PretrainingShards::open(&empty, config(1, 0, 1, 4, EXPECT), DataPosition::default())
                .err()
                .unwrap();
        assert!(error.to_string().contains("training"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
