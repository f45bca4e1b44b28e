//! The BERT encoder (Devlin et al., 2018), as NVIDIA's `modeling.py` computes it.
//!
//! ```text
//! embeddings = LayerNorm(word[input_ids] + position[0..S] + token_type[token_type_ids])
//! for each layer:
//!     h = LayerNorm(h + Dropout(SelfAttention(h, mask)))        // post-LN
//!     h = LayerNorm(h + Dropout(W2 · act(W1 · h)))
//! pooled = tanh(W_p · h[:, 0])
//! ```
//! The attention mask is additive, `(1 - mask) * -10000` on the keys, so a row whose mask is all
//! zero attends uniformly, exactly as the reference does. Inference may take burn's fused
//! `attention` operation instead (see [`AttentionKernel`]).
//!
//! Under mixed precision the products (`linear`, `matmul`) run in half precision and `full`
//! brings their results back to float32 before softmax, residual sums and LayerNorm, where
//! `torch.autocast` would (see [`super::precision`]).

use std::fmt;
use std::str::FromStr;

use burn::module::{Module, Param};
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig,
};
use burn::tensor::activation::{gelu_approximate, relu, tanh};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor};

use crate::config::{BertConfig, HiddenAct};
use crate::model::cpu;
use crate::model::ops::{self, attention, dropout, LayerNorm};
use crate::model::precision::{full, linear, Precision};
use crate::model::BertInput;

/// The additive mask value of the reference: masked keys get `-10000` before the softmax.
const MASKED_SCORE: f32 = -10_000.0;

/// Token, position and segment embeddings, summed and normalised.
#[derive(Module, Debug)]
pub struct BertEmbeddings<B: Backend> {
    /// One row per vocabulary entry; also the (tied) MLM decoder.
    pub word_embeddings: Embedding<B>,
    /// One row per absolute position.
    pub position_embeddings: Embedding<B>,
    /// One row per segment (sentence A / B).
    pub token_type_embeddings: Embedding<B>,
    /// LayerNorm over the sum.
    pub layer_norm: LayerNorm<B>,
    /// Dropout after the LayerNorm.
    pub dropout: Dropout,
}

impl<B: Backend> BertEmbeddings<B> {
    fn new(config: &BertConfig, device: &B::Device) -> Self {
        let embedding = |rows| {
            EmbeddingConfig::new(rows, config.hidden_size)
                .with_initializer(normal_init(config))
                .init(device)
        };
        Self {
            word_embeddings: embedding(config.vocab_size),
            position_embeddings: embedding(config.max_position_embeddings),
            token_type_embeddings: embedding(config.type_vocab_size),
            layer_norm: layer_norm(config, device),
            dropout: DropoutConfig::new(config.hidden_dropout_prob).init(),
        }
    }

    /// `[B, S]` ids to `[B, S, H]` embeddings.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        token_type_ids: Tensor<B, 2, Int>,
    ) -> Tensor<B, 3> {
        let [batch_size, seq_len] = input_ids.dims();
        let position_ids = Tensor::<B, 1, Int>::arange(0..seq_len as i64, &input_ids.device())
            .unsqueeze::<2>()
            .expand([batch_size, seq_len]);
        let embeddings = self.word_embeddings.forward(input_ids)
            + self.position_embeddings.forward(position_ids)
            + self.token_type_embeddings.forward(token_type_ids);
        dropout(&self.dropout, self.layer_norm.forward(embeddings))
    }
}

/// Multi-head scaled dot-product self-attention with its output projection.
#[derive(Module, Debug)]
pub struct BertSelfAttention<B: Backend> {
    /// Query projection.
    pub query: Linear<B>,
    /// Key projection.
    pub key: Linear<B>,
    /// Value projection.
    pub value: Linear<B>,
    /// Projection of the concatenated heads back to the hidden size.
    pub output: Linear<B>,
    /// Dropout on the attention probabilities.
    pub attention_dropout: Dropout,
    /// Number of heads.
    pub num_attention_heads: usize,
}

impl<B: Backend> BertSelfAttention<B> {
    fn new(config: &BertConfig, device: &B::Device) -> Self {
        let hidden = config.hidden_size;
        Self {
            query: dense(config, hidden, hidden, device),
            key: dense(config, hidden, hidden, device),
            value: dense(config, hidden, hidden, device),
            output: dense(config, hidden, hidden, device),
            attention_dropout: DropoutConfig::new(config.attention_probs_dropout_prob).init(),
            num_attention_heads: config.num_attention_heads,
        }
    }

