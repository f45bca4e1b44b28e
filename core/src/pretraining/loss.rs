//! The pretraining objective: masked-LM cross-entropy over the masked tokens (gathered before the
//! vocabulary projection, so the decoder runs on N tokens, not B x L) plus next-sentence
//! cross-entropy, each the mean over its entries.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::batch::PretrainingBatch;
use crate::model::precision::{full, linear};
use crate::model::BertForPreTraining;
use crate::train::cross_entropy;

/// The two losses of a micro-batch, `[1]` tensors (still attached to the graph when training).
#[derive(Debug, Clone)]
pub struct PretrainingLoss<B: Backend> {
    /// Mean masked-LM cross-entropy over the batch's masked tokens.
    pub mlm: Tensor<B, 1>,
    /// Mean next-sentence cross-entropy over the batch's rows.
    pub nsp: Tensor<B, 1>,
}

impl<B: Backend> PretrainingLoss<B> {
    /// `mlm + nsp`.
    pub fn total(&self) -> Tensor<B, 1> {
        self.mlm.clone() + self.nsp.clone()
    }
}

impl<B: Backend> BertForPreTraining<B> {
    /// The losses of a micro-batch.
    pub fn pretraining_loss(&self, batch: &PretrainingBatch<B>) -> PretrainingLoss<B> {
        let output = self.bert.forward(batch.input.clone());
        let [rows, length, hidden] = output.sequence_output.dims();
        let masked_hidden = output
            .sequence_output
            .reshape([rows * length, hidden])
            .select(0, batch.masked_lm_index.clone());
        let mlm_logits = self.mlm.forward(
            masked_hidden,
            self.bert.word_embeddings(),
            self.bert.precision,
        );
        let pooled = output
            .pooled_output
            .expect("BertForPreTraining is built with a pooler");
        let nsp_logits = full(linear(&self.nsp, pooled, self.bert.precision));
        PretrainingLoss {
            mlm: cross_entropy(mlm_logits, batch.masked_lm_labels.clone()),
            nsp: cross_entropy(nsp_logits, batch.next_sentence_labels.clone()),
        }
    }
}
