//! Task heads on top of [`BertModel`]: pretraining (MLM + NSP), question answering, sequence
//! classification, and [`BertWithHeads`], which carries whichever heads a checkpoint holds.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::config::{BertConfig, HiddenAct};
use crate::model::bert::{activation, dense, layer_norm, BertModel};
use crate::model::ops::{dropout, LayerNorm};
use crate::model::precision::{full, linear, matmul, Precision};
use crate::model::BertInput;

/// The masked-LM head: `LayerNorm(act(W h))` projected onto the (tied) word embeddings plus a bias.
#[derive(Module, Debug)]
pub struct MaskedLmHead<B: Backend> {
    /// The transform's dense layer (`cls.predictions.transform.dense`).
    pub transform: Linear<B>,
    /// The transform's LayerNorm (`cls.predictions.transform.LayerNorm`).
    pub transform_layer_norm: LayerNorm<B>,
    /// The decoder's own bias over the vocabulary (`cls.predictions.bias`).
    pub bias: Param<Tensor<B, 1>>,
    /// The transform's non-linearity.
    pub hidden_act: HiddenAct,
}

impl<B: Backend> MaskedLmHead<B> {
    /// A zero-bias head initialised as NVIDIA does.
    pub fn new(config: &BertConfig, device: &B::Device) -> Self {
        Self {
            transform: dense(config, config.hidden_size, config.hidden_size, device),
            transform_layer_norm: layer_norm(config, device),
            bias: Param::from_tensor(Tensor::zeros([config.vocab_size], device)),
            hidden_act: config.hidden_act,
        }
    }

    /// `hidden_states` `[N, H]` and the word embeddings `[V, H]` to float32 logits `[N, V]`.
    pub fn forward(
        &self,
        hidden_states: Tensor<B, 2>,
        word_embeddings: Tensor<B, 2>,
        precision: Precision,
    ) -> Tensor<B, 2> {
        let transformed = self.transform_layer_norm.forward(full(activation(
            self.hidden_act,
            linear(&self.transform, hidden_states, precision),
        )));
        full(matmul(transformed, word_embeddings.transpose(), precision))
            + self.bias.val().unsqueeze()
    }

    /// The same over every position: `[B, S, H]` to `[B, S, V]`.
    pub fn forward_sequence(
        &self,
        sequence_output: Tensor<B, 3>,
        word_embeddings: Tensor<B, 2>,
        precision: Precision,
    ) -> Tensor<B, 3> {
        let [batch_size, seq_len, hidden] = sequence_output.dims();
        let logits = self.forward(
            sequence_output.reshape([batch_size * seq_len, hidden]),
            word_embeddings,
            precision,
        );
        let vocab_size = logits.dims()[1];
        logits.reshape([batch_size, seq_len, vocab_size])
    }
}

/// Splits `[B, S, 2]` span logits into start and end logits, each `[B, S]`.
pub fn split_span_logits<B: Backend>(logits: Tensor<B, 3>) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let [batch_size, seq_len, _] = logits.dims();
    let start = logits
        .clone()
        .narrow(2, 0, 1)
        .reshape([batch_size, seq_len]);
    let end = logits.narrow(2, 1, 1).reshape([batch_size, seq_len]);
    (start, end)
}

fn pooled<B: Backend>(pooled_output: Option<Tensor<B, 2>>) -> Tensor<B, 2> {
    pooled_output.expect("models with a sentence-level head are always built with a pooler")
}

/// `BertForPreTraining`: masked-LM and next-sentence-prediction heads.
#[derive(Module, Debug)]
pub struct BertForPreTraining<B: Backend> {
    /// The encoder, with its pooler.
    pub bert: BertModel<B>,
    /// Masked-LM head (`cls.predictions`).
    pub mlm: MaskedLmHead<B>,
    /// Next-sentence head (`cls.seq_relationship`), `[H] -> [2]`; label 1 means "random next".
    pub nsp: Linear<B>,
}

