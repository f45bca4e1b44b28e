//! Loss scaling for float16 training (apex's `DynamicLossScaler`, `torch.cuda.amp.GradScaler`),
//! and the divergence guard every precision shares.
//!
//! The loss is multiplied by the scale before the backward pass, so gradients too small for
//! float16 survive; the optimizer divides them back (NVLAMB folds the division into its global
//! clipping, so unscaling costs no extra pass). After the gradients of a step are accumulated,
//! one fused reduction (the global gradient norm NVLAMB needs anyway) says whether any of them
//! overflowed to inf or NaN:
//!
//! ```text
//! overflow:  skip the step (no weight, moment or schedule step changes), scale /= 2
//! clean:     apply the step; after `growth_interval` clean steps in a row, scale *= 2
//! ```
//!
//! A scale below `min_scale`, or `max_consecutive_skips` skipped steps in a row, means training
//! has diverged (the failure the reference's users report as a loss scale that collapses to 0):
//! [`LossScaler::update`] then returns an error, so the run stops with its last good checkpoint
//! intact instead of writing NaN weights. Without scaling (float32, bfloat16) the same guard skips
//! non-finite steps and stops after too many.

use serde::{Deserialize, Serialize};

use crate::error::TrainingError;

/// How the loss is scaled.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossScaling {
    /// Scale 1 (float32, TF32, bfloat16).
    None,
    /// A constant scale (`--loss-scale S`).
    Fixed(f64),
    /// Halve on overflow, double after `growth_interval` clean steps.
    Dynamic {
        /// The scale before the first step (the reference's `2**20`).
        initial_scale: f64,
        /// Clean steps in a row before the scale doubles.
        growth_interval: u64,
    },
}

impl LossScaling {
    /// The reference's dynamic scaling: initial scale 2^20, doubled after 2000 clean steps.
    pub fn dynamic() -> Self {
        Self::Dynamic {
            initial_scale: 1_048_576.0,
            growth_interval: 2000,
        }
    }
}

/// When a run counts as diverged.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DivergenceGuard {
    /// A dynamic scale under this stops training (`--min-loss-scale`).
    pub min_scale: f64,
    /// This many skipped steps in a row stop training (`--max-skipped-steps`).
    pub max_consecutive_skips: u32,
}

impl Default for DivergenceGuard {
    fn default() -> Self {
        Self {
            min_scale: 1.0,
            max_consecutive_skips: 25,
        }
    }
}

/// What became of a step's gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    /// The optimizer stepped.
    Applied,
    /// A gradient was inf or NaN: nothing changed but the scale.
    Skipped,
}

/// The scaler's state, saved in training checkpoints so a resumed run continues with the same
/// scale.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    /// The policy.
    pub scaling: LossScaling,
    /// The divergence limits.
    pub guard: DivergenceGuard,
    /// The current scale.
    pub scale: f64,
    /// Clean steps since the scale last changed.
    pub clean_steps: u64,
    /// Skipped steps in a row.
    pub consecutive_skips: u32,
    /// Skipped steps over the run.
    pub skipped_steps: u64,
}

impl LossScaler {
    /// A scaler at its initial scale.
    pub fn new(scaling: LossScaling, guard: DivergenceGuard) -> Self {
        let scale = match scaling {
            LossScaling::None => 1.0,
            LossScaling::Fixed(scale) => scale,
            LossScaling::Dynamic { initial_scale, .. } => initial_scale,
        };
        Self {
            scaling,
            guard,
            scale,
            clean_steps: 0,
            consecutive_skips: 0,
            skipped_steps: 0,
        }
    }

