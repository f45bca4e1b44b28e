//! `bert-native quickstart`: the whole recipe in minutes on a laptop, with no downloads. A
//! synthetic encyclopedia is generated, a WordPiece vocabulary learned from it, the text prepared
//! into shards (`prep all`), a small BERT pretrained on them (`pretrain`), and its masked-LM
//! accuracy on held-out articles reported before and after.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use bert_core::checkpoint::Checkpoint;
use bert_core::data::synthetic::Encyclopedia;
use bert_core::io::{write_atomic, AtomicWriter};
use bert_core::model::BertForPreTraining;
use bert_core::pretraining::{evaluate, MlmEvaluation};
use bert_core::tokenizer::BertTokenizer;
use bert_core::BertConfig;
use burn::tensor::backend::Backend;
use clap::{Args, Parser};
use serde_json::json;

use crate::backend::{self, BackendKind, Job};

/// Arguments of `quickstart`.
#[derive(Debug, Args)]
pub struct QuickstartArgs {
    /// Where everything is written: corpus, vocabulary, shards, the model.
    #[arg(long, default_value = "quickstart")]
    output_dir: PathBuf,
    /// People in the fictional world (articles: about 1.6 times as many).
    #[arg(long, default_value_t = 800)]
    people: usize,
    /// Pretraining steps (32 sequences each).
    #[arg(long, default_value_t = 200)]
    steps: u64,
    /// Seed of the world, the data order and the initialisation.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Ndarray)]
    backend: BackendKind,
}

/// The small model the quickstart trains: 4 layers x 256, 4 heads, positions for 128 tokens.
fn quickstart_config(vocab_size: usize) -> BertConfig {
    BertConfig {
        vocab_size,
        hidden_size: 256,
        num_hidden_layers: 4,
        num_attention_heads: 4,
        intermediate_size: 1024,
        max_position_embeddings: 128,
        ..BertConfig::base()
    }
}

const SEQ: usize = 64;
const PREDICTIONS: usize = 10;
const VOCAB_SIZE: usize = 3000;

