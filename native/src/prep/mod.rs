//! `bert-native prep`: text corpus to NVIDIA-compatible HDF5 pretraining shards, in stages
//! (`format`, `segment`, `shard`, `instances`) or all at once (`all`), plus `validate`.
//!
//! Under `--output-dir DIR`: `formatted/CORPUS.txt` (a document per line),
//! `sentences/CORPUS.txt` (a sentence per line, blank line between documents),
//! `sharded/CORPUS_{training,test}_K.txt`, and the reference's
//! `hdf5_lower_case_1_seq_len_128_.../CORPUS/CORPUS_training_K.hdf5`. Every file is written
//! atomically; a re-run skips the stages and shards already done.

mod format;
mod instances;
pub(crate) mod progress;
mod segment;
mod shard;
pub mod wiki;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bert_core::data::InstanceConfig;
use bert_core::tokenizer::BertTokenizer;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::dllogger::DlLogger;
use crate::shard_file::read_valid_shard;

/// The `prep` stages.
#[derive(Debug, Subcommand)]
pub enum PrepCommand {
    /// Stage 1: a Wikipedia dump (*.xml, *.xml.bz2), a text file (blank line between documents)
    /// or a folder of text files (one document per file) to one document per line.
    Format(FormatArgs),
    /// Stage 2: sentence segmentation, one sentence per line, blank line between documents.
    Segment(StageArgs),
    /// Stage 3: balanced training and test shards; documents are never split.
    Shard(ShardStageArgs),
    /// Stages 4-5: masked-LM / next-sentence instances written as HDF5 shards.
    Instances(InstanceStageArgs),
    /// Every stage, from the input to the HDF5 shards.
    All(AllArgs),
    /// Check HDF5 shards against the reference layout and print their statistics.
    Validate(ValidateArgs),
}

/// Where the stages read and write.
#[derive(Debug, Args)]
pub struct StageArgs {
    /// Working folder of the pipeline.
    #[arg(long)]
    output_dir: PathBuf,
    /// Name of the corpus in file names (default: the input's file name; `corpus` for `segment`
    /// and later stages run alone).
    #[arg(long)]
    corpus_name: Option<String>,
}

/// Arguments of `format`.
#[derive(Debug, Args)]
pub struct FormatArgs {
    /// The corpus: a Wikipedia dump, a text file or a folder of text files.
    #[arg(long)]
    input: PathBuf,
    #[command(flatten)]
    stage: StageArgs,
}

/// Sharding flags (`bertPrep.py`'s names).
#[derive(Debug, Args, Clone)]
pub struct ShardFlags {
    /// Training shards (`--n_training_shards`).
    #[arg(long, default_value_t = 256)]
    n_training_shards: usize,
    /// Test shards (`--n_test_shards`).
    #[arg(long, default_value_t = 256)]
    n_test_shards: usize,
    /// Fraction of documents in the test set (`--fraction_test_set`).
    #[arg(long, default_value_t = 0.1)]
    fraction_test_set: f64,
}

/// Arguments of `shard`.
#[derive(Debug, Args)]
pub struct ShardStageArgs {
    #[command(flatten)]
    stage: StageArgs,
    #[command(flatten)]
    shards: ShardFlags,
    /// Seed of the test split (`--random_seed`).
    #[arg(long, default_value_t = 12345)]
    random_seed: u64,
}

/// Instance flags (`create_pretraining_data.py`'s names).
#[derive(Debug, Args, Clone)]
pub struct InstanceFlags {
    /// WordPiece vocabulary (`--vocab_file`).
    #[arg(long)]
    vocab_file: PathBuf,
    /// Lower-case the text (`--do_lower_case`); must match the vocabulary.
    #[arg(long)]
    lower_case: bool,
    /// Tokens per instance (`--max_seq_length`): 128 in phase 1, 512 in phase 2.
    #[arg(long, default_value_t = 128)]
    max_seq_length: usize,
    /// Masked positions per instance (`--max_predictions_per_seq`): 20 / 80.
    #[arg(long, default_value_t = 20)]
    max_predictions_per_seq: usize,
    /// Fraction of tokens masked (`--masked_lm_prob`).
    #[arg(long, default_value_t = 0.15)]
    masked_lm_prob: f64,
    /// Probability of a shorter target length (`--short_seq_prob`).
    #[arg(long, default_value_t = 0.1)]
    short_seq_prob: f64,
    /// Passes over the data with different masks (`--dupe_factor`; bertPrep uses 5).
    #[arg(long, default_value_t = 5)]
    dupe_factor: usize,
    /// Seed (`--random_seed`).
    #[arg(long, default_value_t = 12345)]
    random_seed: u64,
    /// Mask all WordPieces of a word together (`--do_whole_word_mask`).
    #[arg(long)]
    whole_word_masking: bool,
}

/// Arguments of `instances`.
#[derive(Debug, Args)]
pub struct InstanceStageArgs {
    #[command(flatten)]
    stage: StageArgs,
    #[command(flatten)]
    instances: InstanceFlags,
}

