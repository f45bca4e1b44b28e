//! Optimizers and learning-rate schedules of the recipe: NVLAMB (apex FusedLAMB semantics) with
//! global gradient clipping, its Adam variant for fine-tuning, and the PolyWarmUp / linear
//! warm-up schedules; loss scaling for float16.

pub mod lamb;
pub mod loss_scale;
pub(crate) mod params;
pub mod schedule;

pub use lamb::{Lamb, LambConfig, LambStep, Moments, NamedParam, SquaredGradNorm, TrustRatio};
pub use loss_scale::{DivergenceGuard, LossScaler, LossScaling, StepOutcome};
pub use params::{module_params, ParamPlacement};
pub use schedule::LrSchedule;
