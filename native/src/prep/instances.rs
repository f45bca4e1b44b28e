//! Stages 4 and 5, `instances`: each text shard to masked-LM / next-sentence instances in an HDF5
//! file of NVIDIA's layout. Shards run in parallel, each with its own random stream, so the output
//! does not depend on the number of threads; finished shards are skipped on a re-run.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bert_core::data::{create_training_instances, InstanceConfig, PrepRng, ShardArrays, VocabInfo};
use bert_core::tokenizer::BertTokenizer;
use rayon::prelude::*;

use super::progress::items_bar;
use super::shard::read_documents;
use crate::shard_file::write_shard;

/// The reference's folder name for a set of instance parameters, e.g.
/// `hdf5_lower_case_1_seq_len_128_max_pred_20_masked_lm_prob_0.15_random_seed_12345_dupe_factor_5`.
pub fn hdf5_dir_name(lower_case: bool, config: &InstanceConfig, seed: u64) -> String {
    format!(
        "hdf5_lower_case_{}_seq_len_{}_max_pred_{}_masked_lm_prob_{}_random_seed_{}_dupe_factor_{}",
        u8::from(lower_case),
        config.max_seq_length,
        config.max_predictions_per_seq,
        config.masked_lm_prob,
        seed,
        config.dupe_factor
    )
}

/// What the generator needs of a tokenizer's vocabulary.
pub fn vocab_info(tokenizer: &BertTokenizer) -> Result<VocabInfo> {
    let id = |token: &str| {
        tokenizer
            .token_to_id(token)
            .with_context(|| format!("the vocabulary has no {token}"))
    };
    let is_continuation = (0..tokenizer.vocab_size() as u32)
        .map(|i| {
            tokenizer
                .id_to_token(i)
                .is_some_and(|t| t.starts_with("##"))
        })
        .collect();
    Ok(VocabInfo {
        cls: id("[CLS]")?,
        sep: id("[SEP]")?,
        mask: id("[MASK]")?,
        is_continuation,
    })
}

/// What `instances` did.
#[derive(Debug, Clone, Copy, Default)]
pub struct InstanceStats {
    /// Shards written in this run.
    pub shards_written: usize,
    /// Shards already present and skipped.
    pub shards_skipped: usize,
    /// Instances written in this run.
    pub instances: u64,
    /// Bytes of text read.
    pub input_bytes: u64,
}

/// The random stream of a shard, from its name (FNV-1a), so it does not depend on the order in
/// which shard files are listed or scheduled.
fn stream_of(stem: &str) -> u64 {
    stem.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Turns every text shard into `out_dir/<stem>.hdf5`.
pub fn instances(
    shards: &[PathBuf],
    out_dir: &Path,
    tokenizer: &BertTokenizer,
    config: &InstanceConfig,
    seed: u64,
) -> Result<InstanceStats> {
    if config.max_seq_length < 5 || config.max_predictions_per_seq == 0 {
        bail!("--max-seq-length must be at least 5 and --max-predictions-per-seq at least 1");
    }
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let vocab = vocab_info(tokenizer)?;
    let bar = items_bar("instances", shards.len() as u64, "shards");
    let results: Vec<Result<Option<(u64, u64)>>> = shards
        .par_iter()
        .map(|shard| {
            let stem = shard
                .file_stem()
                .context("shard has no name")?
                .to_string_lossy()
                .to_string();
            let output = out_dir.join(format!("{stem}.hdf5"));
            if output.exists() {
                bar.inc(1);
                return Ok(None);
            }
            let bytes = std::fs::metadata(shard)?.len();
            let documents = read_documents(shard)?
                .iter()
                .map(|sentences| {
                    sentences
                        .iter()
                        .map(|s| tokenizer.token_ids(s))
                        .filter(|ids| !matches!(ids, Ok(ids) if ids.is_empty()))
                        .collect::<Result<Vec<_>, _>>()
                })
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("cannot tokenize {}", shard.display()))?;
            let mut rng = PrepRng::new(seed, stream_of(&stem));
            let instances = create_training_instances(documents, config, &vocab, &mut rng);
            if instances.is_empty() {
                bail!("{}: no instances (documents too short?)", shard.display());
            }
            let arrays = ShardArrays::from_instances(
                &instances,
                config.max_seq_length,
                config.max_predictions_per_seq,
            );
            let errors = arrays.validate(vocab.vocab_size(), 5);
            if !errors.is_empty() {
                bail!(
                    "internal error: {} would be invalid: {}",
                    output.display(),
                    errors.join("; ")
                );
            }
            write_shard(&output, &arrays)?;
            bar.inc(1);
            Ok(Some((arrays.num_instances as u64, bytes)))
        })
        .collect();
    bar.finish_and_clear();
    let mut stats = InstanceStats::default();
    for result in results {
        match result? {
            Some((instances, bytes)) => {
                stats.shards_written += 1;
                stats.instances += instances;
                stats.input_bytes += bytes;
            }
            None => stats.shards_skipped += 1,
        }
    }
    Ok(stats)
}
