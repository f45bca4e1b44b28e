//! `bert-native squad`: `run_squad.py` (train, predict, eval, combinable) and `squad evaluate`
//! (`evaluate-v1.1.py` for any predictions file).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bert_core::io::write_atomic;
use bert_core::model::BertForQuestionAnswering;
use bert_core::squad::{
    answers_by_question, convert_examples_to_features, evaluate, evaluate_answers, qa_loss,
    read_examples, window_logits, Answer, AnswerConfig, FeatureConfig, SquadDataset,
};
use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use clap::{Args, Subcommand};
use serde_json::json;

use super::{fine_tune, inference_figures, ModelArgs, ModelSource, Ranks, TaskDefaults, TrainArgs};
use crate::backend::{self, BackendKind, Job};
use crate::dllogger::DlLogger;

/// `squad`: run the task, or `squad evaluate`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SquadArgs {
    #[command(subcommand)]
    command: Option<SquadCommand>,
    #[command(flatten)]
    run: Box<SquadRunArgs>,
}

#[derive(Debug, Subcommand)]
enum SquadCommand {
    /// Score a predictions file like `evaluate-v1.1.py`; the last line printed is
    /// `{"exact_match": .., "f1": ..}`.
    Evaluate(EvaluateArgs),
}

/// Arguments of `squad evaluate`.
#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// The SQuAD v1.1 JSON with gold answers.
    #[arg(long)]
    data_file: PathBuf,
    /// `{"question id": "answer", ...}`.
    #[arg(long)]
    predictions: PathBuf,
}

/// Arguments of a SQuAD run (`run_squad.py`'s flags).
#[derive(Debug, Args)]
pub struct SquadRunArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    train: TrainArgs,
    /// SQuAD JSON to train on (`--train_file`).
    #[arg(long)]
    train_file: Option<PathBuf>,
    /// SQuAD JSON to answer (`--predict_file`).
    #[arg(long)]
    predict_file: Option<PathBuf>,
    /// Fine-tune on --train-file (`--do_train`).
    #[arg(long)]
    do_train: bool,
    /// Answer --predict-file, writing predictions.json and nbest_predictions.json (`--do_predict`).
    #[arg(long)]
    do_predict: bool,
    /// Score the predictions against --predict-file's answers (`--do_eval`).
    #[arg(long)]
    do_eval: bool,
    /// Where the model, the predictions and the log go (`--output_dir`).
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// Tokens per window (`--max_seq_length`).
    #[arg(long, default_value_t = 384)]
    max_seq_length: usize,
    /// Tokens between window starts (`--doc_stride`).
    #[arg(long, default_value_t = 128)]
    doc_stride: usize,
    /// Question tokens kept (`--max_query_length`).
    #[arg(long, default_value_t = 64)]
    max_query_length: usize,
    /// Windows per inference batch (`--predict_batch_size`).
    #[arg(long, default_value_t = 8)]
    predict_batch_size: usize,
    /// Answers kept per question (`--n_best_size`).
    #[arg(long, default_value_t = 20)]
    n_best_size: usize,
    /// Longest answer in tokens (`--max_answer_length`).
    #[arg(long, default_value_t = 30)]
    max_answer_length: usize,
    /// DLLogger log (`--json-summary`; default OUTPUT_DIR/dllogger.json).
    #[arg(long)]
    json_summary: Option<PathBuf>,
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Flex)]
    backend: BackendKind,
}

/// Runs `squad`.
pub fn run(args: SquadArgs) -> Result<()> {
    match args.command {
        Some(SquadCommand::Evaluate(evaluate)) => evaluate_file(&evaluate),
        None => run_task(*args.run),
    }
}

fn read_dataset(path: &Path) -> Result<SquadDataset> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    SquadDataset::from_json(&text)
        .with_context(|| format!("{}: not a SQuAD v1.1 JSON file", path.display()))
}

fn evaluate_file(args: &EvaluateArgs) -> Result<()> {
    let dataset = read_dataset(&args.data_file)?;
    let text = std::fs::read_to_string(&args.predictions)
        .with_context(|| format!("cannot read {}", args.predictions.display()))?;
    let predictions: HashMap<String, Option<String>> =
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: expected {{\"question id\": \"answer\", ...}}",
                args.predictions.display()
            )
        })?;
    let scores = evaluate(&dataset, &predictions);
    for id in &scores.missing {
        eprintln!("Unanswered question {id} will receive score 0.");
    }
    println!(
        "{}",
        json!({"exact_match": scores.exact_match, "f1": scores.f1})
    );
    Ok(())
}

fn run_task(args: SquadRunArgs) -> Result<()> {
    if !(args.do_train || args.do_predict || args.do_eval) {
        bail!(
            "nothing to do: give --do-train, --do-predict and/or --do-eval (or `squad evaluate`)"
        );
    }
    if args.do_train && args.train_file.is_none() {
        bail!("--do-train needs --train-file");
    }
    if (args.do_predict || args.do_eval) && args.predict_file.is_none() {
        bail!("--do-predict and --do-eval need --predict-file");
    }
    let Some(output_dir) = args.output_dir.clone() else {
        bail!("give --output-dir");
    };
    std::fs::create_dir_all(&output_dir)
        .with_context(|| format!("cannot create {}", output_dir.display()))?;
    let source = args.model.resolve()?;
    if args.max_seq_length > source.config.max_position_embeddings {
        bail!(
            "--max-seq-length {} exceeds the model's {} positions",
            args.max_seq_length,
            source.config.max_position_embeddings
        );
    }
    args.train.precision.check(args.backend)?;
    let backend = args.backend;
    let ranks = Ranks::from_env(&args.train, backend)?;
    backend::run_on(
        backend,
        ranks.local_rank(),
        SquadJob {
            args,
            source,
            output_dir,
            ranks,
        },
    )
}

