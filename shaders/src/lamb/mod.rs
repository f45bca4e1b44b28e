//! NVLAMB over all parameters at once: a buffer of parameters is stepped in five kernel launches
//! ([`squared_norm`]: two, [`lamb_step`]: three) whatever its number of tensors, where the plain
//! tensor step launches about eight per tensor; [`lay_out`] gathers the separate tensors into a
//! buffer, as many per launch as a kernel can bind (27 on lavapipe, 32 on CUDA).
//!
//! The parameters, gradients and moments lie in flat buffers, one tensor after the other, as a
//! [`FlatLayout`] describes; each tensor is split into chunks of at most 4096 elements so a chunk
//! never straddles two tensors, which is what lets one launch compute every tensor's own norms.
//! Each tensor starts at a multiple of [`ALIGNMENT`] elements, so taking it back out of a buffer
//! is a view, not a copy.

#[cfg(feature = "gpu")]
pub(crate) mod kernels;

use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// Elements of one chunk at most.
const CHUNK_LEN: usize = 4096;

/// Each tensor starts at a multiple of this many elements in the flat buffers (256 bytes of
/// float32: burn's GPU backends slice a buffer without copying only at aligned offsets, and 256
/// bytes is WebGPU's offset alignment). The elements between tensors are never read.
pub const ALIGNMENT: usize = 64;

/// One parameter tensor in the flat buffers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Segment {
    /// Its number of elements.
    pub len: usize,
    /// Its decoupled weight decay (0 for biases and LayerNorm).
    pub weight_decay: f32,
    /// Whether its step is scaled by the trust ratio `||w|| / ||u||`.
    pub trust_ratio: bool,
}

/// Where each parameter tensor lies in the flat buffers, and their chunks, as the kernels read
/// them. Cloning one is cheap (its tables are shared): every kernel call takes its own.
#[derive(Debug, Clone, PartialEq)]
pub struct FlatLayout {
    tables: Arc<LayoutTables>,
}

/// The tables of a [`FlatLayout`].
#[derive(Debug, PartialEq)]
struct LayoutTables {
    /// Elements of a buffer, the gaps between tensors included.
    len: usize,
    /// Where each tensor starts.
    offsets: Vec<usize>,
    /// Each tensor's number of elements.
    lens: Vec<usize>,
    /// `[tensor, start, end)` of each chunk.
    chunks: Vec<u32>,
    /// `[first chunk, end chunk, trust ratio applies]` of each tensor.
    tensors: Vec<u32>,
    /// Weight decay of each tensor.
    weight_decay: Vec<f32>,
}

impl FlatLayout {
    /// The layout of `segments` one after the other (each at the next multiple of
    /// [`ALIGNMENT`]), or `None` when the buffers would be too long for 32-bit offsets.
    pub fn new(segments: &[Segment]) -> Option<Self> {
        let mut chunks = Vec::new();
        let mut tensors = Vec::with_capacity(segments.len() * 3);
        let mut offsets = Vec::with_capacity(segments.len());
        let mut offset = 0usize;
        for (tensor, segment) in segments.iter().enumerate() {
            offsets.push(offset);
            let first_chunk = chunks.len() / 3;
            let end = offset + segment.len;
            let mut start = offset;
            while start < end {
                let chunk_end = (start + CHUNK_LEN).min(end);
                chunks.extend([tensor as u32, start as u32, chunk_end as u32]);
                start = chunk_end;
            }
            tensors.extend([
                first_chunk as u32,
                (chunks.len() / 3) as u32,
                u32::from(segment.trust_ratio),
            ]);
            offset = end.next_multiple_of(ALIGNMENT);
        }
        u32::try_from(offset).ok()?;
        let tables = LayoutTables {
            len: offset,
            offsets,
            lens: segments.iter().map(|s| s.len).collect(),
            chunks,
            tensors,
            weight_decay: segments.iter().map(|s| s.weight_decay).collect(),
        };
        Some(Self {
            tables: Arc::new(tables),
        })
    }

