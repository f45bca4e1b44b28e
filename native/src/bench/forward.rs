//! `bert-native bench forward`: times the forward pass of a model folder on a fixed batch.

use std::path::PathBuf;

use anyhow::{bail, Result};
use bert_core::model::{AttentionKernel, BertForQuestionAnswering, Precision, TokenBatch};
use bert_core::pretrained::{load_model, ModelFiles};
use bert_core::BertConfig;
use burn::tensor::backend::Backend;
use clap::Args;

use super::{synthetic_row, time_iterations, timing_summary, Timings};
use crate::backend::{self, BackendKind, Job};
use crate::precision::{check_backend, AttentionArgs};

/// Arguments of `bench forward`: the question-answering model when the weights have a span head
/// (as `qa` and `squad` run it), else the encoder with its pooler; the checkpoint's other heads
/// are left out.
#[derive(Debug, Args)]
pub struct ForwardArgs {
    /// Model folder.
    #[arg(long)]
    model: PathBuf,
    /// More weights applied on top (e.g. a QA head), repeatable.
    #[arg(long = "extra-weights")]
    extra_weights: Vec<PathBuf>,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// Tokens per sequence (the reference's SQuAD inference uses 384).
    #[arg(long, default_value_t = 384)]
    seq_len: usize,
    /// Timed forward passes.
    #[arg(long, default_value_t = 10)]
    iterations: usize,
    /// Untimed forward passes first (kernel compilation, autotuning, caches).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Flex)]
    backend: BackendKind,
    /// Arithmetic of the matrix products: fp32, tf32, fp16 or bf16 (half needs flex, cuda or wgpu).
    #[arg(long, default_value = "fp32")]
    precision: Precision,
    #[command(flatten)]
    attention: AttentionArgs,
}

/// Runs `bench forward`.
pub fn run(args: ForwardArgs) -> Result<()> {
    check_backend(args.precision, args.backend)?;
    if args.batch_size == 0 || args.seq_len < 2 || args.iterations == 0 {
        bail!("need --batch-size >= 1, --seq-len >= 2 and --iterations >= 1");
    }
    let files = ModelFiles::find(&args.model, None)?;
    let config = files.read_config()?;
    let batch = synthetic_batch(args.batch_size, args.seq_len, config.vocab_size);
    batch.validate(&config)?;
    let backend_name = args.backend.to_string();
    let mut timings = backend::run(
        args.backend,
        BenchJob {
            files,
            extra_weights: args.extra_weights.clone(),
            batch,
            iterations: args.iterations,
            warmup: args.warmup,
            precision: args.precision,
            attention: args.attention.attention,
        },
    )?;
    let summary = timing_summary(&mut timings.timed_ms, args.batch_size);
    let json = serde_json::json!({
        "benchmark": "forward",
        "backend": backend_name,
        "precision": args.precision,
        "attention": args.attention.attention.name(),
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "iterations": args.iterations,
        "latency_ms": summary.latency_ms,
        "first_iteration_ms": timings.first_ms,
        "inference_sequences_per_second": summary.sequences_per_second,
    });
    println!("{json}");
    Ok(())
}

/// `[CLS] w w ... w [SEP]` rows of deterministic ordinary word ids, no padding.
fn synthetic_batch(batch_size: usize, seq_len: usize, vocab_size: usize) -> TokenBatch {
    TokenBatch {
        input_ids: (0..batch_size)
            .map(|r| synthetic_row(r, seq_len, vocab_size))
            .collect(),
        token_type_ids: None,
        attention_mask: None,
    }
}

struct BenchJob {
    files: ModelFiles,
    extra_weights: Vec<PathBuf>,
    batch: TokenBatch,
    iterations: usize,
    warmup: usize,
    precision: Precision,
    attention: AttentionKernel,
}

impl Job for BenchJob {
    type Output = Timings;

