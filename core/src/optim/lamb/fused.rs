//! The NVLAMB step as bert-shaders' fused kernels: the parameters laid end to end in flat buffers
//! (a tensor larger than [`FLAT_BUFFER_LEN`] gets one of its own), and each buffer stepped in four
//! kernel launches whatever its number of tensors, as apex's multi-tensor LAMB does. The result is
//! the plain step's (`tests/tests/fused_lamb_wgpu.rs` compares them).
//!
//! The moments stay in their flat buffers between steps (the optimizer's map holds views of
//! them); the values and gradients are laid end to end at each step, since burn keeps every
//! parameter and gradient in a buffer of its own.

use std::ops::Range;

use bert_shaders::lamb::{FlatLambState, FlatLayout, LambCoefficients, Segment};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::{Lamb, Moments, NamedParam};

/// Elements of one flat buffer at most: 128 MiB of float32, WebGPU's default largest storage
/// binding (wgpu refuses larger buffers).
const FLAT_BUFFER_LEN: usize = 1 << 25;

/// Both moments of every parameter as the kernels left them, one pair of flat buffers per
/// [`buffer_groups`] group.
#[derive(Debug, Clone)]
pub(super) struct FlatMoments<B: Backend> {
    /// Name and length of each parameter, in order: the next step reuses the buffers only for
    /// the same parameters.
    segments: Vec<(String, usize)>,
    /// `(exp_avg, exp_avg_sq)` of each group.
    buffers: Vec<(Tensor<B, 1>, Tensor<B, 1>)>,
}

/// The tensors (by index) of each flat buffer: consecutive runs of at most [`FLAT_BUFFER_LEN`]
/// elements, or one tensor alone when it is larger.
fn buffer_groups(lens: &[usize]) -> Vec<Range<usize>> {
    let mut groups = Vec::new();
    let mut start = 0;
    let mut elements = 0;
    for (index, &len) in lens.iter().enumerate() {
        if index > start && elements + len > FLAT_BUFFER_LEN {
            groups.push(start..index);
            start = index;
            elements = 0;
        }
        elements += len;
    }
    if start < lens.len() {
        groups.push(start..lens.len());
    }
    groups
}

/// The tensors laid end to end.
fn flat<B: Backend>(tensors: impl Iterator<Item = Tensor<B, 1>>) -> Tensor<B, 1> {
    Tensor::cat(tensors.collect(), 0)
}

/// The squared global gradient norm and the gradients laid end to end, one buffer per group;
/// `None` when the kernels cannot run (or there are no gradients).
pub(super) fn squared_grad_norm<B: Backend>(
    params: &[NamedParam<B>],
) -> Option<(Tensor<B, 1>, Vec<Tensor<B, 1>>)> {
    let lens: Vec<usize> = params.iter().map(|p| p.grad.dims()[0]).collect();
    let mut total: Option<Tensor<B, 1>> = None;
    let mut grads = Vec::new();
    for group in buffer_groups(&lens) {
        let segments: Vec<Segment> = lens[group.clone()]
            .iter()
            .map(|&len| Segment {
                len,
                weight_decay: 0.0,
                trust_ratio: false,
            })
            .collect();
        let layout = FlatLayout::new(&segments)?;
        let grad = flat(params[group].iter().map(|p| p.grad.clone()));
        let squared = bert_shaders::lamb::squared_norm(&grad, &layout)?;
        total = Some(match total {
            Some(total) => total + squared,
            None => squared,
        });
        grads.push(grad);
    }
    Some((total?, grads))
}

