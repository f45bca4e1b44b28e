//! `bert-native bench allreduce`: the data-parallel gradient all-reduce alone, as nccl-tests'
//! `all_reduce_perf` measures it, through the same core path pretraining uses. Run it under
//! `launch` (or torchrun/SLURM) for N ranks, or alone for one. Every rank contributes a known
//! pattern, so the first result is checked before anything is timed.

use anyhow::{bail, Result};
use bert_core::distributed::DataParallel;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor};
use clap::Args;

use super::{time_iterations, timing_summary};
use crate::backend::{self, BackendKind, Job};
use crate::distributed::rendezvous::{Rendezvous, DEFAULT_TIMEOUT};
use crate::distributed::{self, CollectiveKind};

/// BERT-large's parameter count: the gradient buffer of one optimizer step.
const BERT_LARGE_PARAMETERS: usize = 335_141_888;
/// The pattern's period: rank r contributes `(r + 1) * (i % PERIOD)` at element i, small
/// integers that float16 still holds exactly once summed over a few ranks.
const PERIOD: i64 = 16;

/// Arguments of `bench allreduce`.
#[derive(Debug, Args)]
pub struct AllReduceBenchArgs {
    /// Floats summed per all-reduce (default: BERT-large's gradients).
    #[arg(long, default_value_t = BERT_LARGE_PARAMETERS)]
    elements: usize,
    /// Reduce in float16 (`--allreduce-post-accumulation-fp16`).
    #[arg(long)]
    half: bool,
    /// Timed all-reduces.
    #[arg(long, default_value_t = 10)]
    iterations: usize,
    /// Untimed all-reduces first (the first also checks the sums).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Flex)]
    backend: BackendKind,
    /// What sums: NCCL (auto on cuda) or TCP through the host.
    #[arg(long, value_enum, default_value_t = CollectiveKind::Auto)]
    collective: CollectiveKind,
}

/// Runs `bench allreduce`; rank 0 prints the JSON line.
pub fn run(args: AllReduceBenchArgs) -> Result<()> {
    if args.elements == 0 || args.iterations == 0 || args.warmup == 0 {
        bail!("need --elements, --iterations and --warmup of at least 1");
    }
    let job = Rendezvous::from_env()?.unwrap_or(Rendezvous {
        rank: 0,
        world_size: 1,
        local_rank: 0,
        master_addr: "127.0.0.1".into(),
        master_port: 0,
        timeout: DEFAULT_TIMEOUT,
    });
    let (rank, world_size) = (job.rank, job.world_size);
    let (mut timings, on_device) = backend::run_on(
        args.backend,
        job.local_rank,
        AllReduceBench {
            job,
            collective: args.collective,
            backend: args.backend,
            half: args.half,
            elements: args.elements,
            iterations: args.iterations,
            warmup: args.warmup,
        },
    )?;
    let summary = timing_summary(&mut timings.timed_ms, 1);
    let mean_s = summary.latency_ms["mean"].as_f64().unwrap_or(f64::NAN) / 1000.0;
    let bytes = args.elements * if args.half { 2 } else { 4 };
    // nccl-tests' definitions: the algorithm bandwidth is bytes over time; the bus bandwidth
    // scales it by 2(n-1)/n, what each link of a ring all-reduce carries.
    let algorithm_bandwidth = bytes as f64 / mean_s / 1e9;
    let bus_bandwidth =
        algorithm_bandwidth * 2.0 * (world_size as f64 - 1.0) / world_size.max(1) as f64;
    if rank == 0 {
        let json = serde_json::json!({
            "benchmark": "allreduce",
            "backend": args.backend.to_string(),
            // What summed: NCCL on the device buffers, or TCP through the host.
            "collective": if on_device { "nccl" } else { "tcp" },
            "world_size": world_size,
            "elements": args.elements,
            "dtype": if args.half { "float16" } else { "float32" },
            "bytes": bytes,
            "checked": true,
            "latency_ms": summary.latency_ms,
            "first_ms": timings.first_ms,
            "algorithm_bandwidth_gb_s": algorithm_bandwidth,
            "bus_bandwidth_gb_s": bus_bandwidth,
        });
        println!("{json}");
    }
    Ok(())
}

struct AllReduceBench {
    job: Rendezvous,
    collective: CollectiveKind,
    backend: BackendKind,
    half: bool,
    elements: usize,
    iterations: usize,
    warmup: usize,
}

impl Job for AllReduceBench {
    /// The timings, and whether the sums ran on the device.
    type Output = (super::Timings, bool);

    fn run<B: Backend>(self, device: B::Device) -> Result<(super::Timings, bool)> {
        // Connected on the backend's side, so a missing GPU is reported before a missing NCCL.
        let data_parallel = DataParallel {
            collective: distributed::connect(&self.job, self.collective, self.backend)?,
            reduce_in_half: self.half,
        };
        let on_device = data_parallel.collective.device_all_reduce().is_some();
        let (rank, world_size) = (self.job.rank, self.job.world_size);
        let pattern = Tensor::<B, 1, Int>::arange(0..self.elements as i64, &device)
            .remainder_scalar(PERIOD)
            .float();
        let mut checked = false;
        let timings = time_iterations(self.warmup, self.iterations, || {
            // A fresh buffer each time, as pretraining's scaled gradients are: NCCL sums in place.
            let contribution = pattern.clone() * (rank as f64 + 1.0);
            let sum = data_parallel.all_reduce_sum(contribution)?;
            if !checked {
                let expected = pattern.clone() * (world_size * (world_size + 1) / 2) as f64;
                let worst = (sum.clone() - expected)
                    .abs()
                    .max()
                    .into_scalar()
                    .elem::<f32>();
                if worst != 0.0 {
                    bail!("rank {rank}: the all-reduce is wrong by up to {worst}");
                }
                checked = true;
            } else {
                // Reading one element back waits for the all-reduce to finish.
                sum.narrow(0, 0, 1).into_scalar();
            }
            Ok(())
        })?;
        Ok((timings, on_device))
    }
}
