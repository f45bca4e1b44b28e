//! `bert-native convert`: any checkpoint we read (Hugging Face .bin, NVIDIA .pt, safetensors) to a
//! Hugging Face folder: `model.safetensors` with Hugging Face names and a `config.json`, which
//! `transformers` and every other bert-native command load.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bert_core::checkpoint::{model_tensors, serialize_safetensors_f16, to_safetensors};
use bert_core::io::write_atomic;
use bert_core::model::Heads;
use bert_core::pretrained::{load_model, ModelFiles};
use burn::tensor::backend::Backend;
use clap::Args;

use crate::backend::{self, BackendKind, Job};
use crate::report::print_load_report;

/// Arguments of `convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// Model folder (config.json or bert_config.json, weights, vocabulary).
    #[arg(long)]
    model: PathBuf,
    /// Weights file to convert instead of the folder's (e.g. an NVIDIA `ckpt_8601.pt`).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Output folder (created if absent).
    #[arg(long)]
    output: PathBuf,
    /// Store the weights as float16: half the size (e.g. for the browser app to download); every
    /// reader converts them back to float32.
    #[arg(long)]
    half: bool,
}

/// Runs `convert`.
pub fn run(args: ConvertArgs) -> Result<()> {
    let files = ModelFiles::find(&args.model, args.checkpoint.as_deref())?;
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("cannot create {}", args.output.display()))?;
    let converted = backend::run(
        BackendKind::Flex,
        ConvertJob {
            files: files.clone(),
            half: args.half,
        },
    )?;

    let weights = args.output.join("model.safetensors");
    write_atomic(&weights, &converted.safetensors)?;
    let config = args.output.join("config.json");
    write_atomic(&config, converted.config_json.as_bytes())?;
    for source in [&files.vocab, &files.tokenizer_json, &files.tokenizer_config]
        .into_iter()
        .flatten()
    {
        copy_into(source, &args.output)?;
    }
    eprintln!(
        "wrote {} ({}) to {}",
        weights.display(),
        converted.architecture,
        args.output.display()
    );
    Ok(())
}

fn copy_into(source: &Path, dir: &Path) -> Result<()> {
    let name = source.file_name().context("source has no file name")?;
    let target = dir.join(name);
    if target == source {
        return Ok(());
    }
    let bytes =
        std::fs::read(source).with_context(|| format!("cannot read {}", source.display()))?;
    Ok(write_atomic(&target, &bytes)?)
}

struct ConvertJob {
    files: ModelFiles,
    half: bool,
}

struct Converted {
    safetensors: Vec<u8>,
    config_json: String,
    architecture: &'static str,
}

/// The Hugging Face class whose weights these heads are.
fn architecture(heads: Heads) -> &'static str {
    if heads.qa {
        "BertForQuestionAnswering"
    } else if heads.classifier_labels.is_some() {
        "BertForSequenceClassification"
    } else if heads.mlm && heads.nsp {
        "BertForPreTraining"
    } else if heads.mlm {
        "BertForMaskedLM"
    } else {
        "BertModel"
    }
}

impl Job for ConvertJob {
    type Output = Converted;

    fn run<B: Backend>(self, device: B::Device) -> Result<Converted> {
        let loaded = load_model::<B>(&self.files, &[], &device)?;
        print_load_report(&loaded.report);
        let architecture = architecture(loaded.model.heads());
        Ok(Converted {
            safetensors: if self.half {
                serialize_safetensors_f16(&model_tensors(&loaded.model)?, [])?
            } else {
                to_safetensors(&loaded.model)?
            },
            config_json: loaded.config.to_hf_json(architecture),
            architecture,
        })
    }
}
