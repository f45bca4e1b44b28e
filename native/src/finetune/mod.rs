//! Fine-tuning commands (`squad`, `glue`) and interactive question answering (`qa`), with what
//! they share: loading a model folder or an NVIDIA checkpoint into a task model, the epoch loop
//! (shuffle, accumulate, Adam with linear warm-up), and inference timing.

pub mod glue;
pub mod qa;
pub mod squad;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use bert_core::checkpoint::Checkpoint;
use bert_core::distributed::DataParallel;
use bert_core::finetune::FineTuning;
use bert_core::optim::StepOutcome;
use bert_core::pretrained::{read_config, ModelFiles};
use bert_core::tokenizer::BertTokenizer;
use bert_core::BertConfig;
use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::backend::BackendKind;
use crate::distributed::rendezvous::Rendezvous;
use crate::distributed::{self, CollectiveKind};
use crate::dllogger::DlLogger;
use crate::precision::PrecisionArgs;
use crate::report::print_load_report;

/// Where the model comes from: a folder, or the reference's separate files.
#[derive(Debug, Args, Clone)]
pub struct ModelArgs {
    /// Model folder (config.json, weights, vocab.txt or tokenizer.json), e.g. a Hugging Face
    /// download or the output of `pretrain`/`squad`.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Weights to start from instead of the folder's (`--init_checkpoint`): safetensors,
    /// `pytorch_model.bin` or an NVIDIA `.pt`.
    #[arg(long)]
    pub init_checkpoint: Option<PathBuf>,
    /// Model configuration (`--config_file`), when not taken from --model.
    #[arg(long)]
    pub config_file: Option<PathBuf>,
    /// WordPiece vocabulary (`--vocab_file`), when not taken from --model.
    #[arg(long)]
    pub vocab_file: Option<PathBuf>,
    /// Lower-case input (`--do_lower_case`; default: as the model folder's tokenizer says, or
    /// yes with --vocab-file).
    #[arg(long)]
    pub do_lower_case: Option<bool>,
}

/// A configuration, a tokenizer and the weights to load, resolved from [`ModelArgs`].
pub struct ModelSource {
    /// The model's configuration (fitted to the weights' vocabulary).
    pub config: BertConfig,
    /// The tokenizer.
    pub tokenizer: BertTokenizer,
    /// The weights, if any (a fresh model otherwise).
    pub checkpoint: Option<Checkpoint>,
    /// The vocabulary file to copy next to a fine-tuned model.
    pub vocab_file: Option<PathBuf>,
}

impl ModelArgs {
    /// Resolves the files and reads configuration, tokenizer and weights.
    pub fn resolve(&self) -> Result<ModelSource> {
        let files = match &self.model {
            Some(dir) => Some(ModelFiles::find(dir, self.init_checkpoint.as_deref())?),
            None => None,
        };
        let config = match (&self.config_file, &files) {
            (Some(path), _) => read_config(path)?,
            (None, Some(files)) => files.read_config()?,
            (None, None) => bail!(
                "give --model DIR, or --config-file with --vocab-file (and --init-checkpoint)"
            ),
        };
        let (tokenizer, vocab_file) = match (&self.vocab_file, &files) {
            (Some(path), _) => (
                BertTokenizer::from_vocab_file(path, self.do_lower_case.unwrap_or(true))?,
                Some(path.clone()),
            ),
            (None, Some(files)) => (
                files.read_tokenizer(self.do_lower_case)?,
                files.vocab.clone(),
            ),
            (None, None) => bail!("give --vocab-file or a --model folder with a vocabulary"),
        };
        if let Some(mismatch) = tokenizer.casing_mismatch() {
            eprintln!("WARNING: {mismatch}");
        }
        let checkpoint = match (&self.init_checkpoint, &files) {
            (_, Some(files)) => Some(Checkpoint::from_file(&files.weights)?),
            (Some(path), None) => Some(Checkpoint::from_file(path)?),
            (None, None) => None,
        };
        let config = match &checkpoint {
            Some(checkpoint) => checkpoint.fit_config(&config),
            None => config,
        };
        if tokenizer.vocab_size() > config.vocab_size {
            bail!(
                "the vocabulary has {} entries but the model only {}: wrong vocabulary for this model",
                tokenizer.vocab_size(),
                config.vocab_size
            );
        }
        Ok(ModelSource {
            config,
            tokenizer,
            checkpoint,
            vocab_file,
        })
    }
}

impl ModelSource {
    /// Loads the weights into `model`: the encoder must be complete; a missing task head is
    /// freshly initialised (fine-tuning starts from a pretrained encoder) unless `need_head`.
    pub fn load_into<B: Backend, M: Module<B>>(
        &self,
        model: &mut M,
        need_head: bool,
    ) -> Result<()> {
        let Some(checkpoint) = &self.checkpoint else {
            if need_head {
                bail!("no weights given: use --model or --init-checkpoint");
            }
            return Ok(());
        };
        let report = checkpoint.load_into(model)?;
        report.require_encoder()?;
        if need_head && !report.missing.is_empty() {
            bail!(
                "{}: the checkpoint has no {} head ({}): fine-tune it first (--do-train)",
                report.source,
                if report.missing.iter().any(|m| m.starts_with("qa_outputs")) {
                    "question-answering"
                } else {
                    "classification"
                },
                report.missing.join(", ")
            );
        }
        print_load_report(&report);
        Ok(())
    }

