//! `bert-native glue`: `run_glue.py` for MRPC and SST-2 (train, eval, predict, combinable).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bert_core::glue::{classification_loss, encode_batch, metrics, GlueExample, GlueTask};
use bert_core::io::write_atomic;
use bert_core::model::BertForSequenceClassification;
use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use clap::{Args, ValueEnum};
use serde_json::json;

use super::{fine_tune, inference_figures, ModelArgs, ModelSource, Ranks, TaskDefaults, TrainArgs};
use crate::backend::{self, BackendKind, Job};
use crate::dllogger::DlLogger;

/// The tasks, by their GLUE names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Task {
    /// Paraphrase detection: accuracy and F1.
    Mrpc,
    /// Binary sentiment: accuracy.
    #[value(name = "sst-2")]
    Sst2,
}

impl From<Task> for GlueTask {
    fn from(task: Task) -> Self {
        match task {
            Task::Mrpc => GlueTask::Mrpc,
            Task::Sst2 => GlueTask::Sst2,
        }
    }
}

/// Arguments of `glue` (`run_glue.py`'s flags).
#[derive(Debug, Args)]
pub struct GlueArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    train: TrainArgs,
    /// The task (`--task_name`).
    #[arg(long, value_enum)]
    task_name: Task,
    /// Folder with `train.tsv`, `dev.tsv` and/or `test.tsv` (`--data_dir`).
    #[arg(long)]
    data_dir: PathBuf,
    /// Fine-tune on train.tsv (`--do_train`).
    #[arg(long)]
    do_train: bool,
    /// Score on dev.tsv (`--do_eval`).
    #[arg(long)]
    do_eval: bool,
    /// Label test.tsv, writing predictions.tsv and predictions.json (`--do_predict`).
    #[arg(long)]
    do_predict: bool,
    /// Where the model, predictions and log go (`--output_dir`).
    #[arg(long)]
    output_dir: PathBuf,
    /// Tokens per sequence (`--max_seq_length`).
    #[arg(long, default_value_t = 128)]
    max_seq_length: usize,
    /// Sequences per inference batch (`--eval_batch_size`).
    #[arg(long, default_value_t = 64)]
    eval_batch_size: usize,
    /// DLLogger log (default OUTPUT_DIR/dllogger.json).
    #[arg(long)]
    json_summary: Option<PathBuf>,
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Flex)]
    backend: BackendKind,
}

fn read_split(dir: &Path, split: &str, task: GlueTask) -> Result<Vec<GlueExample>> {
    let path = dir.join(format!("{split}.tsv"));
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let examples = task
        .read_tsv(&text)
        .with_context(|| path.display().to_string())?;
    if examples.is_empty() {
        bail!("{}: no examples", path.display());
    }
    Ok(examples)
}

/// Runs `glue`.
pub fn run(args: GlueArgs) -> Result<()> {
    if !(args.do_train || args.do_eval || args.do_predict) {
        bail!("nothing to do: give --do-train, --do-eval and/or --do-predict");
    }
    std::fs::create_dir_all(&args.output_dir)
        .with_context(|| format!("cannot create {}", args.output_dir.display()))?;
    let source = args.model.resolve()?;
    if args.max_seq_length > source.config.max_position_embeddings {
        bail!(
            "--max-seq-length exceeds the model's {} positions",
            source.config.max_position_embeddings
        );
    }
    args.train.precision.check(args.backend)?;
    let backend = args.backend;
    let ranks = Ranks::from_env(&args.train, backend)?;
    backend::run_on(
        backend,
        ranks.local_rank(),
        GlueJob {
            args,
            source,
            ranks,
        },
    )
}

struct GlueJob {
    args: GlueArgs,
    source: ModelSource,
    ranks: Ranks,
}

