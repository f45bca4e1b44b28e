//! Extractive question answering over contexts of any length, as Hugging Face's
//! `pipeline("question-answering")` and NVIDIA's `inference.py` do it: the context cut into
//! overlapping windows, the best spans of every window scored, the n best answers returned with
//! their probabilities and character offsets.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use futures_lite::future::block_on;

use crate::config::BertConfig;
use crate::error::PipelineError;
use crate::model::BertForQuestionAnswering;
use crate::pretrained::{load_question_answering, ModelBytes, ModelFiles};
use crate::squad::predict::questions_dataset;
use crate::squad::{predict_dataset_async, Answer, AnswerConfig, FeatureConfig};
use crate::tokenizer::BertTokenizer;

/// Windows per forward pass.
const WINDOWS_PER_BATCH: usize = 8;

/// A question-answering model with its tokenizer and settings:
/// `QuestionAnswering::from_folder(dir, &device)?`, then `answer(question, context)?`.
pub struct QuestionAnswering<B: Backend> {
    model: BertForQuestionAnswering<B>,
    config: BertConfig,
    tokenizer: BertTokenizer,
    windows: FeatureConfig,
    answers: AnswerConfig,
    device: B::Device,
}

impl<B: Backend> QuestionAnswering<B> {
    /// Loads a fine-tuned question-answering folder (config, weights with a `qa_outputs` span
    /// head, tokenizer); an error naming the folder when the weights have no span head.
    pub fn from_folder(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self, PipelineError> {
        let files = ModelFiles::find(dir.as_ref(), None)?;
        let tokenizer = files.read_tokenizer(None)?;
        let checkpoint = files.read_checkpoint(&[] as &[PathBuf])?;
        let (config, model, _) =
            load_question_answering(&checkpoint, &files.read_config()?, true, device)?;
        Ok(Self::from_model(model, config, tokenizer, device))
    }

    /// Loads the files of a question-answering model already in memory (a browser's downloads).
    pub fn from_bytes(bytes: &ModelBytes, device: &B::Device) -> Result<Self, PipelineError> {
        let loaded = bytes.question_answering::<B>(true, device)?;
        Ok(Self::from_model(
            loaded.model,
            loaded.config,
            loaded.tokenizer,
            device,
        ))
    }

    /// A pipeline over a model already loaded (from any checkpoint format the caller reads), its
    /// configuration and tokenizer, with the default windows and answer settings.
    pub fn from_model(
        model: BertForQuestionAnswering<B>,
        config: BertConfig,
        tokenizer: BertTokenizer,
        device: &B::Device,
    ) -> Self {
        Self {
            model,
            config,
            tokenizer,
            windows: FeatureConfig::default(),
            answers: AnswerConfig::default(),
            device: device.clone(),
        }
    }

    /// How long contexts are cut into windows (default: 384 tokens, stride 128, questions cut at
    /// 64 tokens, as the reference's SQuAD settings; windows never exceed the model's positions).
    pub fn with_windows(mut self, windows: FeatureConfig) -> Self {
        self.windows = windows;
        self
    }

    /// How many answers, and how long (default: the 20 best, at most 30 tokens).
    pub fn with_answers(mut self, answers: AnswerConfig) -> Self {
        self.answers = answers;
        self
    }

    /// The best answers to `question` in `context` (any length), best first.
    ///
    /// Blocks until the device answers; in a browser on WebGPU use [`Self::answer_async`].
    pub fn answer(&self, question: &str, context: &str) -> Result<Vec<Answer>, PipelineError> {
        self.answer_with(question, context, &self.windows, &self.answers)
    }

    /// [`Self::answer`] without blocking.
    pub async fn answer_async(
        &self,
        question: &str,
        context: &str,
    ) -> Result<Vec<Answer>, PipelineError> {
        self.answer_with_async(question, context, &self.windows, &self.answers)
            .await
    }

    /// The best answers to each `(question, context)` pair, in order; the windows of all of them
    /// share forward passes.
    pub fn answer_all<Q: AsRef<str>, C: AsRef<str>>(
        &self,
        pairs: &[(Q, C)],
    ) -> Result<Vec<Vec<Answer>>, PipelineError> {
        block_on(self.answer_all_async(pairs))
    }

    /// [`Self::answer_all`] without blocking.
    pub async fn answer_all_async<Q: AsRef<str>, C: AsRef<str>>(
        &self,
        pairs: &[(Q, C)],
    ) -> Result<Vec<Vec<Answer>>, PipelineError> {
        self.answer_all_with_async(pairs, &self.windows, &self.answers)
            .await
    }

    /// [`Self::answer`] with this call's windows and answer settings instead of the pipeline's
    /// (a server whose requests each ask for their own number of answers).
    pub fn answer_with(
        &self,
        question: &str,
        context: &str,
        windows: &FeatureConfig,
        answers: &AnswerConfig,
    ) -> Result<Vec<Answer>, PipelineError> {
        block_on(self.answer_with_async(question, context, windows, answers))
    }

    /// [`Self::answer_with`] without blocking.
    pub async fn answer_with_async(
        &self,
        question: &str,
        context: &str,
        windows: &FeatureConfig,
        answers: &AnswerConfig,
    ) -> Result<Vec<Answer>, PipelineError> {
        Ok(self
            .answer_all_with_async(&[(question, context)], windows, answers)
            .await?
            .remove(0))
    }

    async fn answer_all_with_async<Q: AsRef<str>, C: AsRef<str>>(
        &self,
        pairs: &[(Q, C)],
        windows: &FeatureConfig,
        answers: &AnswerConfig,
    ) -> Result<Vec<Vec<Answer>>, PipelineError> {
        if pairs.is_empty() {
            return Err(PipelineError::NoTexts);
        }
        if let Some(index) = pairs
            .iter()
            .position(|(q, c)| q.as_ref().trim().is_empty() || c.as_ref().trim().is_empty())
        {
            return Err(PipelineError::EmptyQuestionOrContext { index });
        }
        let windows = FeatureConfig {
            max_seq_length: windows
                .max_seq_length
                .min(self.config.max_position_embeddings),
            ..*windows
        };
        let mut by_question: BTreeMap<String, Vec<Answer>> = predict_dataset_async(
            &self.model,
            &self.config,
            &self.tokenizer,
            &questions_dataset(pairs),
            &windows,
            answers,
            WINDOWS_PER_BATCH,
            &self.device,
        )
        .await?;
        Ok((0..pairs.len())
            .map(|index| by_question.remove(&index.to_string()).unwrap_or_default())
            .collect())
    }

    /// The model, for callers that want its raw start and end logits.
    pub fn model(&self) -> &BertForQuestionAnswering<B> {
        &self.model
    }

    /// Its tokenizer.
    pub fn tokenizer(&self) -> &BertTokenizer {
        &self.tokenizer
    }

    /// The model's configuration.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }
}