struct SquadJob {
    args: SquadRunArgs,
    source: ModelSource,
    ranks: Ranks,
    output_dir: PathBuf,
}

impl Job for SquadJob {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        let SquadJob {
            args,
            source,
            output_dir,
            ranks,
        } = self;
        let data_parallel = ranks.connect()?;
        let mut log = DlLogger::open_for_rank(
            &args
                .json_summary
                .clone()
                .unwrap_or_else(|| output_dir.join("dllogger.json")),
            ranks.rank(),
        )?;
        let features_config = FeatureConfig {
            max_seq_length: args.max_seq_length,
            doc_stride: args.doc_stride,
            max_query_length: args.max_query_length,
        };
        let config = &source.config;
        let model: BertForQuestionAnswering<B> = if args.do_train {
            let train_file = args.train_file.as_ref().expect("checked in run_task");
            let dataset = read_dataset(train_file)?;
            let (examples, skipped) = read_examples(&dataset, true);
            if !skipped.is_empty() {
                eprintln!(
                    "WARNING: {} training questions skipped (answer not found at its offset)",
                    skipped.len()
                );
            }
            let features =
                convert_examples_to_features(&examples, &source.tokenizer, &features_config, true)?;
            <Autodiff<B> as Backend>::seed(&device, args.train.seed);
            let mut model = BertForQuestionAnswering::<Autodiff<B>>::new(config, &device);
            source.load_into(&mut model, false)?;
            model.bert.precision = args.train.precision.precision;
            let defaults = TaskDefaults {
                epochs: 2.0,
                learning_rate: 3e-5,
                parameters: json!({"examples": examples.len(), "features": features.len()}),
            };
            let (model, summary) = fine_tune(
                model,
                &features,
                &args.train,
                defaults,
                data_parallel.as_ref(),
                &mut log,
                |model, micro| {
                    qa_loss(model, config, micro, args.max_seq_length, &device).expect(
                        "windows fit the model: sequence length and vocabulary were checked",
                    )
                },
            )?;
            if ranks.rank() != 0 {
                return Ok(());
            }
            source.save_model(&model, &output_dir, "BertForQuestionAnswering", &[])?;
            eprintln!(
                "trained {} steps (loss {:.4}); model in {}",
                summary.steps,
                summary.final_loss,
                output_dir.display()
            );
            model.valid()
        } else if ranks.rank() != 0 {
            return Ok(());
        } else {
            let mut model = BertForQuestionAnswering::<B>::new(config, &device);
            source.load_into(&mut model, true)?;
            model.bert.precision = args.train.precision.precision;
            model
        };

        if args.do_predict || args.do_eval {
            let predict_file = args.predict_file.as_ref().expect("checked in run_task");
            let dataset = read_dataset(predict_file)?;
            let (examples, _) = read_examples(&dataset, false);
            let features = convert_examples_to_features(
                &examples,
                &source.tokenizer,
                &features_config,
                false,
            )?;
            let started = Instant::now();
            let mut batch_times = Vec::new();
            let mut logits = Vec::with_capacity(features.len());
            for chunk in features.chunks(args.predict_batch_size.max(1)) {
                let batch_started = Instant::now();
                logits.extend(window_logits(
                    &model,
                    config,
                    chunk,
                    args.max_seq_length,
                    chunk.len(),
                    &device,
                )?);
                batch_times.push(batch_started.elapsed().as_secs_f64() * 1000.0);
            }
            let answer_config = AnswerConfig {
                n_best_size: args.n_best_size,
                max_answer_length: args.max_answer_length,
            };
            let answers = answers_by_question(
                &examples,
                &features,
                &logits,
                &source.tokenizer,
                &answer_config,
            )?;
            let seconds = started.elapsed().as_secs_f64();
            write_predictions(&output_dir, &answers)?;
            log.log(
                json!([]),
                inference_figures(&mut batch_times, features.len(), seconds),
            )?;
            if args.do_eval {
                let scores = evaluate_answers(&dataset, &answers);
                log.log(
                    json!([]),
                    json!({"exact_match": scores.exact_match, "F1": scores.f1}),
                )?;
                println!(
                    "{}",
                    json!({"exact_match": scores.exact_match, "f1": scores.f1})
                );
            }
        }
        Ok(())
    }
}

/// `predictions.json` (`{id: text}`) and `nbest_predictions.json` (`{id: [{text, probability,
/// start_logit, end_logit}, ...]}`), the reference's formats, plus each answer's character offsets.
fn write_predictions(dir: &Path, answers: &BTreeMap<String, Vec<Answer>>) -> Result<()> {
    let best: BTreeMap<&String, &str> = answers
        .iter()
        .map(|(id, nbest)| (id, nbest.first().map_or("", |a| a.text.as_str())))
        .collect();
    write_atomic(
        &dir.join("predictions.json"),
        serde_json::to_string_pretty(&best)?.as_bytes(),
    )?;
    write_atomic(
        &dir.join("nbest_predictions.json"),
        serde_json::to_string_pretty(answers)?.as_bytes(),
    )?;
    eprintln!(
        "wrote {} and nbest_predictions.json",
        dir.join("predictions.json").display()
    );
    Ok(())
}
