//! `bert-native bench`: throughput and latency of the forward pass (`forward`), of pretraining
//! steps (`pretrain`), of the data-parallel all-reduce (`allreduce`) and of the optimizer step
//! (`optimizer`, fused kernels against plain tensor operations) on synthetic data, one
//! JSON line each, to set beside a reference measured on the same machine (see `bench/` and
//! `docs/benchmarks.md`).

mod allreduce;
mod forward;
mod optimizer;
mod pretrain;

use anyhow::Result;
use clap::Subcommand;

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Forward pass of a model folder (inference): the question-answering model when the weights
    /// have a span head, else the encoder and pooler, as bench/forward_torch.py times them.
    Forward(forward::ForwardArgs),
    /// Pretraining steps (forward, backward, NVLAMB) of a configuration from scratch.
    Pretrain(pretrain::PretrainBenchArgs),
    /// SQuAD inference of a preset (the reference's benchmark: large, seq 384, batch 8).
    SquadInference(forward::SquadInferenceArgs),
    /// The data-parallel gradient all-reduce alone (run under `launch` for several ranks).
    Allreduce(allreduce::AllReduceBenchArgs),
    /// One NVLAMB step over a configuration's parameters, fused kernels against plain tensor
    /// operations.
    Optimizer(optimizer::OptimizerBenchArgs),
}

/// Runs a benchmark.
pub fn run(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Forward(args) => forward::run(args),
        BenchCommand::Pretrain(args) => pretrain::run(args),
        BenchCommand::SquadInference(args) => forward::run_squad_inference(args),
        BenchCommand::Allreduce(args) => allreduce::run(args),
        BenchCommand::Optimizer(args) => optimizer::run(args),
    }
}

/// Wall times of a benchmark's iterations.
#[derive(Debug, Clone, Default)]
struct Timings {
    /// The very first iteration (warm-up included): on GPU backends it holds kernel compilation
    /// and autotuning, which every new process pays once.
    first_ms: f64,
    /// The timed iterations, after the warm-up.
    timed_ms: Vec<f64>,
}

/// Times `warmup` untimed then `iterations` timed calls of `pass` (which must wait for the
/// device: reading a result back does).
fn time_iterations(
    warmup: usize,
    iterations: usize,
    mut pass: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Timings> {
    let mut timings = Timings::default();
    for i in 0..warmup + iterations {
        let start = std::time::Instant::now();
        pass()?;
        let elapsed_ms = start.elapsed().as_secs_f64() * 1000.0;
        if i == 0 {
            timings.first_ms = elapsed_ms;
        }
        if i >= warmup {
            timings.timed_ms.push(elapsed_ms);
        }
    }
    Ok(timings)
}

/// Latency percentiles of the timed iterations, and the throughput they imply.
#[derive(Debug, Clone)]
struct TimingSummary {
    latency_ms: serde_json::Value,
    sequences_per_second: f64,
}

/// Percentiles 50/90/95/99 and mean of `times_ms` (sorted in place), as the reference logs them.
fn timing_summary(times_ms: &mut [f64], sequences_per_iteration: usize) -> TimingSummary {
    times_ms.sort_by(f64::total_cmp);
    let percentile = |p: f64| {
        let rank = ((p / 100.0) * times_ms.len() as f64).ceil() as usize;
        times_ms[rank.clamp(1, times_ms.len()) - 1]
    };
    let mean = times_ms.iter().sum::<f64>() / times_ms.len().max(1) as f64;
    TimingSummary {
        latency_ms: serde_json::json!({
            "p50": percentile(50.0), "p90": percentile(90.0), "p95": percentile(95.0),
            "p99": percentile(99.0), "mean": mean,
        }),
        sequences_per_second: sequences_per_iteration as f64 * 1000.0 / mean,
    }
}

/// `[CLS] w w ... w [SEP]`: deterministic ordinary word ids (1000 and up in BERT vocabularies).
fn synthetic_row(row: usize, seq_len: usize, vocab_size: usize) -> Vec<i64> {
    let ordinary = vocab_size.saturating_sub(1000).max(1) as i64;
    let mut ids: Vec<i64> = (0..seq_len)
        .map(|i| 1000 + ((i * 7919 + row * 104_729) as i64 % ordinary))
        .collect();
    ids[0] = 101;
    ids[seq_len - 1] = 102;
    ids
}
