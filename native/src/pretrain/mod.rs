//! `bert-native pretrain`: `run_pretraining.py` on burn. MLM + NSP with NVLAMB and gradient
//! accumulation over HDF5 shards, phase 1 and 2 defaults, checkpoints every N steps, at the end and
//! on SIGTERM/SIGINT, exact resume, DLLogger JSON lines and a progress bar.

mod checkpoints;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bert_core::checkpoint::{to_safetensors, Checkpoint};
use bert_core::distributed::DataParallel;
use bert_core::io::write_atomic;
use bert_core::model::BertForPreTraining;
use bert_core::optim::{LambConfig, LrSchedule, StepOutcome, TrustRatio};
use bert_core::pretrained::read_config;
use bert_core::pretraining::checkpoint::{encode, TrainingState};
use bert_core::pretraining::{Pretrainer, StepReport};
use bert_core::BertConfig;
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::backend::{self, BackendKind, Job};
use crate::distributed::rendezvous::Rendezvous;
use crate::distributed::{self, CollectiveKind};
use crate::dllogger::DlLogger;
use crate::precision::PrecisionArgs;
use crate::pretraining_shards::{PretrainingShards, ReaderConfig, ShardExpectation};
use crate::report::print_load_report;

/// Flags of `pretrain`; each names its `run_pretraining.py` equivalent.
#[derive(Debug, Args)]
pub struct PretrainArgs {
    /// Model configuration, Hugging Face `config.json` or NVIDIA `bert_config.json` (`--config_file`).
    #[arg(long)]
    config_file: Option<PathBuf>,
    /// Preset used without --config-file: base or large (`--bert_model`).
    #[arg(long, default_value = "large")]
    bert_model: String,
    /// Pad the vocabulary to a multiple of 8 as NVIDIA does (30522 -> 30528), for tensor cores.
    #[arg(long)]
    pad_vocab: bool,
    /// Weights to start from: safetensors with Hugging Face names, `pytorch_model.bin` or an
    /// NVIDIA `.pt` (`--init_checkpoint`).
    #[arg(long)]
    init_checkpoint: Option<PathBuf>,
    /// Folder of HDF5 shards; files whose name contains "training" are read (`--input_dir`).
    #[arg(long)]
    input_dir: PathBuf,
    /// Checkpoints, logs and the final model (`--output_dir`).
    #[arg(long)]
    output_dir: PathBuf,
    /// Sequences per optimizer step on this rank, after accumulation (`--train_batch_size`;
    /// default 8192 in phase 1, 4096 in phase 2).
    #[arg(long)]
    train_batch_size: Option<usize>,
    /// Micro-batches per optimizer step; divides the batch (`--gradient_accumulation_steps`;
    /// default 128 in phase 1, 512 in phase 2).
    #[arg(long)]
    gradient_accumulation_steps: Option<usize>,
    /// Optimizer steps of the schedule (`--max_steps`; 7038 in phase 1, 1563 in phase 2).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Peak learning rate (`--learning_rate`; 6e-3 in phase 1, 4e-3 in phase 2).
    #[arg(long)]
    learning_rate: Option<f64>,
    /// Warm-up fraction of the steps (`--warmup_proportion`; 0.2843 / 0.128).
    #[arg(long)]
    warmup_proportion: Option<f64>,
    /// Tokens per sequence; must match the shards (`--max_seq_length`; 128 / 512).
    #[arg(long)]
    max_seq_length: Option<usize>,
    /// Masked positions per sequence; must match the shards (`--max_predictions_per_seq`; 20 / 80).
    #[arg(long)]
    max_predictions_per_seq: Option<usize>,
    #[command(flatten)]
    precision: PrecisionArgs,
    /// Average gradients once per optimizer step, after accumulation, in data-parallel jobs
    /// (`--allreduce_post_accumulation`; the only mode here, accepted for the reference's
    /// command lines).
    #[arg(long)]
    allreduce_post_accumulation: bool,
    /// Round gradients to float16 for the all-reduce (`--allreduce_post_accumulation_fp16`).
    #[arg(long)]
    allreduce_post_accumulation_fp16: bool,
    /// What sums the gradients of a data-parallel job: NCCL on the GPUs (auto on --backend
    /// cuda) or TCP through the host (auto elsewhere).
    #[arg(long, value_enum, default_value_t = CollectiveKind::Auto)]
    collective: CollectiveKind,
    /// Seed of initialisation, data order and dropout (`--seed`).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Steps between checkpoints (`--num_steps_per_checkpoint`).
    #[arg(long, default_value_t = 200)]
    num_steps_per_checkpoint: u64,
    /// Stop cleanly (with a checkpoint) after this many optimizer steps (`--steps_this_run`).
    #[arg(long)]
    steps_this_run: Option<u64>,
    /// Continue from the newest valid checkpoint in --output-dir (`--resume_from_checkpoint`).
    #[arg(long)]
    resume_from_checkpoint: bool,
    /// Read files and samples in order instead of shuffled (for parity checks).
    #[arg(long)]
    no_shuffle: bool,
    /// Phase 2 (seq 512) defaults; with --resume-from-checkpoint it starts from phase 1's last
    /// checkpoint (`--phase2`).
    #[arg(long)]
    phase2: bool,
    /// Steps of phase 1, added to phase-2 checkpoint names (`--phase1_end_step`).
    #[arg(long, default_value_t = 7038)]
    phase1_end_step: u64,
    /// Steps between log lines (`--log_freq`).
    #[arg(long, default_value_t = 1)]
    log_freq: u64,
    /// Apply the trust ratio to every tensor, not only decayed ones (apex `use_nvlamb`).
    #[arg(long)]
    use_nvlamb: bool,
    /// Decoupled weight decay of the decayed parameters.
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    /// Global gradient-norm clip (apex FusedLAMB `max_grad_norm`).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    /// Checkpoints kept (older ones are deleted).
    #[arg(long, default_value_t = 3)]
    keep_checkpoints: usize,
    /// Write no checkpoints (`--skip_checkpoint`).
    #[arg(long)]
    skip_checkpoint: bool,
    /// DLLogger log file (`--json-summary`; default OUTPUT_DIR/dllogger.json).
    #[arg(long)]
    json_summary: Option<PathBuf>,
    /// No progress bar (`--disable_progress_bar`).
    #[arg(long)]
    disable_progress_bar: bool,
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Flex)]
    backend: BackendKind,
}

