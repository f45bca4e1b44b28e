//! A pretraining micro-batch on the device, from the rows of a shard, read as the reference's
//! `pretraining_dataset.__getitem__` does: the masked predictions of a row end at the first 0 in
//! `masked_lm_positions` (position 0 is `[CLS]`, never masked).

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::data::ShardArrays;
use crate::model::BertInput;

/// Device tensors of one micro-batch.
#[derive(Debug, Clone)]
pub struct PretrainingBatch<B: Backend> {
    /// The model input `[B, L]`.
    pub input: BertInput<B>,
    /// Flat indices `row * L + position` of the masked tokens, `[N]` (N = masked tokens of the batch).
    pub masked_lm_index: Tensor<B, 1, Int>,
    /// Their original ids `[N]`.
    pub masked_lm_labels: Tensor<B, 1, Int>,
    /// 1 when sentence B is random, `[B]`.
    pub next_sentence_labels: Tensor<B, 1, Int>,
    /// Rows in the batch.
    pub num_rows: usize,
    /// Masked tokens in the batch (N).
    pub num_masked: usize,
}

impl<B: Backend> PretrainingBatch<B> {
    /// Uploads the rows of `arrays` (already validated by the shard reader).
    pub fn new(arrays: &ShardArrays, device: &B::Device) -> Self {
        let (rows, length, predictions) = (
            arrays.num_instances,
            arrays.max_seq_length,
            arrays.max_predictions_per_seq,
        );
        let matrix = |values: Vec<i64>| {
            Tensor::<B, 2, Int>::from_data(TensorData::new(values, [rows, length]), device)
        };
        let widen32 = |values: &[i32]| values.iter().map(|&v| i64::from(v)).collect::<Vec<_>>();
        let widen8 = |values: &[i8]| values.iter().map(|&v| i64::from(v)).collect::<Vec<_>>();

        let mut masked_lm_index = Vec::new();
        let mut masked_lm_labels = Vec::new();
        for row in 0..rows {
            let k = arrays.num_predictions(row);
            let offset = row * predictions;
            for j in 0..k {
                masked_lm_index.push(
                    (row * length) as i64 + i64::from(arrays.masked_lm_positions[offset + j]),
                );
                masked_lm_labels.push(i64::from(arrays.masked_lm_ids[offset + j]));
            }
        }
        let num_masked = masked_lm_index.len();
        let vector = |values: Vec<i64>| {
            let n = values.len();
            Tensor::<B, 1, Int>::from_data(TensorData::new(values, [n]), device)
        };
        Self {
            input: BertInput {
                input_ids: matrix(widen32(&arrays.input_ids)),
                token_type_ids: matrix(widen8(&arrays.segment_ids)),
                attention_mask: matrix(widen8(&arrays.input_mask)),
            },
            masked_lm_index: vector(masked_lm_index),
            masked_lm_labels: vector(masked_lm_labels),
            next_sentence_labels: vector(widen8(&arrays.next_sentence_labels)),
            num_rows: rows,
            num_masked,
        }
    }
}
