//! NVLAMB as the recipe runs it (apex `FusedLAMB`), and the Adam variant of the fine-tuning
//! scripts, over named parameters.
//!
//! One step `t` (the same counter for every parameter):
//! ```text
//! G  = sqrt(sum over ALL gradients of sum(g^2))          one global norm, not per tensor
//! g' = g / max(1, G / max_grad_norm)                      clip before the moments
//! m  = b1 m + (1 - b1) g'        v = b2 v + (1 - b2) g'^2
//! u  = m_hat / (sqrt(v_hat) + eps) + wd w                 bias-corrected with t; decoupled decay
//! w  = w - lr * r * u      r = ||w|| / ||u|| (1 if either is 0) where the trust ratio applies
//! ```
//! Weight decay is 0 for parameters whose name contains `bias`, `gamma`, `beta` or `LayerNorm`.
//! Everything stays on the device: the clip divisor and trust ratios are tensors, so a step costs
//! no host round-trip. Norms are summed blockwise (see `sum_of_squares`) to stay as accurate as
//! apex's multi-tensor L2 norm.
//!
//! On the GPU backends (burn-wgpu, burn-cuda) the step runs as bert-shaders' fused kernels over
//! all parameters at once, as apex's multi-tensor kernels do (`lamb/fused.rs`): about a hundred
//! launches for all of BERT-large's 398 tensors instead of eight per tensor. On the CPU (burn's
//! Flex backend) it runs as two threaded passes over each parameter (`lamb/cpu.rs`), with the
//! moments updated in place. Elsewhere, and when [`Lamb::set_fused_kernels`] turns them off, it
//! runs as the tensor operations below, which both are tested against.

use std::collections::BTreeMap;

use bert_shaders::lamb::LambCoefficients;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// Where the per-tensor trust ratio `||w|| / ||u||` is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrustRatio {
    /// Nowhere: an AdamW step (the fine-tuning scripts' optimizer).
    Never,
    /// On tensors with non-zero weight decay only (apex FusedLAMB, `use_nvlamb=False`).
    DecayedOnly,
    /// On every tensor (`--use-nvlamb`).
    Always,
}

/// Hyper-parameters; the defaults are the recipe's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LambConfig {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to `sqrt(v_hat)`.
    pub eps: f64,
    /// Decoupled weight decay for parameters that decay.
    pub weight_decay: f64,
    /// Global gradient-norm clip; 0 disables clipping.
    pub max_grad_norm: f64,
    /// Divide the moments by `1 - beta^t`.
    pub bias_correction: bool,
    /// Where the trust ratio applies.
    pub trust_ratio: TrustRatio,
}

impl Default for LambConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-6,
            weight_decay: 0.01,
            max_grad_norm: 1.0,
            bias_correction: true,
            trust_ratio: TrustRatio::DecayedOnly,
        }
    }
}

impl LambConfig {
    /// The fine-tuning optimizer of `run_squad.py`/`run_glue.py`: Adam with decoupled weight
    /// decay, no bias correction, no trust ratio, global clipping at 1.
    pub fn fine_tuning_adam() -> Self {
        Self {
            bias_correction: false,
            trust_ratio: TrustRatio::Never,
            ..Self::default()
        }
    }
}

mod cpu;
mod fused;

/// Substrings of parameter names that take no weight decay (`run_pretraining.py`'s `no_decay`).
const NO_DECAY: [&str; 4] = ["bias", "gamma", "beta", "LayerNorm"];

/// The two moments of one parameter, flattened.
#[derive(Debug, Clone)]
pub struct Moments<B: Backend> {
    /// First moment `m`.
    pub exp_avg: Tensor<B, 1>,
    /// Second moment `v`.
    pub exp_avg_sq: Tensor<B, 1>,
}

/// One parameter handed to [`Lamb::step`]: its name, value and gradient, flattened.
#[derive(Debug, Clone)]
pub struct NamedParam<B: Backend> {
    /// Name used for the no-decay rule and for the optimizer state.
    pub name: String,
    /// Current value.
    pub value: Tensor<B, 1>,
    /// Gradient (unclipped).
    pub grad: Tensor<B, 1>,
}

/// The optimizer: configuration, step counter and moments by parameter name.
#[derive(Debug, Clone)]
pub struct Lamb<B: Backend> {
    config: LambConfig,
    step: u64,
    moments: BTreeMap<String, Moments<B>>,
    fused_kernels: bool,
    /// The moments as the fused kernels last left them, in their flat buffers; while set, they
    /// are the moments and `moments` is empty.
    flat_moments: Option<fused::FlatMoments<B>>,
}

/// The squared global gradient norm, `[1]`, and — where the fused kernels computed it — the
/// gradients laid end to end, which the step then reuses.
#[derive(Debug, Clone)]
pub struct SquaredGradNorm<B: Backend> {
    /// `sum over all gradients of sum(g^2)`: inf or NaN exactly when some gradient is.
    pub squared: Tensor<B, 1>,
    flat_grads: Option<Vec<Tensor<B, 1>>>,
}

