//! `bert-native quickstart`: the whole recipe in minutes on a laptop, with no downloads. A
//! synthetic encyclopedia is generated, a WordPiece vocabulary learned from it, the text prepared
//! into shards (`prep all`), a small BERT pretrained on them (`pretrain`) and its masked-LM
//! accuracy on held-out articles reported before and after; then the model is fine-tuned for
//! question answering on questions about the articles (`squad`), scored before and after on
//! questions about held-out articles, and asked one of them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use bert_core::checkpoint::Checkpoint;
use bert_core::data::synthetic::{split_held_out, squad_dataset, Encyclopedia};
use bert_core::io::{write_atomic, AtomicWriter};
use bert_core::model::{BertForPreTraining, BertForQuestionAnswering};
use bert_core::pretrained::ModelFiles;
use bert_core::pretraining::{evaluate, MlmEvaluation};
use bert_core::squad::{
    answers_by_question, convert_examples_to_features, evaluate as evaluate_squad, read_examples,
    window_logits, AnswerConfig, FeatureConfig, SquadDataset, SquadScores,
};
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
    /// Pretraining steps (32 sequences each). With the default seed, held-out masked-LM
    /// accuracy was 18.6% after 200 steps and 24.7% after 300, and question-answering F1 (four
    /// epochs of 1,200 questions) 75.1 and 84.2.
    #[arg(long, default_value_t = 300)]
    steps: u64,
    /// Question-answering fine-tuning epochs. Three epochs of 2,400 questions (450 steps) gave
    /// held-out EM 90.0 / F1 92.1 with seed 42 and 87.5 / 90.0 with seed 7, where four epochs of
    /// 1,200 (300 steps) gave 80.4 / 84.2 and 76.7 / 79.9, and two of 2,400 86.5 / 88.9 and
    /// 74.1 / 79.1 (docs/benchmarks.md).
    #[arg(long, default_value_t = 3.0)]
    qa_epochs: f64,
    /// Training questions (from six articles in seven; the seventh are held out).
    #[arg(long, default_value_t = 2400)]
    qa_questions: usize,
    /// Seed of the world, the data order and the initialisation.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Flex)]
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
        "[1/7] writing a synthetic encyclopedia ({} people)",
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

    eprintln!("[2/7] learning a {VOCAB_SIZE}-entry WordPiece vocabulary");
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
    eprintln!("[3/7] bert-native {}", prep.join(" "));
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
    eprintln!("[4/7] bert-native {}", pretrain.join(" "));
    crate::pretrain::run(Commands::parse_from(with_program(&pretrain)).pretrain())?;
    std::fs::copy(&vocab_path, model_dir.join("vocab.txt"))
        .context("cannot copy the vocabulary")?;

    eprintln!("[5/7] masked-LM accuracy on held-out articles");
    let after = backend::run(
        args.backend,
        Evaluate {
            config,
            weights: Some(model_dir.join("model.safetensors")),
            test_shard: shards.join("encyclopedia_test_0.hdf5"),
            seed: args.seed,
        },
    )?;
    println!(
        "masked-LM accuracy on held-out articles: {:.1}% before pretraining, {:.1}% after {} steps (loss {:.2} -> {:.2})",
        100.0 * before.mlm_accuracy,
        100.0 * after.mlm_accuracy,
        args.steps,
        before.mlm_loss,
        after.mlm_loss,
    );

    eprintln!("[6/7] fine-tuning for question answering");
    let squad_dir = dir.join("squad");
    std::fs::create_dir_all(&squad_dir)?;
    let (train_articles, dev_articles) = split_held_out(&articles, args.seed);
    let mut train = squad_dataset(&train_articles);
    keep_questions(&mut train, args.qa_questions);
    let dev = squad_dataset(&dev_articles[..dev_articles.len().min(60)]);
    let (train_file, dev_file) = (squad_dir.join("train.json"), squad_dir.join("dev.json"));
    write_atomic(&train_file, serde_json::to_string(&train)?.as_bytes())?;
    write_atomic(&dev_file, serde_json::to_string(&dev)?.as_bytes())?;
    let qa_before = backend::run(
        args.backend,
        EvaluateQa {
            model: model_dir.clone(),
            dev: dev.clone(),
            seed: args.seed,
        },
    )?;
    let qa_dir = dir.join("qa-model");
    let squad = [
        "squad",
        "--model",
        s(&model_dir),
        "--train-file",
        s(&train_file),
        "--do-train",
        "--output-dir",
        s(&qa_dir),
        "--max-seq-length",
        "128",
        "--doc-stride",
        "64",
        "--train-batch-size",
        "16",
        "--learning-rate",
        "3e-4",
        "--num-train-epochs",
        &args.qa_epochs.to_string(),
        "--seed",
        &args.seed.to_string(),
        "--log-freq",
        "10",
        "--backend",
        &args.backend.to_string(),
    ];
    eprintln!("      bert-native {}", squad.join(" "));
    crate::finetune::squad::run(Commands::parse_from(with_program(&squad)).squad())?;
    let qa_after = backend::run(
        args.backend,
        EvaluateQa {
            model: qa_dir.clone(),
            dev: dev.clone(),
            seed: args.seed,
        },
    )?;
    println!(
        "question answering on held-out articles ({} questions): EM {:.1} / F1 {:.1} before fine-tuning, EM {:.1} / F1 {:.1} after",
        dev.num_questions(),
        qa_before.exact_match,
        qa_before.f1,
        qa_after.exact_match,
        qa_after.f1
    );

    eprintln!("[7/7] asking a question");
    let example = &dev_articles[0];
    let question = example
        .questions
        .first()
        .context("the article has questions")?;
    let qa = [
        "qa",
        "--model",
        s(&qa_dir),
        "--question",
        &question.question,
        "--context",
        &example.text,
        "--max-seq-length",
        "128",
        "--doc-stride",
        "64",
        "--backend",
        &args.backend.to_string(),
    ];
    eprintln!(
        "      bert-native qa --model {} --question {:?} --context {:?}",
        qa_dir.display(),
        question.question,
        example.text
    );
    crate::finetune::qa::run(Commands::parse_from(with_program(&qa)).qa())?;
    println!("(the article says: {:?})", question.answer);

    let summary = json!({
        "articles": articles.len(),
        "pretraining_steps": args.steps,
        "mlm_accuracy_before": before.mlm_accuracy,
        "mlm_accuracy_after": after.mlm_accuracy,
        "mlm_loss_before": before.mlm_loss,
        "mlm_loss_after": after.mlm_loss,
        "held_out_masked_tokens": after.masked_tokens,
        "qa_train_questions": train.num_questions(),
        "qa_dev_questions": dev.num_questions(),
        "qa_exact_match_before": qa_before.exact_match,
        "qa_f1_before": qa_before.f1,
        "qa_exact_match_after": qa_after.exact_match,
        "qa_f1_after": qa_after.f1,
        "seconds": started.elapsed().as_secs_f64(),
        "model": model_dir.display().to_string(),
        "qa_model": qa_dir.display().to_string(),
    });
    write_atomic(
        &dir.join("quickstart.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    println!(
        "done in {:.0} s; models in {} and {}",
        started.elapsed().as_secs_f64(),
        model_dir.display(),
        qa_dir.display()
    );
    Ok(())
}