    /// The layout of tensors of these lengths that are only copied and summed, not stepped (no
    /// weight decay, no trust ratio): the gradients and losses of an all-reduce.
    pub fn of_lengths(lens: impl IntoIterator<Item = usize>) -> Option<Self> {
        let segments: Vec<Segment> = lens
            .into_iter()
            .map(|len| Segment {
                len,
                weight_decay: 0.0,
                trust_ratio: false,
            })
            .collect();
        Self::new(&segments)
    }

    /// Elements of a buffer, the gaps between tensors included.
    pub fn len(&self) -> usize {
        self.tables.len
    }

    /// Where each tensor starts in a buffer.
    pub fn offsets(&self) -> &[usize] {
        &self.tables.offsets
    }

    /// Each tensor's number of elements.
    pub fn segment_lens(&self) -> impl Iterator<Item = usize> + '_ {
        self.tables.lens.iter().copied()
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.tables.len == 0
    }

    /// Number of parameter tensors.
    pub fn tensors(&self) -> usize {
        self.tables.weight_decay.len()
    }

    /// Number of chunks.
    #[cfg(feature = "gpu")]
    pub(crate) fn chunks(&self) -> usize {
        self.tables.chunks.len() / 3
    }

    /// `[tensor, start, end)` of each chunk.
    #[cfg(any(feature = "gpu", test))]
    pub(crate) fn chunk_table(&self) -> &[u32] {
        &self.tables.chunks
    }

    /// `[first chunk, end chunk, trust ratio applies]` of each tensor.
    #[cfg(any(feature = "gpu", test))]
    pub(crate) fn tensor_table(&self) -> &[u32] {
        &self.tables.tensors
    }

    /// Weight decay of each tensor.
    #[cfg(feature = "gpu")]
    pub(crate) fn weight_decays(&self) -> &[f32] {
        &self.tables.weight_decay
    }
}

/// The step's constants, as the plain-tensor NVLAMB computes them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LambCoefficients {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to `sqrt(v_hat)`.
    pub eps: f64,
    /// `1 - beta1^t` (1 without bias correction).
    pub correction1: f64,
    /// `1 - beta2^t` (1 without bias correction).
    pub correction2: f64,
    /// This step's learning rate.
    pub learning_rate: f64,
}

impl LambCoefficients {
    /// As the kernels read them: beta1, 1 - beta1, beta2, 1 - beta2, the two corrections, eps,
    /// learning rate.
    #[cfg(feature = "gpu")]
    pub(crate) fn as_f32(&self) -> [f32; 8] {
        [
            self.beta1 as f32,
            (1.0 - self.beta1) as f32,
            self.beta2 as f32,
            (1.0 - self.beta2) as f32,
            self.correction1 as f32,
            self.correction2 as f32,
            self.eps as f32,
            self.learning_rate as f32,
        ]
    }
}

/// A parameter buffer and its two moments, laid out as a [`FlatLayout`] says.
#[derive(Debug, Clone)]
pub struct FlatLambState<B: Backend> {
    /// Parameter values.
    pub value: Tensor<B, 1>,
    /// First moment `m`.
    pub exp_avg: Tensor<B, 1>,
    /// Second moment `v`.
    pub exp_avg_sq: Tensor<B, 1>,
}

/// Whether the kernels run on float32 tensors of backend `B` on `tensor`'s device (a GPU backend
/// whose feature is on, on a device that binds enough buffers per kernel).
pub fn runs_on<B: Backend>(tensor: &Tensor<B, 1>) -> bool {
    #[cfg(feature = "gpu")]
    {
        crate::backend::runs_on(tensor)
    }
    #[cfg(not(feature = "gpu"))]
    {
        let _ = tensor;
        false
    }
}