    /// The factor applied to the loss (and so to every gradient) this step.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Records whether this step's gradients were all finite and says whether to apply it; an
    /// error when training has diverged (the step is then not applied either).
    pub fn update(&mut self, gradients_finite: bool) -> Result<StepOutcome, TrainingError> {
        if gradients_finite {
            self.consecutive_skips = 0;
            self.clean_steps += 1;
            if let LossScaling::Dynamic {
                growth_interval, ..
            } = self.scaling
            {
                if self.clean_steps >= growth_interval {
                    self.scale *= 2.0;
                    self.clean_steps = 0;
                }
            }
            return Ok(StepOutcome::Applied);
        }
        self.consecutive_skips += 1;
        self.skipped_steps += 1;
        self.clean_steps = 0;
        if matches!(self.scaling, LossScaling::Dynamic { .. }) {
            self.scale /= 2.0;
            if self.scale < self.guard.min_scale {
                return Err(TrainingError::LossScaleCollapsed {
                    scale: self.scale,
                    min_scale: self.guard.min_scale,
                });
            }
        }
        if self.consecutive_skips >= self.guard.max_consecutive_skips {
            return Err(TrainingError::TooManySkippedSteps {
                skipped: self.consecutive_skips,
                scale: self.scale,
            });
        }
        Ok(StepOutcome::Skipped)
    }
}

impl Default for LossScaler {
    fn default() -> Self {
        Self::new(LossScaling::None, DivergenceGuard::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dynamic(growth_interval: u64) -> LossScaler {
        LossScaler::new(
            LossScaling::Dynamic {
                initial_scale: 1024.0,
                growth_interval,
            },
            DivergenceGuard {
                min_scale: 1.0,
                max_consecutive_skips: 5,
            },
        )
    }

    #[test]
    fn overflow_halves_and_skips_clean_steps_grow_the_scale() {
        let mut scaler = dynamic(3);
        assert_eq!(scaler.update(false), Ok(StepOutcome::Skipped));
        assert_eq!(scaler.scale(), 512.0);
        for _ in 0..2 {
            assert_eq!(scaler.update(true), Ok(StepOutcome::Applied));
            assert_eq!(scaler.scale(), 512.0);
        }
        assert_eq!(scaler.update(true), Ok(StepOutcome::Applied));
        assert_eq!(scaler.scale(), 1024.0, "third clean step in a row doubles");
        scaler.update(true).unwrap();
        scaler.update(true).unwrap();
        assert_eq!(scaler.update(false), Ok(StepOutcome::Skipped));
        assert_eq!(
            scaler.clean_steps, 0,
            "an overflow restarts the growth count"
        );
        assert_eq!(scaler.skipped_steps, 2);
        assert_eq!(scaler.scale(), 512.0);
    }

    #[test]
    fn a_collapsing_scale_stops_training() {
        let mut scaler = dynamic(1000);
        scaler.scale = 4.0;
        assert_eq!(scaler.update(false), Ok(StepOutcome::Skipped));
        assert_eq!(scaler.update(false), Ok(StepOutcome::Skipped));
        let error = scaler.update(false).unwrap_err();
        assert_eq!(
            error,
            TrainingError::LossScaleCollapsed {
                scale: 0.5,
                min_scale: 1.0
            }
        );
        assert!(error.to_string().contains("loss scale"), "{error}");
    }

    #[test]
    fn skips_in_a_row_stop_training_and_a_clean_step_resets_the_count() {
        let mut scaler = LossScaler::new(
            LossScaling::Fixed(128.0),
            DivergenceGuard {
                min_scale: 1.0,
                max_consecutive_skips: 3,
            },
        );
        scaler.update(false).unwrap();
        scaler.update(false).unwrap();
        scaler.update(true).unwrap();
        scaler.update(false).unwrap();
        scaler.update(false).unwrap();
        assert_eq!(scaler.scale(), 128.0, "a fixed scale never moves");
        assert_eq!(
            scaler.update(false),
            Err(TrainingError::TooManySkippedSteps {
                skipped: 3,
                scale: 128.0
            })
        );
    }

    #[test]
    fn no_scaling_keeps_one() {
        let mut scaler = LossScaler::default();
        assert_eq!(scaler.scale(), 1.0);
        scaler.update(false).unwrap();
        assert_eq!(scaler.scale(), 1.0);
        assert_eq!(
            LossScaler::new(LossScaling::dynamic(), DivergenceGuard::default()).scale(),
            2f64.powi(20)
        );
    }
}
