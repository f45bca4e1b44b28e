//! The kernels on float32 slices, row-major, threaded with rayon: LayerNorm (with the residual
//! sum folded in), GELU, and scaled dot-product attention over all heads (products by the `gemm`
//! crate on strided views, so the heads are never split out into copies), each with its backward
//! pass; and dropout keep masks.
//!
//! Every result is independent of the number of threads: work is cut into pieces of a fixed
//! size, each piece computed in one fixed order, and sums across pieces (the LayerNorm parameter
//! gradients) added in piece order.

use rayon::prelude::*;

use super::math::{self, vectorized};

/// Rows per parallel task in the row-wise kernels.
const ROWS_PER_TASK: usize = 16;
/// Elements per parallel task of the element-wise kernels.
const ELEMENTS_PER_TASK: usize = 1 << 14;
/// Interleaved partial sums in a reduction: enough for a 512-bit vector of float32.
const LANES: usize = 16;

/// `Σ f(i)` for `i < len`, accumulated in [`LANES`] interleaved partial sums (which vectorises,
/// and rounds the same way every time).
#[inline(always)]
fn sum_by(len: usize, f: impl Fn(usize) -> f32) -> f32 {
    let mut partial = [0.0f32; LANES];
    let whole = len - len % LANES;
    for start in (0..whole).step_by(LANES) {
        for (lane, sum) in partial.iter_mut().enumerate() {
            *sum += f(start + lane);
        }
    }
    let mut total = partial.iter().sum::<f32>();
    for i in whole..len {
        total += f(i);
    }
    total
}

/// LayerNorm's parameters: `y = gamma · (x - mean) / sqrt(var + epsilon) + beta` over each row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LayerNormWeights<'a> {
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub epsilon: f32,
}

/// What the backward pass of [`layer_norm`] needs: each row normalised (before `gamma`, `beta`)
/// and its `1 / sqrt(var + epsilon)`.
#[derive(Debug, Clone)]
pub(crate) struct LayerNormSaved {
    pub normalized: Vec<f32>,
    pub inverse_std: Vec<f32>,
}

/// LayerNorm over rows of `weights.gamma.len()` of `input` (plus `residual`, added first), with
/// the mean and the biased variance computed in two passes (centred, so rows with a large mean
/// keep their precision). Also returns what the backward pass needs when `for_backward`.
pub(crate) fn layer_norm(
    input: &[f32],
    residual: Option<&[f32]>,
    weights: LayerNormWeights,
    for_backward: bool,
) -> (Vec<f32>, Option<LayerNormSaved>) {
    let width = weights.gamma.len();
    let rows = input.len() / width;
    let mut output = vec![0.0; input.len()];
    let mut saved = for_backward.then(|| LayerNormSaved {
        normalized: vec![0.0; input.len()],
        inverse_std: vec![0.0; rows],
    });
    let block = ROWS_PER_TASK * width;
    let tasks = output.par_chunks_mut(block).enumerate();
    let run = |task: usize, output: &mut [f32], saved: Option<(&mut [f32], &mut [f32])>| {
        let range = task * block..task * block + output.len();
        layer_norm_rows(
            Some(&input[range.clone()]),
            residual.map(|r| &r[range]),
            weights,
            output,
            saved,
        );
    };
    match saved.as_mut() {
        Some(saved) => tasks
            .zip(saved.normalized.par_chunks_mut(block))
            .zip(saved.inverse_std.par_chunks_mut(ROWS_PER_TASK))
            .for_each(|(((task, output), normalized), inverse_std)| {
                run(task, output, Some((normalized, inverse_std)))
            }),
        None => tasks.for_each(|(task, output)| run(task, output, None)),
    }
    (output, saved)
}

/// [`layer_norm`] written over its input (inference: nothing is kept for a backward pass), the
/// same values without a new buffer.
pub(crate) fn layer_norm_in_place(
    values: &mut [f32],
    residual: Option<&[f32]>,
    weights: LayerNormWeights,
) {
    let block = ROWS_PER_TASK * weights.gamma.len();
    values
        .par_chunks_mut(block)
        .enumerate()
        .for_each(|(task, values)| {
            let range = task * block..task * block + values.len();
            layer_norm_rows(None, residual.map(|r| &r[range]), weights, values, None);
        });
}

