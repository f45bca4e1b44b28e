//! The model repository: one folder per model (config, weights, vocabulary) with a `model.json`
//! naming its task, loaded into the task's model on the chosen backend.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bert_core::model::{BertForQuestionAnswering, BertWithHeads, TokenBatch};
use bert_core::pipelines::{QuestionAnswering, SentenceEmbeddings, SequenceClassification};
use bert_core::BertConfig;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::Deserialize;

use crate::finetune::ModelArgs;

/// What a served model computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// Start and end logits of an answer span (`BertForQuestionAnswering`).
    QuestionAnswering,
    /// Class logits (`BertForSequenceClassification`), and named class probabilities at
    /// `/classify`.
    SequenceClassification,
    /// The encoder's last hidden state.
    Encoder,
    /// Sentence embeddings as sentence-transformers computes them (pooling and normalisation
    /// from the folder's sentence-transformers files).
    SentenceEmbeddings,
}

impl Task {
    /// The name used in `model.json` and in the metadata's `platform`.
    pub fn name(self) -> &'static str {
        match self {
            Task::QuestionAnswering => "question-answering",
            Task::SequenceClassification => "sequence-classification",
            Task::Encoder => "encoder",
            Task::SentenceEmbeddings => "sentence-embeddings",
        }
    }
}

/// `model.json`: the task, and the windows of the text question-answering endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    /// The task.
    pub task: Task,
    /// Tokens per window for `/qa` (default 384, at most the model's positions).
    #[serde(default = "default_max_seq_length")]
    pub max_seq_length: usize,
    /// Tokens between window starts for `/qa`.
    #[serde(default = "default_doc_stride")]
    pub doc_stride: usize,
}

/// Tokens in the made-up sequence of [`ServedModel::warm_up`]: enough rows for the CPU's packed
/// product kernel to take every fully connected layer, few enough to cost little more than the
/// packing itself.
const WARM_UP_TOKENS: usize = 64;

fn default_max_seq_length() -> usize {
    384
}

fn default_doc_stride() -> usize {
    128
}

/// One output tensor of a model, on the host, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct HostOutput {
    /// Output name (`start_logits`, `end_logits`, `logits`, `last_hidden_state`).
    pub name: &'static str,
    /// Dimensions, batch first.
    pub shape: Vec<usize>,
    /// Values.
    pub data: Vec<f32>,
}

/// A model loaded for serving.
pub struct ServedModel<B: Backend> {
    /// The folder's name, the model's name in URLs.
    pub name: String,
    /// Its `model.json`.
    pub settings: ModelSettings,
    /// Its configuration.
    pub config: BertConfig,
    /// The task's model.
    pub model: TaskModel<B>,
}

/// The model of each task.
pub enum TaskModel<B: Backend> {
    /// The question-answering pipeline (its model also answers `/infer` with raw logits).
    QuestionAnswering(Box<QuestionAnswering<B>>),
    /// The sequence-classification pipeline.
    SequenceClassification(Box<SequenceClassification<B>>),
    /// The encoder (with whatever heads its checkpoint holds, unused).
    Encoder(Box<BertWithHeads<B>>),
    /// The sentence-embeddings pipeline.
    SentenceEmbeddings(Box<SentenceEmbeddings<B>>),
}

/// The folders of a repository that hold a `model.json`, sorted by name.
pub fn model_folders(repository: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(repository)
        .with_context(|| format!("cannot read the model repository {}", repository.display()))?;
    let mut folders = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot read {}", repository.display()))?
            .path();
        if path.is_dir() {
            if !path.join("model.json").is_file() {
                bail!(
                    "{}: no model.json (it names the task: {{\"task\": \"question-answering\" | \"sequence-classification\" | \"encoder\" | \"sentence-embeddings\"}})",
                    path.display()
                );
            }
            folders.push(path);
        }
    }
    if folders.is_empty() {
        bail!(
            "{}: no model folders (one folder per model, each with model.json, config.json, weights and a vocabulary)",
            repository.display()
        );
    }
    folders.sort();
    Ok(folders)
}