/// The settings of a run once phase defaults are applied.
#[derive(Debug, Clone)]
struct Settings {
    micro_batch: usize,
    accumulation: usize,
    max_steps: u64,
    schedule: LrSchedule,
    lamb: LambConfig,
    max_seq_length: usize,
    max_predictions_per_seq: usize,
}

impl PretrainArgs {
    fn settings(&self) -> Result<Settings> {
        let phase2 = self.phase2;
        let pick = |value: Option<f64>, one: f64, two: f64| {
            value.unwrap_or(if phase2 { two } else { one })
        };
        let train_batch_size = self
            .train_batch_size
            .unwrap_or(if phase2 { 4096 } else { 8192 });
        let accumulation =
            self.gradient_accumulation_steps
                .unwrap_or(if phase2 { 512 } else { 128 });
        if accumulation == 0
            || train_batch_size == 0
            || !train_batch_size.is_multiple_of(accumulation)
        {
            bail!(
                "--train-batch-size {train_batch_size} must be a positive multiple of --gradient-accumulation-steps {accumulation}"
            );
        }
        let max_steps = self.max_steps.unwrap_or(if phase2 { 1563 } else { 7038 });
        let warmup = pick(self.warmup_proportion, 0.2843, 0.128);
        if max_steps == 0 || !(0.0..=1.0).contains(&warmup) {
            bail!("--max-steps must be positive and --warmup-proportion in [0, 1]");
        }
        Ok(Settings {
            micro_batch: train_batch_size / accumulation,
            accumulation,
            max_steps,
            schedule: LrSchedule::poly_warm_up(
                pick(self.learning_rate, 6e-3, 4e-3),
                warmup,
                max_steps,
            ),
            lamb: LambConfig {
                weight_decay: self.weight_decay,
                max_grad_norm: self.max_grad_norm,
                trust_ratio: if self.use_nvlamb {
                    TrustRatio::Always
                } else {
                    TrustRatio::DecayedOnly
                },
                ..LambConfig::default()
            },
            max_seq_length: self
                .max_seq_length
                .unwrap_or(if phase2 { 512 } else { 128 }),
            max_predictions_per_seq: self.max_predictions_per_seq.unwrap_or(if phase2 {
                80
            } else {
                20
            }),
        })
    }

    fn config(&self) -> Result<BertConfig> {
        let config = match &self.config_file {
            Some(path) => read_config(path)?,
            None => BertConfig::from_preset(&self.bert_model)?,
        };
        Ok(if self.pad_vocab {
            config.with_vocab_padded_to_multiple_of(8)
        } else {
            config
        })
    }
}