    /// `hidden_states` `[B, S, H]`, the keys each query may attend to; the result is in the
    /// products' precision.
    pub fn forward(
        &self,
        hidden_states: Tensor<B, 3>,
        key_mask: &KeyMask<B>,
        precision: Precision,
    ) -> Tensor<B, 3> {
        let query = linear(&self.query, hidden_states.clone(), precision);
        let key = linear(&self.key, hidden_states.clone(), precision);
        let value = linear(&self.value, hidden_states, precision);
        let context = attention(
            query,
            key,
            value,
            key_mask,
            self.num_attention_heads,
            &self.attention_dropout,
            precision,
        );
        linear(&self.output, context, precision)
    }
}

/// One post-LN transformer layer: attention block, then feed-forward block.
#[derive(Module, Debug)]
pub struct BertLayer<B: Backend> {
    /// Self-attention including its output projection.
    pub attention: BertSelfAttention<B>,
    /// LayerNorm after the attention residual.
    pub attention_layer_norm: LayerNorm<B>,
    /// First feed-forward projection, hidden -> intermediate.
    pub intermediate: Linear<B>,
    /// Second feed-forward projection, intermediate -> hidden.
    pub output: Linear<B>,
    /// LayerNorm after the feed-forward residual.
    pub output_layer_norm: LayerNorm<B>,
    /// Dropout on both residual branches.
    pub dropout: Dropout,
    /// Feed-forward non-linearity.
    pub hidden_act: HiddenAct,
}

impl<B: Backend> BertLayer<B> {
    fn new(config: &BertConfig, device: &B::Device) -> Self {
        Self {
            attention: BertSelfAttention::new(config, device),
            attention_layer_norm: layer_norm(config, device),
            intermediate: dense(config, config.hidden_size, config.intermediate_size, device),
            output: dense(config, config.intermediate_size, config.hidden_size, device),
            output_layer_norm: layer_norm(config, device),
            dropout: DropoutConfig::new(config.hidden_dropout_prob).init(),
            hidden_act: config.hidden_act,
        }
    }

    /// `[B, S, H]` -> `[B, S, H]`, float32 in and out.
    pub fn forward(
        &self,
        hidden_states: Tensor<B, 3>,
        key_mask: &KeyMask<B>,
        precision: Precision,
    ) -> Tensor<B, 3> {
        let attention_output = self
            .attention
            .forward(hidden_states.clone(), key_mask, precision);
        let hidden_states = self.attention_layer_norm.forward_residual(
            dropout(&self.dropout, full(attention_output)),
            hidden_states,
        );

        let intermediate = activation(
            self.hidden_act,
            linear(&self.intermediate, hidden_states.clone(), precision),
        );
        let feed_forward_output = full(linear(&self.output, intermediate, precision));
        self.output_layer_norm
            .forward_residual(dropout(&self.dropout, feed_forward_output), hidden_states)
    }
}

/// The stack of encoder layers.
#[derive(Module, Debug)]
pub struct BertEncoder<B: Backend> {
    /// `num_hidden_layers` identical layers.
    pub layers: Vec<BertLayer<B>>,
}

/// `tanh(W · h[CLS] + b)`: the sentence representation the NSP and classification heads read.
#[derive(Module, Debug)]
pub struct BertPooler<B: Backend> {
    /// The pooler projection.
    pub dense: Linear<B>,
}

impl<B: Backend> BertPooler<B> {
    /// `[B, S, H]` -> `[B, H]` from the first (`[CLS]`) position.
    pub fn forward(&self, sequence_output: Tensor<B, 3>, precision: Precision) -> Tensor<B, 2> {
        let [batch_size, _, hidden] = sequence_output.dims();
        let first_token = sequence_output
            .narrow(1, 0, 1)
            .reshape([batch_size, hidden]);
        tanh(full(linear(&self.dense, first_token, precision)))
    }
}

/// What the encoder computes for a batch.
#[derive(Debug, Clone)]
pub struct BertOutput<B: Backend> {
    /// `[B, S, H]`, the last layer's hidden states.
    pub sequence_output: Tensor<B, 3>,
    /// `[B, H]`, present when the model has a pooler.
    pub pooled_output: Option<Tensor<B, 2>>,
}

