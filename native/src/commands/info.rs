//! `bert-native info`: what a model folder holds.

use std::path::PathBuf;

use anyhow::Result;
use bert_core::pretrained::{load_model, ModelFiles};
use burn::module::Module;
use burn::tensor::backend::Backend;
use clap::Args;

use crate::backend::{self, BackendKind, Job};

/// Arguments of `info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Model folder.
    #[arg(long)]
    model: PathBuf,
    /// Weights file to use instead of the folder's.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Backend to load the model on.
    #[arg(long, value_enum, default_value_t = BackendKind::Flex)]
    backend: BackendKind,
}

/// Runs `info`: prints one JSON object.
pub fn run(args: InfoArgs) -> Result<()> {
    let files = ModelFiles::find(&args.model, args.checkpoint.as_deref())?;
    let info = backend::run(
        args.backend,
        InfoJob {
            files: files.clone(),
        },
    )?;
    let tokenizer = if files.tokenizer_json.is_some() || files.vocab.is_some() {
        let tokenizer = files.read_tokenizer(None)?;
        serde_json::json!({
            "vocab_size": tokenizer.vocab_size(),
            "lower_case": tokenizer.lower_case(),
            "casing_warning": tokenizer.casing_mismatch().map(|m| m.to_string()),
        })
    } else {
        serde_json::Value::Null
    };
    let json = serde_json::json!({
        "config_file": files.config.display().to_string(),
        "weights_file": files.weights.display().to_string(),
        "config": info.config,
        "parameters": info.parameters,
        "heads": info.heads,
        "missing": info.missing,
        "unexpected": info.unexpected,
        "tokenizer": tokenizer,
        "backend": args.backend.to_string(),
    });
    println!("{}", serde_json::to_string_pretty(&json)?);
    Ok(())
}

struct InfoJob {
    files: ModelFiles,
}

struct Info {
    config: serde_json::Value,
    parameters: usize,
    heads: Vec<String>,
    missing: Vec<String>,
    unexpected: Vec<String>,
}

impl Job for InfoJob {
    type Output = Info;

    fn run<B: Backend>(self, device: B::Device) -> Result<Info> {
        let loaded = load_model::<B>(&self.files, &[], &device)?;
        let heads = loaded.model.heads();
        let mut names = Vec::new();
        let present = [
            ("pooler", heads.pooler),
            ("masked_lm", heads.mlm),
            ("next_sentence", heads.nsp),
            ("question_answering", heads.qa),
        ];
        names.extend(
            present
                .iter()
                .filter(|(_, on)| *on)
                .map(|(name, _)| name.to_string()),
        );
        if let Some(labels) = heads.classifier_labels {
            names.push(format!("sequence_classification({labels} labels)"));
        }
        Ok(Info {
            config: serde_json::to_value(&loaded.config)?,
            parameters: loaded.model.num_params(),
            heads: names,
            missing: loaded.report.missing,
            unexpected: loaded.report.unexpected,
        })
    }
}
