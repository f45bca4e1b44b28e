//! `bert-native bench optimizer`: one NVLAMB step over every parameter of a configuration
//! (BERT-large: 398 tensors, 335M values), fused (bert-shaders' kernels on the GPU backends, the
//! two-pass CPU step on Flex) and as plain tensor operations, on the same backend in the same
//! run: the before and after of the fused step. Both start from the same values and gradients;
//! the report gives their largest difference after the first step beside the timings.

use std::path::PathBuf;

use anyhow::{bail, Result};
use bert_core::model::BertForPreTraining;
use bert_core::optim::{Lamb, LambConfig, NamedParam};
use bert_core::pretrained::read_config;
use bert_core::BertConfig;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use burn_store::ModuleSnapshot;
use clap::Args;

use super::{time_iterations, timing_summary, Timings};
use crate::backend::{self, BackendKind, Job};

/// Arguments of `bench optimizer`.
#[derive(Debug, Args)]
pub struct OptimizerBenchArgs {
    /// Preset whose parameters are stepped: base or large.
    #[arg(long, default_value = "large", conflicts_with = "config_file")]
    config: String,
    /// A configuration file instead of a preset.
    #[arg(long)]
    config_file: Option<PathBuf>,
    /// Timed steps of each variant.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Untimed steps of each variant first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Flex)]
    backend: BackendKind,
}

/// Runs `bench optimizer`.
pub fn run(args: OptimizerBenchArgs) -> Result<()> {
    if args.steps == 0 {
        bail!("need --steps >= 1");
    }
    let config = match &args.config_file {
        Some(path) => read_config(path)?,
        None => BertConfig::from_preset(&args.config)?,
    };
    let backend_name = args.backend.to_string();
    let report = backend::run(
        args.backend,
        OptimizerBench {
            config: config.clone(),
            steps: args.steps,
            warmup: args.warmup,
        },
    )?;
    // One "sequence" per iteration: the summary's rate is steps per second.
    let summarise = |mut timings: Timings| {
        let summary = timing_summary(&mut timings.timed_ms, 1);
        let json =
            serde_json::json!({ "step_ms": summary.latency_ms, "first_step_ms": timings.first_ms });
        (json, summary.sequences_per_second)
    };
    let (plain, plain_rate) = summarise(report.plain);
    let fused = report.fused.map(summarise);
    let json = serde_json::json!({
        "benchmark": "optimizer",
        "backend": backend_name,
        "layers": config.num_hidden_layers,
        "hidden": config.hidden_size,
        "tensors": report.tensors,
        "parameters": report.parameters,
        "steps": args.steps,
        "plain": plain,
        "fused": fused.as_ref().map(|(json, _)| json),
        "fused_speedup": fused.as_ref().map(|(_, rate)| rate / plain_rate),
        "max_abs_difference": report.max_abs_difference,
    });
    println!("{json}");
    Ok(())
}

struct OptimizerBench {
    config: BertConfig,
    steps: usize,
    warmup: usize,
}

/// What the benchmark measured.
struct OptimizerReport {
    tensors: usize,
    parameters: usize,
    plain: Timings,
    /// `None` where the backend has no fused kernels.
    fused: Option<Timings>,
    /// Largest difference of the parameters after one step of each variant.
    max_abs_difference: Option<f64>,
}

impl Job for OptimizerBench {
    type Output = OptimizerReport;

    fn run<B: Backend>(self, device: B::Device) -> Result<OptimizerReport> {
        let model = BertForPreTraining::<B>::new(&self.config, &device);
        // The model's parameter names (they decide weight decay) and sizes; values and gradients
        // drawn at the scale of BERT's initialisation and of its pretraining gradients.
        let (names, sizes): (Vec<String>, Vec<usize>) = model
            .collect(None, None, false)
            .into_iter()
            .map(|snapshot| (snapshot.full_path(), snapshot.shape.num_elements()))
            .unzip();
        let random = |std: f64| -> Vec<Tensor<B, 1>> {
            sizes
                .iter()
                .map(|&len| Tensor::random([len], Distribution::Normal(0.0, std), &device))
                .collect()
        };
        let values = random(0.02);
        let grads = random(1e-3);
        let params = || -> Vec<NamedParam<B>> {
            names
                .iter()
                .zip(&values)
                .zip(&grads)
                .map(|((name, value), grad)| NamedParam {
                    name: name.clone(),
                    value: value.clone(),
                    grad: grad.clone(),
                })
                .collect()
        };
        let time = |fused: bool| -> Result<(Timings, Vec<Tensor<B, 1>>)> {
            let mut optimizer = Lamb::<B>::new(LambConfig::default());
            optimizer.set_fused_kernels(fused);
            let mut first = None;
            let timings = time_iterations(self.warmup, self.steps, || {
                let step = optimizer.step(1e-3, params());
                B::sync(&device).map_err(|e| anyhow::anyhow!("the device failed: {e:?}"))?;
                first.get_or_insert(step.values);
                Ok(())
            })?;
            Ok((timings, first.unwrap_or_default()))
        };
        let (plain, plain_values) = time(false)?;
        let fused = if Lamb::<B>::new(LambConfig::default()).runs_fused(&params()) {
            Some(time(true)?)
        } else {
            None
        };
        let max_abs_difference = fused.as_ref().map(|(_, fused_values)| {
            fused_values
                .iter()
                .zip(&plain_values)
                .map(|(f, p)| {
                    let difference = (f.clone() - p.clone()).abs().max().into_scalar();
                    burn::tensor::ElementConversion::elem::<f64>(difference)
                })
                .fold(0.0, f64::max)
        });
        Ok(OptimizerReport {
            tensors: names.len(),
            parameters: sizes.iter().sum(),
            plain,
            fused: fused.map(|(timings, _)| timings),
            max_abs_difference,
        })
    }
}