/// Runs `quickstart`.
pub fn run(args: QuickstartArgs) -> Result<()> {
    let started = Instant::now();
    let dir = args.output_dir.clone();
    std::fs::create_dir_all(dir.join("corpus"))
        .with_context(|| format!("cannot create {}", dir.display()))?;

    eprintln!(
        "[1/5] writing a synthetic encyclopedia ({} people)",
        args.people
    );
    let articles = Encyclopedia::generate(args.people, args.seed).articles(args.seed);
    let corpus = dir.join("corpus/encyclopedia.txt");
    let mut writer = AtomicWriter::create(&corpus)
        .with_context(|| format!("cannot create {}", corpus.display()))?;
    for article in &articles {
        writeln!(writer, "{}\n", article.text)?;
    }
    writer.commit()?;

    eprintln!("[2/5] learning a {VOCAB_SIZE}-entry WordPiece vocabulary");
    let vocab =
        BertTokenizer::train_vocab(articles.iter().map(|a| a.text.as_str()), VOCAB_SIZE, true)?;
    let vocab_path = dir.join("vocab.txt");
    write_atomic(&vocab_path, vocab.as_bytes())?;
    let config = quickstart_config(vocab.lines().count());
    let config_path = dir.join("config.json");
    write_atomic(
        &config_path,
        config.to_hf_json("BertForPreTraining").as_bytes(),
    )?;

    let data = dir.join("data");
    let prep = [
        "prep",
        "all",
        "--input",
        s(&corpus),
        "--output-dir",
        s(&data),
        "--vocab-file",
        s(&vocab_path),
        "--lower-case",
        "--max-seq-length",
        &SEQ.to_string(),
        "--max-predictions-per-seq",
        &PREDICTIONS.to_string(),
        "--dupe-factor",
        "5",
        "--random-seed",
        &args.seed.to_string(),
        "--n-training-shards",
        "4",
        "--n-test-shards",
        "1",
        "--corpus-name",
        "encyclopedia",
    ];
    eprintln!("[3/5] bert-native {}", prep.join(" "));
    crate::prep::run(Commands::parse_from(with_program(&prep)).prep())?;
    let shards = data
        .join(format!(
            "hdf5_lower_case_1_seq_len_{SEQ}_max_pred_{PREDICTIONS}_masked_lm_prob_0.15_random_seed_{}_dupe_factor_5",
            args.seed
        ))
        .join("encyclopedia");

    let before = backend::run(
        args.backend,
        Evaluate {
            config: config.clone(),
            weights: None,
            test_shard: shards.join("encyclopedia_test_0.hdf5"),
            seed: args.seed,
        },
    )?;
    let model_dir = dir.join("model");
    let pretrain = [
        "pretrain",
        "--config-file",
        s(&config_path),
        "--input-dir",
        s(&shards),
        "--output-dir",
        s(&model_dir),
        "--train-batch-size",
        "32",
        "--gradient-accumulation-steps",
        "1",
        "--max-steps",
        &args.steps.to_string(),
        "--learning-rate",
        "6e-3",
        "--warmup-proportion",
        "0.1",
        "--max-seq-length",
        &SEQ.to_string(),
        "--max-predictions-per-seq",
        &PREDICTIONS.to_string(),
        "--seed",
        &args.seed.to_string(),
        "--num-steps-per-checkpoint",
        "100",
        "--log-freq",
        "10",
        "--backend",
        &args.backend.to_string(),
    ];
    eprintln!("[4/5] bert-native {}", pretrain.join(" "));
    crate::pretrain::run(Commands::parse_from(with_program(&pretrain)).pretrain())?;
    std::fs::copy(&vocab_path, model_dir.join("vocab.txt"))
        .context("cannot copy the vocabulary")?;

    eprintln!("[5/5] masked-LM accuracy on held-out articles");
    let after = backend::run(
        args.backend,
        Evaluate {
            config,
            weights: Some(model_dir.join("model.safetensors")),
            test_shard: shards.join("encyclopedia_test_0.hdf5"),
            seed: args.seed,
        },
    )?;
    let summary = json!({
        "articles": articles.len(),
        "pretraining_steps": args.steps,
        "mlm_accuracy_before": before.mlm_accuracy,
        "mlm_accuracy_after": after.mlm_accuracy,
        "mlm_loss_before": before.mlm_loss,
        "mlm_loss_after": after.mlm_loss,
        "held_out_masked_tokens": after.masked_tokens,
        "seconds": started.elapsed().as_secs_f64(),
        "model": model_dir.display().to_string(),
    });
    write_atomic(
        &dir.join("quickstart.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    println!(
        "masked-LM accuracy on held-out articles: {:.1}% before pretraining, {:.1}% after {} steps \
         (loss {:.2} -> {:.2}); model in {} ({:.0} s)",
        100.0 * before.mlm_accuracy,
        100.0 * after.mlm_accuracy,
        args.steps,
        before.mlm_loss,
        after.mlm_loss,
        model_dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap_or_default()
}

fn with_program<'a>(args: &[&'a str]) -> Vec<&'a str> {
    std::iter::once("bert-native")
        .chain(args.iter().copied())
        .collect()
}

/// The stages the quickstart drives, parsed from the same flags a user would type.
#[derive(Debug, Parser)]
enum Commands {
    #[command(subcommand)]
    Prep(crate::prep::PrepCommand),
    Pretrain(Box<crate::pretrain::PretrainArgs>),
}

impl Commands {
    fn prep(self) -> crate::prep::PrepCommand {
        match self {
            Self::Prep(command) => command,
            Self::Pretrain(_) => unreachable!("parsed from a prep command line"),
        }
    }

    fn pretrain(self) -> crate::pretrain::PretrainArgs {
        match self {
            Self::Pretrain(args) => *args,
            Self::Prep(_) => unreachable!("parsed from a pretrain command line"),
        }
    }
}

/// Masked-LM accuracy of a model (fresh from `seed`, or loaded from `weights`) on a test shard.
struct Evaluate {
    config: BertConfig,
    weights: Option<PathBuf>,
    test_shard: PathBuf,
    seed: u64,
}

impl Job for Evaluate {
    type Output = MlmEvaluation;

    fn run<B: Backend>(self, device: B::Device) -> Result<MlmEvaluation> {
        B::seed(&device, self.seed);
        let mut model = BertForPreTraining::<B>::new(&self.config, &device);
        if let Some(weights) = &self.weights {
            Checkpoint::from_file(weights)?
                .load_into(&mut model)?
                .require_exact()?;
        }
        let arrays = crate::shard_file::read_valid_shard(&self.test_shard, self.config.vocab_size)?;
        let batches: Vec<_> = (0..arrays.num_instances)
            .collect::<Vec<_>>()
            .chunks(64)
            .map(|rows| arrays.select_rows(rows))
            .collect();
        Ok(evaluate(&model, &batches, &device))
    }
}
