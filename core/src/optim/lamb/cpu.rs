//! The NVLAMB step on the CPU (burn's Flex backend) in two threaded passes over each parameter,
//! where the plain step takes about fifteen tensor operations, each a pass with a fresh buffer:
//! the first clips the gradient, updates both moments in place, writes the update `u` over the
//! gradient and sums `||w||²` and `||u||²`; the second writes `w - lr · r · u` over `u`.
//!
//! Element by element it computes what the plain step computes: the same float32 operations in
//! the same order, the scalars rounded to float32 as burn rounds them. The sums of squares (the
//! global gradient norm and the trust ratios) are accumulated in float64, where the plain step
//! adds float32 in blocks, so those can differ from it in their last bits. Pieces of a fixed size,
//! their sums added in order: the same result on any number of threads.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use super::{Lamb, LambConfig, Moments, NamedParam};
use crate::model::cpu::math::vectorized;
use crate::model::cpu::FlatValues;

/// Elements per parallel task.
const ELEMENTS_PER_TASK: usize = 1 << 15;
/// Interleaved partial sums in a reduction: one 512-bit vector of float64.
const LANES: usize = 8;

/// The scalars of one step, as float32 (burn's scalar operations on float32 tensors round their
/// float64 scalar to float32 first).
#[derive(Debug, Clone, Copy)]
pub(super) struct StepScalars {
    /// What the gradients are divided by: the clip divisor times the loss scale.
    clip_divisor: f32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    correction1: f32,
    correction2: f32,
    eps: f32,
    learning_rate: f32,
}

impl StepScalars {
    /// The scalars of a step of `config` at learning rate `learning_rate` with these bias
    /// corrections, and the clip divisor, a `[1]` tensor on plain Flex (`None` elsewhere).
    pub(super) fn new<B: Backend>(
        config: &LambConfig,
        (correction1, correction2): (f64, f64),
        learning_rate: f64,
        clip_divisor: &Tensor<B, 1>,
    ) -> Option<Self> {
        let clip_divisor = *FlatValues::of(clip_divisor.clone())?.get().first()?;
        Some(Self {
            clip_divisor,
            beta1: config.beta1 as f32,
            one_minus_beta1: (1.0 - config.beta1) as f32,
            beta2: config.beta2 as f32,
            one_minus_beta2: (1.0 - config.beta2) as f32,
            correction1: correction1 as f32,
            correction2: correction2 as f32,
            eps: config.eps as f32,
            learning_rate: learning_rate as f32,
        })
    }
}

/// Whether the step runs here: every value and gradient is float32 on plain Flex.
pub(super) fn runs_on<B: Backend>(params: &[NamedParam<B>]) -> bool {
    !params.is_empty()
        && params
            .iter()
            .all(|p| FlatValues::takes(&p.value) && FlatValues::takes(&p.grad))
}

/// `sum over all gradients of sum(g²)` as a `[1]` tensor (float64 sums, rounded once).
pub(super) fn squared_grad_norm<B: Backend>(params: &[NamedParam<B>]) -> Option<Tensor<B, 1>> {
    if !runs_on(params) {
        return None;
    }
    let device = params[0].grad.device();
    let total: f64 = params
        .iter()
        .map(|p| {
            let grad = FlatValues::of(p.grad.clone()).expect("runs_on checked it");
            squared_norm(grad.get())
        })
        .sum();
    Some(Tensor::from_data(
        TensorData::new(vec![total as f32], [1]),
        &device,
    ))
}

/// `sum(x²)` in float64, in pieces of [`ELEMENTS_PER_TASK`] added in order.
fn squared_norm(x: &[f32]) -> f64 {
    let pieces: Vec<f64> = x
        .par_chunks(ELEMENTS_PER_TASK)
        .map(|piece| {
            let mut sum = 0.0;
            sum_squares(piece, &mut sum);
            sum
        })
        .collect();
    pieces.into_iter().sum()
}

vectorized! {
    /// Adds `sum(x²)` to `sum`, in [`LANES`] interleaved float64 partial sums.
    fn sum_squares(x: &[f32], sum: &mut f64) {
        let mut partial = [0.0f64; LANES];
        let chunks = x.chunks_exact(LANES);
        let rest = chunks.remainder();
        for chunk in chunks {
            for (s, &v) in partial.iter_mut().zip(chunk) {
                *s += f64::from(v) * f64::from(v);
            }
        }
        *sum += partial.iter().sum::<f64>();
        for &v in rest {
            *sum += f64::from(v) * f64::from(v);
        }
    }
}

/// The float64 sums of squares of one piece: `(||w||², ||u||²)`.
type PieceNorms = (f64, f64);

/// The first pass over one piece: `grad_to_update` holds `g` and gets `u`; the moments are
/// updated in place.
struct FirstPass<'a> {
    value: &'a [f32],
    grad_to_update: &'a mut [f32],
    exp_avg: &'a mut [f32],
    exp_avg_sq: &'a mut [f32],
}