/// Embeddings, encoder and (optional) pooler: Hugging Face's `BertModel`.
#[derive(Module, Debug)]
pub struct BertModel<B: Backend> {
    /// Input embeddings.
    pub embeddings: BertEmbeddings<B>,
    /// Transformer layers.
    pub encoder: BertEncoder<B>,
    /// Absent in checkpoints saved without one (e.g. Hugging Face question-answering models).
    pub pooler: Option<BertPooler<B>>,
    /// The arithmetic of the matrix products, here and in the heads; float32 unless set.
    pub precision: Precision,
    /// How inference computes attention; [`AttentionKernel::Explicit`] unless set.
    pub attention_kernel: AttentionKernel,
}

impl<B: Backend> BertModel<B> {
    /// A freshly initialised model as NVIDIA initialises it: N(0, `initializer_range`) weights,
    /// zero biases, LayerNorm weight 1 and bias 0.
    pub fn new(config: &BertConfig, with_pooler: bool, device: &B::Device) -> Self {
        Self {
            embeddings: BertEmbeddings::new(config, device),
            encoder: BertEncoder {
                layers: (0..config.num_hidden_layers)
                    .map(|_| BertLayer::new(config, device))
                    .collect(),
            },
            pooler: with_pooler.then(|| BertPooler {
                dense: dense(config, config.hidden_size, config.hidden_size, device),
            }),
            precision: Precision::Fp32,
            attention_kernel: AttentionKernel::Explicit,
        }
    }

    /// Runs the encoder (and pooler when present).
    pub fn forward(&self, input: BertInput<B>) -> BertOutput<B> {
        let (output, _) = self.run(input, false);
        output
    }

    /// Like [`forward`](Self::forward), also returning the embedding output followed by every
    /// layer's output (`num_hidden_layers + 1` tensors), as `output_hidden_states` does upstream.
    pub fn forward_with_hidden_states(
        &self,
        input: BertInput<B>,
    ) -> (BertOutput<B>, Vec<Tensor<B, 3>>) {
        self.run(input, true)
    }

    /// [`Self::encode`], on the CPU backend's threads (see `cpu::on_pool`).
    fn run(
        &self,
        input: BertInput<B>,
        keep_hidden_states: bool,
    ) -> (BertOutput<B>, Vec<Tensor<B, 3>>) {
        cpu::on_pool::<B, _>(|| self.encode(input, keep_hidden_states))
    }

    /// Embeddings, the layers, the pooler; with every layer's input when `keep_hidden_states`.
    fn encode(
        &self,
        input: BertInput<B>,
        keep_hidden_states: bool,
    ) -> (BertOutput<B>, Vec<Tensor<B, 3>>) {
        let fused = self.attention_kernel == AttentionKernel::Fused
            && !B::ad_enabled(&input.attention_mask.device());
        let key_mask = match self.encoder.layers.first() {
            Some(layer) if fused => {
                KeyMask::padded(input.attention_mask, layer.attention.num_attention_heads)
            }
            _ => KeyMask::additive(input.attention_mask),
        };
        let mut hidden_states = self
            .embeddings
            .forward(input.input_ids, input.token_type_ids);
        let mut all_hidden_states = Vec::new();
        for layer in &self.encoder.layers {
            if keep_hidden_states {
                all_hidden_states.push(hidden_states.clone());
            }
            hidden_states = layer.forward(hidden_states, &key_mask, self.precision);
        }
        if keep_hidden_states {
            all_hidden_states.push(hidden_states.clone());
        }
        let pooled_output = self
            .pooler
            .as_ref()
            .map(|pooler| pooler.forward(hidden_states.clone(), self.precision));
        let output = BertOutput {
            sequence_output: hidden_states,
            pooled_output,
        };
        (output, all_hidden_states)
    }

    /// The word-embedding matrix `[V, H]`, which the MLM decoder shares.
    pub fn word_embeddings(&self) -> Tensor<B, 2> {
        self.embeddings.word_embeddings.weight.val()
    }
}

