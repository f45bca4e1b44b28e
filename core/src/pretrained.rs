//! A pretrained model folder as Hugging Face or NVIDIA ship it: a configuration, weights and a
//! vocabulary, found by their usual names.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use serde::Deserialize;

use crate::checkpoint::{Checkpoint, LoadReport};
use crate::config::BertConfig;
use crate::error::PretrainedError;
use crate::model::{BertForQuestionAnswering, BertWithHeads};
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
        read_config(&self.config)
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
    load_with_heads(
        &files.read_checkpoint(extra)?,
        &files.read_config()?,
        device,
    )
}

/// A [`BertWithHeads`] with `checkpoint`'s weights and every head they hold, its configuration
/// fitted to them; the encoder must be complete.
fn load_with_heads<B: Backend>(
    checkpoint: &Checkpoint,
    config: &BertConfig,
    device: &B::Device,
) -> Result<LoadedModel<B>, PretrainedError> {
    let config = checkpoint.fit_config(config);
    let mut model = BertWithHeads::new(&config, checkpoint.heads(), device);
    let report = checkpoint.load_into(&mut model)?;
    report.require_encoder()?;
    Ok(LoadedModel {
        config,
        model,
        report,
    })
}

/// A model folder's files already in memory: what a browser downloads or a visitor drops on the
/// page. The names are only used in messages.
#[derive(Debug, Clone)]
pub struct ModelBytes {
    /// `config.json` (Hugging Face) or `bert_config.json` (NVIDIA), with its name.
    pub config: (String, Vec<u8>),
    /// Safetensors weights (float32, float16 or bfloat16), with their name.
    pub weights: (String, Vec<u8>),
    /// `tokenizer.json` or `vocab.txt` (told apart by the name), with its name.
    pub tokenizer: (String, Vec<u8>),
}

/// A question-answering model loaded from [`ModelBytes`].
pub struct QuestionAnsweringModel<B: Backend> {
    /// The configuration, fitted to the weights.
    pub config: BertConfig,
    /// The tokenizer.
    pub tokenizer: BertTokenizer,
    /// The model.
    pub model: BertForQuestionAnswering<B>,
    /// What was loaded, missing or left over.
    pub report: LoadReport,
}

impl ModelBytes {
    /// The text of the configuration file (for fields beyond BERT's own, such as `id2label`).
    pub fn config_text(&self) -> Result<&str, PretrainedError> {
        let (name, bytes) = &self.config;
        std::str::from_utf8(bytes).map_err(|e| PretrainedError::Config {
            path: name.clone(),
            source: crate::error::ConfigError::Invalid(e.to_string()),
        })
    }

    /// The configuration, validated; errors name the file.
    pub fn read_config(&self) -> Result<BertConfig, PretrainedError> {
        BertConfig::from_json(self.config_text()?).map_err(|source| PretrainedError::Config {
            path: self.config.0.clone(),
            source,
        })
    }

    /// The tokenizer: `tokenizer.json` or `vocab.txt` (lower-cased), told apart by the name.
    pub fn read_tokenizer(&self) -> Result<BertTokenizer, PretrainedError> {
        let (name, bytes) = &self.tokenizer;
        if name.ends_with(".json") {
            BertTokenizer::from_tokenizer_json(bytes)
        } else {
            BertTokenizer::from_vocab(&String::from_utf8_lossy(bytes), true)
        }
        .map_err(|source| tokenizer_error(Path::new(name), source))
    }

    /// The weights.
    pub fn read_checkpoint(&self) -> Result<Checkpoint, PretrainedError> {
        let (name, bytes) = &self.weights;
        Ok(Checkpoint::from_bytes(bytes.clone(), name)?)
    }

    /// The model with all the heads its weights contain, as [`load_model`] loads a folder.
    pub fn load_model<B: Backend>(
        &self,
        device: &B::Device,
    ) -> Result<LoadedModel<B>, PretrainedError> {
        load_with_heads(&self.read_checkpoint()?, &self.read_config()?, device)
    }

    /// Loads a [`BertForQuestionAnswering`]: the encoder must be complete; the `qa_outputs` head
    /// too when `need_head` (answering), else a missing head is freshly initialised
    /// (fine-tuning starts from a pretrained encoder).
    pub fn question_answering<B: Backend>(
        &self,
        need_head: bool,
        device: &B::Device,
    ) -> Result<QuestionAnsweringModel<B>, PretrainedError> {
        let config = self.read_config()?;
        let tokenizer = self.read_tokenizer()?;
        let (config, model, report) =
            load_question_answering(&self.read_checkpoint()?, &config, need_head, device)?;
        if tokenizer.vocab_size() > config.vocab_size {
            return Err(PretrainedError::VocabularyTooLarge {
                path: self.tokenizer.0.clone(),
                tokenizer: tokenizer.vocab_size(),
                model: config.vocab_size,
            });
        }
        Ok(QuestionAnsweringModel {
            config,
            tokenizer,
            model,
            report,
        })
    }
}

