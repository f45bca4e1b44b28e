//! Running a question-answering model over SQuAD features, and answering one question about one
//! context of any length: the same windows and post-processing as the reference, so the CLI, the
//! server and the browser give the same answers.

use std::collections::{BTreeMap, HashMap};

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use futures_lite::future::block_on;

use super::data::{
    read_examples, SquadAnswer, SquadArticle, SquadDataset, SquadParagraph, SquadQuestion,
};
use super::features::{convert_examples_to_features, features_batch, FeatureConfig, SquadFeature};
use super::postprocess::{best_answers, Answer, AnswerConfig, WindowLogits};
use super::SquadExample;
use crate::config::BertConfig;
use crate::error::{InputError, TokenizerError};
use crate::model::BertForQuestionAnswering;
use crate::tokenizer::BertTokenizer;

/// Why a prediction could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    /// Tokenization failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// A window does not fit the model (e.g. `max_seq_length` above its positions).
    #[error(transparent)]
    Input(#[from] InputError),
    /// The device could not run the model or return its output.
    #[error("the model's output could not be read from the device: {0}")]
    Device(String),
}

/// Start and end logits of every feature, in order, computed in batches of `batch_size`.
///
/// Blocks until the device answers; in a browser on WebGPU use [`window_logits_async`].
pub fn window_logits<B: Backend>(
    model: &BertForQuestionAnswering<B>,
    config: &BertConfig,
    features: &[SquadFeature],
    max_seq_length: usize,
    batch_size: usize,
    device: &B::Device,
) -> Result<Vec<WindowLogits>, PredictError> {
    block_on(window_logits_async(
        model,
        config,
        features,
        max_seq_length,
        batch_size,
        device,
    ))
}

/// [`window_logits`] reading the logits back without blocking (the only way on WebGPU).
pub async fn window_logits_async<B: Backend>(
    model: &BertForQuestionAnswering<B>,
    config: &BertConfig,
    features: &[SquadFeature],
    max_seq_length: usize,
    batch_size: usize,
    device: &B::Device,
) -> Result<Vec<WindowLogits>, PredictError> {
    let mut logits = Vec::with_capacity(features.len());
    for chunk in features.chunks(batch_size.max(1)) {
        let refs: Vec<&SquadFeature> = chunk.iter().collect();
        let input = features_batch(&refs, max_seq_length).to_input::<B>(config, device)?;
        let (start, end) = model.forward(input);
        let length = start.dims()[1];
        let start = read_floats(start).await?;
        let end = read_floats(end).await?;
        for row in 0..chunk.len() {
            logits.push(WindowLogits {
                start: start[row * length..(row + 1) * length].to_vec(),
                end: end[row * length..(row + 1) * length].to_vec(),
            });
        }
    }
    Ok(logits)
}

async fn read_floats<B: Backend, const D: usize>(
    tensor: Tensor<B, D>,
) -> Result<Vec<f32>, PredictError> {
    let data = tensor
        .into_data_async()
        .await
        .map_err(|e| PredictError::Device(format!("{e:?}")))?;
    data.convert::<f32>()
        .to_vec()
        .map_err(|e| PredictError::Device(format!("{e:?}")))
}

/// The n-best answers of every example, by question id, from the features' logits.
pub fn answers_by_question(
    examples: &[SquadExample],
    features: &[SquadFeature],
    logits: &[WindowLogits],
    tokenizer: &BertTokenizer,
    config: &AnswerConfig,
) -> Result<BTreeMap<String, Vec<Answer>>, TokenizerError> {
    let mut windows: HashMap<usize, (Vec<&SquadFeature>, Vec<&WindowLogits>)> = HashMap::new();
    for (feature, logit) in features.iter().zip(logits) {
        let entry = windows.entry(feature.example_index).or_default();
        entry.0.push(feature);
        entry.1.push(logit);
    }
    let mut answers = BTreeMap::new();
    for (index, example) in examples.iter().enumerate() {
        let (features, logits) = windows.remove(&index).unwrap_or_default();
        answers.insert(
            example.qas_id.clone(),
            best_answers(example, &features, &logits, tokenizer, config)?,
        );
    }
    Ok(answers)
}

/// The n-best answers to every question of `dataset` (windows of `features`, `batch_size`
/// windows per forward pass), by question id: `bert-native squad --do_predict` and the browser's
/// evaluation.
#[allow(clippy::too_many_arguments)]
pub async fn predict_dataset_async<B: Backend>(
    model: &BertForQuestionAnswering<B>,
    config: &BertConfig,
    tokenizer: &BertTokenizer,
    dataset: &SquadDataset,
    features: &FeatureConfig,
    answers: &AnswerConfig,
    batch_size: usize,
    device: &B::Device,
) -> Result<BTreeMap<String, Vec<Answer>>, PredictError> {
    let (examples, _) = read_examples(dataset, false);
    let windows = convert_examples_to_features(&examples, tokenizer, features, false)?;
    let logits = window_logits_async(
        model,
        config,
        &windows,
        features.max_seq_length,
        batch_size,
        device,
    )
    .await?;
    Ok(answers_by_question(
        &examples, &windows, &logits, tokenizer, answers,
    )?)
}

/// A dataset of one question about one context per pair, the pair's position as its id.
pub(crate) fn questions_dataset<Q: AsRef<str>, C: AsRef<str>>(pairs: &[(Q, C)]) -> SquadDataset {
    SquadDataset {
        version: "1.1".into(),
        data: vec![SquadArticle {
            title: String::new(),
            paragraphs: pairs
                .iter()
                .enumerate()
                .map(|(index, (question, context))| SquadParagraph {
                    context: context.as_ref().to_string(),
                    qas: vec![SquadQuestion {
                        id: index.to_string(),
                        question: question.as_ref().to_string(),
                        answers: Vec::<SquadAnswer>::new(),
                    }],
                })
                .collect(),
        }],
    }
}
