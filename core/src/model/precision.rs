//! Mixed precision as `torch.autocast` applies it to BERT (the reference's `--amp`): the matrix
//! products (every dense layer, `Q·Kᵀ`, `P·V`, the MLM decoder) run in half precision on tensor
//! cores, while embeddings, residual sums, LayerNorm, softmax, the losses, the gradients of the
//! parameters and the optimizer stay in float32. The weights themselves stay float32 (the master
//! copy); each product casts its operands, and the backward pass casts the gradients back, so
//! NVLAMB sees float32 gradients exactly as with apex's O2 master weights.
//!
//! burn has no autocast, so the model calls [`linear`], [`matmul`] and [`full`] where PyTorch's
//! autocast would cast. With [`Precision::Fp32`] and [`Precision::Tf32`] they are the identity.

use std::fmt;
use std::str::FromStr;

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{Element, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

use crate::model::cpu;

/// The arithmetic of the matrix products (`--precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Float32 everywhere.
    #[default]
    Fp32,
    /// Float32 storage; the backend may multiply on TF32 tensor cores (burn-cuda's matmul
    /// autotuner picks TF32 kernels for float32 operands whenever they win, so on CUDA this is
    /// also what `fp32` does).
    Tf32,
    /// Products in IEEE half precision; needs loss scaling to keep small gradients.
    Fp16,
    /// Products in bfloat16 (float32's exponent range, no loss scaling needed).
    Bf16,
}

impl Precision {
    /// Every value, in the order the CLI lists them.
    pub const ALL: [Precision; 4] = [Self::Fp32, Self::Tf32, Self::Fp16, Self::Bf16];

    /// The dtype of the matrix products, or `None` when they stay in float32.
    pub fn half_dtype(self) -> Option<FloatDType> {
        match self {
            Self::Fp32 | Self::Tf32 => None,
            Self::Fp16 => Some(FloatDType::F16),
            Self::Bf16 => Some(FloatDType::BF16),
        }
    }

    /// Whether gradients can underflow without loss scaling (float16's 5-bit exponent).
    pub fn needs_loss_scaling(self) -> bool {
        self == Self::Fp16
    }

    /// The name used on the command line and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Fp32 => "fp32",
            Self::Tf32 => "tf32",
            Self::Fp16 => "fp16",
            Self::Bf16 => "bf16",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown precision `{s}`: use fp32, tf32, fp16 or bf16"))
    }
}

/// `x` in `dtype`, unless it already is.
fn cast_to<B: Backend, const D: usize>(x: Tensor<B, D>, dtype: FloatDType) -> Tensor<B, D> {
    if FloatDType::from(x.dtype()) == dtype {
        x
    } else {
        x.cast(dtype)
    }
}

/// `x` back in the backend's full precision (float32 here), for LayerNorm, softmax, residual
/// sums and losses. The identity when `x` already is.
pub fn full<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    cast_to(x, <B::FloatElem as Element>::dtype().into())
}

/// `x · Wᵀ + b` through `layer`, in half precision when `precision` asks for it; the result then
/// stays in half precision (as under autocast) until [`full`] brings it back. The leading
/// dimensions are flattened first, so that a `[B, S, H]` input is one `[B·S, H]` product rather
/// than B of them (on the CPU, each of those would run on one thread and pack the weight again).
/// On Flex in float32 it is bert-core's kernel (`model/cpu`): product and bias in one pass.
pub fn linear<B: Backend, const D: usize>(
    layer: &Linear<B>,
    x: Tensor<B, D>,
    precision: Precision,
) -> Tensor<B, D> {
    let mut dims = x.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    let x: Tensor<B, 2> = x.reshape([rows, dims[D - 1]]);
    let y = match precision.half_dtype() {
        None => {
            let bias = layer.bias.as_ref().map(Param::val);
            cpu::linear(&x, &layer.weight.val(), bias.as_ref()).unwrap_or_else(|| layer.forward(x))
        }
        Some(half) => burn::tensor::module::linear(
            cast_to(x, half),
            cast_to(layer.weight.val(), half),
            layer.bias.as_ref().map(|bias| cast_to(bias.val(), half)),
        ),
    };
    dims[D - 1] = y.dims()[1];
    y.reshape(dims)
}

/// `a · b`, in half precision when `precision` asks for it (the result stays in half precision).
pub fn matmul<B: Backend, const D: usize>(
    a: Tensor<B, D>,
    b: Tensor<B, D>,
    precision: Precision,
) -> Tensor<B, D> {
    match precision.half_dtype() {
        None => a.matmul(b),
        Some(half) => cast_to(a, half).matmul(cast_to(b, half)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for precision in Precision::ALL {
            assert_eq!(precision.name().parse::<Precision>(), Ok(precision));
        }
        let error = "fp8".parse::<Precision>().unwrap_err();
        assert!(error.contains("fp8") && error.contains("bf16"), "{error}");
        assert!(Precision::Fp16.needs_loss_scaling());
        assert!(!Precision::Bf16.needs_loss_scaling());
        assert_eq!(Precision::Tf32.half_dtype(), None);
    }
}