/// What one step did; tensors stay on the device until a logger reads them.
#[derive(Debug, Clone)]
pub struct LambStep<B: Backend> {
    /// The new values, in the order the parameters were given.
    pub values: Vec<Tensor<B, 1>>,
    /// The global gradient norm before clipping, `[1]`.
    pub global_grad_norm: Tensor<B, 1>,
}

impl<B: Backend> Lamb<B> {
    /// A fresh optimizer (step 0, no moments).
    pub fn new(config: LambConfig) -> Self {
        Self {
            config,
            step: 0,
            moments: BTreeMap::new(),
            fused_kernels: true,
            flat_moments: None,
        }
    }

    /// Whether steps may run as fused kernels where the backend has them (bert-shaders' on the
    /// GPU backends, `lamb/cpu.rs` on Flex; the default); off, they run as plain tensor
    /// operations on every backend.
    pub fn set_fused_kernels(&mut self, on: bool) {
        self.fused_kernels = on;
    }

    /// The configuration.
    pub fn config(&self) -> &LambConfig {
        &self.config
    }

    /// Steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The moments of each parameter, for checkpoints.
    pub fn moments(&self) -> BTreeMap<String, Moments<B>> {
        match &self.flat_moments {
            Some(flat) => flat.to_map(),
            None => self.moments.clone(),
        }
    }

    /// Restores a checkpointed state.
    pub fn restore(&mut self, step: u64, moments: BTreeMap<String, Moments<B>>) {
        self.step = step;
        self.moments = moments;
        self.flat_moments = None;
    }

    /// Weight decay of a parameter by name.
    pub fn weight_decay(&self, name: &str) -> f64 {
        if NO_DECAY.iter().any(|s| name.contains(s)) {
            0.0
        } else {
            self.config.weight_decay
        }
    }

    /// Whether the trust ratio scales the step of a parameter with this weight decay.
    pub(crate) fn trust_ratio_applies(&self, weight_decay: f64) -> bool {
        match self.config.trust_ratio {
            TrustRatio::Never => false,
            TrustRatio::DecayedOnly => weight_decay != 0.0,
            TrustRatio::Always => true,
        }
    }

    /// Whether steps over `params` run as bert-shaders' fused GPU kernels.
    fn runs_on_gpu_kernels(&self, params: &[NamedParam<B>]) -> bool {
        self.fused_kernels
            && params
                .first()
                .is_some_and(|param| bert_shaders::lamb::runs_on(&param.value))
    }

    /// Whether a step over `params` runs fused (the GPU kernels, or the CPU step on Flex) rather
    /// than as plain tensor operations.
    pub fn runs_fused(&self, params: &[NamedParam<B>]) -> bool {
        self.runs_on_gpu_kernels(params) || (self.fused_kernels && cpu::runs_on(params))
    }

    /// One optimizer step at learning rate `lr` over all parameters.
    pub fn step(&mut self, lr: f64, params: Vec<NamedParam<B>>) -> LambStep<B> {
        let squared_grad_norm = self.squared_grad_norm(&params);
        self.step_scaled(lr, params, squared_grad_norm, 1.0)
    }

    /// `sum over all gradients of sum(g^2)`: one fused reduction whose square root is the global
    /// gradient norm, and which is inf or NaN exactly when some gradient is.
    pub fn squared_grad_norm(&self, params: &[NamedParam<B>]) -> SquaredGradNorm<B> {
        if self.runs_on_gpu_kernels(params) {
            if let Some((squared, flat_grads)) = self
                .layouts(params)
                .and_then(|layouts| fused::squared_grad_norm(params, &layouts))
            {
                return SquaredGradNorm {
                    squared,
                    flat_grads: Some(flat_grads),
                };
            }
        }
        if self.fused_kernels {
            if let Some(squared) = cpu::squared_grad_norm(params) {
                return SquaredGradNorm {
                    squared,
                    flat_grads: None,
                };
            }
        }
        let squared = params
            .iter()
            .map(|p| sum_of_squares(p.grad.clone()))
            .reduce(|a, b| a + b)
            .unwrap_or_else(|| Tensor::zeros([1], &Default::default()));
        SquaredGradNorm {
            squared,
            flat_grads: None,
        }
    }