impl<B: Backend> BertForPreTraining<B> {
    /// A freshly initialised pretraining model.
    pub fn new(config: &BertConfig, device: &B::Device) -> Self {
        Self {
            bert: BertModel::new(config, true, device),
            mlm: MaskedLmHead::new(config, device),
            nsp: dense(config, config.hidden_size, 2, device),
        }
    }

    /// MLM logits at every position `[B, S, V]` and NSP logits `[B, 2]`.
    pub fn forward(&self, input: BertInput<B>) -> (Tensor<B, 3>, Tensor<B, 2>) {
        let precision = self.bert.precision;
        let output = self.bert.forward(input);
        let mlm_logits = self.mlm.forward_sequence(
            output.sequence_output,
            self.bert.word_embeddings(),
            precision,
        );
        let nsp_logits = full(linear(&self.nsp, pooled(output.pooled_output), precision));
        (mlm_logits, nsp_logits)
    }
}

/// `BertForQuestionAnswering`: start and end logits of the answer span.
#[derive(Module, Debug)]
pub struct BertForQuestionAnswering<B: Backend> {
    /// The encoder (no pooler: span prediction reads every position).
    pub bert: BertModel<B>,
    /// `[H] -> [2]` per position: start and end logits.
    pub qa_outputs: Linear<B>,
}

impl<B: Backend> BertForQuestionAnswering<B> {
    /// A freshly initialised question-answering model.
    pub fn new(config: &BertConfig, device: &B::Device) -> Self {
        Self {
            bert: BertModel::new(config, false, device),
            qa_outputs: dense(config, config.hidden_size, 2, device),
        }
    }

    /// Start and end logits, each `[B, S]`.
    pub fn forward(&self, input: BertInput<B>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let precision = self.bert.precision;
        let output = self.bert.forward(input);
        split_span_logits(full(linear(
            &self.qa_outputs,
            output.sequence_output,
            precision,
        )))
    }
}

/// `BertForSequenceClassification`: a linear classifier on the pooled output.
#[derive(Module, Debug)]
pub struct BertForSequenceClassification<B: Backend> {
    /// The encoder, with its pooler.
    pub bert: BertModel<B>,
    /// Dropout on the pooled output (training only).
    pub dropout: Dropout,
    /// `[H] -> [num_labels]`.
    pub classifier: Linear<B>,
}

impl<B: Backend> BertForSequenceClassification<B> {
    /// A freshly initialised classifier over `num_labels` classes.
    pub fn new(config: &BertConfig, num_labels: usize, device: &B::Device) -> Self {
        Self {
            bert: BertModel::new(config, true, device),
            dropout: DropoutConfig::new(config.hidden_dropout_prob).init(),
            classifier: dense(config, config.hidden_size, num_labels, device),
        }
    }

    /// Class logits `[B, num_labels]`.
    pub fn forward(&self, input: BertInput<B>) -> Tensor<B, 2> {
        let precision = self.bert.precision;
        let output = self.bert.forward(input);
        let pooled_output = dropout(&self.dropout, pooled(output.pooled_output));
        full(linear(&self.classifier, pooled_output, precision))
    }
}

/// Which heads a model carries; [`crate::checkpoint::Checkpoint::heads`] reads it off a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Heads {
    /// The pooler (`bert.pooler.dense`).
    pub pooler: bool,
    /// Masked-LM head (`cls.predictions`).
    pub mlm: bool,
    /// Next-sentence head (`cls.seq_relationship`).
    pub nsp: bool,
    /// Span head (`qa_outputs`).
    pub qa: bool,
    /// Number of classes of a sequence classifier (`classifier`), if any.
    pub classifier_labels: Option<usize>,
}

/// BERT with any subset of the heads, for tools that run whatever a checkpoint holds
/// (`bert-native encode`, `info`).
#[derive(Module, Debug)]
pub struct BertWithHeads<B: Backend> {
    /// The encoder.
    pub bert: BertModel<B>,
    /// Masked-LM head.
    pub mlm: Option<MaskedLmHead<B>>,
    /// Next-sentence head.
    pub nsp: Option<Linear<B>>,
    /// Span head.
    pub qa_outputs: Option<Linear<B>>,
    /// Sequence classifier.
    pub classifier: Option<Linear<B>>,
}