/// Arguments of `all`.
#[derive(Debug, Args)]
pub struct AllArgs {
    /// The corpus: a Wikipedia dump, a text file or a folder of text files.
    #[arg(long)]
    input: PathBuf,
    #[command(flatten)]
    stage: StageArgs,
    #[command(flatten)]
    shards: ShardFlags,
    #[command(flatten)]
    instances: InstanceFlags,
}

/// Arguments of `validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// HDF5 shards (or folders of them).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Vocabulary size ids must stay below.
    #[arg(long, default_value_t = 30522)]
    vocab_size: usize,
}

/// Runs a `prep` command.
pub fn run(command: PrepCommand) -> Result<()> {
    match command {
        PrepCommand::Format(args) => {
            let pipeline = Pipeline::new(&args.stage, Some(&args.input))?;
            pipeline.format(&args.input)
        }
        PrepCommand::Segment(args) => Pipeline::new(&args, None)?.segment(),
        PrepCommand::Shard(args) => {
            Pipeline::new(&args.stage, None)?.shard(&args.shards, args.random_seed)
        }
        PrepCommand::Instances(args) => {
            Pipeline::new(&args.stage, None)?.instances(&args.instances)
        }
        PrepCommand::All(args) => {
            let pipeline = Pipeline::new(&args.stage, Some(&args.input))?;
            // Check the vocabulary before hours of work, not after.
            tokenizer(&args.instances)?;
            pipeline.format(&args.input)?;
            pipeline.segment()?;
            pipeline.shard(&args.shards, args.instances.random_seed)?;
            pipeline.instances(&args.instances)
        }
        PrepCommand::Validate(args) => validate(&args),
    }
}

/// The folders and log of one pipeline run.
struct Pipeline {
    dir: PathBuf,
    corpus: String,
}

impl Pipeline {
    fn new(stage: &StageArgs, input: Option<&Path>) -> Result<Self> {
        let corpus = match (&stage.corpus_name, input) {
            (Some(name), _) => name.clone(),
            (None, Some(input)) => corpus_name(input),
            (None, None) => "corpus".to_string(),
        };
        if corpus.is_empty() || corpus.contains(['/', '\\']) {
            bail!("--corpus-name {corpus:?} cannot be used in file names");
        }
        std::fs::create_dir_all(&stage.output_dir)
            .with_context(|| format!("cannot create {}", stage.output_dir.display()))?;
        Ok(Self {
            dir: stage.output_dir.clone(),
            corpus,
        })
    }

    fn formatted(&self) -> PathBuf {
        self.dir
            .join("formatted")
            .join(format!("{}.txt", self.corpus))
    }

    fn sentences(&self) -> PathBuf {
        self.dir
            .join("sentences")
            .join(format!("{}.txt", self.corpus))
    }

    fn sharded(&self) -> PathBuf {
        self.dir.join("sharded")
    }

    fn log(&self, stage: &str, started: Instant, mut data: Value) -> Result<()> {
        let seconds = started.elapsed().as_secs_f64();
        let object = data.as_object_mut().expect("stage data is an object");
        object.insert("stage".into(), stage.into());
        object.insert("seconds".into(), json!(seconds));
        if let Some(bytes) = object.get("input_bytes").and_then(Value::as_f64) {
            object.insert(
                "input_mb_per_second".into(),
                json!(bytes / 1e6 / seconds.max(1e-9)),
            );
        }
        if let Some(instances) = object.get("instances").and_then(Value::as_f64) {
            object.insert(
                "instances_per_second".into(),
                json!(instances / seconds.max(1e-9)),
            );
        }
        object.insert("peak_rss_mb".into(), json!(peak_rss_mb()));
        eprintln!("{stage}: {data}");
        DlLogger::open(&self.dir.join("prep_log.json"))?.log(json!([]), data)
    }

    fn format(&self, input: &Path) -> Result<()> {
        let output = self.formatted();
        if output.exists() {
            eprintln!("format: {} exists, skipping", output.display());
            return Ok(());
        }
        std::fs::create_dir_all(output.parent().expect("has a parent"))?;
        let started = Instant::now();
        let stats = format::format(input, &output)?;
        self.log(
            "format",
            started,
            json!({"input_bytes": stats.input_bytes, "documents": stats.documents, "output_bytes": stats.output_bytes}),
        )
    }

    fn segment(&self) -> Result<()> {
        let (input, output) = (self.formatted(), self.sentences());
        if output.exists() {
            eprintln!("segment: {} exists, skipping", output.display());
            return Ok(());
        }
        require(&input, "format")?;
        std::fs::create_dir_all(output.parent().expect("has a parent"))?;
        let started = Instant::now();
        let stats = segment::segment(&input, &output)?;
        self.log(
            "segment",
            started,
            json!({"input_bytes": stats.input_bytes, "documents": stats.documents, "sentences": stats.sentences}),
        )
    }

