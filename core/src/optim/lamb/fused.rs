//! The NVLAMB step as bert-shaders' fused kernels: the parameters laid one after the other in
//! flat buffers (a tensor larger than [`FLAT_BUFFER_LEN`] gets one of its own), and each buffer
//! stepped in five kernel launches whatever its number of tensors, as apex's multi-tensor LAMB
//! does. The result is the plain step's (`tests/tests/suite/fused_lamb.rs` compares them).
//!
//! The moments stay in their flat buffers between steps, with the buffers' layouts (so a step
//! over the same parameters builds none), and are cut into tensors only when asked for
//! ([`Lamb::moments`]); the values and gradients are laid out at each step (burn keeps every
//! parameter and gradient in a buffer of its own) by bert-shaders' [`lay_out`], up to 32
//! tensors per launch, and the new values are views of the new buffer.
//!
//! [`lay_out`]: bert_shaders::lamb::lay_out

use std::collections::BTreeMap;
use std::ops::Range;

use bert_shaders::lamb::{FlatLambState, FlatLayout, LambCoefficients, Segment};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::{Lamb, Moments, NamedParam};

/// Elements of one flat buffer at most: 128 MiB of float32, WebGPU's default largest storage
/// binding (wgpu refuses larger buffers).
const FLAT_BUFFER_LEN: usize = 1 << 25;

/// Both moments of every parameter as the kernels left them, one pair of flat buffers per
/// [`buffer_groups`] group, and the groups' layouts, which the next step over the same parameters
/// reuses.
#[derive(Debug, Clone)]
pub(super) struct FlatMoments<B: Backend> {
    /// Name of each parameter, in order: the next step reuses the buffers only for the same
    /// parameters.
    names: Vec<String>,
    /// The layout of each group's buffers (where each parameter lies, and its length).
    layouts: Vec<FlatLayout>,
    /// `(exp_avg, exp_avg_sq)` of each group.
    buffers: Vec<(Tensor<B, 1>, Tensor<B, 1>)>,
}

impl<B: Backend> FlatMoments<B> {
    /// Each parameter's name, buffer group and range in that group's buffers, in order.
    fn placements(&self) -> impl Iterator<Item = (&str, usize, Range<usize>)> + '_ {
        let ranges = self
            .layouts
            .iter()
            .enumerate()
            .flat_map(|(buffer, layout)| {
                layout
                    .offsets()
                    .iter()
                    .zip(layout.segment_lens())
                    .map(move |(&offset, len)| (buffer, offset..offset + len))
            });
        self.names
            .iter()
            .zip(ranges)
            .map(|(name, (buffer, range))| (name.as_str(), buffer, range))
    }

    /// The moments by parameter name.
    pub(super) fn to_map(&self) -> BTreeMap<String, Moments<B>> {
        self.placements()
            .map(|(name, buffer, range)| {
                let (exp_avg, exp_avg_sq) = &self.buffers[buffer];
                let moments = Moments {
                    exp_avg: exp_avg.clone().slice([range.clone()]),
                    exp_avg_sq: exp_avg_sq.clone().slice([range]),
                };
                (name.to_string(), moments)
            })
            .collect()
    }

    /// Whether these are the moments of exactly `params`, in order.
    fn serves(&self, params: &[NamedParam<B>]) -> bool {
        self.names.len() == params.len()
            && self
                .placements()
                .zip(params)
                .all(|((name, _, range), param)| {
                    name == param.name && range.len() == param.value.dims()[0]
                })
    }
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

/// The tensors (by index) each of `layouts` lays out, one after the other.
fn layout_groups(layouts: &[FlatLayout]) -> Vec<Range<usize>> {
    let mut start = 0;
    layouts
        .iter()
        .map(|layout| {
            start += layout.tensors();
            start - layout.tensors()..start
        })
        .collect()
}

/// The squared global gradient norm and the gradients laid out, one buffer per group of
/// `layouts` (the step's, [`Lamb::layouts`]); `None` when the kernels cannot run (or there are no
/// gradients).
pub(super) fn squared_grad_norm<B: Backend>(
    params: &[NamedParam<B>],
    layouts: &[FlatLayout],
) -> Option<(Tensor<B, 1>, Vec<Tensor<B, 1>>)> {
    let mut total: Option<Tensor<B, 1>> = None;
    let mut grads = Vec::new();
    for (group, layout) in layout_groups(layouts).into_iter().zip(layouts) {
        let group_grads: Vec<Tensor<B, 1>> = params[group].iter().map(|p| p.grad.clone()).collect();
        let grad = bert_shaders::lamb::lay_out(&group_grads, layout)?;
        let squared = bert_shaders::lamb::squared_norm(&grad, layout)?;
        total = Some(match total {
            Some(total) => total + squared,
            None => squared,
        });
        grads.push(grad);
    }
    Some((total?, grads))
}