impl<B: Backend> ServedModel<B> {
    /// Loads the model in `folder` for its task.
    pub fn load(folder: &Path, device: &B::Device) -> Result<Self> {
        let name = folder
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{}: not a usable model name", folder.display()))?
            .to_string();
        let settings_file = folder.join("model.json");
        let settings: ModelSettings = serde_json::from_str(
            &std::fs::read_to_string(&settings_file)
                .with_context(|| format!("cannot read {}", settings_file.display()))?,
        )
        .with_context(|| format!("{}: not a valid model.json", settings_file.display()))?;
        // The text pipelines read their own folder: pooling files, class names.
        let pipeline = match settings.task {
            Task::SentenceEmbeddings => {
                let pipeline = SentenceEmbeddings::from_folder(folder, device)?;
                for notice in pipeline.notices() {
                    eprintln!("NOTE: {notice}");
                }
                let limit = pipeline.max_tokens();
                Some((
                    pipeline.config().clone(),
                    pipeline.tokenizer().vocab_size(),
                    limit,
                    TaskModel::SentenceEmbeddings(Box::new(pipeline)),
                ))
            }
            Task::SequenceClassification => {
                let pipeline = SequenceClassification::from_folder(folder, device)?;
                Some((
                    pipeline.config().clone(),
                    pipeline.tokenizer().vocab_size(),
                    pipeline.config().max_position_embeddings,
                    TaskModel::SequenceClassification(Box::new(pipeline)),
                ))
            }
            Task::QuestionAnswering | Task::Encoder => None,
        };
        if let Some((config, vocab_size, limit, model)) = pipeline {
            if vocab_size > config.vocab_size {
                bail!(
                    "{}: the vocabulary has {} entries but the model only {}: wrong vocabulary for this model",
                    folder.display(),
                    vocab_size,
                    config.vocab_size
                );
            }
            return Ok(Self {
                name,
                settings: ModelSettings {
                    max_seq_length: settings.max_seq_length.min(limit),
                    ..settings
                },
                config,
                model,
            });
        }
        let source = ModelArgs {
            model: Some(folder.to_path_buf()),
            init_checkpoint: None,
            config_file: None,
            vocab_file: None,
            do_lower_case: None,
        }
        .resolve()?;
        let config = source.config.clone();
        let heads = source
            .checkpoint
            .as_ref()
            .map(|checkpoint| checkpoint.heads())
            .unwrap_or_default();
        let model = match settings.task {
            Task::QuestionAnswering => {
                let mut model = BertForQuestionAnswering::new(&config, device);
                source.load_into(&mut model, true)?;
                TaskModel::QuestionAnswering(Box::new(QuestionAnswering::from_model(
                    model,
                    config.clone(),
                    source.tokenizer,
                    device,
                )))
            }
            Task::Encoder => {
                let mut model = BertWithHeads::new(&config, heads, device);
                source.load_into(&mut model, false)?;
                TaskModel::Encoder(Box::new(model))
            }
            Task::SentenceEmbeddings | Task::SequenceClassification => {
                unreachable!("loaded above")
            }
        };
        let settings = ModelSettings {
            max_seq_length: settings.max_seq_length.min(config.max_position_embeddings),
            ..settings
        };
        Ok(Self {
            name,
            settings,
            config,
            model,
        })
    }

    /// The outputs' names and their dimensions after the batch (`-1`: the sequence length).
    pub fn outputs(&self) -> Vec<(&'static str, Vec<i64>)> {
        match &self.model {
            TaskModel::QuestionAnswering(_) => {
                vec![("start_logits", vec![-1]), ("end_logits", vec![-1])]
            }
            TaskModel::SequenceClassification(pipeline) => {
                vec![("logits", vec![pipeline.labels().len() as i64])]
            }
            TaskModel::Encoder(_) => vec![(
                "last_hidden_state",
                vec![-1, self.config.hidden_size as i64],
            )],
            TaskModel::SentenceEmbeddings(_) => {
                vec![("sentence_embedding", vec![self.config.hidden_size as i64])]
            }
        }
    }

    /// Runs the model twice on a made-up sequence before it is served, and says how long that
    /// took. What a model's first runs pay once is then paid before the server listens, not by
    /// its first clients: on the CPU, packing each weight for the product kernel (done at a
    /// weight's second use, about 140 ms for MiniLM) and the first touches of its memory; on a
    /// GPU, compiling the kernels. A model whose forward pass fails stops the server at start.
    pub fn warm_up(&self, device: &B::Device) -> Result<Duration> {
        let started = Instant::now();
        let tokens = WARM_UP_TOKENS.min(self.settings.max_seq_length).max(1);
        let vocab_size = self.config.vocab_size.max(1);
        let batch = TokenBatch {
            input_ids: vec![(0..tokens).map(|i| (i % vocab_size) as i64).collect()],
            token_type_ids: None,
            attention_mask: None,
        };
        for _ in 0..2 {
            self.infer(&batch, device)
                .with_context(|| format!("model {}: the warm-up run failed", self.name))?;
        }
        Ok(started.elapsed())
    }

    /// Runs a batch (already validated) and returns every output for the whole batch.
    pub fn infer(&self, batch: &TokenBatch, device: &B::Device) -> Result<Vec<HostOutput>> {
        let input = || batch.to_input::<B>(&self.config, device);
        let host = |name: &'static str, shape: Vec<usize>, values: Vec<f32>| HostOutput {
            name,
            shape,
            data: values,
        };
        Ok(match &self.model {
            TaskModel::QuestionAnswering(pipeline) => {
                let (start, end) = pipeline.model().forward(input()?);
                let shape = start.dims().to_vec();
                vec![
                    host("start_logits", shape.clone(), values(start)?),
                    host("end_logits", shape, values(end)?),
                ]
            }
            TaskModel::SequenceClassification(pipeline) => {
                let logits = pipeline.logits(batch)?;
                let shape = vec![logits.len(), pipeline.labels().len()];
                vec![host("logits", shape, logits.concat())]
            }
            TaskModel::SentenceEmbeddings(pipeline) => {
                let vectors = pipeline.embed_tokens(batch)?;
                let shape = vec![vectors.len(), self.config.hidden_size];
                vec![host("sentence_embedding", shape, vectors.concat())]
            }
            TaskModel::Encoder(model) => {
                let hidden = model.forward(input()?).last_hidden_state;
                vec![host(
                    "last_hidden_state",
                    hidden.dims().to_vec(),
                    values(hidden)?,
                )]
            }
        })
    }
}

fn values<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Result<Vec<f32>> {
    tensor
        .into_data()
        .convert::<f32>()
        .to_vec()
        .map_err(|e| anyhow::anyhow!("cannot read the model's output: {e:?}"))
}