vectorized! {
    /// LayerNorm of the rows of `input` (plus `residual`) into `output`; of `output` itself (plus
    /// `residual`) when there is no `input`.
    fn layer_norm_rows(
        input: Option<&[f32]>,
        residual: Option<&[f32]>,
        weights: LayerNormWeights,
        output: &mut [f32],
        saved: Option<(&mut [f32], &mut [f32])>,
    ) {
        let width = weights.gamma.len();
        let mut saved = saved;
        for (row, out) in output.chunks_exact_mut(width).enumerate() {
            let rows = row * width..(row + 1) * width;
            match (input.map(|x| &x[rows.clone()]), residual.map(|r| &r[rows])) {
                (Some(x), Some(r)) => {
                    for ((o, &a), &b) in out.iter_mut().zip(x).zip(r) {
                        *o = a + b;
                    }
                }
                (Some(x), None) => out.copy_from_slice(x),
                (None, Some(r)) => {
                    for (o, &b) in out.iter_mut().zip(r) {
                        *o += b;
                    }
                }
                (None, None) => {}
            }
            let mean = sum_by(width, |i| out[i]) / width as f32;
            let variance = sum_by(width, |i| (out[i] - mean) * (out[i] - mean)) / width as f32;
            let inverse_std = 1.0 / (variance + weights.epsilon).sqrt();
            if let Some((normalized, inverse_stds)) = saved.as_mut() {
                inverse_stds[row] = inverse_std;
                for (n, &o) in normalized[row * width..(row + 1) * width].iter_mut().zip(out.iter()) {
                    *n = (o - mean) * inverse_std;
                }
            }
            for ((o, &g), &b) in out.iter_mut().zip(weights.gamma).zip(weights.beta) {
                *o = (*o - mean) * inverse_std * g + b;
            }
        }
    }
}

/// Gradients of [`layer_norm`]: with respect to its input (and residual: the same), `gamma` and
/// `beta`.
pub(crate) fn layer_norm_backward(
    grad_output: &[f32],
    gamma: &[f32],
    saved: &LayerNormSaved,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let width = gamma.len();
    let block = ROWS_PER_TASK * width;
    let mut grad_input = vec![0.0; grad_output.len()];
    let partial_sums: Vec<(Vec<f32>, Vec<f32>)> = grad_input
        .par_chunks_mut(block)
        .enumerate()
        .map(|(task, grad_input)| {
            let range = task * block..task * block + grad_input.len();
            let mut sums = (vec![0.0; width], vec![0.0; width]);
            layer_norm_backward_rows(
                &grad_output[range.clone()],
                gamma,
                &saved.normalized[range],
                &saved.inverse_std[task * ROWS_PER_TASK..],
                grad_input,
                (&mut sums.0, &mut sums.1),
            );
            sums
        })
        .collect();
    let mut grad_gamma = vec![0.0; width];
    let mut grad_beta = vec![0.0; width];
    for (gamma_sum, beta_sum) in partial_sums {
        for (total, part) in grad_gamma.iter_mut().zip(gamma_sum) {
            *total += part;
        }
        for (total, part) in grad_beta.iter_mut().zip(beta_sum) {
            *total += part;
        }
    }
    (grad_input, grad_gamma, grad_beta)
}

vectorized! {
    fn layer_norm_backward_rows(
        grad_output: &[f32],
        gamma: &[f32],
        normalized: &[f32],
        inverse_std: &[f32],
        grad_input: &mut [f32],
        sums: (&mut [f32], &mut [f32]),
    ) {
        let width = gamma.len();
        let (grad_gamma, grad_beta) = sums;
        for (row, dx) in grad_input.chunks_exact_mut(width).enumerate() {
            let g = &grad_output[row * width..(row + 1) * width];
            let n = &normalized[row * width..(row + 1) * width];
            for i in 0..width {
                grad_gamma[i] += g[i] * n[i];
                grad_beta[i] += g[i];
            }
            // dx = (dn - mean(dn) - n · mean(dn · n)) / std, with dn = g · gamma.
            let mean_dn = sum_by(width, |i| g[i] * gamma[i]) / width as f32;
            let mean_dn_n = sum_by(width, |i| g[i] * gamma[i] * n[i]) / width as f32;
            for i in 0..width {
                dx[i] = (g[i] * gamma[i] - mean_dn - n[i] * mean_dn_n) * inverse_std[row];
            }
        }
    }
}