impl<B: Backend> Lamb<B> {
    /// The layout of each buffer group of `params`, with each tensor's weight decay and trust
    /// ratio: the kept moments' layouts when they are of these parameters, else new ones.
    pub(super) fn layouts(&self, params: &[NamedParam<B>]) -> Option<Vec<FlatLayout>> {
        if let Some(flat) = self
            .flat_moments
            .as_ref()
            .filter(|flat| flat.serves(params))
        {
            return Some(flat.layouts.clone());
        }
        let lens: Vec<usize> = params.iter().map(|p| p.value.dims()[0]).collect();
        buffer_groups(&lens)
            .into_iter()
            .map(|group| {
                let segments: Vec<Segment> = params[group]
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
                FlatLayout::new(&segments)
            })
            .collect()
    }

    /// The step's new values as the kernels compute them, the moments updated; `flat_grads`: the
    /// gradients already laid out by [`squared_grad_norm`]. `None`, and nothing changed, when
    /// the kernels cannot run.
    pub(super) fn step_fused(
        &mut self,
        params: &[NamedParam<B>],
        flat_grads: Option<Vec<Tensor<B, 1>>>,
        clip_divisor: &Tensor<B, 1>,
        coefficients: &LambCoefficients,
    ) -> Option<Vec<Tensor<B, 1>>> {
        let device = params.first()?.value.device();
        // The flat moments serve only the same parameters; otherwise the map takes over.
        if let Some(flat) = self.flat_moments.take_if(|flat| !flat.serves(params)) {
            self.moments = flat.to_map();
        }
        let layouts = self.layouts(params)?;
        let groups = layout_groups(&layouts);
        let flat_grads = flat_grads.filter(|grads| grads.len() == groups.len());
        let mut steps = Vec::with_capacity(groups.len());
        for (index, (group, layout)) in groups.iter().zip(&layouts).enumerate() {
            let group_params = &params[group.clone()];
            let (exp_avg, exp_avg_sq) = match &self.flat_moments {
                Some(flat) => flat.buffers[index].clone(),
                // The first step: the moments start at zero (or where a checkpoint left them).
                None if group_params
                    .iter()
                    .all(|param| !self.moments.contains_key(&param.name)) =>
                {
                    let zeros = Tensor::zeros([layout.len()], &device);
                    (zeros.clone(), zeros)
                }
                None => {
                    let (exp_avg, exp_avg_sq): (Vec<_>, Vec<_>) = group_params
                        .iter()
                        .map(|param| match self.moments.get(&param.name) {
                            Some(m) => (m.exp_avg.clone(), m.exp_avg_sq.clone()),
                            None => (param.value.zeros_like(), param.value.zeros_like()),
                        })
                        .unzip();
                    (
                        bert_shaders::lamb::lay_out(&exp_avg, layout)?,
                        bert_shaders::lamb::lay_out(&exp_avg_sq, layout)?,
                    )
                }
            };
            let values: Vec<Tensor<B, 1>> = group_params.iter().map(|p| p.value.clone()).collect();
            let state = FlatLambState {
                value: bert_shaders::lamb::lay_out(&values, layout)?,
                exp_avg,
                exp_avg_sq,
            };
            let grad = match &flat_grads {
                Some(grads) => grads[index].clone(),
                None => {
                    let grads: Vec<Tensor<B, 1>> =
                        group_params.iter().map(|p| p.grad.clone()).collect();
                    bert_shaders::lamb::lay_out(&grads, layout)?
                }
            };
            steps.push(bert_shaders::lamb::lamb_step(
                &grad,
                &state,
                clip_divisor,
                layout,
                coefficients,
            )?);
        }
        // Every group ran: the new values are views of the new buffers, which keep the moments.
        let mut values = Vec::with_capacity(params.len());
        let mut buffers = Vec::with_capacity(groups.len());
        for ((group, layout), next) in groups.into_iter().zip(&layouts).zip(steps) {
            for (param, &offset) in params[group].iter().zip(layout.offsets()) {
                let range = offset..offset + param.value.dims()[0];
                values.push(next.value.clone().slice([range]));
            }
            buffers.push((next.exp_avg, next.exp_avg_sq));
        }
        self.moments.clear();
        self.flat_moments = Some(FlatMoments {
            names: params.iter().map(|param| param.name.clone()).collect(),
            layouts,
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