    /// Writes a fine-tuned model as a folder every command loads: weights with Hugging Face
    /// names, `config.json` (naming a classifier's `labels`, if any) and the vocabulary.
    pub fn save_model<B: Backend, M: Module<B>>(
        &self,
        model: &M,
        dir: &Path,
        architecture: &str,
        labels: &[&str],
    ) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let weights = dir.join("model.safetensors");
        bert_core::io::write_atomic(&weights, &bert_core::checkpoint::to_safetensors(model)?)?;
        bert_core::io::write_atomic(
            &dir.join("config.json"),
            self.config
                .to_hf_json_with_labels(architecture, labels)
                .as_bytes(),
        )?;
        if let Some(vocab) = &self.vocab_file {
            let target = dir.join("vocab.txt");
            if vocab != &target {
                let bytes = std::fs::read(vocab)
                    .with_context(|| format!("cannot read {}", vocab.display()))?;
                bert_core::io::write_atomic(&target, &bytes)?;
            }
        }
        Ok(())
    }
}

/// The reference's fine-tuning hyper-parameters.
#[derive(Debug, Args, Clone)]
pub struct TrainArgs {
    /// Sequences per optimizer step (`--train_batch_size`).
    #[arg(long, default_value_t = 32)]
    pub train_batch_size: usize,
    /// Micro-batches per step; divides the batch (`--gradient_accumulation_steps`).
    #[arg(long, default_value_t = 1)]
    pub gradient_accumulation_steps: usize,
    /// Peak learning rate (`--learning_rate`).
    #[arg(long)]
    pub learning_rate: Option<f64>,
    /// Passes over the training data (`--num_train_epochs`).
    #[arg(long)]
    pub num_train_epochs: Option<f64>,
    /// Linear warm-up fraction (`--warmup_proportion`).
    #[arg(long, default_value_t = 0.1)]
    pub warmup_proportion: f64,
    /// Stop after this many optimizer steps (`--max_steps`).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Seed of initialisation, data order and dropout (`--seed`).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Steps between log lines (`--log_freq`).
    #[arg(long, default_value_t = 50)]
    pub log_freq: u64,
    /// Arithmetic of training and prediction.
    #[command(flatten)]
    pub precision: PrecisionArgs,
    /// What sums the gradients when run data-parallel under `launch`, torchrun or SLURM: NCCL
    /// on the GPUs (auto on --backend cuda) or TCP through the host (auto elsewhere).
    #[arg(long, value_enum, default_value_t = CollectiveKind::Auto)]
    pub collective: CollectiveKind,
}

/// This process's place in a data-parallel fine-tuning job, read from the variables `launch`,
/// torchrun or SLURM set (as `run_squad.py` under `torch.distributed`): every rank trains on its
/// share of each step's batch, and rank 0 alone writes the model, predictions and scores. A lone
/// process is rank 0 of 1.
#[derive(Debug)]
pub struct Ranks {
    job: Option<Rendezvous>,
    collective: CollectiveKind,
    backend: BackendKind,
}

impl Ranks {
    /// The job of this process, if the environment describes one.
    pub fn from_env(train: &TrainArgs, backend: BackendKind) -> Result<Self> {
        Ok(Self {
            job: Rendezvous::from_env()?,
            collective: train.collective,
            backend,
        })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.job.as_ref().map_or(0, |job| job.rank)
    }

    /// The GPU of this process on its node.
    pub fn local_rank(&self) -> usize {
        self.job.as_ref().map_or(0, |job| job.local_rank)
    }

    /// Connects the ranks (every rank must call it); `None` for a lone process.
    pub fn connect(&self) -> Result<Option<DataParallel>> {
        self.job
            .as_ref()
            .map(|job| {
                Ok(DataParallel {
                    collective: distributed::connect(job, self.collective, self.backend)?,
                    reduce_in_half: false,
                })
            })
            .transpose()
    }
}

/// Figures of a fine-tuning run.
#[derive(Debug, Clone, Copy)]
pub struct TrainSummary {
    /// Optimizer steps taken.
    pub steps: u64,
    /// The last step's loss.
    pub final_loss: f64,
    /// Training wall time.
    pub seconds: f64,
    /// Sequences (windows / sentences) trained on.
    pub sequences: usize,
}

/// A task's defaults (the reference's) where the flags leave them out, and what it logs about
/// its data before training.
pub struct TaskDefaults {
    /// Passes over the data without `--num-train-epochs`.
    pub epochs: f64,
    /// Peak learning rate without `--learning-rate`.
    pub learning_rate: f64,
    /// Extra fields of the `PARAMETER` log line (a JSON object).
    pub parameters: serde_json::Value,
}