/// GELU (exact error function) of every element.
pub(crate) fn gelu(input: &[f32]) -> Vec<f32> {
    let mut output = vec![0.0; input.len()];
    output
        .par_chunks_mut(ELEMENTS_PER_TASK)
        .zip(input.par_chunks(ELEMENTS_PER_TASK))
        .for_each(|(y, x)| gelu_elements(x, y));
    output
}

/// [`gelu`] written over its input (inference), the same values without a new buffer.
pub(crate) fn gelu_in_place(values: &mut [f32]) {
    values
        .par_chunks_mut(ELEMENTS_PER_TASK)
        .for_each(gelu_elements_in_place);
}

vectorized! {
    fn gelu_elements<M>(x: &[f32], y: &mut [f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = math::gelu::<M>(x);
        }
    }
}

vectorized! {
    fn gelu_elements_in_place<M>(x: &mut [f32]) {
        for x in x.iter_mut() {
            *x = math::gelu::<M>(*x);
        }
    }
}

/// The gradient of [`gelu`] at `input`.
pub(crate) fn gelu_backward(input: &[f32], grad_output: &[f32]) -> Vec<f32> {
    let mut grad_input = vec![0.0; input.len()];
    grad_input
        .par_chunks_mut(ELEMENTS_PER_TASK)
        .zip(input.par_chunks(ELEMENTS_PER_TASK))
        .zip(grad_output.par_chunks(ELEMENTS_PER_TASK))
        .for_each(|((dx, x), g)| gelu_backward_elements(x, g, dx));
    grad_input
}

vectorized! {
    fn gelu_backward_elements<M>(x: &[f32], g: &[f32], dx: &mut [f32]) {
        for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(g) {
            *dx = g * math::gelu_derivative::<M>(x);
        }
    }
}

/// A dropout keep mask of `len` elements: 1 where kept (with probability `keep_threshold / 2²⁴`),
/// else 0. Element `i` is decided by a hash of `(key, i)` alone (SplitMix64's finaliser over a
/// Weyl sequence, two independent keys), so the mask is the same on any number of threads.
pub(crate) fn keep_mask(len: usize, key: [u64; 2], keep_threshold: u32) -> Vec<f32> {
    let mut mask = vec![0.0; len];
    mask.par_chunks_mut(ELEMENTS_PER_TASK)
        .enumerate()
        .for_each(|(task, piece)| {
            let first = (task * ELEMENTS_PER_TASK) as u64;
            keep_mask_piece(piece, first, key, keep_threshold);
        });
    mask
}

vectorized! {
    fn keep_mask_piece(mask: &mut [f32], first: u64, key: [u64; 2], keep_threshold: u32) {
        for (i, keep) in (first..).zip(mask.iter_mut()) {
            let mut z = key[0].wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)) ^ key[1];
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            *keep = if ((z >> 40) as u32) < keep_threshold { 1.0 } else { 0.0 };
        }
    }
}

/// The sizes of a multi-head attention: `[batch, seq, heads · head_size]` queries, keys, values
/// and context, `[batch, heads, seq, seq]` probabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AttentionShape {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_size: usize,
}

impl AttentionShape {
    fn hidden(&self) -> usize {
        self.heads * self.head_size
    }