vectorized! {
    /// `g' = g / clip; m = b1 m + (1 - b1) g'; v = b2 v + (1 - b2) g'²;
    /// u = (m / c1) / (sqrt(v / c2) + eps) [+ wd w]`, as the plain step orders them, summing
    /// `||w||²` and `||u||²` into `norms` when `norms_wanted`.
    fn first_pass(
        piece: FirstPass<'_>,
        s: &StepScalars,
        weight_decay: f32,
        norms_wanted: bool,
        norms: &mut PieceNorms,
    ) {
        let FirstPass { value, grad_to_update, exp_avg, exp_avg_sq } = piece;
        for (((u, m), v), &w) in grad_to_update
            .iter_mut()
            .zip(exp_avg.iter_mut())
            .zip(exp_avg_sq.iter_mut())
            .zip(value)
        {
            let g = *u / s.clip_divisor;
            *m = *m * s.beta1 + g * s.one_minus_beta1;
            *v = *v * s.beta2 + (g * g) * s.one_minus_beta2;
            let denominator = (*v / s.correction2).sqrt() + s.eps;
            let mut update = (*m / s.correction1) / denominator;
            if weight_decay != 0.0 {
                update += w * weight_decay;
            }
            *u = update;
        }
        if norms_wanted {
            let mut value_sum = 0.0;
            sum_squares(value, &mut value_sum);
            let mut update_sum = 0.0;
            sum_squares(grad_to_update, &mut update_sum);
            *norms = (value_sum, update_sum);
        }
    }
}

vectorized! {
    /// `w - u · ratio`, written over `u`.
    fn second_pass(value: &[f32], update_to_value: &mut [f32], ratio: f32) {
        for (u, &w) in update_to_value.iter_mut().zip(value) {
            *u = w - *u * ratio;
        }
    }
}

impl<B: Backend> Lamb<B> {
    /// The step of every parameter, when [`runs_on`] says yes for `params` and each one's
    /// moments (if any) have its length; `Err(params)` back otherwise.
    pub(super) fn step_on_cpu(
        &mut self,
        params: Vec<NamedParam<B>>,
        scalars: &StepScalars,
    ) -> Result<Vec<Tensor<B, 1>>, Vec<NamedParam<B>>> {
        let fits = |p: &NamedParam<B>| {
            let len = p.value.dims()[0];
            p.grad.dims()[0] == len
                && self.moments.get(&p.name).is_none_or(|m| {
                    m.exp_avg.dims()[0] == len
                        && m.exp_avg_sq.dims()[0] == len
                        && FlatValues::takes(&m.exp_avg)
                        && FlatValues::takes(&m.exp_avg_sq)
                })
        };
        if !runs_on(&params) || !params.iter().all(fits) {
            return Err(params);
        }
        Ok(params
            .into_iter()
            .map(|param| self.step_one_on_cpu(param, scalars))
            .collect())
    }

    /// [`Self::step_on_cpu`] of one parameter that fits.
    fn step_one_on_cpu(&mut self, param: NamedParam<B>, scalars: &StepScalars) -> Tensor<B, 1> {
        let NamedParam { name, value, grad } = param;
        let weight_decay = self.weight_decay(&name);
        let trust_ratio = self.trust_ratio_applies(weight_decay);
        let flat = |tensor| FlatValues::of(tensor).expect("step_on_cpu checked it");
        let len = value.dims()[0];
        let (mut exp_avg, mut exp_avg_sq) = match self.moments.remove(&name) {
            Some(moments) => (flat(moments.exp_avg), flat(moments.exp_avg_sq)),
            None => (FlatValues::zeros(len), FlatValues::zeros(len)),
        };
        let value = flat(value);
        let mut update = flat(grad);

        let weight_decay = weight_decay as f32;
        let pieces: Vec<PieceNorms> = update
            .get_mut()
            .par_chunks_mut(ELEMENTS_PER_TASK)
            .zip(exp_avg.get_mut().par_chunks_mut(ELEMENTS_PER_TASK))
            .zip(exp_avg_sq.get_mut().par_chunks_mut(ELEMENTS_PER_TASK))
            .zip(value.get().par_chunks(ELEMENTS_PER_TASK))
            .map(|(((grad_to_update, exp_avg), exp_avg_sq), value)| {
                let mut norms = (0.0, 0.0);
                let piece = FirstPass {
                    value,
                    grad_to_update,
                    exp_avg,
                    exp_avg_sq,
                };
                first_pass(piece, scalars, weight_decay, trust_ratio, &mut norms);
                norms
            })
            .collect();

        let ratio = if trust_ratio {
            let (value_sum, update_sum) = pieces
                .into_iter()
                .fold((0.0, 0.0), |(a, b), (v, u)| (a + v, b + u));
            // As the plain step: float32 norms, 1 unless both are positive.
            let (value_norm, update_norm) = ((value_sum as f32).sqrt(), (update_sum as f32).sqrt());
            let ratio = if value_norm > 0.0 && update_norm > 0.0 {
                value_norm / update_norm
            } else {
                1.0
            };
            ratio * scalars.learning_rate
        } else {
            scalars.learning_rate
        };
        update
            .get_mut()
            .par_chunks_mut(ELEMENTS_PER_TASK)
            .zip(value.get().par_chunks(ELEMENTS_PER_TASK))
            .for_each(|(update_to_value, value)| second_pass(value, update_to_value, ratio));

        self.moments.insert(
            name,
            Moments {
                exp_avg: exp_avg.into_tensor(),
                exp_avg_sq: exp_avg_sq.into_tensor(),
            },
        );
        update.into_tensor()
    }
}