impl Job for GlueJob {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        let GlueJob {
            args,
            source,
            ranks,
        } = self;
        let task = GlueTask::from(args.task_name);
        let config = &source.config;
        let tokenizer = &source.tokenizer;
        let data_parallel = ranks.connect()?;
        let mut log = DlLogger::open_for_rank(
            &args
                .json_summary
                .clone()
                .unwrap_or_else(|| args.output_dir.join("dllogger.json")),
            ranks.rank(),
        )?;
        let model: BertForSequenceClassification<B> = if args.do_train {
            let examples = read_split(&args.data_dir, "train", task)?;
            if examples.iter().any(|e| e.label.is_none()) {
                bail!("{}/train.tsv has unlabelled rows", args.data_dir.display());
            }
            <Autodiff<B> as Backend>::seed(&device, args.train.seed);
            let mut model = BertForSequenceClassification::<Autodiff<B>>::new(
                config,
                task.num_labels(),
                &device,
            );
            source.load_into(&mut model, false)?;
            model.bert.precision = args.train.precision.precision;
            let defaults = TaskDefaults {
                epochs: 3.0,
                learning_rate: 2.4e-5,
                parameters: json!({"task": format!("{task:?}"), "examples": examples.len()}),
            };
            let (model, _) = fine_tune(
                model,
                &examples,
                &args.train,
                defaults,
                data_parallel.as_ref(),
                &mut log,
                |model, micro| {
                    let labels: Vec<usize> = micro
                        .iter()
                        .map(|e| e.label.expect("checked above"))
                        .collect();
                    let batch = encode_batch(tokenizer, micro, args.max_seq_length)
                        .expect("GLUE text tokenizes");
                    classification_loss(model, config, &batch, &labels, &device)
                        .expect("sequences fit the model: length and vocabulary were checked")
                },
            )?;
            if ranks.rank() != 0 {
                return Ok(());
            }
            source.save_model(
                &model,
                &args.output_dir,
                "BertForSequenceClassification",
                &task.labels(),
            )?;
            model.valid()
        } else if ranks.rank() != 0 {
            return Ok(());
        } else {
            let mut model =
                BertForSequenceClassification::<B>::new(config, task.num_labels(), &device);
            source.load_into(&mut model, true)?;
            model.bert.precision = args.train.precision.precision;
            model
        };

        let classify = |examples: &[GlueExample], log: &mut DlLogger| -> Result<Vec<usize>> {
            let started = Instant::now();
            let mut times = Vec::new();
            let mut predictions = Vec::with_capacity(examples.len());
            for chunk in examples.chunks(args.eval_batch_size.max(1)) {
                let batch_started = Instant::now();
                let refs: Vec<&GlueExample> = chunk.iter().collect();
                let batch = encode_batch(tokenizer, &refs, args.max_seq_length)?;
                let logits = model.forward(batch.to_input(config, &device)?);
                let labels: Vec<i64> = logits
                    .argmax(1)
                    .into_data()
                    .convert::<i64>()
                    .to_vec()
                    .unwrap_or_default();
                predictions.extend(labels.into_iter().map(|l| l as usize));
                times.push(batch_started.elapsed().as_secs_f64() * 1000.0);
            }
            log.log(
                json!([]),
                inference_figures(&mut times, examples.len(), started.elapsed().as_secs_f64()),
            )?;
            Ok(predictions)
        };

        if args.do_eval {
            let examples = read_split(&args.data_dir, "dev", task)?;
            let labels: Vec<usize> = examples
                .iter()
                .map(|e| e.label.context("dev.tsv has unlabelled rows"))
                .collect::<Result<_>>()?;
            let predictions = classify(&examples, &mut log)?;
            let scores = metrics(task, &predictions, &labels);
            log.log(json!([]), serde_json::to_value(scores)?)?;
            println!("{}", serde_json::to_string(&scores)?);
        }
        if args.do_predict {
            let examples = read_split(&args.data_dir, "test", task)?;
            let predictions = classify(&examples, &mut log)?;
            let mut tsv = String::from("index\tprediction\n");
            for (example, label) in examples.iter().zip(&predictions) {
                tsv.push_str(&format!("{}\t{label}\n", example.id));
            }
            write_atomic(&args.output_dir.join("predictions.tsv"), tsv.as_bytes())?;
            let json: serde_json::Map<String, serde_json::Value> = examples
                .iter()
                .zip(&predictions)
                .map(|(e, &l)| (e.id.clone(), json!(l)))
                .collect();
            write_atomic(
                &args.output_dir.join("predictions.json"),
                serde_json::to_string_pretty(&json)?.as_bytes(),
            )?;
            eprintln!(
                "wrote {}",
                args.output_dir.join("predictions.tsv").display()
            );
        }
        Ok(())
    }
}