/// Everything [`BertWithHeads::forward`] computes; heads that are absent give `None`.
#[derive(Debug, Clone)]
pub struct HeadOutputs<B: Backend> {
    /// `[B, S, H]`.
    pub last_hidden_state: Tensor<B, 3>,
    /// `[B, H]`.
    pub pooler_output: Option<Tensor<B, 2>>,
    /// `[B, S, V]`.
    pub mlm_logits: Option<Tensor<B, 3>>,
    /// `[B, 2]`.
    pub nsp_logits: Option<Tensor<B, 2>>,
    /// `[B, S]`.
    pub start_logits: Option<Tensor<B, 2>>,
    /// `[B, S]`.
    pub end_logits: Option<Tensor<B, 2>>,
    /// `[B, num_labels]`.
    pub classifier_logits: Option<Tensor<B, 2>>,
}

impl<B: Backend> BertWithHeads<B> {
    /// A freshly initialised model with the given heads. Sentence-level heads imply a pooler.
    pub fn new(config: &BertConfig, heads: Heads, device: &B::Device) -> Self {
        let with_pooler = heads.pooler || heads.nsp || heads.classifier_labels.is_some();
        Self {
            bert: BertModel::new(config, with_pooler, device),
            mlm: heads.mlm.then(|| MaskedLmHead::new(config, device)),
            nsp: heads
                .nsp
                .then(|| dense(config, config.hidden_size, 2, device)),
            qa_outputs: heads
                .qa
                .then(|| dense(config, config.hidden_size, 2, device)),
            classifier: heads
                .classifier_labels
                .map(|labels| dense(config, config.hidden_size, labels, device)),
        }
    }

    /// The heads this model carries.
    pub fn heads(&self) -> Heads {
        Heads {
            pooler: self.bert.pooler.is_some(),
            mlm: self.mlm.is_some(),
            nsp: self.nsp.is_some(),
            qa: self.qa_outputs.is_some(),
            classifier_labels: self.classifier.as_ref().map(|c| c.weight.dims()[1]),
        }
    }

    /// Runs the encoder and every head present.
    pub fn forward(&self, input: BertInput<B>) -> HeadOutputs<B> {
        let precision = self.bert.precision;
        let output = self.bert.forward(input);
        let sequence_output = output.sequence_output;
        let pooled_output = output.pooled_output;
        let (start_logits, end_logits) = match &self.qa_outputs {
            Some(qa_outputs) => {
                let (start, end) =
                    split_span_logits(full(linear(qa_outputs, sequence_output.clone(), precision)));
                (Some(start), Some(end))
            }
            None => (None, None),
        };
        HeadOutputs {
            mlm_logits: self.mlm.as_ref().map(|mlm| {
                mlm.forward_sequence(
                    sequence_output.clone(),
                    self.bert.word_embeddings(),
                    precision,
                )
            }),
            nsp_logits: self
                .nsp
                .as_ref()
                .map(|nsp| full(linear(nsp, pooled(pooled_output.clone()), precision))),
            classifier_logits: self.classifier.as_ref().map(|classifier| {
                full(linear(classifier, pooled(pooled_output.clone()), precision))
            }),
            start_logits,
            end_logits,
            last_hidden_state: sequence_output,
            pooler_output: pooled_output,
        }
    }
}

#[cfg(all(test, feature = "ndarray"))]
mod tests {
    use super::*;
    use crate::model::TokenBatch;
    use burn::backend::{Autodiff, NdArray};

    fn tiny_config() -> BertConfig {
        BertConfig {
            vocab_size: 50,
            hidden_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 128,
            max_position_embeddings: 16,
            ..BertConfig::base()
        }
    }

    fn values<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Vec<f32> {
        tensor.into_data().to_vec().unwrap()
    }

    fn batch() -> TokenBatch {
        TokenBatch {
            input_ids: vec![vec![2, 7, 9, 11, 3], vec![2, 5, 3, 0, 0]],
            token_type_ids: Some(vec![vec![0, 0, 0, 1, 1], vec![0, 0, 0, 0, 0]]),
            attention_mask: Some(vec![vec![1, 1, 1, 1, 1], vec![1, 1, 1, 0, 0]]),
        }
    }