/// Runs `pretrain`.
pub fn run(args: PretrainArgs) -> Result<()> {
    args.precision.check(args.backend)?;
    let settings = args.settings()?;
    std::fs::create_dir_all(&args.output_dir)
        .with_context(|| format!("cannot create {}", args.output_dir.display()))?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("cannot install the signal handler")?;
    }
    // A data-parallel job (`bert-native launch`, torchrun's or SLURM's variables): this
    // process's rank, and the GPU of its local rank.
    let job = Rendezvous::from_env()?;
    let backend = args.backend;
    let device_index = job.as_ref().map_or(0, |job| job.local_rank);
    backend::run_on(
        backend,
        device_index,
        PretrainJob {
            args,
            settings,
            stop,
            job,
        },
    )
}

struct PretrainJob {
    args: PretrainArgs,
    settings: Settings,
    stop: Arc<AtomicBool>,
    job: Option<Rendezvous>,
}

impl Job for PretrainJob {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        let PretrainJob {
            args,
            settings,
            stop,
            job,
        } = self;
        let output_dir = args.output_dir.clone();
        let (rank, world_size) = job
            .as_ref()
            .map_or((0, 1), |job| (job.rank, job.world_size));
        // Rank 0 writes checkpoints, the model and the reference's log; the others log beside it.
        let is_root = rank == 0;
        let log_path = args
            .json_summary
            .clone()
            .unwrap_or_else(|| output_dir.join("dllogger.json"));
        let mut log = DlLogger::open_for_rank(&log_path, rank)?;
        let collective = match &job {
            Some(job) => Some(distributed::connect(job, args.collective, args.backend)?),
            None => None,
        };
        let command_line: Vec<String> = std::env::args().collect();

        // Where the run starts: a checkpoint of this run, a phase-1 checkpoint, given weights, or scratch.
        let resumed = if args.resume_from_checkpoint {
            checkpoints::newest_valid(&output_dir)?
        } else {
            None
        };
        if args.resume_from_checkpoint && args.phase2 && resumed.is_none() {
            bail!(
                "{}: --phase2 --resume-from-checkpoint needs phase 1's checkpoints there",
                output_dir.display()
            );
        }
        let config = match &resumed {
            Some((_, checkpoint)) => checkpoint.state.config.clone(),
            None => args.config()?,
        };
        <Autodiff<B> as Backend>::seed(&device, args.seed);
        let mut model = BertForPreTraining::<Autodiff<B>>::new(&config, &device);
        model.bert.precision = args.precision.precision;
        let mut trainer = Pretrainer::new(
            model,
            settings.lamb,
            settings.schedule,
            args.seed,
            device.clone(),
        );
        trainer.loss_scaler = args.precision.loss_scaler();
        let (mut position, step_offset) = (
            Default::default(),
            if args.phase2 { args.phase1_end_step } else { 0 },
        );
        match &resumed {
            Some((path, checkpoint)) => {
                let starts_phase2 = args.phase2 && checkpoint.state.step_offset == 0;
                checkpoint.restore_into(&mut trainer, starts_phase2, &device)?;
                trainer.loss_scaler.guard = args.precision.guard();
                if !starts_phase2 {
                    position = checkpoint.state.data_position;
                }
                eprintln!(
                    "resumed from {} at step {}{}",
                    path.display(),
                    checkpoint.state.step,
                    if starts_phase2 {
                        " (phase 2 starts at step 0)"
                    } else {
                        ""
                    }
                );
            }
            None => {
                if let Some(path) = &args.init_checkpoint {
                    let checkpoint = Checkpoint::from_file(path)?;
                    let report = checkpoint.load_into(&mut trainer.model)?;
                    report.require_encoder()?;
                    print_load_report(&report);
                }
            }
        }