#[cfg(test)]
mod tests {
    //! That the step runs here on Flex and nowhere else, and gives the same bits on any number of
    //! threads (tests/tests/suite/fused_lamb.rs holds it to the plain step).

    use burn::backend::flex::{Flex, FlexDevice};
    use burn::backend::NdArray;
    use burn::tensor::backend::Backend;
    use burn::tensor::{Tensor, TensorData};

    use super::super::{Lamb, LambConfig, NamedParam};
    use crate::model::cpu::tests::random;

    /// A weight of several pieces and a bias, with gradients.
    fn params<B: Backend>(seed: u64) -> Vec<NamedParam<B>> {
        let device = Default::default();
        let tensor = |len, seed, scale| {
            Tensor::<B, 1>::from_data(TensorData::new(random(len, seed, scale), [len]), &device)
        };
        [
            ("dense.weight", 3 * super::ELEMENTS_PER_TASK + 7),
            ("dense.bias", 5),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, (name, len))| NamedParam {
            name: name.to_string(),
            value: tensor(len, seed + 2 * i as u64, 0.05),
            grad: tensor(len, seed + 2 * i as u64 + 1, 1.0),
        })
        .collect()
    }

    fn host<B: Backend>(tensor: Tensor<B, 1>) -> Vec<f32> {
        tensor.into_data().to_vec().unwrap()
    }

    /// Two steps on a pool of `threads`: the global norms and the new values.
    fn two_steps(threads: usize) -> Vec<Vec<f32>> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut lamb = Lamb::<Flex>::new(LambConfig::default());
            let mut results = Vec::new();
            for step in 0..2 {
                let step = lamb.step(1e-2, params(step));
                results.push(host(step.global_grad_norm));
                results.extend(step.values.into_iter().map(host));
            }
            results
        })
    }

    #[test]
    fn the_step_runs_on_flex_only() {
        assert!(super::runs_on(&params::<Flex>(1)));
        assert!(!super::runs_on(&params::<NdArray>(1)));
        let mut lamb = Lamb::<Flex>::new(LambConfig::default());
        let scalars = super::StepScalars::new(
            lamb.config(),
            (0.1, 0.001),
            1e-3,
            &Tensor::<Flex, 1>::ones([1], &FlexDevice),
        )
        .expect("a Flex clip divisor");
        assert!(lamb.step_on_cpu(params(1), &scalars).is_ok());
        // Moments of another length are refused, not indexed out of bounds.
        let mut shorter = params::<Flex>(1);
        shorter[1].value = shorter[1].value.clone().slice(0..4);
        shorter[1].grad = shorter[1].grad.clone().slice(0..4);
        assert!(lamb.step_on_cpu(shorter, &scalars).is_err());
    }

    #[test]
    fn the_step_is_the_same_on_any_number_of_threads() {
        let one = two_steps(1);
        assert_eq!(one, two_steps(2));
        assert_eq!(one, two_steps(3));
    }

    #[test]
    fn moments_held_elsewhere_are_left_as_they_were() {
        // A checkpoint holds the moments (clones sharing their buffers) while the next step
        // updates them: the step copies them first instead of writing under the checkpoint.
        let mut lamb = Lamb::<Flex>::new(LambConfig::default());
        lamb.step(1e-2, params(1));
        let held = lamb.moments();
        let before: Vec<Vec<f32>> = held
            .values()
            .flat_map(|m| [host(m.exp_avg.clone()), host(m.exp_avg_sq.clone())])
            .collect();
        lamb.step(1e-2, params(2));
        let after: Vec<Vec<f32>> = held
            .values()
            .flat_map(|m| [host(m.exp_avg.clone()), host(m.exp_avg_sq.clone())])
            .collect();
        assert_eq!(before, after);
        assert_ne!(
            host(lamb.moments()["dense.bias"].exp_avg.clone()),
            before[0]
        );
    }
}
