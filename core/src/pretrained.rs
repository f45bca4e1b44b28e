//! A pretrained model folder as Hugging Face or NVIDIA ship it: a configuration, weights and a
//! vocabulary, found by their usual names.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use serde::Deserialize;

use crate::checkpoint::{Checkpoint, LoadReport};
use crate::config::BertConfig;
use crate::error::PretrainedError;
use crate::model::BertWithHeads;
use crate::tokenizer::BertTokenizer;

const CONFIG_NAMES: [&str; 2] = ["config.json", "bert_config.json"];
const WEIGHT_NAMES: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];

/// The files of a model folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    /// `config.json` or `bert_config.json`.
    pub config: PathBuf,
    /// `model.safetensors`, `pytorch_model.bin`, or a checkpoint given explicitly.
    pub weights: PathBuf,
    /// `tokenizer.json`, if present (preferred over `vocab.txt`).
    pub tokenizer_json: Option<PathBuf>,
    /// `vocab.txt`, if present.
    pub vocab: Option<PathBuf>,
    /// `tokenizer_config.json`, if present (its `do_lower_case`).
    pub tokenizer_config: Option<PathBuf>,
}

fn first_existing(dir: &Path, names: &[&str]) -> Option<PathBuf> {
    names
        .iter()
        .map(|name| dir.join(name))
        .find(|p| p.is_file())
}

impl ModelFiles {
    /// Finds the files in `dir`; `weights` overrides the weights file (e.g. an NVIDIA `.pt`).
    pub fn find(dir: &Path, weights: Option<&Path>) -> Result<Self, PretrainedError> {
        let not_found = |what, names: &[&str]| PretrainedError::NotFound {
            dir: dir.display().to_string(),
            what,
            candidates: names.join(", "),
        };
        let config = first_existing(dir, &CONFIG_NAMES)
            .ok_or_else(|| not_found("configuration", &CONFIG_NAMES))?;
        let weights = match weights {
            Some(path) => path.to_path_buf(),
            None => first_existing(dir, &WEIGHT_NAMES)
                .ok_or_else(|| not_found("weights", &WEIGHT_NAMES))?,
        };
        Ok(Self {
            config,
            weights,
            tokenizer_json: first_existing(dir, &["tokenizer.json"]),
            vocab: first_existing(dir, &["vocab.txt"]),
            tokenizer_config: first_existing(dir, &["tokenizer_config.json"]),
        })
    }

    /// Reads and validates the configuration.
    pub fn read_config(&self) -> Result<BertConfig, PretrainedError> {
        let text = read_to_string(&self.config)?;
        BertConfig::from_json(&text).map_err(|source| PretrainedError::Config {
            path: self.config.display().to_string(),
            source,
        })
    }

    /// Builds the tokenizer: from `tokenizer.json` when present, else from `vocab.txt` lower-casing
    /// as `tokenizer_config.json`'s `do_lower_case` says (default: lower-case). `lower_case`
    /// overrides both.
    pub fn read_tokenizer(
        &self,
        lower_case: Option<bool>,
    ) -> Result<BertTokenizer, PretrainedError> {
        if let (Some(path), None) = (&self.tokenizer_json, lower_case) {
            let bytes = std::fs::read(path).map_err(|source| io_error(path, source))?;
            return BertTokenizer::from_tokenizer_json(&bytes)
                .map_err(|source| tokenizer_error(path, source));
        }
        let Some(vocab) = &self.vocab else {
            return Err(PretrainedError::NotFound {
                dir: self
                    .config
                    .parent()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default(),
                what: "vocabulary",
                candidates: "tokenizer.json, vocab.txt".into(),
            });
        };
        let lower_case = match lower_case {
            Some(choice) => choice,
            None => self.configured_lower_case()?.unwrap_or(true),
        };
        let text = read_to_string(vocab)?;
        BertTokenizer::from_vocab(&text, lower_case)
            .map_err(|source| tokenizer_error(vocab, source))
    }

    fn configured_lower_case(&self) -> Result<Option<bool>, PretrainedError> {
        #[derive(Deserialize)]
        struct TokenizerConfig {
            do_lower_case: Option<bool>,
        }
        let Some(path) = &self.tokenizer_config else {
            return Ok(None);
        };
        let text = read_to_string(path)?;
        let parsed: TokenizerConfig =
            serde_json::from_str(&text).map_err(|e| PretrainedError::Config {
                path: path.display().to_string(),
                source: crate::error::ConfigError::Json(e),
            })?;
        Ok(parsed.do_lower_case)
    }

    /// Reads the weights, adding `extra` checkpoints on top (e.g. heads saved apart).
    pub fn read_checkpoint(&self, extra: &[PathBuf]) -> Result<Checkpoint, PretrainedError> {
        let mut checkpoint = Checkpoint::from_file(&self.weights)?;
        for path in extra {
            checkpoint.extend(Checkpoint::from_file(path)?);
        }
        Ok(checkpoint)
    }
}

/// A model folder loaded into [`BertWithHeads`] with every head its checkpoint holds.
pub struct LoadedModel<B: Backend> {
    /// The configuration, fitted to the checkpoint (NVIDIA's padded vocabulary).
    pub config: BertConfig,
    /// The model.
    pub model: BertWithHeads<B>,
    /// What was loaded, missing or left over.
    pub report: LoadReport,
}

/// Loads the model of a folder with all the heads its weights (plus `extra`) contain. Fails when
/// any encoder tensor is missing or any shape disagrees with the configuration.
pub fn load_model<B: Backend>(
    files: &ModelFiles,
    extra: &[PathBuf],
    device: &B::Device,
) -> Result<LoadedModel<B>, PretrainedError> {
    let checkpoint = files.read_checkpoint(extra)?;
    let config = checkpoint.fit_config(&files.read_config()?);
    let mut model = BertWithHeads::new(&config, checkpoint.heads(), device);
    let report = checkpoint.load_into(&mut model)?;
    report.require_encoder()?;
    Ok(LoadedModel {
        config,
        model,
        report,
    })
}

fn read_to_string(path: &Path) -> Result<String, PretrainedError> {
    std::fs::read_to_string(path).map_err(|source| io_error(path, source))
}

fn io_error(path: &Path, source: std::io::Error) -> PretrainedError {
    PretrainedError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn tokenizer_error(path: &Path, source: crate::error::TokenizerError) -> PretrainedError {
    PretrainedError::Tokenizer {
        path: path.display().to_string(),
        source,
    }
}
