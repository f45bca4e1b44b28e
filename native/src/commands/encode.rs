//! `bert-native encode`: run a checkpoint (with every head it holds) on a batch and save the outputs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use bert_core::model::{AttentionKernel, Precision, TokenBatch};
use bert_core::pretrained::{load_model, ModelFiles};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use clap::Args;

use crate::backend::{self, BackendKind, Job};
use crate::precision::{check_backend, AttentionArgs};
use crate::report::print_load_report;

/// Arguments of `encode`.
#[derive(Debug, Args)]
pub struct EncodeArgs {
    /// Model folder: config.json (or bert_config.json), model.safetensors or pytorch_model.bin,
    /// vocab.txt or tokenizer.json.
    #[arg(long)]
    model: PathBuf,
    /// Weights file to use instead of the folder's (e.g. an NVIDIA `ckpt_7038.pt`).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// More weights applied on top, e.g. heads saved apart (repeatable).
    #[arg(long = "extra-weights")]
    extra_weights: Vec<PathBuf>,
    /// JSON batch: {"input_ids": [[...]], "token_type_ids": [[...]], "attention_mask": [[...]]}.
    #[arg(long, conflicts_with_all = ["text", "text_pair"], required_unless_present = "text")]
    input: Option<PathBuf>,
    /// Text to tokenize with the folder's vocabulary instead of --input.
    #[arg(long)]
    text: Option<String>,
    /// Second segment of a sentence pair.
    #[arg(long, requires = "text")]
    text_pair: Option<String>,
    /// Lower-case the text (default: as the folder's tokenizer says).
    #[arg(long)]
    lower_case: Option<bool>,
    /// Output safetensors file.
    #[arg(long)]
    output: PathBuf,
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Flex)]
    backend: BackendKind,
    /// Arithmetic of the matrix products: fp32, tf32, fp16 or bf16 (half needs flex, cuda or wgpu).
    #[arg(long, default_value = "fp32")]
    precision: Precision,
    #[command(flatten)]
    attention: AttentionArgs,
}

/// Runs `encode`.
pub fn run(args: EncodeArgs) -> Result<()> {
    check_backend(args.precision, args.backend)?;
    let files = ModelFiles::find(&args.model, args.checkpoint.as_deref())?;
    let batch = match (&args.input, &args.text) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_str::<TokenBatch>(&text).with_context(|| {
                format!(
                    "{}: expected {{\"input_ids\": [[...]], \"token_type_ids\": [[...]], \"attention_mask\": [[...]]}}",
                    path.display()
                )
            })?
        }
        (None, Some(text)) => {
            let tokenizer = files.read_tokenizer(args.lower_case)?;
            if let Some(mismatch) = tokenizer.casing_mismatch() {
                eprintln!("WARNING: {mismatch}");
            }
            let encoding = tokenizer.encode(text, args.text_pair.as_deref(), None)?;
            tokenizer.batch(&[encoding], None)
        }
        (None, None) => bail!("give --input FILE.json or --text TEXT"),
    };
    let input_name = args
        .input
        .as_ref()
        .map_or("--text".to_string(), |p| p.display().to_string());
    // Fail before loading the weights: reading a large checkpoint to reject a typo wastes minutes.
    batch
        .validate(&files.read_config()?)
        .with_context(|| format!("{input_name}: input does not fit the model"))?;
    let outputs = backend::run(
        args.backend,
        EncodeJob {
            files,
            extra_weights: args.extra_weights,
            batch,
            input_name,
            precision: args.precision,
            attention: args.attention.attention,
        },
    )?;

    let bytes = serialize(&outputs)?;
    bert_core::io::write_atomic(&args.output, &bytes)?;
    for (name, (shape, _)) in &outputs {
        eprintln!("{name}: {shape:?}");
    }
    eprintln!("wrote {}", args.output.display());
    Ok(())
}

/// Host copies of the output tensors: name -> (shape, values).
type Outputs = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

struct EncodeJob {
    files: ModelFiles,
    extra_weights: Vec<PathBuf>,
    batch: TokenBatch,
    input_name: String,
    precision: Precision,
    attention: AttentionKernel,
}

impl Job for EncodeJob {
    type Output = Outputs;

    fn run<B: Backend>(self, device: B::Device) -> Result<Outputs> {
        let mut loaded = load_model::<B>(&self.files, &self.extra_weights, &device)?;
        loaded.model.bert.precision = self.precision;
        loaded.model.bert.attention_kernel = self.attention;
        print_load_report(&loaded.report);
        let input = self
            .batch
            .to_input::<B>(&loaded.config, &device)
            .with_context(|| format!("{}: input does not fit the model", self.input_name))?;
        let out = loaded.model.forward(input);

        let mut outputs = Outputs::new();
        let mut put = |name: &str, shape: Vec<usize>, values: Vec<f32>| {
            outputs.insert(name.to_string(), (shape, values));
        };
        let (shape, values) = host(out.last_hidden_state)?;
        put("last_hidden_state", shape, values);
        let optional = [
            ("pooler_output", out.pooler_output),
            ("nsp_logits", out.nsp_logits),
            ("start_logits", out.start_logits),
            ("end_logits", out.end_logits),
            ("classifier_logits", out.classifier_logits),
        ];
        for (name, tensor) in optional {
            if let Some(tensor) = tensor {
                let (shape, values) = host(tensor)?;
                put(name, shape, values);
            }
        }
        if let Some(mlm_logits) = out.mlm_logits {
            let (shape, values) = host(mlm_logits)?;
            put("mlm_logits", shape, values);
        }
        Ok(outputs)
    }
}

fn host<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Result<(Vec<usize>, Vec<f32>)> {
    let shape = tensor.dims().to_vec();
    let values = tensor
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("cannot read back an output tensor: {e:?}"))?;
    Ok((shape, values))
}

fn serialize(outputs: &Outputs) -> Result<Vec<u8>> {
    let bytes: Vec<(&String, &Vec<usize>, Vec<u8>)> = outputs
        .iter()
        .map(|(name, (shape, values))| {
            (
                name,
                shape,
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, shape, data)| {
            let view = safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                shape.to_vec(),
                data,
            )?;
            Ok(((*name).clone(), view))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    Ok(safetensors::tensor::serialize(views, None)?)
}
