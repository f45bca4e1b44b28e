//! The encoder's operations that have fused kernels: LayerNorm (with the residual sum), GELU and
//! multi-head attention. Each is written here in its plain form, a composition of burn
//! operations that every backend runs and that the kernels are tested against; where the backend
//! has a faster kernel (today burn's Flex CPU backend, `model::cpu`), that kernel runs instead,
//! in inference and in training alike.

use burn::module::{Module, Param};
use burn::nn::{Dropout, Initializer};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::module::attention as burn_attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Distribution, Tensor, TensorPrimitive};

use crate::model::bert::KeyMask;
use crate::model::cpu;
use crate::model::precision::{full, matmul, Precision};

/// LayerNorm over the last dimension, `gamma · (x - mean) / sqrt(var + epsilon) + beta` with the
/// biased variance, as the reference computes it.
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    /// The scale (`LayerNorm.weight` in Hugging Face checkpoints).
    pub gamma: Param<Tensor<B, 1>>,
    /// The shift (`LayerNorm.bias`).
    pub beta: Param<Tensor<B, 1>>,
    /// Added to the variance.
    pub epsilon: f64,
}

impl<B: Backend> LayerNorm<B> {
    /// A LayerNorm over `width` features: weight 1, bias 0.
    pub fn new(width: usize, epsilon: f64, device: &B::Device) -> Self {
        Self {
            gamma: Initializer::Ones.init([width], device),
            beta: Initializer::Zeros.init([width], device),
            epsilon,
        }
    }

    /// `LayerNorm(input)`.
    pub fn forward<const D: usize>(&self, input: Tensor<B, D>) -> Tensor<B, D> {
        self.normalize(input, None)
    }

    /// `LayerNorm(input + residual)`, the post-LN residual connection: one pass where a kernel
    /// does both.
    pub fn forward_residual<const D: usize>(
        &self,
        input: Tensor<B, D>,
        residual: Tensor<B, D>,
    ) -> Tensor<B, D> {
        self.normalize(input, Some(residual))
    }

    fn normalize<const D: usize>(
        &self,
        input: Tensor<B, D>,
        residual: Option<Tensor<B, D>>,
    ) -> Tensor<B, D> {
        let (gamma, beta) = (self.gamma.val(), self.beta.val());
        let input = match cpu::layer_norm(input, residual.as_ref(), &gamma, &beta, self.epsilon) {
            Ok(output) => return output,
            Err(input) => input,
        };
        let input = match residual {
            Some(residual) => input + residual,
            None => input,
        };
        Tensor::from_primitive(TensorPrimitive::Float(B::layer_norm(
            input.into_primitive().tensor(),
            gamma.into_primitive().tensor(),
            Some(beta.into_primitive().tensor()),
            self.epsilon,
        )))
    }
}

/// GELU with the exact error function, `x · Φ(x)`.
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let x = match cpu::gelu(x) {
        Ok(output) => return output,
        Err(x) => x,
    };
    if B::ad_enabled(&x.device()) {
        // burn's fused GELU computes this exactly but back-propagates the derivative of the tanh
        // approximation (~1e-4 relative error in the feed-forward gradients); composed, the
        // gradient is exact. Inference keeps the fused kernel.
        x.clone() * (x / core::f64::consts::SQRT_2).erf().add_scalar(1.0) * 0.5
    } else {
        burn::tensor::activation::gelu(x)
    }
}

/// `dropout` of `x` in training (burn's `Dropout::forward`: `x · keep / (1 - p)`), the keep mask
/// drawn from the backend's seeded generator (on Flex in float32 by `model::cpu`'s threaded
/// draw, elsewhere by burn's Bernoulli draw in `x`'s dtype, as `Dropout` does); `x` itself in
/// inference.
pub fn dropout<B: Backend, const D: usize>(dropout: &Dropout, x: Tensor<B, D>) -> Tensor<B, D> {
    let device = x.device();
    if !B::ad_enabled(&device) || dropout.prob == 0.0 {
        return x;
    }
    let keep = 1.0 - dropout.prob;
    let mask = cpu::runs_on(&x)
        .then(|| cpu::keep_mask(x.dims(), keep, &device))
        .flatten()
        .unwrap_or_else(|| x.random_like(Distribution::Bernoulli(keep)));
    x * mask * (1.0 / keep)
}

/// Multi-head scaled dot-product attention over `[B, S, H]` queries, keys and values split into
/// `heads` heads: `softmax(Q·Kᵀ / sqrt(H / heads) + mask) · V` per head, the probabilities
/// dropped out in training, the heads' contexts side by side as `[B, S, H]`, in the products'
/// precision.
pub fn attention<B: Backend>(
    query: Tensor<B, 3>,
    key: Tensor<B, 3>,
    value: Tensor<B, 3>,
    key_mask: &KeyMask<B>,
    heads: usize,
    dropout: &Dropout,
    precision: Precision,
) -> Tensor<B, 3> {
    let [batch_size, seq_len, hidden] = query.dims();
    // A keep mask drawn for the kernel, applied by the plain form too if the kernel declines.
    let mut drawn_keep = None;
    if let KeyMask::Additive(bias) = key_mask {
        if precision.half_dtype().is_none() && cpu::runs_on(&query) {
            let device = query.device();
            // Flex's float32 (`runs_on` above), so `model::cpu` draws the keep mask.
            let keep = (B::ad_enabled(&device) && dropout.prob > 0.0)
                .then(|| {
                    let shape = [batch_size, heads, seq_len, seq_len];
                    cpu::keep_mask(shape, 1.0 - dropout.prob, &device)
                })
                .flatten();
            let key_bias = bias.clone().reshape([batch_size, seq_len]);
            if let Some(context) = cpu::attention(
                [&query, &key, &value],
                &key_bias,
                heads,
                keep.as_ref().map(|keep| (keep, dropout.prob)),
            ) {
                return context;
            }
            drawn_keep = keep;
        }
    }

    let head_size = hidden / heads;
    let split_heads = |x: Tensor<B, 3>| {
        x.reshape([batch_size, seq_len, heads, head_size])
            .swap_dims(1, 2)
    };
    let (query, key, value) = (split_heads(query), split_heads(key), split_heads(value));
    let context = match key_mask {
        KeyMask::Additive(attention_bias) => {
            let scores = full(matmul(query, key.transpose(), precision))
                / (head_size as f64).sqrt()
                + attention_bias.clone();
            let probabilities = match drawn_keep {
                Some(keep) => softmax(scores, 3) * keep / (1.0 - dropout.prob),
                None => self::dropout(dropout, softmax(scores, 3)),
            };
            matmul(probabilities, value, precision)
        }
        // softmax(Q·Kᵀ / sqrt(head_size)) · V in one operation, the masked keys left out.
        KeyMask::Padded(padded_keys) => burn_attention(
            query,
            key,
            value,
            Some(padded_keys.clone()),
            None,
            AttentionModuleOptions::default(),
        ),
    };
    context
        .swap_dims(1, 2)
        .reshape([batch_size, seq_len, hidden])
}
