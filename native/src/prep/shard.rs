//! Stage 3, `shard`: documents (sentence per line, blank line between) to N training and M test
//! shard files of balanced size, never splitting a document. Two streaming passes: sizes, then
//! copying.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bert_core::data::{plan_shards, PrepRng, ShardId};
use bert_core::io::AtomicWriter;

use super::progress::bytes_bar;

/// Sharding parameters (`bertPrep.py`'s).
#[derive(Debug, Clone, Copy)]
pub struct ShardConfig {
    /// Training shards.
    pub n_training_shards: usize,
    /// Test shards.
    pub n_test_shards: usize,
    /// Fraction of documents that go to the test set.
    pub fraction_test_set: f64,
    /// Seed of the test split.
    pub seed: u64,
}

/// The file of a shard.
pub fn shard_path(dir: &Path, corpus: &str, shard: ShardId) -> PathBuf {
    match shard {
        ShardId::Training(k) => dir.join(format!("{corpus}_training_{k}.txt")),
        ShardId::Test(k) => dir.join(format!("{corpus}_test_{k}.txt")),
    }
}

/// Calls `document` with each document's lines (without the blank separator).
fn for_each_document(path: &Path, mut document: impl FnMut(&[String]) -> Result<()>) -> Result<()> {
    let reader = BufReader::new(
        File::open(path).with_context(|| format!("cannot read {}", path.display()))?,
    );
    let mut lines = Vec::new();
    for line in reader.lines() {
        let line = line.with_context(|| format!("{}: not UTF-8 text", path.display()))?;
        if line.is_empty() {
            if !lines.is_empty() {
                document(&lines)?;
                lines.clear();
            }
        } else {
            lines.push(line);
        }
    }
    if !lines.is_empty() {
        document(&lines)?;
    }
    Ok(())
}

/// Writes the shards of `input` into `dir`; returns the shard files written.
pub fn shard(input: &Path, dir: &Path, corpus: &str, config: &ShardConfig) -> Result<Vec<PathBuf>> {
    let mut sizes = Vec::new();
    for_each_document(input, |lines| {
        sizes.push(lines.iter().map(|l| l.len() as u64 + 1).sum());
        Ok(())
    })?;
    let plan = plan_shards(
        &sizes,
        config.n_training_shards,
        config.n_test_shards,
        config.fraction_test_set,
        &mut PrepRng::new(config.seed, 0),
    )
    .with_context(|| format!("cannot shard {}", input.display()))?;

    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let shards: Vec<ShardId> = (0..config.n_training_shards)
        .map(ShardId::Training)
        .chain((0..config.n_test_shards).map(ShardId::Test))
        .collect();
    let paths: Vec<PathBuf> = shards.iter().map(|&s| shard_path(dir, corpus, s)).collect();
    let mut writers = paths
        .iter()
        .map(|path| AtomicWriter::create(path))
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("cannot create shard files in {}", dir.display()))?;
    let writer_index = |shard: ShardId| match shard {
        ShardId::Training(k) => k,
        ShardId::Test(k) => config.n_training_shards + k,
    };
    let bar = bytes_bar("shard", sizes.iter().sum());
    let mut index = 0;
    for_each_document(input, |lines| {
        let shard = writer_index(plan[index]);
        let writer = &mut writers[shard];
        let written = lines
            .iter()
            .try_for_each(|line| writeln!(writer, "{line}"))
            .and_then(|()| writeln!(writer));
        written?;
        bar.inc(sizes[index]);
        index += 1;
        Ok(())
    })?;
    bar.finish_and_clear();
    for writer in writers {
        writer.commit()?;
    }
    Ok(paths)
}

/// The documents of a shard file: sentences as lines.
pub fn read_documents(path: &Path) -> Result<Vec<Vec<String>>> {
    let mut documents = Vec::new();
    for_each_document(path, |lines| {
        documents.push(lines.to_vec());
        Ok(())
    })?;
    Ok(documents)
}
