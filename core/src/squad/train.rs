//! The SQuAD fine-tuning objective: `(CE(start) + CE(end)) / 2` over a micro-batch of windows,
//! windows whose target lies beyond the sequence ignored (the reference clamps those to an ignored
//! index; windows without the answer point at `[CLS]` and do count).

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::features::{features_batch, SquadFeature};
use crate::config::BertConfig;
use crate::error::InputError;
use crate::model::BertForQuestionAnswering;
use crate::train::cross_entropy;

/// The loss of `features` (training features, each with its answer tokens).
pub fn qa_loss<B: Backend>(
    model: &BertForQuestionAnswering<B>,
    config: &BertConfig,
    features: &[&SquadFeature],
    max_seq_length: usize,
    device: &B::Device,
) -> Result<Tensor<B, 1>, InputError> {
    let input = features_batch(features, max_seq_length).to_input::<B>(config, device)?;
    let (start_logits, end_logits) = model.forward(input);
    let length = start_logits.dims()[1];
    let kept: Vec<(usize, (usize, usize))> = features
        .iter()
        .enumerate()
        .filter_map(|(row, f)| f.answer_tokens.map(|answer| (row, answer)))
        .filter(|(_, (start, end))| *start < length && *end < length)
        .collect();
    if kept.is_empty() {
        return Err(InputError::Shape(
            "no training window has its answer inside the sequence".into(),
        ));
    }
    let ints = |values: Vec<i64>| {
        let n = values.len();
        Tensor::<B, 1, Int>::from_data(TensorData::new(values, [n]), device)
    };
    let rows = ints(kept.iter().map(|(row, _)| *row as i64).collect());
    let starts = ints(kept.iter().map(|(_, (start, _))| *start as i64).collect());
    let ends = ints(kept.iter().map(|(_, (_, end))| *end as i64).collect());
    let start_loss = cross_entropy(start_logits.select(0, rows.clone()), starts);
    let end_loss = cross_entropy(end_logits.select(0, rows), ends);
    Ok((start_loss + end_loss) / 2.0)
}