    /// `[S, head_size]` of head `h` of sequence `b` in a `[B, S, H]` tensor.
    fn head<'a>(&self, data: &'a [f32], task: usize) -> MatRef<'a> {
        let (b, h) = (task / self.heads, task % self.heads);
        MatRef {
            data,
            offset: b * self.seq * self.hidden() + h * self.head_size,
            rows: self.seq,
            cols: self.head_size,
            row_stride: self.hidden(),
            col_stride: 1,
        }
    }

    /// The same block of a `[B, S, H]` output, for one task to write.
    fn head_mut(&self, data: &SharedOutput, task: usize) -> MatMut {
        let (b, h) = (task / self.heads, task % self.heads);
        MatMut {
            data: *data,
            offset: b * self.seq * self.hidden() + h * self.head_size,
            rows: self.seq,
            cols: self.head_size,
            row_stride: self.hidden(),
            col_stride: 1,
        }
    }

    /// A `[S, S]` matrix stored row-major in `data`.
    fn square<'a>(&self, data: &'a [f32]) -> MatRef<'a> {
        MatRef {
            data,
            offset: 0,
            rows: self.seq,
            cols: self.seq,
            row_stride: self.seq,
            col_stride: 1,
        }
    }
}

/// The attention's inputs: queries, keys and values `[B, S, H]`, the additive bias of every key
/// `[B, S]` (0 or -10000), and in training the dropout on the probabilities: its `[B, heads, S,
/// S]` keep mask (0 or 1) and the `1 / (1 - p)` the kept ones are scaled by.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttentionInputs<'a> {
    pub query: &'a [f32],
    pub key: &'a [f32],
    pub value: &'a [f32],
    pub key_bias: &'a [f32],
    pub dropout: Option<(&'a [f32], f32)>,
    pub shape: AttentionShape,
}

impl AttentionInputs<'_> {
    fn scale(&self) -> f32 {
        1.0 / (self.shape.head_size as f32).sqrt()
    }
}

/// `softmax(Q·Kᵀ / sqrt(head_size) + bias) · V` per head (the probabilities dropped out in
/// training), the heads' contexts side by side as `[B, S, H]`; with the probabilities `[B,
/// heads, S, S]` (before dropout) when `keep_probabilities`, for the backward pass.
pub(crate) fn attention(
    inputs: AttentionInputs,
    keep_probabilities: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let shape = inputs.shape;
    let square = shape.seq * shape.seq;
    let tasks = shape.batch * shape.heads;
    let mut context = vec![0.0; shape.batch * shape.seq * shape.hidden()];
    let output = SharedOutput::new(&mut context);
    let head = |task: usize, probabilities: &mut [f32], dropped: &mut Vec<f32>| {
        let b = task / shape.heads;
        gemm(
            MatMut::of(probabilities, shape.seq, shape.seq),
            shape.head(inputs.query, task),
            shape.head(inputs.key, task).transposed(),
            inputs.scale(),
        );
        softmax_rows(
            probabilities,
            &inputs.key_bias[b * shape.seq..(b + 1) * shape.seq],
        );
        let weights = match inputs.dropout {
            Some((keep, scale)) => {
                dropped.resize(square, 0.0);
                drop_out(
                    probabilities,
                    &keep[task * square..(task + 1) * square],
                    scale,
                    dropped,
                );
                &dropped[..]
            }
            None => &probabilities[..],
        };
        gemm(
            shape.head_mut(&output, task),
            shape.square(weights),
            shape.head(inputs.value, task),
            1.0,
        );
    };
    if keep_probabilities {
        let mut probabilities = vec![0.0; tasks * square];
        probabilities
            .par_chunks_mut(square)
            .enumerate()
            .for_each_init(Vec::new, |dropped, (task, p)| head(task, p, dropped));
        (context, Some(probabilities))
    } else {
        // One run of heads per thread, so that each allocates its scratch once.
        let heads_per_thread = tasks.div_ceil(rayon::current_num_threads());
        (0..tasks)
            .into_par_iter()
            .with_min_len(heads_per_thread)
            .for_each_init(
                || (vec![0.0; square], Vec::new()),
                |(probabilities, dropped), task| head(task, probabilities, dropped),
            );
        (context, None)
    }
}

vectorized! {
    /// Each row of `scores` plus `bias`, through a softmax: three passes over a row (bias and
    /// maximum, exponentials and their sum, the division).
    fn softmax_rows<M>(scores: &mut [f32], bias: &[f32]) {
        for row in scores.chunks_exact_mut(bias.len()) {
            let max = add_and_max(row, bias);
            // One division per row, then products (as PyTorch's CPU softmax does).
            let inverse_total = 1.0 / exp_and_sum::<M>(row, max);
            for s in row.iter_mut() {
                *s *= inverse_total;
            }
        }
    }
}