/// `tensors`, one per segment of `layout`, copied into a new flat buffer laid out as `layout`
/// says (the gaps between tensors unwritten), in a few launches whatever their number. `None`
/// when the kernels do not run there (see [`runs_on`]) or the tensors do not fit the layout.
pub fn lay_out<B: Backend>(tensors: &[Tensor<B, 1>], layout: &FlatLayout) -> Option<Tensor<B, 1>> {
    let fits = tensors.len() == layout.tensors()
        && tensors
            .iter()
            .zip(layout.segment_lens())
            .all(|(tensor, len)| tensor.dims()[0] == len);
    if !fits || tensors.is_empty() {
        return None;
    }
    #[cfg(feature = "gpu")]
    {
        let inputs: Vec<&Tensor<B, 1>> = tensors.iter().collect();
        let [flat] = crate::backend::run(&inputs, crate::backend::FusedOp::LayOut(layout.clone()))?
            .try_into()
            .ok()?;
        Some(flat)
    }
    #[cfg(not(feature = "gpu"))]
    {
        None
    }
}

/// `sum(values^2)` as a `[1]` tensor: one launch summing each chunk, one summing the chunks.
/// `None` when the kernels do not run there (see [`runs_on`]).
pub fn squared_norm<B: Backend>(
    values: &Tensor<B, 1>,
    layout: &FlatLayout,
) -> Option<Tensor<B, 1>> {
    #[cfg(feature = "gpu")]
    {
        let [norm] = crate::backend::run(
            &[values],
            crate::backend::FusedOp::SquaredNorm(layout.clone()),
        )?
        .try_into()
        .ok()?;
        Some(norm)
    }
    #[cfg(not(feature = "gpu"))]
    {
        let _ = (values, layout);
        None
    }
}

/// One NVLAMB step over every parameter: `grad` is divided by `clip_divisor` (`[1]`, the global
/// clip times any loss scale), the moments advance, each tensor's update is scaled by the learning
/// rate and, where it applies, its trust ratio. Returns the new state, or
/// `None` when the kernels do not run there (see [`runs_on`]).
pub fn lamb_step<B: Backend>(
    grad: &Tensor<B, 1>,
    state: &FlatLambState<B>,
    clip_divisor: &Tensor<B, 1>,
    layout: &FlatLayout,
    coefficients: &LambCoefficients,
) -> Option<FlatLambState<B>> {
    #[cfg(feature = "gpu")]
    {
        let [value, exp_avg, exp_avg_sq] = crate::backend::run(
            &[
                grad,
                &state.value,
                &state.exp_avg,
                &state.exp_avg_sq,
                clip_divisor,
            ],
            crate::backend::FusedOp::LambStep(layout.clone(), coefficients.as_f32()),
        )?
        .try_into()
        .ok()?;
        Some(FlatLambState {
            value,
            exp_avg,
            exp_avg_sq,
        })
    }
    #[cfg(not(feature = "gpu"))]
    {
        let _ = (grad, state, clip_divisor, layout, coefficients);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_start_aligned_and_chunks_never_straddle_them() {
        let layout = FlatLayout::new(&[
            Segment {
                len: 5000,
                weight_decay: 0.01,
                trust_ratio: true,
            },
            Segment {
                len: 3,
                weight_decay: 0.0,
                trust_ratio: false,
            },
            Segment {
                len: 4096,
                weight_decay: 0.01,
                trust_ratio: true,
            },
        ])
        .unwrap();
        // 5000 -> 5056 and 5059 -> 5120: every tensor starts at a multiple of 64.
        assert_eq!(layout.offsets(), [0, 5056, 5120]);
        assert_eq!(layout.len(), 9216);
        assert_eq!(
            layout.chunk_table(),
            [0, 0, 4096, 0, 4096, 5000, 1, 5056, 5059, 2, 5120, 9216]
        );
        assert_eq!(layout.tensor_table(), [0, 2, 1, 2, 3, 0, 3, 4, 1]);
        assert_eq!(layout.tables.weight_decay, [0.01, 0.0, 0.01]);
    }
}
