//! `bert-native bench pretrain`: sequences per second of pretraining steps (forward, backward,
//! NVLAMB) for a configuration, on synthetic shards of the given shape.

use std::path::PathBuf;

use anyhow::{bail, Result};
use bert_core::data::ShardArrays;
use bert_core::model::BertForPreTraining;
use bert_core::optim::{LambConfig, LrSchedule};
use bert_core::pretrained::read_config;
use bert_core::pretraining::Pretrainer;
use bert_core::BertConfig;
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use clap::Args;

use super::{synthetic_row, time_iterations, timing_summary, Timings};
use crate::backend::{self, BackendKind, Job};
use crate::precision::PrecisionArgs;

/// Arguments of `bench pretrain`.
#[derive(Debug, Args)]
pub struct PretrainBenchArgs {
    /// Preset: base or large.
    #[arg(long, default_value = "base", conflicts_with = "config_file")]
    config: String,
    /// A configuration file instead of a preset.
    #[arg(long)]
    config_file: Option<PathBuf>,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Sequences per step (one micro-batch).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Masked positions per sequence.
    #[arg(long, default_value_t = 20)]
    max_pred: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Flex)]
    backend: BackendKind,
    #[command(flatten)]
    precision: PrecisionArgs,
}

/// Runs `bench pretrain`.
pub fn run(args: PretrainBenchArgs) -> Result<()> {
    if args.batch == 0
        || args.seq < 8
        || args.steps == 0
        || args.max_pred == 0
        || args.max_pred >= args.seq - 2
    {
        bail!("need --batch >= 1, --seq >= 8, --steps >= 1 and 1 <= --max-pred < seq - 2");
    }
    args.precision.check(args.backend)?;
    let config = match &args.config_file {
        Some(path) => read_config(path)?,
        None => BertConfig::from_preset(&args.config)?,
    };
    let shard = synthetic_shard(args.batch, args.seq, args.max_pred, config.vocab_size);
    let backend_name = args.backend.to_string();
    let (mut timings, skipped_steps) = backend::run(
        args.backend,
        PretrainBench {
            config: config.clone(),
            shard,
            steps: args.steps,
            warmup: args.warmup,
            precision: args.precision.clone(),
        },
    )?;
    let summary = timing_summary(&mut timings.timed_ms, args.batch);
    let json = serde_json::json!({
        "benchmark": "pretrain",
        "backend": backend_name,
        "precision": args.precision.precision,
        "layers": config.num_hidden_layers,
        "hidden": config.hidden_size,
        "seq": args.seq,
        "batch": args.batch,
        "max_pred": args.max_pred,
        "steps": args.steps,
        "step_ms": summary.latency_ms,
        "first_step_ms": timings.first_ms,
        "training_sequences_per_second": summary.sequences_per_second,
        "skipped_steps": skipped_steps,
    });
    println!("{json}");
    Ok(())
}

/// A batch in the shard layout: synthetic tokens, `max_pred` masked positions spread over the
/// sequence, alternating next-sentence labels.
fn synthetic_shard(batch: usize, seq: usize, max_pred: usize, vocab_size: usize) -> ShardArrays {
    let stride = (seq - 2) / max_pred;
    ShardArrays {
        num_instances: batch,
        max_seq_length: seq,
        max_predictions_per_seq: max_pred,
        input_ids: (0..batch)
            .flat_map(|r| {
                synthetic_row(r, seq, vocab_size)
                    .into_iter()
                    .map(|id| id as i32)
            })
            .collect(),
        input_mask: vec![1; batch * seq],
        segment_ids: (0..batch * seq)
            .map(|i| i8::from(i % seq >= seq / 2))
            .collect(),
        masked_lm_positions: (0..batch)
            .flat_map(|_| (0..max_pred).map(move |j| (1 + j * stride) as i32))
            .collect(),
        masked_lm_ids: (0..batch * max_pred)
            .map(|i| 1000 + (i % 500) as i32)
            .collect(),
        next_sentence_labels: (0..batch).map(|r| (r % 2) as i8).collect(),
    }
}

struct PretrainBench {
    config: BertConfig,
    shard: ShardArrays,
    steps: usize,
    warmup: usize,
    precision: PrecisionArgs,
}

impl Job for PretrainBench {
    /// Step times and the steps skipped for overflow.
    type Output = (Timings, u64);

    fn run<B: Backend>(self, device: B::Device) -> Result<(Timings, u64)> {
        let mut model = BertForPreTraining::<Autodiff<B>>::new(&self.config, &device);
        model.bert.precision = self.precision.precision;
        let schedule = LrSchedule::poly_warm_up(6e-3, 0.2843, 7038);
        let mut trainer = Pretrainer::new(model, LambConfig::default(), schedule, 42, device);
        trainer.loss_scaler = self.precision.loss_scaler();
        let timings = time_iterations(self.warmup, self.steps, || {
            // The report reads the loss back, so the step has finished on the device.
            trainer.train_step(std::slice::from_ref(&self.shard))?;
            Ok(())
        })?;
        Ok((timings, trainer.loss_scaler.skipped_steps))
    }
}
