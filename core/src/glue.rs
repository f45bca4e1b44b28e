//! GLUE MRPC and SST-2 (`run_glue.py`): the tab-separated files, sentence (pair) encoding, the
//! classification loss and the metrics (MRPC accuracy and F1, SST-2 accuracy).

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::config::BertConfig;
use crate::error::{InputError, TokenizerError};
use crate::model::{BertForSequenceClassification, TokenBatch};
use crate::tokenizer::BertTokenizer;
use crate::train::cross_entropy;

/// A GLUE task this crate knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GlueTask {
    /// Microsoft Research Paraphrase Corpus: is sentence B a paraphrase of A?
    Mrpc,
    /// Stanford Sentiment Treebank, binary: is the sentence positive?
    Sst2,
}

/// One labelled (or, for test files, unlabelled) example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlueExample {
    /// Row id (the test files' `index`, else the line number).
    pub id: String,
    /// Sentence A.
    pub text_a: String,
    /// Sentence B (MRPC).
    pub text_b: Option<String>,
    /// 0 or 1; absent in test files.
    pub label: Option<usize>,
}

/// A line that does not fit the task's format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct GlueFormatError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl GlueTask {
    /// Number of classes.
    pub fn num_labels(self) -> usize {
        self.labels().len()
    }

    /// The classes' names by label (written as the saved model's `id2label`).
    pub fn labels(self) -> [&'static str; 2] {
        match self {
            GlueTask::Mrpc => ["not_equivalent", "equivalent"],
            GlueTask::Sst2 => ["negative", "positive"],
        }
    }

    /// Parses a GLUE TSV file (train, dev or test; the header row is skipped). MRPC:
    /// `Quality, #1 ID, #2 ID, #1 String, #2 String` (test: `index, #1 ID, #2 ID, #1 String,
    /// #2 String`); SST-2: `sentence, label` (test: `index, sentence`).
    pub fn read_tsv(self, text: &str) -> Result<Vec<GlueExample>, GlueFormatError> {
        let mut lines = text.lines().enumerate();
        let Some((_, header)) = lines.next() else {
            return Err(GlueFormatError {
                line: 1,
                message: "empty file".into(),
            });
        };
        let is_test = header.split('\t').next().is_some_and(|h| h == "index");
        let mut examples = Vec::new();
        for (number, line) in lines {
            let line_number = number + 1;
            if line.trim().is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split('\t').collect();
            let error = |message: String| GlueFormatError {
                line: line_number,
                message,
            };
            let label = |value: &str| -> Result<usize, GlueFormatError> {
                match value.trim() {
                    "0" => Ok(0),
                    "1" => Ok(1),
                    other => Err(error(format!("label {other:?} is not 0 or 1"))),
                }
            };
            let example = match (self, is_test) {
                (Self::Mrpc, _) => {
                    if fields.len() < 5 {
                        return Err(error(format!(
                            "expected 5 tab-separated fields, found {}",
                            fields.len()
                        )));
                    }
                    GlueExample {
                        id: if is_test {
                            fields[0].to_string()
                        } else {
                            line_number.to_string()
                        },
                        text_a: fields[3].to_string(),
                        text_b: Some(fields[4].to_string()),
                        label: if is_test {
                            None
                        } else {
                            Some(label(fields[0])?)
                        },
                    }
                }
                (Self::Sst2, true) => {
                    if fields.len() < 2 {
                        return Err(error("expected index and sentence".into()));
                    }
                    GlueExample {
                        id: fields[0].to_string(),
                        text_a: fields[1].to_string(),
                        text_b: None,
                        label: None,
                    }
                }
                (Self::Sst2, false) => {
                    if fields.len() < 2 {
                        return Err(error("expected sentence and label".into()));
                    }
                    GlueExample {
                        id: line_number.to_string(),
                        text_a: fields[0].to_string(),
                        text_b: None,
                        label: Some(label(fields[1])?),
                    }
                }
            };
            examples.push(example);
        }
        Ok(examples)
    }
}