/// Keeps the first `limit` questions (whole articles while the budget lasts).
fn keep_questions(dataset: &mut SquadDataset, limit: usize) {
    let mut kept = 0;
    dataset.data.retain(|article| {
        let questions: usize = article.paragraphs.iter().map(|p| p.qas.len()).sum();
        kept += questions;
        kept <= limit
    });
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
    Squad(crate::finetune::squad::SquadArgs),
    Qa(Box<crate::finetune::qa::QaArgs>),
}

impl Commands {
    fn prep(self) -> crate::prep::PrepCommand {
        match self {
            Self::Prep(command) => command,
            _ => unreachable!("parsed from a prep command line"),
        }
    }

    fn pretrain(self) -> crate::pretrain::PretrainArgs {
        match self {
            Self::Pretrain(args) => *args,
            _ => unreachable!("parsed from a pretrain command line"),
        }
    }

    fn squad(self) -> crate::finetune::squad::SquadArgs {
        match self {
            Self::Squad(args) => args,
            _ => unreachable!("parsed from a squad command line"),
        }
    }

    fn qa(self) -> crate::finetune::qa::QaArgs {
        match self {
            Self::Qa(args) => *args,
            _ => unreachable!("parsed from a qa command line"),
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

/// SQuAD scores on `dev` of the question-answering model in `model` (a pretrained encoder gets a
/// fresh head from `seed`).
struct EvaluateQa {
    model: PathBuf,
    dev: SquadDataset,
    seed: u64,
}

impl Job for EvaluateQa {
    type Output = SquadScores;

    fn run<B: Backend>(self, device: B::Device) -> Result<SquadScores> {
        let files = ModelFiles::find(&self.model, None)?;
        let (config, tokenizer) = (files.read_config()?, files.read_tokenizer(None)?);
        B::seed(&device, self.seed);
        let mut model = BertForQuestionAnswering::<B>::new(&config, &device);
        Checkpoint::from_file(&files.weights)?
            .load_into(&mut model)?
            .require_encoder()?;
        let features_config = FeatureConfig {
            max_seq_length: 128,
            doc_stride: 64,
            max_query_length: 64,
        };
        let (examples, _) = read_examples(&self.dev, false);
        let features =
            convert_examples_to_features(&examples, &tokenizer, &features_config, false)?;
        let logits = window_logits(&model, &config, &features, 128, 32, &device)?;
        let answers = answers_by_question(
            &examples,
            &features,
            &logits,
            &tokenizer,
            &AnswerConfig::default(),
        )?;
        let predictions = answers
            .into_iter()
            .map(|(id, nbest)| (id, nbest.into_iter().next().map(|a| a.text)))
            .collect();
        Ok(evaluate_squad(&self.dev, &predictions))
    }
}
