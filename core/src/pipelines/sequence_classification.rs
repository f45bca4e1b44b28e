//! Text classification as Hugging Face's `pipeline("text-classification", top_k=None)` does it:
//! a text or a pair of texts through the encoder, the pooled `[CLS]` vector through the
//! classifier, the logits turned into probabilities (softmax over the classes; a sigmoid when the
//! model has one output), each class named by `config.json`'s `id2label`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::nn::DropoutConfig;
use burn::tensor::backend::Backend;
use futures_lite::future::block_on;
use serde::Deserialize;

use crate::config::BertConfig;
use crate::error::{PipelineError, PretrainedError};
use crate::model::{BertForSequenceClassification, TokenBatch};
use crate::pretrained::{load_model, LoadedModel, ModelBytes, ModelFiles};
use crate::tokenizer::BertTokenizer;

use super::encoding::{
    batches_by_length, encode_inputs, single_texts, text_pairs, token_batch, Encoded, Truncation,
};
use super::read_back;

/// Inputs per forward pass unless set ([`SequenceClassification::with_batch_size`]).
const DEFAULT_BATCH_SIZE: usize = 32;

/// One class and its probability.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassScore {
    /// The class's name (`id2label`; `LABEL_{index}` when the configuration names none).
    pub label: String,
    /// The class's index: the classifier's output row.
    pub index: usize,
    /// Its probability.
    pub score: f32,
}

/// The classes of a batch of inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Classifications {
    /// Every class with its probability, best first, one list per input in the order given.
    pub scores: Vec<Vec<ClassScore>>,
    /// The positions of the inputs that were cut to fit the model.
    pub truncated: Vec<usize>,
}

/// A sequence classifier of a model folder (a GLUE fine-tuning's output, or any Hugging Face
/// `BertForSequenceClassification`): `SequenceClassification::from_folder(dir, &device)?`, then
/// `classify(&["a text"])?` or `classify_pairs(&[("a", "b")])?`.
pub struct SequenceClassification<B: Backend> {
    model: BertForSequenceClassification<B>,
    config: BertConfig,
    tokenizer: BertTokenizer,
    labels: Vec<String>,
    truncation: Truncation,
    batch_size: usize,
    device: B::Device,
}

/// The part of `config.json` that names the classes.
#[derive(Debug, Deserialize)]
struct ClassNames {
    #[serde(default)]
    id2label: Option<BTreeMap<String, String>>,
}