/// Encodes examples (`[CLS] A [SEP] B [SEP]`, cut to `max_seq_length` by `truncate_seq_pair`) and
/// pads them into a batch.
pub fn encode_batch(
    tokenizer: &BertTokenizer,
    examples: &[&GlueExample],
    max_seq_length: usize,
) -> Result<TokenBatch, TokenizerError> {
    let encodings = examples
        .iter()
        .map(|e| tokenizer.encode(&e.text_a, e.text_b.as_deref(), Some(max_seq_length)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(tokenizer.batch(&encodings, None))
}

/// The classification loss of labelled examples.
pub fn classification_loss<B: Backend>(
    model: &BertForSequenceClassification<B>,
    config: &BertConfig,
    batch: &TokenBatch,
    labels: &[usize],
    device: &B::Device,
) -> Result<Tensor<B, 1>, InputError> {
    let logits = model.forward(batch.to_input(config, device)?);
    let labels = Tensor::<B, 1, Int>::from_data(
        TensorData::new(
            labels.iter().map(|&l| l as i64).collect::<Vec<_>>(),
            [labels.len()],
        ),
        device,
    );
    Ok(cross_entropy(logits, labels))
}

/// Accuracy and, for MRPC, F1 of the positive class (and their mean, as the reference reports).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GlueMetrics {
    /// Fraction correct.
    pub accuracy: f64,
    /// F1 of class 1 (MRPC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub f1: Option<f64>,
    /// `(accuracy + f1) / 2` (MRPC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc_and_f1: Option<f64>,
}

/// The task's metrics of `predictions` against `labels`.
pub fn metrics(task: GlueTask, predictions: &[usize], labels: &[usize]) -> GlueMetrics {
    let n = labels.len().max(1) as f64;
    let correct = predictions
        .iter()
        .zip(labels)
        .filter(|(p, l)| p == l)
        .count();
    let accuracy = correct as f64 / n;
    match task {
        GlueTask::Sst2 => GlueMetrics {
            accuracy,
            f1: None,
            acc_and_f1: None,
        },
        GlueTask::Mrpc => {
            let count = |p: usize, l: usize| {
                predictions
                    .iter()
                    .zip(labels)
                    .filter(|&(&a, &b)| a == p && b == l)
                    .count() as f64
            };
            let (tp, fp, fn_) = (count(1, 1), count(1, 0), count(0, 1));
            let f1 = if tp == 0.0 {
                0.0
            } else {
                2.0 * tp / (2.0 * tp + fp + fn_)
            };
            GlueMetrics {
                accuracy,
                f1: Some(f1),
                acc_and_f1: Some((accuracy + f1) / 2.0),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mrpc_and_sst2_files_train_and_test() {
        let mrpc = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tHe said hi.\tHe greeted.\n0\t3\t4\tA cat.\tA car.\n";
        let examples = GlueTask::Mrpc.read_tsv(mrpc).unwrap();
        assert_eq!(examples.len(), 2);
        assert_eq!(examples[0].text_b.as_deref(), Some("He greeted."));
        assert_eq!(examples[1].label, Some(0));
        let test = "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t1\t2\tX.\tY.\n";
        assert_eq!(GlueTask::Mrpc.read_tsv(test).unwrap()[0].label, None);
        let sst = "sentence\tlabel\nit 's a charming journey . \t1\n";
        let examples = GlueTask::Sst2.read_tsv(sst).unwrap();
        assert_eq!(
            (examples[0].label, examples[0].text_b.clone()),
            (Some(1), None)
        );
        let sst_test = "index\tsentence\n7\tdull .\n";
        assert_eq!(GlueTask::Sst2.read_tsv(sst_test).unwrap()[0].id, "7");
    }

    #[test]
    fn malformed_lines_are_reported_with_their_number() {
        let bad = "sentence\tlabel\nfine\t1\nbroken\tmaybe\n";
        let error = GlueTask::Sst2.read_tsv(bad).unwrap_err();
        assert_eq!(error.line, 3);
        assert!(error.to_string().contains("maybe"));
        assert!(GlueTask::Mrpc.read_tsv("Quality\t#1 ID\n1\t2\n").is_err());
        assert!(GlueTask::Sst2.read_tsv("").is_err());
    }

    #[test]
    fn mrpc_f1_is_of_the_positive_class() {
        let m = metrics(GlueTask::Mrpc, &[1, 1, 0, 0], &[1, 0, 1, 0]);
        assert_eq!(m.accuracy, 0.5);
        assert_eq!(m.f1, Some(0.5));
        assert_eq!(m.acc_and_f1, Some(0.5));
        let perfect = metrics(GlueTask::Sst2, &[1, 0], &[1, 0]);
        assert_eq!((perfect.accuracy, perfect.f1), (1.0, None));
    }
}