/// How inference computes attention. Training always takes the explicit form: burn's fused
/// operation has no dropout, and under autodiff burn composes it from the same operations anyway.
///
/// The explicit form is the default because it is the faster one wherever it has been measured:
/// on Flex it is bert-core's own fused CPU kernel (`model/cpu`); on ndarray and on wgpu over
/// lavapipe burn's fused operation runs its own composition of the same steps, 2% and 9% slower
/// on a BERT-base SQuAD pass (docs/benchmarks.md). The fused form is there for the GPUs, where
/// burn's autotuner may pick flash attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionKernel {
    /// burn's `attention` operation, padded keys left out and an all-zero mask masking nothing
    /// (the same probabilities as the additive mask: `exp(-10000)` is 0 in float32). On the
    /// CubeCL backends burn autotunes it between flash attention, which never writes the
    /// `[B, heads, S, S]` scores out, and separate kernels; under mixed precision it runs in the
    /// products' half precision (the flash kernels accumulate in float32).
    Fused,
    /// `softmax(Q·Kᵀ / sqrt(d) + bias) · V` as separate products and a float32 softmax, as in
    /// training.
    #[default]
    Explicit,
}

impl AttentionKernel {
    /// The name used on the command line and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Fused => "fused",
            Self::Explicit => "explicit",
        }
    }
}

impl fmt::Display for AttentionKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for AttentionKernel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [Self::Fused, Self::Explicit]
            .into_iter()
            .find(|kernel| kernel.name() == s)
            .ok_or_else(|| format!("unknown attention kernel `{s}`: use fused or explicit"))
    }
}

/// Which keys each query may attend to, in the form the attention computation takes.
#[derive(Debug, Clone)]
pub enum KeyMask<B: Backend> {
    /// `[B, 1, 1, S]`, 0 or -10000 per key, added to the scores (the explicit form).
    Additive(Tensor<B, 4>),
    /// `[B, heads, S, S]`, true for a key left out (the fused form).
    Padded(Tensor<B, 4, Bool>),
}

impl<B: Backend> KeyMask<B> {
    /// The `[B, S]` 0/1 `attention_mask` as the additive bias `(1 - mask) * -10000`.
    pub fn additive(attention_mask: Tensor<B, 2, Int>) -> Self {
        let [batch_size, seq_len] = attention_mask.dims();
        let masked = attention_mask.float().neg().add_scalar(1.0);
        Self::Additive((masked * MASKED_SCORE).reshape([batch_size, 1, 1, seq_len]))
    }

    /// The `[B, S]` 0/1 `attention_mask` as the keys each of `heads` heads leaves out: the
    /// padding, except in a row with no token at all, which attends to every key as the additive
    /// mask makes it do. Written out in full, once per forward pass: burn 0.21's flash kernel
    /// reads its mask as a contiguous `[B, heads, S, S]` tensor, so a broadcast view of a
    /// `[B, 1, 1, S]` mask would be misread (tests/tests/suite/flash_attention_wgpu.rs).
    pub fn padded(attention_mask: Tensor<B, 2, Int>, heads: usize) -> Self {
        let [batch_size, seq_len] = attention_mask.dims();
        let no_tokens = attention_mask.clone().sum_dim(1).equal_elem(0).int();
        let kept = (attention_mask + no_tokens).reshape([batch_size, 1, 1, seq_len]);
        // One element-wise comparison over the broadcast view writes a new, contiguous tensor.
        Self::Padded(
            kept.expand([batch_size, heads, seq_len, seq_len])
                .equal_elem(0),
        )
    }
}

/// Applies `hidden_act` element-wise.
pub fn activation<B: Backend, const D: usize>(
    hidden_act: HiddenAct,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    match hidden_act {
        HiddenAct::Gelu => ops::gelu(x),
        HiddenAct::GeluTanh => gelu_approximate(x),
        HiddenAct::Relu => relu(x),
    }
}

/// N(0, `initializer_range`), NVIDIA's initialisation of every weight matrix.
pub(crate) fn normal_init(config: &BertConfig) -> Initializer {
    Initializer::Normal {
        mean: 0.0,
        std: config.initializer_range,
    }
}

/// A linear layer with N(0, `initializer_range`) weights and a zero bias.
pub(crate) fn dense<B: Backend>(
    config: &BertConfig,
    d_input: usize,
    d_output: usize,
    device: &B::Device,
) -> Linear<B> {
    let mut linear = LinearConfig::new(d_input, d_output)
        .with_initializer(normal_init(config))
        .init(device);
    linear.bias = Some(Param::from_tensor(Tensor::zeros([d_output], device)));
    linear
}

/// A LayerNorm over the hidden size with the configuration's epsilon (weight 1, bias 0).
pub(crate) fn layer_norm<B: Backend>(config: &BertConfig, device: &B::Device) -> LayerNorm<B> {
    LayerNorm::new(config.hidden_size, config.layer_norm_eps, device)
}