/// Fine-tunes `model` on `items` as the reference does: Adam without bias correction and linear
/// warm-up/decay (the shared [`bert_core::train::Trainer`]), for the epochs (or steps) of `args`,
/// shuffling each epoch, on the device holding the model; `loss(model, micro_batch)` gives the
/// loss of a micro-batch. With `data_parallel`, this rank trains on its share of every step and
/// the gradients are averaged over the ranks. Logs the parameters, the steps and the summary, and
/// returns the trained model.
pub fn fine_tune<AB, M, T>(
    model: M,
    items: &[T],
    args: &TrainArgs,
    defaults: TaskDefaults,
    data_parallel: Option<&DataParallel>,
    log: &mut DlLogger,
    loss: impl Fn(&M, &[&T]) -> Tensor<AB, 1> + Sync,
) -> Result<(M, TrainSummary)>
where
    AB: AutodiffBackend,
    M: AutodiffModule<AB>,
    T: Sync,
{
    let (rank, world_size) = data_parallel.map_or((0, 1), |data_parallel| {
        let collective = &data_parallel.collective;
        (collective.rank(), collective.world_size())
    });
    let plan = FineTuning {
        train_batch_size: args.train_batch_size,
        gradient_accumulation_steps: args.gradient_accumulation_steps,
        learning_rate: args.learning_rate.unwrap_or(defaults.learning_rate),
        epochs: args.num_train_epochs.unwrap_or(defaults.epochs),
        warmup_proportion: args.warmup_proportion,
        max_steps: args.max_steps,
        seed: args.seed,
    }
    .plan_for_rank(items.len(), rank, world_size)?;
    let steps = plan.steps();
    let mut parameters = defaults.parameters;
    parameters["steps"] = json!(steps);
    parameters["schedule"] = json!(plan.schedule());
    parameters["world_size"] = json!(world_size);
    log.log(json!("PARAMETER"), parameters)?;
    let device = model
        .devices()
        .into_iter()
        .next()
        .context("the model has no parameters to train")?;
    let mut trainer = plan.trainer(model, device);
    trainer.loss_scaler = args.precision.loss_scaler();
    if let Some(data_parallel) = data_parallel {
        trainer.join(data_parallel.clone())?;
    }
    let bar = if rank == 0 {
        ProgressBar::new(steps)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("fine-tune [{bar:30}] {pos}/{len} steps {msg} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let started = Instant::now();
    let (mut final_loss, mut sequences) = (f64::NAN, 0);
    for (epoch, micro_batches) in plan.batches() {
        let micro_batches: Vec<Vec<&T>> = micro_batches
            .iter()
            .map(|micro| micro.iter().map(|&i| &items[i]).collect())
            .collect();
        let report = trainer
            .step(&micro_batches, |model, micro| vec![loss(model, micro)])
            .map_err(|diverged| anyhow!("{diverged}: lower --learning-rate"))?;
        if report.outcome == StepOutcome::Skipped {
            bar.suspend(|| {
                eprintln!(
                    "a step was skipped: inf/NaN gradients at loss scale {}",
                    report.loss_scale
                )
            });
            continue;
        }
        final_loss = report.losses[0];
        sequences += micro_batches.iter().map(Vec::len).sum::<usize>();
        if !final_loss.is_finite() {
            bail!(
                "the loss became {final_loss} at step {}: lower --learning-rate",
                report.step
            );
        }
        if report.step.is_multiple_of(args.log_freq.max(1)) || report.step == steps {
            log.log(
                json!([epoch, report.step]),
                json!({"loss": final_loss, "lr": report.lr, "grad_norm": report.global_grad_norm}),
            )?;
        }
        bar.set_position(report.step);
        bar.set_message(format!("loss {final_loss:.4}"));
    }
    bar.finish_and_clear();
    let summary = TrainSummary {
        steps: trainer.step_count(),
        final_loss,
        seconds: started.elapsed().as_secs_f64(),
        sequences,
    };
    log.log(
        json!([]),
        json!({
            "e2e_train_time": summary.seconds,
            "training_sequences_per_second": summary.sequences as f64 / summary.seconds.max(1e-9),
            "final_loss": summary.final_loss,
        }),
    )?;
    Ok((trainer.model, summary))
}

/// Latency percentiles (ms) and throughput of timed inference batches, as the reference logs them.
pub fn inference_figures(
    batch_times_ms: &mut [f64],
    sequences: usize,
    seconds: f64,
) -> serde_json::Value {
    batch_times_ms.sort_by(f64::total_cmp);
    let percentile = |p: f64| {
        if batch_times_ms.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * batch_times_ms.len() as f64).ceil() as usize;
        batch_times_ms[rank.clamp(1, batch_times_ms.len()) - 1]
    };
    json!({
        "e2e_inference_time": seconds,
        "inference_sequences_per_second": sequences as f64 / seconds.max(1e-9),
        "latency_ms_p50": percentile(50.0),
        "latency_ms_p90": percentile(90.0),
        "latency_ms_p95": percentile(95.0),
        "latency_ms_p99": percentile(99.0),
    })
}
