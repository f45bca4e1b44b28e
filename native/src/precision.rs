//! `--precision` and the loss-scaling flags every training command shares, and the inference
//! commands' `--attention`.

use anyhow::{bail, Result};
use bert_core::model::{AttentionKernel, Precision};
use bert_core::optim::{DivergenceGuard, LossScaler, LossScaling};
use clap::Args;

use crate::backend::BackendKind;

/// How an inference command computes attention.
#[derive(Debug, Clone, Copy, Args)]
pub struct AttentionArgs {
    /// explicit: separate products and a float32 softmax, as training computes it; fused: burn's
    /// attention operation (flash attention where burn's GPU backends find it faster).
    #[arg(long, default_value = "explicit")]
    pub attention: AttentionKernel,
}

/// Arithmetic of training and inference (`--fp16`/`--amp` in the reference).
#[derive(Debug, Clone, Args)]
pub struct PrecisionArgs {
    /// fp32, tf32, fp16 (dynamic loss scaling) or bf16: the matrix products in that precision on
    /// tensor cores; LayerNorm, softmax, losses, master weights and the optimizer in float32.
    /// fp16/bf16 need the cuda (or wgpu) backend.
    #[arg(long, default_value = "fp32")]
    pub precision: Precision,
    /// A fixed loss scale instead of fp16's dynamic one (initial 2^20, halved on overflow,
    /// doubled after 2000 clean steps).
    #[arg(long)]
    pub loss_scale: Option<f64>,
    /// Stop when the dynamic loss scale falls under this: the run has diverged.
    #[arg(long, default_value_t = DivergenceGuard::default().min_scale)]
    pub min_loss_scale: f64,
    /// Stop after this many optimizer steps in a row with inf/NaN gradients (skipped steps).
    #[arg(long, default_value_t = DivergenceGuard::default().max_consecutive_skips)]
    pub max_skipped_steps: u32,
}

impl PrecisionArgs {
    /// Refuses a precision the backend cannot run and nonsensical limits.
    pub fn check(&self, backend: BackendKind) -> Result<()> {
        check_backend(self.precision, backend)?;
        if let Some(scale) = self.loss_scale {
            if !(scale.is_finite() && scale > 0.0) {
                bail!("--loss-scale must be a positive number, not {scale}");
            }
        }
        if self.min_loss_scale.is_nan() || self.min_loss_scale <= 0.0 || self.max_skipped_steps == 0
        {
            bail!("--min-loss-scale must be positive and --max-skipped-steps at least 1");
        }
        Ok(())
    }

    /// The loss scaler these flags ask for: fixed with --loss-scale, dynamic for fp16, none else.
    pub fn loss_scaler(&self) -> LossScaler {
        let scaling = match (self.loss_scale, self.precision.needs_loss_scaling()) {
            (Some(scale), _) => LossScaling::Fixed(scale),
            (None, true) => LossScaling::dynamic(),
            (None, false) => LossScaling::None,
        };
        LossScaler::new(scaling, self.guard())
    }

    /// The divergence limits.
    pub fn guard(&self) -> DivergenceGuard {
        DivergenceGuard {
            min_scale: self.min_loss_scale,
            max_consecutive_skips: self.max_skipped_steps,
        }
    }
}

/// Refuses a half precision on a backend without half-precision tensors.
pub fn check_backend(precision: Precision, backend: BackendKind) -> Result<()> {
    if precision.half_dtype().is_some() && backend == BackendKind::Ndarray {
        bail!(
            "--precision {precision} needs half-precision tensors, which the ndarray CPU backend lacks: use --backend cuda (or wgpu), or --precision fp32"
        );
    }
    Ok(())
}