        let expectation = ShardExpectation {
            max_seq_length: settings.max_seq_length,
            max_predictions_per_seq: settings.max_predictions_per_seq,
            vocab_size: config.vocab_size,
        };
        if let Some(collective) = &collective {
            let data_parallel = DataParallel {
                collective: Arc::clone(collective),
                reduce_in_half: args.allreduce_post_accumulation_fp16,
            };
            trainer.join(data_parallel)?;
        }
        let reader_config = ReaderConfig {
            seed: args.seed,
            rank,
            world_size,
            batch_size: settings.micro_batch,
            shuffle: !args.no_shuffle,
            expectation,
        };
        let mut reader = PretrainingShards::open(&args.input_dir, reader_config, position)?;
        log.log(
            json!("PARAMETER"),
            json!({
                "config": config, "train_batch_size": settings.micro_batch * settings.accumulation,
                "gradient_accumulation_steps": settings.accumulation, "max_steps": settings.max_steps,
                "schedule": settings.schedule, "lamb": settings.lamb, "seed": args.seed,
                "input_files": reader.files().len(), "start_step": trainer.step_count(),
                "backend": args.backend.to_string(), "precision": args.precision.precision,
                "world_size": world_size, "rank": rank,
                "loss_scale": trainer.loss_scaler.scale(),
            }),
        )?;

        let save = |trainer: &Pretrainer<Autodiff<B>>, position| -> Result<()> {
            if args.skip_checkpoint || !is_root {
                return Ok(());
            }
            let state = TrainingState {
                step: trainer.step_count(),
                step_offset,
                data_position: position,
                schedule: settings.schedule,
                lamb: settings.lamb,
                seed: args.seed,
                config: config.clone(),
                command_line: command_line.clone(),
                loss_scaler: trainer.loss_scaler,
            };
            let bytes = encode(trainer, &state)?;
            checkpoints::save(
                &output_dir,
                trainer.step_count() + step_offset,
                &bytes,
                args.keep_checkpoints,
            )?;
            Ok(())
        };

        let run_end = args.steps_this_run.map_or(settings.max_steps, |n| {
            (trainer.step_count() + n).min(settings.max_steps)
        });
        let bar = progress_bar(
            trainer.step_count(),
            settings.max_steps,
            args.disable_progress_bar || !is_root,
        );
        let started = Instant::now();
        let (mut sequences, mut last): (usize, Option<StepReport>) = (0, None);
        let mut last_saved = trainer.step_count();
        let stop_requested = || -> Result<bool> {
            let mine = stop.load(Ordering::Relaxed);
            let Some(collective) = &collective else {
                return Ok(mine);
            };
            // Every rank stops after the same step when any of them was asked to.
            let mut votes = [f32::from(u8::from(mine))];
            collective.all_reduce_sum(&mut votes)?;
            Ok(votes[0] > 0.0)
        };
        let mut stopped = false;
        while trainer.step_count() < run_end {
            if stop_requested()? {
                stopped = true;
                break;
            }
            let step_started = Instant::now();
            let micro_batches = (0..settings.accumulation)
                .map(|_| reader.next_batch())
                .collect::<Result<Vec<_>>>()?;
            let report = match trainer.train_step(&micro_batches) {
                Ok(report) => report,
                Err(diverged) => {
                    let _ = log.log(json!("ERROR"), json!({"error": diverged.to_string()}));
                    bail!(
                        "{diverged}; stopping after step {}: the last good checkpoint in {} is intact",
                        trainer.step_count() + step_offset,
                        output_dir.display()
                    );
                }
            };
            sequences += report.sequences;
            let seconds = step_started.elapsed().as_secs_f64();
            let applied = report.outcome == StepOutcome::Applied;
            if !applied || report.step % args.log_freq.max(1) == 0 || report.step == run_end {
                log.log(
                    json!([reader.position().epoch, report.step + step_offset]),
                    json!({
                        "loss": report.loss, "mlm_loss": report.mlm_loss, "nsp_loss": report.nsp_loss,
                        "lr": report.lr, "grad_norm": report.global_grad_norm,
                        "loss_scale": report.loss_scale, "skipped": !applied,
                        "skipped_steps": trainer.loss_scaler.skipped_steps,
                        "sequences_per_second": report.sequences as f64 / seconds,
                    }),
                )?;
            }
            if !applied {
                bar.suspend(|| {
                    eprintln!(
                        "step {} skipped: inf/NaN gradients at loss scale {}; the scale is now {}",
                        report.step + 1 + step_offset,
                        report.loss_scale,
                        trainer.loss_scaler.scale()
                    )
                });
                continue;
            }
            bar.set_position(report.step);
            bar.set_message(format!(
                "loss {:.4} lr {:.2e} {:.1} seq/s",
                report.loss,
                report.lr,
                report.sequences as f64 / seconds
            ));
            if report.step % args.num_steps_per_checkpoint.max(1) == 0 {
                save(&trainer, reader.position())?;
                last_saved = report.step;
            }
            last = Some(report);
        }
        bar.finish_and_clear();
        let raw_train_time = started.elapsed().as_secs_f64();
        if trainer.step_count() != last_saved {
            save(&trainer, reader.position())?;
        }
        if stopped {
            eprintln!(
                "stopped by a signal after step {}; continue with --resume-from-checkpoint",
                trainer.step_count() + step_offset
            );
        }