    #[test]
    fn initialisation_is_nvidias() {
        let model = BertForPreTraining::<NdArray>::new(&tiny_config(), &Default::default());
        let weights = values(model.bert.encoder.layers[0].intermediate.weight.val());
        let n = weights.len() as f32;
        let mean = weights.iter().sum::<f32>() / n;
        let std = (weights.iter().map(|w| (w - mean).powi(2)).sum::<f32>() / n).sqrt();
        assert!(mean.abs() < 0.002, "mean {mean}");
        assert!((std - 0.02).abs() < 0.001, "std {std}");
        let embeddings = values(model.bert.embeddings.word_embeddings.weight.val());
        let std = (embeddings.iter().map(|w| w * w).sum::<f32>() / embeddings.len() as f32).sqrt();
        assert!((std - 0.02).abs() < 0.002, "embedding std {std}");
        let layer = &model.bert.encoder.layers[1];
        for bias in [
            &layer.attention.query.bias,
            &layer.output.bias,
            &model.nsp.bias,
        ] {
            assert!(values(bias.as_ref().unwrap().val())
                .iter()
                .all(|&b| b == 0.0));
        }
        assert!(values(model.mlm.bias.val()).iter().all(|&b| b == 0.0));
        assert!(values(layer.output_layer_norm.gamma.val())
            .iter()
            .all(|&g| g == 1.0));
        let beta = layer.output_layer_norm.beta.val();
        assert!(values(beta).iter().all(|&b| b == 0.0));
    }

    #[test]
    fn dropout_acts_in_training_only() {
        let config = tiny_config();
        let device = Default::default();
        let eval = BertForQuestionAnswering::<NdArray>::new(&config, &device);
        let input = batch().to_input::<NdArray>(&config, &device).unwrap();
        let (a, _) = eval.forward(input.clone());
        let (b, _) = eval.forward(input);
        assert_eq!(values(a), values(b), "inference must be deterministic");

        let train = BertForQuestionAnswering::<Autodiff<NdArray>>::new(&config, &device);
        let input = batch()
            .to_input::<Autodiff<NdArray>>(&config, &device)
            .unwrap();
        let (a, _) = train.forward(input.clone());
        let (b, _) = train.forward(input);
        assert_ne!(values(a), values(b), "training applies dropout");
    }

    #[test]
    fn the_decoder_is_tied_to_the_word_embeddings() {
        let config = tiny_config();
        let device = Default::default();
        let mut model = BertForPreTraining::<NdArray>::new(&config, &device);
        let input = batch().to_input::<NdArray>(&config, &device).unwrap();
        let (before, _) = model.forward(input.clone());
        let embeddings = model.bert.embeddings.word_embeddings.weight.val();
        model.bert.embeddings.word_embeddings.weight =
            burn::module::Param::from_tensor(embeddings.mul_scalar(2.0));
        let (after, _) = model.forward(input);
        assert_eq!(before.dims(), [2, 5, config.vocab_size]);
        assert_ne!(
            values(before),
            values(after),
            "MLM logits follow the word embeddings"
        );
    }

    #[test]
    fn padding_does_not_change_real_positions() {
        // Row 1 padded to 5 must equal the same row alone at length 3 (mask semantics).
        let config = tiny_config();
        let device = Default::default();
        let model = BertModel::<NdArray>::new(&config, true, &device);
        let padded = model.forward(batch().to_input::<NdArray>(&config, &device).unwrap());
        let alone = TokenBatch {
            input_ids: vec![vec![2, 5, 3]],
            token_type_ids: None,
            attention_mask: None,
        };
        let alone = model.forward(alone.to_input::<NdArray>(&config, &device).unwrap());
        let padded_row = values(padded.sequence_output.narrow(0, 1, 1).narrow(1, 0, 3));
        let alone_row = values(alone.sequence_output);
        for (p, a) in padded_row.iter().zip(&alone_row) {
            assert!((p - a).abs() < 1e-5, "{p} vs {a}");
        }
    }
}