/// A [`BertForQuestionAnswering`] with `checkpoint`'s weights, its configuration fitted to them:
/// the encoder must be complete; the `qa_outputs` head too when `need_head` (answering), else a
/// missing head is freshly initialised (fine-tuning starts from a pretrained encoder).
pub(crate) fn load_question_answering<B: Backend>(
    checkpoint: &Checkpoint,
    config: &BertConfig,
    need_head: bool,
    device: &B::Device,
) -> Result<(BertConfig, BertForQuestionAnswering<B>, LoadReport), PretrainedError> {
    let config = checkpoint.fit_config(config);
    let mut model = BertForQuestionAnswering::new(&config, device);
    let report = checkpoint.load_into(&mut model)?;
    report.require_encoder()?;
    if need_head && !report.missing.is_empty() {
        return Err(PretrainedError::NoTaskHead {
            source_name: report.source.clone(),
            head: "question-answering",
            missing: report.missing.join(", "),
        });
    }
    Ok((config, model, report))
}

/// Reads and validates a configuration file (`config.json` / `bert_config.json` layout); errors
/// name the file.
pub fn read_config(path: &Path) -> Result<BertConfig, PretrainedError> {
    let text = read_to_string(path)?;
    BertConfig::from_json(&text).map_err(|source| PretrainedError::Config {
        path: path.display().to_string(),
        source,
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

#[cfg(all(test, feature = "ndarray"))]
mod tests {
    use super::*;
    use crate::checkpoint::{
        model_tensors, model_tensors_async, serialize_safetensors, serialize_safetensors_f16,
    };
    use burn::backend::NdArray;

    const VOCAB: &str = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\nriver\nflows\n";

    fn config() -> BertConfig {
        BertConfig {
            vocab_size: 8,
            hidden_size: 16,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            intermediate_size: 32,
            max_position_embeddings: 16,
            ..BertConfig::base()
        }
    }

    fn files(weights: Vec<u8>) -> ModelBytes {
        ModelBytes {
            config: (
                "config.json".into(),
                config().to_hf_json("BertForQuestionAnswering").into_bytes(),
            ),
            weights: ("model.safetensors".into(), weights),
            tokenizer: ("vocab.txt".into(), VOCAB.as_bytes().to_vec()),
        }
    }

    fn saved_model() -> (BertForQuestionAnswering<NdArray>, Vec<u8>) {
        let model = BertForQuestionAnswering::<NdArray>::new(&config(), &Default::default());
        let bytes = crate::checkpoint::to_safetensors(&model).unwrap();
        (model, bytes)
    }

    #[test]
    fn loads_a_question_answering_model_from_bytes() {
        let (model, bytes) = saved_model();
        let loaded = files(bytes)
            .question_answering::<NdArray>(true, &Default::default())
            .unwrap();
        assert!(loaded.report.missing.is_empty());
        assert_eq!(loaded.tokenizer.vocab_size(), 8);
        assert_eq!(
            model_tensors(&loaded.model).unwrap(),
            model_tensors(&model).unwrap()
        );
    }

    #[test]
    fn reading_parameters_asynchronously_gives_the_same_tensors() {
        let (model, _) = saved_model();
        let blocking = model_tensors(&model).unwrap();
        let asynchronous = futures_lite::future::block_on(model_tensors_async(&model)).unwrap();
        assert_eq!(asynchronous, blocking);
    }

    #[test]
    fn float16_weights_load_close_to_float32() {
        let (model, _) = saved_model();
        let tensors = model_tensors(&model).unwrap();
        let f16_file = serialize_safetensors_f16(&tensors, []).unwrap();
        assert!(f16_file.len() < serialize_safetensors(&tensors, []).unwrap().len() * 6 / 10);
        let loaded = files(f16_file)
            .question_answering::<NdArray>(true, &Default::default())
            .unwrap();
        for ((name, _, want), (_, _, got)) in
            tensors.iter().zip(model_tensors(&loaded.model).unwrap())
        {
            let floats = |b: &[u8]| -> Vec<f32> {
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            };
            for (w, g) in floats(want).iter().zip(floats(&got)) {
                assert!(
                    (w - g).abs() <= 1e-3 * w.abs().max(1e-2),
                    "{name}: {w} vs {g}"
                );
            }
        }
    }

    #[test]
    fn says_which_file_is_wrong() {
        let (_, bytes) = saved_model();
        let mut broken = files(bytes.clone());
        broken.config.1 = b"{\"hidden_size\": \"wide\"}".to_vec();
        let error = broken
            .question_answering::<NdArray>(true, &Default::default())
            .err()
            .unwrap()
            .to_string();
        assert!(error.starts_with("config.json: "), "{error}");

        let (model, _) = saved_model();
        let tensors: Vec<_> = model_tensors(&model)
            .unwrap()
            .into_iter()
            .filter(|(name, _, _)| !name.starts_with("qa_outputs"))
            .collect();
        let without_head = files(serialize_safetensors(&tensors, []).unwrap());
        let error = without_head
            .question_answering::<NdArray>(true, &Default::default())
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("no question-answering head"), "{error}");
        assert!(without_head
            .question_answering::<NdArray>(false, &Default::default())
            .is_ok());

        let mut truncated = files(bytes);
        truncated.weights.1.truncate(100);
        let error = truncated
            .question_answering::<NdArray>(true, &Default::default())
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("model.safetensors"), "{error}");
    }
}