/// `row += bias`, returning the largest element of the non-empty result. The maximum is taken
/// over four vectors of partial maxima at once (no long chain of dependent instructions; a
/// maximum is exact in any order).
#[inline(always)]
fn add_and_max(row: &mut [f32], bias: &[f32]) -> f32 {
    const WIDTH: usize = 4 * LANES;
    let mut partial = [f32::NEG_INFINITY; WIDTH];
    let mut rows = row.chunks_exact_mut(WIDTH);
    let mut biases = bias.chunks_exact(WIDTH);
    for (chunk, bias) in (&mut rows).zip(&mut biases) {
        for ((max, s), &b) in partial.iter_mut().zip(chunk).zip(bias) {
            *s += b;
            *max = larger(*max, *s);
        }
    }
    let mut max = partial.iter().fold(f32::NEG_INFINITY, |a, &b| larger(a, b));
    for (s, &b) in rows.into_remainder().iter_mut().zip(biases.remainder()) {
        *s += b;
        max = larger(max, *s);
    }
    max
}

/// `candidate` if it is larger than `max`, else `max`: `f32::max` for a `max` that is never NaN
/// (a NaN candidate is passed over by both), as one compare-and-select. WebAssembly has no
/// instruction for `f32::max`'s NaN rule, and a vector of them costs 2.6x the select in Chromium.
#[inline(always)]
fn larger(max: f32, candidate: f32) -> f32 {
    if candidate > max {
        candidate
    } else {
        max
    }
}

/// `row = exp(row - max)`, returning the sum of the result accumulated in [`LANES`] interleaved
/// partial sums (the order of [`sum_by`]), in the same pass.
#[inline(always)]
fn exp_and_sum<M: math::MulAdd>(row: &mut [f32], max: f32) -> f32 {
    let mut partial = [0.0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (sum, s) in partial.iter_mut().zip(chunk) {
            *s = math::exp::<M>(*s - max);
            *sum += *s;
        }
    }
    let mut total = partial.iter().sum::<f32>();
    for s in chunks.into_remainder() {
        *s = math::exp::<M>(*s - max);
        total += *s;
    }
    total
}

vectorized! {
    /// `dropped = probabilities · keep · scale`, as burn's `Dropout` computes it.
    fn drop_out(probabilities: &[f32], keep: &[f32], scale: f32, dropped: &mut [f32]) {
        for ((d, &p), &k) in dropped.iter_mut().zip(probabilities).zip(keep) {
            *d = p * k * scale;
        }
    }
}

/// Gradients of [`attention`] with respect to the queries, keys and values, from the gradient of
/// its context and the probabilities it kept.
pub(crate) fn attention_backward(
    inputs: AttentionInputs,
    probabilities: &[f32],
    grad_context: &[f32],
) -> [Vec<f32>; 3] {
    let shape = inputs.shape;
    let square = shape.seq * shape.seq;
    let size = shape.batch * shape.seq * shape.hidden();
    let mut grads = [vec![0.0; size], vec![0.0; size], vec![0.0; size]];
    let [grad_query, grad_key, grad_value] = &mut grads;
    let (grad_query, grad_key, grad_value) = (
        SharedOutput::new(grad_query),
        SharedOutput::new(grad_key),
        SharedOutput::new(grad_value),
    );
    (0..shape.batch * shape.heads)
        .into_par_iter()
        .for_each_init(
            || (vec![0.0; square], vec![0.0; square]),
            |(dropped, grad_scores), task| {
                let probabilities = &probabilities[task * square..(task + 1) * square];
                let keep = inputs
                    .dropout
                    .map(|(keep, scale)| (&keep[task * square..(task + 1) * square], scale));
                let weights = match keep {
                    Some((keep, scale)) => {
                        drop_out(probabilities, keep, scale, dropped);
                        &dropped[..]
                    }
                    None => probabilities,
                };
                let grad_output = shape.head(grad_context, task);
                // dV = Pᵀ · dO, with P the probabilities as they were applied.
                gemm(
                    shape.head_mut(&grad_value, task),
                    shape.square(weights).transposed(),
                    grad_output,
                    1.0,
                );
                // dP = dO · Vᵀ, back through the dropout, then through the softmax:
                // dS = P ⊙ (dP - rowsum(dP ⊙ P)), scaled as the scores were.
                gemm(
                    MatMut::of(grad_scores, shape.seq, shape.seq),
                    grad_output,
                    shape.head(inputs.value, task).transposed(),
                    1.0,
                );
                softmax_backward_rows(grad_scores, probabilities, keep, shape.seq, inputs.scale());
                // dQ = dS · K, dK = dSᵀ · Q.
                gemm(
                    shape.head_mut(&grad_query, task),
                    shape.square(grad_scores),
                    shape.head(inputs.key, task),
                    1.0,
                );
                gemm(
                    shape.head_mut(&grad_key, task),
                    shape.square(grad_scores).transposed(),
                    shape.head(inputs.query, task),
                    1.0,
                );
            },
        );
    grads
}