    fn run<B: Backend>(self, device: B::Device) -> Result<Timings> {
        let mut loaded = load_model::<B>(&self.files, &self.extra_weights, &device)?;
        // The model a task runs, as the PyTorch reference (bench/forward_torch.py) builds it:
        // with a span head, Hugging Face's BertForQuestionAnswering (encoder and span head, as
        // `qa`, `squad` and `serve` run it); otherwise BertModel (encoder and pooler). Other
        // heads a checkpoint holds are dropped: MiniLM's masked-LM decoder alone (384 x 30522
        // per token) doubles the work of a pass.
        loaded.model.mlm = None;
        loaded.model.nsp = None;
        loaded.model.classifier = None;
        if loaded.model.qa_outputs.is_some() {
            loaded.model.bert.pooler = None;
        }
        loaded.model.bert.precision = self.precision;
        loaded.model.bert.attention_kernel = self.attention;
        let input = self.batch.to_input::<B>(&loaded.config, &device)?;
        time_iterations(self.warmup, self.iterations, || {
            let outputs = loaded.model.forward(input.clone());
            // Reading results back waits for the device to finish the pass (the span head too,
            // when there is one, as a question-answering service would).
            let _ = outputs.last_hidden_state.into_data();
            if let Some(start_logits) = outputs.start_logits {
                let _ = start_logits.into_data();
            }
            Ok(())
        })
    }
}

/// Arguments of `bench squad-inference`.
#[derive(Debug, Args)]
pub struct SquadInferenceArgs {
    /// Preset: base or large (random weights: speed does not depend on them).
    #[arg(long, default_value = "large")]
    config: String,
    /// Tokens per window.
    #[arg(long, default_value_t = 384)]
    seq: usize,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Timed forward passes.
    #[arg(long, default_value_t = 5)]
    iterations: usize,
    /// Untimed forward passes first.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Flex)]
    backend: BackendKind,
    /// Arithmetic of the matrix products: fp32, tf32, fp16 or bf16 (half needs flex, cuda or wgpu).
    #[arg(long, default_value = "fp32")]
    precision: Precision,
    #[command(flatten)]
    attention: AttentionArgs,
}

/// Runs `bench squad-inference`: the reference's SQuAD inference benchmark shape.
pub fn run_squad_inference(args: SquadInferenceArgs) -> Result<()> {
    check_backend(args.precision, args.backend)?;
    if args.batch == 0 || args.seq < 2 || args.iterations == 0 {
        bail!("need --batch >= 1, --seq >= 2 and --iterations >= 1");
    }
    let config = BertConfig::from_preset(&args.config)?;
    let batch = synthetic_batch(args.batch, args.seq, config.vocab_size);
    batch.validate(&config)?;
    let backend_name = args.backend.to_string();
    let mut timings = backend::run(
        args.backend,
        SquadInferenceJob {
            config,
            batch,
            iterations: args.iterations,
            warmup: args.warmup,
            precision: args.precision,
            attention: args.attention.attention,
        },
    )?;
    let summary = timing_summary(&mut timings.timed_ms, args.batch);
    println!(
        "{}",
        serde_json::json!({
            "benchmark": "squad-inference",
            "backend": backend_name,
            "precision": args.precision,
            "attention": args.attention.attention.name(),
            "config": args.config,
            "batch_size": args.batch,
            "seq_len": args.seq,
            "iterations": args.iterations,
            "latency_ms": summary.latency_ms,
            "first_iteration_ms": timings.first_ms,
            "inference_sequences_per_second": summary.sequences_per_second,
        })
    );
    Ok(())
}

struct SquadInferenceJob {
    config: BertConfig,
    batch: TokenBatch,
    iterations: usize,
    warmup: usize,
    precision: Precision,
    attention: AttentionKernel,
}

impl Job for SquadInferenceJob {
    type Output = Timings;

    fn run<B: Backend>(self, device: B::Device) -> Result<Timings> {
        let mut model = BertForQuestionAnswering::<B>::new(&self.config, &device);
        model.bert.precision = self.precision;
        model.bert.attention_kernel = self.attention;
        let input = self.batch.to_input::<B>(&self.config, &device)?;
        time_iterations(self.warmup, self.iterations, || {
            let (start, end) = model.forward(input.clone());
            let _ = (start.into_data(), end.into_data());
            Ok(())
        })
    }
}