    fn shard(&self, flags: &ShardFlags, seed: u64) -> Result<()> {
        let dir = self.sharded();
        if dir.join(".complete").exists() {
            eprintln!("shard: {} is complete, skipping", dir.display());
            return Ok(());
        }
        let input = self.sentences();
        require(&input, "segment")?;
        let started = Instant::now();
        let config = shard::ShardConfig {
            n_training_shards: flags.n_training_shards,
            n_test_shards: flags.n_test_shards,
            fraction_test_set: flags.fraction_test_set,
            seed,
        };
        let files = shard::shard(&input, &dir, &self.corpus, &config)?;
        bert_core::io::write_atomic(&dir.join(".complete"), b"")?;
        let bytes = std::fs::metadata(&input)?.len();
        self.log(
            "shard",
            started,
            json!({"input_bytes": bytes, "shards": files.len()}),
        )
    }

    fn instances(&self, flags: &InstanceFlags) -> Result<()> {
        let tokenizer = tokenizer(flags)?;
        let config = InstanceConfig {
            max_seq_length: flags.max_seq_length,
            max_predictions_per_seq: flags.max_predictions_per_seq,
            masked_lm_prob: flags.masked_lm_prob,
            short_seq_prob: flags.short_seq_prob,
            dupe_factor: flags.dupe_factor,
            whole_word_masking: flags.whole_word_masking,
        };
        let shards = text_shards(&self.sharded(), &self.corpus)?;
        let out_dir = self
            .dir
            .join(instances::hdf5_dir_name(
                flags.lower_case,
                &config,
                flags.random_seed,
            ))
            .join(&self.corpus);
        let started = Instant::now();
        let stats =
            instances::instances(&shards, &out_dir, &tokenizer, &config, flags.random_seed)?;
        eprintln!("instances: HDF5 shards in {}", out_dir.display());
        self.log(
            "instances",
            started,
            json!({
                "input_bytes": stats.input_bytes,
                "instances": stats.instances,
                "shards_written": stats.shards_written,
                "shards_skipped": stats.shards_skipped,
                "output_dir": out_dir.display().to_string(),
            }),
        )
    }
}

fn tokenizer(flags: &InstanceFlags) -> Result<BertTokenizer> {
    let tokenizer = BertTokenizer::from_vocab_file(&flags.vocab_file, flags.lower_case)?;
    if let Some(mismatch) = tokenizer.casing_mismatch() {
        eprintln!("WARNING: {}: {mismatch}", flags.vocab_file.display());
    }
    Ok(tokenizer)
}

/// The default corpus name: the input's file name without extensions.
fn corpus_name(input: &Path) -> String {
    let name = input
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "corpus".into());
    let stem = name.split('.').next().unwrap_or("").to_string();
    if stem.is_empty() {
        "corpus".into()
    } else {
        stem
    }
}

fn require(path: &Path, stage: &str) -> Result<()> {
    if !path.exists() {
        bail!(
            "{} does not exist: run `prep {stage}` first (or `prep all`)",
            path.display()
        );
    }
    Ok(())
}

/// The text shards of a corpus, training then test, each in shard order.
fn text_shards(dir: &Path, corpus: &str) -> Result<Vec<PathBuf>> {
    require(&dir.join(".complete"), "shard")?;
    let mut shards: Vec<(u8, usize, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        let Some(stem) = path.file_stem().map(|s| s.to_string_lossy().to_string()) else {
            continue;
        };
        for (set, order) in [("training", 0u8), ("test", 1u8)] {
            if let Some(k) = stem
                .strip_prefix(&format!("{corpus}_{set}_"))
                .and_then(|k| k.parse().ok())
            {
                shards.push((order, k, path.clone()));
            }
        }
    }
    if shards.is_empty() {
        bail!("{}: no shards of corpus {corpus:?}", dir.display());
    }
    shards.sort();
    Ok(shards.into_iter().map(|(_, _, path)| path).collect())
}

/// Peak resident memory of this process in MB (Linux), for the throughput logs.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn validate(args: &ValidateArgs) -> Result<()> {
    let mut files = Vec::new();
    for path in &args.files {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "hdf5"))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    let mut invalid = 0;
    for file in &files {
        match read_valid_shard(file, args.vocab_size) {
            Ok(arrays) => {
                let predictions: usize = (0..arrays.num_instances)
                    .map(|r| arrays.num_predictions(r))
                    .sum();
                let random_next = arrays
                    .next_sentence_labels
                    .iter()
                    .filter(|&&l| l == 1)
                    .count();
                println!(
                    "{}",
                    json!({
                        "file": file.display().to_string(),
                        "valid": true,
                        "num_instances": arrays.num_instances,
                        "max_seq_length": arrays.max_seq_length,
                        "max_predictions_per_seq": arrays.max_predictions_per_seq,
                        "mean_predictions_per_row": predictions as f64 / arrays.num_instances as f64,
                        "next_sentence_label_1_fraction": random_next as f64 / arrays.num_instances as f64,
                    })
                );
            }
            Err(error) => {
                invalid += 1;
                println!(
                    "{}",
                    json!({"file": file.display().to_string(), "valid": false, "error": format!("{error:#}")})
                );
            }
        }
    }
    if invalid > 0 {
        bail!("{invalid} of {} shards are invalid", files.len());
    }
    Ok(())
}