vectorized! {
    /// `grad` (of the probabilities as applied) to the gradient of the scaled scores.
    fn softmax_backward_rows(
        grad: &mut [f32],
        probabilities: &[f32],
        keep: Option<(&[f32], f32)>,
        width: usize,
        scale: f32,
    ) {
        if let Some((keep, dropout_scale)) = keep {
            for (g, &k) in grad.iter_mut().zip(keep) {
                *g *= k * dropout_scale;
            }
        }
        for (g, p) in grad.chunks_exact_mut(width).zip(probabilities.chunks_exact(width)) {
            let dot = sum_by(width, |i| g[i] * p[i]);
            for (g, &p) in g.iter_mut().zip(p) {
                *g = p * (*g - dot) * scale;
            }
        }
    }
}

/// The sizes of a fully connected layer's product: `[rows, inputs] · [inputs, outputs]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LinearShape {
    /// Positions (batch × sequence).
    pub rows: usize,
    /// Features in.
    pub inputs: usize,
    /// Features out.
    pub outputs: usize,
}

/// Every thread of rayon's pool, for the products of a fully connected layer.
const ALL_THREADS: gemm::Parallelism = gemm::Parallelism::Rayon(0);

/// `x · weight + bias`: `x` `[rows, inputs]`, `weight` `[inputs, outputs]` (burn's `Linear`
/// layout), `bias` `[outputs]`; the bias is written first (on all threads, into memory not
/// zeroed beforehand) and the product added to it, so the result takes one pass over memory, in
/// one product over all threads.
pub(crate) fn linear(
    x: &[f32],
    weight: Weight,
    bias: Option<&[f32]>,
    shape: LinearShape,
) -> Vec<f32> {
    let LinearShape {
        rows,
        inputs,
        outputs,
    } = shape;
    assert!(x.len() == rows * inputs && weight.fits(inputs, outputs));
    let (mut output, accumulate) = match bias {
        Some(bias) => {
            assert_eq!(bias.len(), outputs);
            (repeated_rows(bias, rows), Accumulate::Yes)
        }
        None => (vec![0.0; rows * outputs], Accumulate::No),
    };
    linear_product(&mut output, x, weight, shape, accumulate);
    output
}

/// A fully connected layer's weight `[inputs, outputs]`, as [`linear`] takes it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Weight<'a> {
    /// Its values, row-major (burn's `Linear` layout).
    RowMajor(&'a [f32]),
    /// Packed once for the AVX-512 product (`weight_cache`), which gives the `gemm` crate's bits.
    #[cfg(target_arch = "x86_64")]
    Packed(&'a super::avx512::PackedWeight),
}

impl Weight<'_> {
    /// Whether it is `[inputs, outputs]`.
    fn fits(&self, inputs: usize, outputs: usize) -> bool {
        match self {
            Self::RowMajor(values) => values.len() == inputs * outputs,
            #[cfg(target_arch = "x86_64")]
            Self::Packed(packed) => packed.inputs() == inputs && packed.outputs() == outputs,
        }
    }
}