impl<B: Backend> Lamb<B> {
    /// The step's new values as the kernels compute them, the moments updated; `flat_grads`: the
    /// gradients already laid end to end by [`squared_grad_norm`]. `None`, and nothing changed,
    /// when the kernels cannot run.
    pub(super) fn step_fused(
        &mut self,
        params: &[NamedParam<B>],
        flat_grads: Option<Vec<Tensor<B, 1>>>,
        clip_divisor: &Tensor<B, 1>,
        coefficients: &LambCoefficients,
    ) -> Option<Vec<Tensor<B, 1>>> {
        let lens: Vec<usize> = params.iter().map(|p| p.value.dims()[0]).collect();
        let groups = buffer_groups(&lens);
        let key: Vec<(String, usize)> = params
            .iter()
            .zip(&lens)
            .map(|(param, &len)| (param.name.clone(), len))
            .collect();
        let previous = self.flat_moments.take().filter(|m| m.segments == key);
        let flat_grads = flat_grads.filter(|grads| grads.len() == groups.len());
        let mut steps = Vec::with_capacity(groups.len());
        for (index, group) in groups.iter().enumerate() {
            let group_params = &params[group.clone()];
            let segments: Vec<Segment> = group_params
                .iter()
                .map(|param| {
                    let weight_decay = self.weight_decay(&param.name);
                    Segment {
                        len: param.value.dims()[0],
                        weight_decay: weight_decay as f32,
                        trust_ratio: self.trust_ratio_applies(weight_decay),
                    }
                })
                .collect();
            let layout = FlatLayout::new(&segments)?;
            let (exp_avg, exp_avg_sq) = match &previous {
                Some(moments) => moments.buffers[index].clone(),
                None => {
                    let (exp_avg, exp_avg_sq): (Vec<_>, Vec<_>) = group_params
                        .iter()
                        .map(|param| match self.moments.get(&param.name) {
                            Some(m) => (m.exp_avg.clone(), m.exp_avg_sq.clone()),
                            None => (param.value.zeros_like(), param.value.zeros_like()),
                        })
                        .unzip();
                    (flat(exp_avg.into_iter()), flat(exp_avg_sq.into_iter()))
                }
            };
            let state = FlatLambState {
                value: flat(group_params.iter().map(|p| p.value.clone())),
                exp_avg,
                exp_avg_sq,
            };
            let grad = match &flat_grads {
                Some(grads) => grads[index].clone(),
                None => flat(group_params.iter().map(|p| p.grad.clone())),
            };
            steps.push(bert_shaders::lamb::lamb_step(
                &grad,
                &state,
                clip_divisor,
                &layout,
                coefficients,
            )?);
        }
        // Every group ran: the new values and moments are views of the new buffers.
        let mut values = Vec::with_capacity(params.len());
        let mut buffers = Vec::with_capacity(groups.len());
        for (group, next) in groups.into_iter().zip(steps) {
            let mut offset = 0;
            for (param, &len) in params[group.clone()].iter().zip(&lens[group]) {
                let range = offset..offset + len;
                offset = range.end;
                values.push(next.value.clone().slice([range.clone()]));
                self.moments.insert(
                    param.name.clone(),
                    Moments {
                        exp_avg: next.exp_avg.clone().slice([range.clone()]),
                        exp_avg_sq: next.exp_avg_sq.clone().slice([range]),
                    },
                );
            }
            buffers.push((next.exp_avg, next.exp_avg_sq));
        }
        self.flat_moments = Some(FlatMoments {
            segments: key,
            buffers,
        });
        Some(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_hold_runs_of_tensors_up_to_the_limit() {
        let big = FLAT_BUFFER_LEN;
        assert_eq!(buffer_groups(&[]), Vec::<Range<usize>>::new());
        assert_eq!(buffer_groups(&[3, 5, 7]), vec![0..3usize]);
        assert_eq!(buffer_groups(&[big - 10, 10, 1]), [0..2, 2..3]);
        // A tensor over the limit gets a buffer of its own.
        assert_eq!(buffer_groups(&[5, big + 1, 5]), [0..1, 1..2, 2..3]);
        assert_eq!(buffer_groups(&[big + 1]), vec![0..1usize]);
    }
}