    /// [`Self::step`] for gradients multiplied by `gradient_scale` (the loss scale), whose
    /// [`Self::squared_grad_norm`] the caller already computed (to check it for overflow). The
    /// unscaling is folded into the clip divisor, so it costs no pass over the gradients.
    pub fn step_scaled(
        &mut self,
        lr: f64,
        mut params: Vec<NamedParam<B>>,
        norm: SquaredGradNorm<B>,
        gradient_scale: f64,
    ) -> LambStep<B> {
        let SquaredGradNorm {
            squared: squared_grad_norm,
            flat_grads,
        } = norm;
        if params.is_empty() {
            return LambStep {
                values: Vec::new(),
                global_grad_norm: squared_grad_norm,
            };
        }
        let device = squared_grad_norm.device();
        self.step += 1;
        let t = self.step as i32;
        let config = self.config;

        let mut global_grad_norm = squared_grad_norm.sqrt();
        if gradient_scale != 1.0 {
            global_grad_norm = global_grad_norm / gradient_scale;
        }
        let mut clip_divisor = if config.max_grad_norm > 0.0 {
            (global_grad_norm.clone() / config.max_grad_norm).clamp_min(1.0)
        } else {
            Tensor::ones([1], (&device, global_grad_norm.dtype()))
        };
        if gradient_scale != 1.0 {
            clip_divisor = clip_divisor * gradient_scale;
        }
        let (correction1, correction2) = if config.bias_correction {
            (1.0 - config.beta1.powi(t), 1.0 - config.beta2.powi(t))
        } else {
            (1.0, 1.0)
        };
        if self.runs_on_gpu_kernels(&params) {
            let coefficients = LambCoefficients {
                beta1: config.beta1,
                beta2: config.beta2,
                eps: config.eps,
                correction1,
                correction2,
                learning_rate: lr,
            };
            if let Some(values) = self.step_fused(&params, flat_grads, &clip_divisor, &coefficients)
            {
                return LambStep {
                    values,
                    global_grad_norm,
                };
            }
        }
        if let Some(flat) = self.flat_moments.take() {
            self.moments = flat.to_map();
        }
        if self.fused_kernels {
            let corrections = (correction1, correction2);
            if let Some(scalars) = cpu::StepScalars::new(&config, corrections, lr, &clip_divisor) {
                match self.step_on_cpu(params, &scalars) {
                    Ok(values) => {
                        return LambStep {
                            values,
                            global_grad_norm,
                        }
                    }
                    Err(returned) => params = returned,
                }
            }
        }

        let mut values = Vec::with_capacity(params.len());
        for NamedParam { name, value, grad } in params {
            let weight_decay = self.weight_decay(&name);
            let grad = grad / clip_divisor.clone();
            let moments = self.moments.remove(&name).unwrap_or_else(|| Moments {
                exp_avg: value.zeros_like(),
                exp_avg_sq: value.zeros_like(),
            });
            let exp_avg = moments.exp_avg * config.beta1 + grad.clone() * (1.0 - config.beta1);
            let exp_avg_sq =
                moments.exp_avg_sq * config.beta2 + grad.powi_scalar(2) * (1.0 - config.beta2);

            let denominator = (exp_avg_sq.clone() / correction2).sqrt() + config.eps;
            let mut update = (exp_avg.clone() / correction1) / denominator;
            if weight_decay != 0.0 {
                update = update + value.clone() * weight_decay;
            }
            let new_value = if self.trust_ratio_applies(weight_decay) {
                let ratio = trust_ratio(&value, &update) * lr;
                value - update * ratio
            } else {
                value - update * lr
            };
            values.push(new_value);
            self.moments.insert(
                name,
                Moments {
                    exp_avg,
                    exp_avg_sq,
                },
            );
        }
        LambStep {
            values,
            global_grad_norm,
        }
    }
}

/// Elements summed in one sequential run by [`sum_of_squares`].
const SUM_BLOCK: usize = 1024;

/// `sum(x^2)` as a `[1]` tensor, summed in blocks of 1024 and then over the block sums, level by
/// level. A float32 sum of a few million squares in one sequential run (what a CPU backend does)
/// is off by ~1e-4 relative, enough to move every clipped update as much; blocks keep it ~1e-6.
fn sum_of_squares<B: Backend>(x: Tensor<B, 1>) -> Tensor<B, 1> {
    let mut partial = x.powi_scalar(2);
    while partial.dims()[0] > SUM_BLOCK {
        let n = partial.dims()[0];
        let blocks = n.div_ceil(SUM_BLOCK);
        if blocks * SUM_BLOCK != n {
            let padding = Tensor::zeros(
                [blocks * SUM_BLOCK - n],
                (&partial.device(), partial.dtype()),
            );
            partial = Tensor::cat(vec![partial, padding], 0);
        }
        partial = partial
            .reshape([blocks, SUM_BLOCK])
            .sum_dim(1)
            .reshape([blocks]);
    }
    partial.sum()
}

/// `||w|| / ||u||`, or 1 when either norm is 0, as a `[1]` tensor.
fn trust_ratio<B: Backend>(value: &Tensor<B, 1>, update: &Tensor<B, 1>) -> Tensor<B, 1> {
    let value_norm = sum_of_squares(value.clone()).sqrt();
    let update_norm = sum_of_squares(update.clone()).sqrt();
    let both_positive = value_norm
        .clone()
        .greater_elem(0.0)
        .bool_and(update_norm.clone().greater_elem(0.0));
    let ones = value_norm.ones_like();
    ones.mask_where(both_positive, value_norm / update_norm)
}