/// `output (+)= x · weight` for [`linear`], on all threads: by the `gemm` crate, or from the
/// packed weight with the same arithmetic.
#[cfg(not(target_arch = "wasm32"))]
fn linear_product(
    output: &mut [f32],
    x: &[f32],
    weight: Weight,
    shape: LinearShape,
    accumulate: Accumulate,
) {
    let LinearShape {
        rows,
        inputs,
        outputs,
    } = shape;
    let weight = match weight {
        Weight::RowMajor(values) => values,
        #[cfg(target_arch = "x86_64")]
        Weight::Packed(packed) => {
            let accumulate = accumulate == Accumulate::Yes;
            return super::avx512::product(output, x, packed, rows, accumulate);
        }
    };
    product(
        MatMut::of(output, rows, outputs),
        MatRef::row_major(x, rows, inputs),
        MatRef::row_major(weight, inputs, outputs),
        1.0,
        accumulate,
        ALL_THREADS,
    );
}

/// `output += x · weight` for [`linear`] on WebAssembly (`output` holds the bias or zeros), by the
/// 128-bit kernel, faster there than the `gemm` crate's.
#[cfg(target_arch = "wasm32")]
fn linear_product(
    output: &mut [f32],
    x: &[f32],
    weight: Weight,
    shape: LinearShape,
    _accumulate: Accumulate,
) {
    let Weight::RowMajor(weight) = weight;
    super::simd128::product_add(output, x, weight, shape.rows, shape.inputs, shape.outputs);
}

/// `rows` copies of `row`, one after the other, written on all threads.
fn repeated_rows(row: &[f32], rows: usize) -> Vec<f32> {
    let width = row.len();
    let mut output = Vec::with_capacity(rows * width);
    output
        .spare_capacity_mut()
        .par_chunks_mut(ROWS_PER_TASK * width.max(1))
        .for_each(|chunk| {
            for copy in chunk.chunks_exact_mut(width.max(1)) {
                for (element, &value) in copy.iter_mut().zip(row) {
                    element.write(value);
                }
            }
        });
    // SAFETY: the loop above wrote all `rows · width` elements of the spare capacity (chunks of
    // whole rows, every row of every chunk).
    unsafe { output.set_len(rows * width) };
    output
}

/// Gradients of [`linear`] from the output's: with respect to `x` (`grad · weightᵀ`), the weight
/// (`xᵀ · grad`) and the bias (the column sums of `grad`, added in a fixed order).
pub(crate) fn linear_backward(
    x: &[f32],
    weight: &[f32],
    grad_output: &[f32],
    shape: LinearShape,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let LinearShape {
        rows,
        inputs,
        outputs,
    } = shape;
    assert!(
        x.len() == rows * inputs
            && weight.len() == inputs * outputs
            && grad_output.len() == rows * outputs
    );
    let grad = MatRef::row_major(grad_output, rows, outputs);
    let mut grad_x = vec![0.0; rows * inputs];
    product(
        MatMut::of(&mut grad_x, rows, inputs),
        grad,
        MatRef::row_major(weight, inputs, outputs).transposed(),
        1.0,
        Accumulate::No,
        ALL_THREADS,
    );
    let mut grad_weight = vec![0.0; inputs * outputs];
    product(
        MatMut::of(&mut grad_weight, inputs, outputs),
        MatRef::row_major(x, rows, inputs).transposed(),
        grad,
        1.0,
        Accumulate::No,
        ALL_THREADS,
    );
    let grad_bias = column_sums(grad_output, outputs);
    (grad_x, grad_weight, grad_bias)
}

/// The sums of the columns of a row-major matrix `width` wide: rows summed in pieces of
/// [`ROWS_PER_TASK`] in parallel, the pieces' sums then added in order.
fn column_sums(matrix: &[f32], width: usize) -> Vec<f32> {
    let partial_sums: Vec<Vec<f32>> = matrix
        .par_chunks(ROWS_PER_TASK * width)
        .map(|rows| {
            let mut sums = vec![0.0; width];
            for row in rows.chunks_exact(width) {
                for (sum, &x) in sums.iter_mut().zip(row) {
                    *sum += x;
                }
            }
            sums
        })
        .collect();
    let mut sums = vec![0.0; width];
    for part in partial_sums {
        for (sum, x) in sums.iter_mut().zip(part) {
            *sum += x;
        }
    }
    sums
}

