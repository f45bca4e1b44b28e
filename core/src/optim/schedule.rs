//! Learning-rate schedules of the reference (`schedulers.py`), indexed by the optimizer step
//! `k = 1, 2, ...` (the same counter as the optimizer's bias correction). Steps skipped for fp16
//! overflow do not advance `k`.

use serde::{Deserialize, Serialize};

/// A learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LrSchedule {
    /// `PolyWarmUpScheduler` (pretraining): with `p = k / total_steps`,
    /// `lr = base_lr * p / warmup` while `p < warmup`, else `base_lr * (1 - p)^degree`.
    PolyWarmUp {
        /// Peak learning rate.
        base_lr: f64,
        /// Warm-up length as a fraction of `total_steps` (0.2843 in phase 1).
        warmup: f64,
        /// Steps of the whole schedule.
        total_steps: u64,
        /// Exponent of the decay (0.5 in the recipe).
        degree: f64,
    },
    /// `LinearWarmUpScheduler` (fine-tuning): linear warm-up over the `warmup` fraction, then
    /// linear decay to zero at `total_steps`.
    LinearWarmUp {
        /// Peak learning rate.
        base_lr: f64,
        /// Warm-up length as a fraction of `total_steps`.
        warmup: f64,
        /// Steps of the whole schedule.
        total_steps: u64,
    },
    /// The same rate at every step.
    Constant {
        /// The learning rate.
        lr: f64,
    },
}

impl LrSchedule {
    /// The recipe's schedule: `PolyWarmUp` with degree 0.5.
    pub fn poly_warm_up(base_lr: f64, warmup: f64, total_steps: u64) -> Self {
        Self::PolyWarmUp {
            base_lr,
            warmup,
            total_steps,
            degree: 0.5,
        }
    }

    /// The learning rate of optimizer step `k` (1-based). Past `total_steps` the decaying
    /// schedules stay at zero (the reference never runs those steps).
    pub fn lr(&self, k: u64) -> f64 {
        match *self {
            Self::PolyWarmUp {
                base_lr,
                warmup,
                total_steps,
                degree,
            } => {
                let progress = k as f64 / total_steps as f64;
                if progress < warmup {
                    base_lr * progress / warmup
                } else {
                    base_lr * (1.0 - progress).max(0.0).powf(degree)
                }
            }
            Self::LinearWarmUp {
                base_lr,
                warmup,
                total_steps,
            } => {
                let progress = k as f64 / total_steps as f64;
                if progress < warmup {
                    base_lr * progress / warmup
                } else {
                    base_lr * ((progress - 1.0) / (warmup - 1.0)).max(0.0)
                }
            }
            Self::Constant { lr } => lr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poly_warm_up_turns_at_the_warmup_fraction() {
        let phase1 = LrSchedule::poly_warm_up(6e-3, 0.2843, 7038);
        // 0.2843 * 7038 = 2000.9: step 2000 is the last warm-up step, 2001 the first decay step.
        assert!((phase1.lr(2000) - 6e-3 * 2000.0 / 7038.0 / 0.2843).abs() < 1e-15);
        assert!((phase1.lr(2001) - 6e-3 * (1.0 - 2001.0 / 7038.0_f64).sqrt()).abs() < 1e-15);
        assert_eq!(phase1.lr(7038), 0.0);
        assert_eq!(phase1.lr(8000), 0.0);
    }

    #[test]
    fn linear_warm_up_rises_then_falls_to_zero() {
        let schedule = LrSchedule::LinearWarmUp {
            base_lr: 3e-5,
            warmup: 0.1,
            total_steps: 100,
        };
        assert!((schedule.lr(5) - 1.5e-5).abs() < 1e-18);
        assert!((schedule.lr(10) - 3e-5).abs() < 1e-18);
        assert!((schedule.lr(55) - 1.5e-5).abs() < 1e-18);
        assert_eq!(schedule.lr(100), 0.0);
        assert_eq!(schedule.lr(120), 0.0);
    }
}