        let weights = output_dir.join("model.safetensors");
        if is_root {
            write_atomic(&weights, &to_safetensors(&trainer.model)?)?;
            let config_path = output_dir.join("config.json");
            write_atomic(
                &config_path,
                config.to_hf_json("BertForPreTraining").as_bytes(),
            )?;
        }
        log.log(
            json!([]),
            json!({
                "e2e_train_time": raw_train_time,
                "raw_train_time": raw_train_time,
                "training_sequences_per_second": sequences as f64 / raw_train_time.max(1e-9),
                "final_loss": last.map(|r| r.loss),
                "step": trainer.step_count() + step_offset,
            }),
        )?;
        eprintln!(
            "step {}: loss {}; wrote {}",
            trainer.step_count() + step_offset,
            last.map_or("n/a".to_string(), |r| format!("{:.4}", r.loss)),
            weights.display()
        );
        Ok(())
    }
}

fn progress_bar(start: u64, total: u64, disabled: bool) -> ProgressBar {
    if disabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("pretrain [{bar:30}] {pos}/{len} steps {msg} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_position(start);
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use bert_tests::fixture;
    use burn::backend::NdArray;

    /// The reference trajectory (see `tests/pretrain.rs`) with the same code in float64: the
    /// manifest's strict float32 tolerances hold with room to spare, so any larger float32
    /// difference is arithmetic noise, not a semantic one.
    #[test]
    fn the_trainer_in_float64_meets_the_manifests_tolerances() {
        type AB = Autodiff<NdArray<f64>>;
        let config = BertConfig::from_json(
            &std::fs::read_to_string(fixture("pretrain/config.json")).unwrap(),
        )
        .unwrap();
        let device = Default::default();
        let mut model = BertForPreTraining::<AB>::new(&config, &device);
        Checkpoint::from_file(fixture("pretrain/init.safetensors"))
            .unwrap()
            .load_into(&mut model)
            .unwrap()
            .require_exact()
            .unwrap();
        let shard = crate::shard_file::read_valid_shard(
            &fixture("pretrain/data/tiny_pretrain_seq128_training_0.hdf5"),
            30522,
        )
        .unwrap();
        let schedule = LrSchedule::poly_warm_up(1e-3, 0.5, 4);
        let mut trainer = Pretrainer::new(model, LambConfig::default(), schedule, 1, device);
        let manifest: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixture("pretrain/manifest.json")).unwrap(),
        )
        .unwrap();
        for step in 0..4 {
            let micro_batches: Vec<_> = (0..2)
                .map(|m| {
                    shard.select_rows(
                        &(step * 16 + m * 8..step * 16 + m * 8 + 8).collect::<Vec<_>>(),
                    )
                })
                .collect();
            let report = trainer.train_step(&micro_batches).unwrap();
            let reference = &manifest["per_step"][step];
            assert!(
                (report.loss - reference["loss"].as_f64().unwrap()).abs() < 1e-5,
                "{report:?}"
            );
            let norm = reference["global_grad_norm"].as_f64().unwrap();
            assert!(
                (report.global_grad_norm - norm).abs() < 1e-6 * norm,
                "{report:?}"
            );
        }
        let ours = bert_core::checkpoint::model_tensors(&trainer.model).unwrap();
        let golden = std::fs::read(fixture("pretrain/final_subset.safetensors")).unwrap();
        let golden = safetensors::SafeTensors::deserialize(&golden).unwrap();
        let rows: Vec<usize> = golden
            .tensor("word_embedding_rows")
            .unwrap()
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as usize)
            .collect();
        for (name, shape, bytes) in ours {
            let values: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            let values = if name == "bert.embeddings.word_embeddings.weight" {
                rows.iter()
                    .flat_map(|&r| values[r * shape[1]..(r + 1) * shape[1]].to_vec())
                    .collect()
            } else {
                values
            };
            let reference: Vec<f32> = golden
                .tensor(&name)
                .unwrap()
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            let max_abs = values
                .iter()
                .zip(&reference)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(max_abs <= 2e-6, "{name}: {max_abs}");
        }
    }
}