impl<B: Backend> SequenceClassification<B> {
    /// Loads a folder whose weights hold a `classifier` head (and the pooler it reads), with the
    /// class names of its `config.json`.
    pub fn from_folder(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self, PipelineError> {
        let files = ModelFiles::find(dir.as_ref(), None)?;
        let tokenizer = files.read_tokenizer(None)?;
        let loaded = load_model::<B>(&files, &[] as &[PathBuf], device)?;
        let config_text =
            std::fs::read_to_string(&files.config).map_err(|source| PretrainedError::Io {
                path: files.config.display().to_string(),
                source,
            })?;
        Self::from_loaded(loaded, tokenizer, &files.config, &config_text, device)
    }

    /// Loads the files of a sequence-classification model already in memory (a browser's
    /// downloads), with the class names of its configuration.
    pub fn from_bytes(bytes: &ModelBytes, device: &B::Device) -> Result<Self, PipelineError> {
        let tokenizer = bytes.read_tokenizer()?;
        let loaded = bytes.load_model::<B>(device)?;
        Self::from_loaded(
            loaded,
            tokenizer,
            Path::new(&bytes.config.0),
            bytes.config_text()?,
            device,
        )
    }

    /// The pipeline over a loaded model, which must have a `classifier` head; the class names
    /// from `config_text`, the text of the configuration file `config_path`.
    fn from_loaded(
        loaded: LoadedModel<B>,
        tokenizer: BertTokenizer,
        config_path: &Path,
        config_text: &str,
        device: &B::Device,
    ) -> Result<Self, PipelineError> {
        let report = loaded.report;
        let classifier = match loaded.model.classifier {
            Some(classifier) if report.missing.is_empty() => classifier,
            _ => {
                return Err(PretrainedError::NoTaskHead {
                    source_name: report.source,
                    head: "sequence-classification",
                    missing: if report.missing.is_empty() {
                        "classifier.weight, classifier.bias".into()
                    } else {
                        report.missing.join(", ")
                    },
                }
                .into())
            }
        };
        let classes = classifier.weight.dims()[1];
        if classes == 0 {
            return Err(PipelineError::ModelFile {
                path: report.source,
                problem: "the classifier has no outputs".into(),
            });
        }
        let labels = class_labels(config_path, config_text, classes)?;
        let config = loaded.config;
        Ok(Self {
            model: BertForSequenceClassification {
                bert: loaded.model.bert,
                dropout: DropoutConfig::new(config.hidden_dropout_prob).init(),
                classifier,
            },
            config,
            tokenizer,
            labels,
            truncation: Truncation::default(),
            batch_size: DEFAULT_BATCH_SIZE,
            device: device.clone(),
        })
    }

    /// Inputs per forward pass (at least 1); inputs are sorted by length first.
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// What to do with inputs longer than the model takes (default: cut them).
    pub fn with_truncation(mut self, truncation: Truncation) -> Self {
        self.truncation = truncation;
        self
    }

    /// The class names, by index.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The classes of every text, in order.
    ///
    /// Blocks until the device answers; in a browser on WebGPU use [`Self::classify_async`].
    pub fn classify<S: AsRef<str>>(&self, texts: &[S]) -> Result<Classifications, PipelineError> {
        block_on(self.classify_async(texts))
    }

    /// [`Self::classify`] without blocking.
    pub async fn classify_async<S: AsRef<str>>(
        &self,
        texts: &[S],
    ) -> Result<Classifications, PipelineError> {
        self.classify_inputs_async(&single_texts(texts)).await
    }

    /// The classes of every pair of texts (`[CLS] a [SEP] b [SEP]`: paraphrase, entailment), in
    /// order.
    pub fn classify_pairs<A: AsRef<str>, C: AsRef<str>>(
        &self,
        pairs: &[(A, C)],
    ) -> Result<Classifications, PipelineError> {
        block_on(self.classify_pairs_async(pairs))
    }

    /// [`Self::classify_pairs`] without blocking.
    pub async fn classify_pairs_async<A: AsRef<str>, C: AsRef<str>>(
        &self,
        pairs: &[(A, C)],
    ) -> Result<Classifications, PipelineError> {
        let inputs = text_pairs(pairs);
        self.classify_inputs_async(&inputs).await
    }

    /// The classes of texts and pairs mixed (`(a, None)`: a text; `(a, Some(b))`: a pair), in
    /// order.
    pub fn classify_inputs(
        &self,
        inputs: &[(&str, Option<&str>)],
    ) -> Result<Classifications, PipelineError> {
        block_on(self.classify_inputs_async(inputs))
    }

    /// [`Self::classify_inputs`] without blocking.
    pub async fn classify_inputs_async(
        &self,
        inputs: &[(&str, Option<&str>)],
    ) -> Result<Classifications, PipelineError> {
        let limit = self.config.max_position_embeddings;
        let Encoded {
            encodings,
            truncated,
        } = encode_inputs(&self.tokenizer, inputs, limit, self.truncation)?;
        let mut scores = vec![Vec::new(); inputs.len()];
        for batch in batches_by_length(&encodings, self.batch_size) {
            let logits = self
                .logits_async(&token_batch(&self.tokenizer, &encodings, &batch))
                .await?;
            for (&index, row) in batch.iter().zip(logits) {
                scores[index] = self.ranked(&row);
            }
        }
        Ok(Classifications { scores, truncated })
    }

    /// The class logits of every row of an already tokenized batch: one forward pass.
    pub fn logits(&self, batch: &TokenBatch) -> Result<Vec<Vec<f32>>, PipelineError> {
        block_on(self.logits_async(batch))
    }

    /// [`Self::logits`] without blocking.
    pub async fn logits_async(&self, batch: &TokenBatch) -> Result<Vec<Vec<f32>>, PipelineError> {
        let input = batch.to_input::<B>(&self.config, &self.device)?;
        let logits = read_back(self.model.forward(input)).await?;
        Ok(logits
            .chunks_exact(self.labels.len())
            .map(<[f32]>::to_vec)
            .collect())
    }

    /// One input's logits as named probabilities, best first (ties keep the class order).
    fn ranked(&self, logits: &[f32]) -> Vec<ClassScore> {
        let mut scores: Vec<ClassScore> = probabilities(logits)
            .into_iter()
            .zip(&self.labels)
            .enumerate()
            .map(|(index, (score, label))| ClassScore {
                label: label.clone(),
                index,
                score,
            })
            .collect();
        scores.sort_by(|a, b| b.score.total_cmp(&a.score));
        scores
    }

    /// The model's configuration.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// The tokenizer texts go through.
    pub fn tokenizer(&self) -> &BertTokenizer {
        &self.tokenizer
    }
}

/// Softmax over the classes, computed in float64 after subtracting the largest logit; a sigmoid
/// for a single output (Hugging Face's choice for one label).
fn probabilities(logits: &[f32]) -> Vec<f32> {
    if let [logit] = logits {
        return vec![(1.0 / (1.0 + (-f64::from(*logit)).exp())) as f32];
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = logits
        .iter()
        .map(|&logit| f64::from(logit - max).exp())
        .collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| (e / sum) as f32).collect()
}

/// The class names of `config.json` (`path`, `text`): its `id2label` must name exactly the
/// classifier's `classes` outputs, `"0"` to `"classes - 1"`; without one, Hugging Face's defaults
/// `LABEL_0`, `LABEL_1`, ...
fn class_labels(path: &Path, text: &str, classes: usize) -> Result<Vec<String>, PipelineError> {
    let problem = |problem: String| PipelineError::ModelFile {
        path: path.display().to_string(),
        problem,
    };
    let names: ClassNames =
        serde_json::from_str(text).map_err(|error| problem(error.to_string()))?;
    let Some(id2label) = names.id2label else {
        return Ok((0..classes).map(|index| format!("LABEL_{index}")).collect());
    };
    if id2label.len() != classes {
        return Err(problem(format!(
            "id2label names {} classes but the classifier has {classes} outputs",
            id2label.len()
        )));
    }
    (0..classes)
        .map(|index| {
            id2label.get(&index.to_string()).cloned().ok_or_else(|| {
                problem(format!(
                    "id2label has no class {index} (its keys must be 0 to {})",
                    classes - 1
                ))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_are_a_softmax_or_a_single_sigmoid() {
        let softmax = probabilities(&[1.0, 2.0, 3.0]);
        let expected = [0.09003057, 0.24472847, 0.66524096];
        for (p, e) in softmax.iter().zip(expected) {
            assert!((p - e).abs() < 1e-7, "{softmax:?}");
        }
        // Large logits do not overflow.
        assert_eq!(probabilities(&[1000.0, 1000.0]), vec![0.5, 0.5]);
        assert!((probabilities(&[0.0])[0] - 0.5).abs() < 1e-7);
        assert!((probabilities(&[2.0])[0] - 0.880797).abs() < 1e-6);
    }

    #[test]
    fn class_names_come_from_id2label_or_default_to_hugging_faces() {
        let path = Path::new("model/config.json");
        let named = r#"{"id2label": {"1": "positive", "0": "negative"}}"#;
        assert_eq!(
            class_labels(path, named, 2).unwrap(),
            ["negative", "positive"]
        );
        assert_eq!(
            class_labels(path, r#"{"hidden_size": 8}"#, 3).unwrap(),
            ["LABEL_0", "LABEL_1", "LABEL_2"]
        );
        let wrong_count = class_labels(path, named, 3).unwrap_err().to_string();
        assert!(
            wrong_count.contains("model/config.json")
                && wrong_count.contains("names 2 classes but the classifier has 3"),
            "{wrong_count}"
        );
        let gap = r#"{"id2label": {"0": "a", "2": "c"}}"#;
        let error = class_labels(path, gap, 2).unwrap_err().to_string();
        assert!(error.contains("no class 1"), "{error}");
    }
}
