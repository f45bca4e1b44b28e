//! Model inputs: host-side id matrices, checked against the configuration before they reach a device.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::config::BertConfig;
use crate::error::InputError;

/// The three `[B, S]` id matrices of a batch, on a device.
#[derive(Debug, Clone)]
pub struct BertInput<B: Backend> {
    /// Token ids.
    pub input_ids: Tensor<B, 2, Int>,
    /// Segment ids (0 for sentence A, 1 for sentence B).
    pub token_type_ids: Tensor<B, 2, Int>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Tensor<B, 2, Int>,
}

/// A batch of token ids on the host, as `bert-native encode` reads it from JSON:
/// `{"input_ids": [[...]], "token_type_ids": [[...]], "attention_mask": [[...]]}`.
///
/// `token_type_ids` defaults to zeros and `attention_mask` to ones when absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenBatch {
    /// Token ids, one row per sequence.
    pub input_ids: Vec<Vec<i64>>,
    /// Segment ids, same shape as `input_ids`.
    #[serde(default)]
    pub token_type_ids: Option<Vec<Vec<i64>>>,
    /// 0/1 padding mask, same shape as `input_ids`.
    #[serde(default)]
    pub attention_mask: Option<Vec<Vec<i64>>>,
}

impl TokenBatch {
    /// Number of rows.
    pub fn batch_size(&self) -> usize {
        self.input_ids.len()
    }

    /// Length of every row (0 for an empty batch).
    pub fn seq_len(&self) -> usize {
        self.input_ids.first().map_or(0, Vec::len)
    }

    /// Checks shapes and value ranges against the model, so that no id can index outside an
    /// embedding table (which would be undefined behaviour on some backends, a panic on others).
    pub fn validate(&self, config: &BertConfig) -> Result<(), InputError> {
        let (batch_size, seq_len) = (self.batch_size(), self.seq_len());
        if batch_size == 0 || seq_len == 0 {
            return Err(InputError::Shape(
                "input_ids is empty: need at least one row with at least one token".into(),
            ));
        }
        if seq_len > config.max_position_embeddings {
            return Err(InputError::Shape(format!(
                "sequences have {seq_len} tokens but the model has only {} positions",
                config.max_position_embeddings
            )));
        }
        let matrices = [
            ("input_ids", Some(&self.input_ids), config.vocab_size),
            (
                "token_type_ids",
                self.token_type_ids.as_ref(),
                config.type_vocab_size,
            ),
            ("attention_mask", self.attention_mask.as_ref(), 2),
        ];
        for (name, rows, limit) in matrices {
            let Some(rows) = rows else { continue };
            if rows.len() != batch_size {
                return Err(InputError::Shape(format!(
                    "{name} has {} rows but input_ids has {batch_size}",
                    rows.len()
                )));
            }
            for (row, values) in rows.iter().enumerate() {
                if values.len() != seq_len {
                    return Err(InputError::Shape(format!(
                        "{name} row {row} has {} entries, expected {seq_len} (rows must be padded to one length)",
                        values.len()
                    )));
                }
                if let Some((column, &value)) = values
                    .iter()
                    .enumerate()
                    .find(|(_, &v)| v < 0 || v as u64 >= limit as u64)
                {
                    return Err(InputError::OutOfRange {
                        name,
                        value,
                        row,
                        column,
                        limit,
                    });
                }
            }
        }
        Ok(())
    }

    /// Validates and uploads the batch.
    pub fn to_input<B: Backend>(
        &self,
        config: &BertConfig,
        device: &B::Device,
    ) -> Result<BertInput<B>, InputError> {
        self.validate(config)?;
        let shape = [self.batch_size(), self.seq_len()];
        let upload = |rows: Option<&Vec<Vec<i64>>>, fill: i64| {
            let flat: Vec<i64> = match rows {
                Some(rows) => rows.iter().flatten().copied().collect(),
                None => vec![fill; shape[0] * shape[1]],
            };
            Tensor::<B, 2, Int>::from_data(TensorData::new(flat, shape), device)
        };
        Ok(BertInput {
            input_ids: upload(Some(&self.input_ids), 0),
            token_type_ids: upload(self.token_type_ids.as_ref(), 0),
            attention_mask: upload(self.attention_mask.as_ref(), 1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_config() -> BertConfig {
        BertConfig {
            vocab_size: 10,
            max_position_embeddings: 4,
            ..BertConfig::base()
        }
    }

    fn batch(input_ids: Vec<Vec<i64>>) -> TokenBatch {
        TokenBatch {
            input_ids,
            token_type_ids: None,
            attention_mask: None,
        }
    }

    #[test]
    fn accepts_a_well_formed_batch() {
        let mut ok = batch(vec![vec![1, 2, 3], vec![4, 5, 0]]);
        ok.attention_mask = Some(vec![vec![1, 1, 1], vec![1, 1, 0]]);
        ok.token_type_ids = Some(vec![vec![0, 0, 1], vec![0, 1, 1]]);
        ok.validate(&tiny_config()).unwrap();
    }

    #[test]
    fn rejects_out_of_vocabulary_ids_with_their_position() {
        let err = batch(vec![vec![1, 2], vec![3, 10]])
            .validate(&tiny_config())
            .unwrap_err();
        assert!(matches!(
            err,
            InputError::OutOfRange {
                name: "input_ids",
                value: 10,
                row: 1,
                column: 1,
                limit: 10
            }
        ));
        let negative = batch(vec![vec![-1]]).validate(&tiny_config()).unwrap_err();
        assert!(matches!(negative, InputError::OutOfRange { value: -1, .. }));
    }

    #[test]
    fn rejects_ragged_empty_and_too_long_batches() {
        let config = tiny_config();
        assert!(batch(vec![vec![1, 2], vec![3]]).validate(&config).is_err());
        assert!(batch(vec![]).validate(&config).is_err());
        assert!(batch(vec![vec![]]).validate(&config).is_err());
        assert!(batch(vec![vec![1; 5]]).validate(&config).is_err());
        let mut bad_mask = batch(vec![vec![1, 2]]);
        bad_mask.attention_mask = Some(vec![vec![1, 2]]);
        assert!(bad_mask.validate(&config).is_err());
        let mut bad_types = batch(vec![vec![1, 2]]);
        bad_types.token_type_ids = Some(vec![vec![0, 1], vec![0, 1]]);
        assert!(bad_types.validate(&config).is_err());
    }
}