/// A matrix in a slice: element `(i, j)` at `offset + i · row_stride + j · col_stride`.
#[derive(Debug, Clone, Copy)]
struct MatRef<'a> {
    data: &'a [f32],
    offset: usize,
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// The whole of `data` as a row-major `rows x cols` matrix.
    fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            offset: 0,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    fn transposed(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// Whether every element lies inside `len` elements.
    fn fits(&self, len: usize) -> bool {
        self.rows == 0
            || self.cols == 0
            || self.offset + (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
                < len
    }
}

/// An output buffer that parallel tasks write disjoint parts of.
#[derive(Debug, Clone, Copy)]
pub(super) struct SharedOutput {
    pub(super) ptr: *mut f32,
    len: usize,
}

// SAFETY: tasks only write through it to parts no other task reads or writes (each attention
// task to its own sequence's rows and head's columns, each AVX-512 product task to its own rows
// and panels), while the buffer's owner waits for them.
unsafe impl Send for SharedOutput {}
// SAFETY: as above.
unsafe impl Sync for SharedOutput {}

impl SharedOutput {
    pub(super) fn new(buffer: &mut [f32]) -> Self {
        Self {
            ptr: buffer.as_mut_ptr(),
            len: buffer.len(),
        }
    }
}

/// A matrix to write in a [`SharedOutput`].
#[derive(Debug, Clone, Copy)]
struct MatMut {
    data: SharedOutput,
    offset: usize,
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl MatMut {
    /// The whole of `buffer` as a row-major `rows x cols` matrix.
    fn of(buffer: &mut [f32], rows: usize, cols: usize) -> Self {
        assert_eq!(buffer.len(), rows * cols);
        Self {
            data: SharedOutput::new(buffer),
            offset: 0,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }
}

/// `dst = scale · lhs · rhs`, on one thread (the callers run many of these in parallel).
fn gemm(dst: MatMut, lhs: MatRef, rhs: MatRef, scale: f32) {
    product(
        dst,
        lhs,
        rhs,
        scale,
        Accumulate::No,
        gemm::Parallelism::None,
    );
}

/// Whether a product adds to what its destination holds or replaces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Accumulate {
    Yes,
    No,
}

/// `dst = scale · lhs · rhs` (or `dst += ...`), on the given threads. The `gemm` crate splits the
/// work by blocks of the result only and sums along the inner dimension in one fixed order, so
/// the result does not depend on the number of threads.
fn product(
    dst: MatMut,
    lhs: MatRef,
    rhs: MatRef,
    scale: f32,
    accumulate: Accumulate,
    parallelism: gemm::Parallelism,
) {
    assert!(lhs.cols == rhs.rows && dst.rows == lhs.rows && dst.cols == rhs.cols);
    if dst.rows == 0 || dst.cols == 0 {
        return;
    }
    assert!(lhs.fits(lhs.data.len()) && rhs.fits(rhs.data.len()));
    let dst_view = MatRef {
        data: &[],
        offset: dst.offset,
        rows: dst.rows,
        cols: dst.cols,
        row_stride: dst.row_stride,
        col_stride: dst.col_stride,
    };
    assert!(dst_view.fits(dst.data.len));
    // SAFETY: every element read lies inside `lhs.data` / `rhs.data` and every element written
    // inside `dst`'s buffer (checked above); `dst` does not overlap the inputs, and no other task
    // touches its part of the buffer (see `SharedOutput`).
    unsafe {
        gemm::gemm(
            dst.rows,
            dst.cols,
            lhs.cols,
            dst.data.ptr.add(dst.offset),
            dst.col_stride as isize,
            dst.row_stride as isize,
            accumulate == Accumulate::Yes,
            lhs.data.as_ptr().add(lhs.offset),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr().add(rhs.offset),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}
