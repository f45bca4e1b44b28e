//! Optimizers and learning-rate schedules of the recipe: NVLAMB (apex FusedLAMB semantics) with
//! global gradient clipping, its Adam variant for fine-tuning, and the PolyWarmUp / linear
//! warm-up schedules.

pub mod lamb;
mod params;
pub mod schedule;

pub use lamb::{Lamb, LambConfig, LambStep, Moments, NamedParam, TrustRatio};
pub use schedule::LrSchedule;
