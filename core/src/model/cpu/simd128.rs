//! The fully connected layers' products on WebAssembly's 128-bit vectors (the browser's CPU path),
//! where they take about 60% of a forward pass.
//!
//! The `gemm` crate's wasm micro-kernel keeps 12 accumulators of 12 × 4 results and, with no
//! fused multiply-add in wasm, one more register for each product before its sum: more than the
//! 16 vector registers V8 maps them to on x86. This one keeps 9 (3 rows × 12 columns) and reads the
//! weight from a panel of 12 columns packed side by side, so each step loads three vectors, splats
//! three values and does nine multiplies and nine adds. In Chromium 156 on an AVX-512 Xeon it runs
//! the feed-forward shapes (384 × 384 × 1536 and 384 × 1536 × 384, packing included) at 43-44
//! GFLOP/s against the crate's 34. (The attention's per-head products stay with the crate: a
//! strided version of this kernel measured no faster on them, and slower on these.)
//!
//! Each result is `destination + Σₖ x[k]·w[k]`, the sum taken in order of `k` in one accumulator,
//! every multiply and add rounded apart (wasm has no fused form). On wasm32 the vectors are
//! `v128`; elsewhere (the tests) plain arrays of four floats doing the same arithmetic.

/// Rows of the result per micro-kernel call.
const ROWS: usize = 3;
/// Vectors of four columns per micro-kernel call.
const VECTORS: usize = 3;
/// Columns of the result per micro-kernel call: the width of a packed weight panel.
const PANEL: usize = 4 * VECTORS;

/// `output += x · weight`: `x` `[rows, inputs]`, `weight` `[inputs, outputs]` and `output`
/// `[rows, outputs]`, all row-major. On one thread (the browser's CPU path has one).
pub(crate) fn product_add(
    output: &mut [f32],
    x: &[f32],
    weight: &[f32],
    rows: usize,
    inputs: usize,
    outputs: usize,
) {
    assert!(
        x.len() == rows * inputs
            && weight.len() == inputs * outputs
            && output.len() == rows * outputs,
        "product of the wrong sizes: {rows} x {inputs} x {outputs}"
    );
    let mut panel = vec![0.0f32; inputs * PANEL];
    let mut edge = [0.0f32; ROWS * PANEL];
    for first_column in (0..outputs).step_by(PANEL) {
        let width = PANEL.min(outputs - first_column);
        pack_panel(&mut panel, weight, outputs, first_column, width);
        let mut row = 0;
        while row < rows {
            let height = ROWS.min(rows - row);
            let x_rows = &x[row * inputs..(row + height) * inputs];
            let at = row * outputs + first_column;
            if width == PANEL {
                let block = &mut output[at..at + (height - 1) * outputs + PANEL];
                add_block(height, block, outputs, x_rows, inputs, &panel);
            } else {
                // The last, narrower panel: through a full-width block, then back.
                for r in 0..height {
                    let out_row = &output[at + r * outputs..at + r * outputs + width];
                    edge[r * PANEL..r * PANEL + width].copy_from_slice(out_row);
                }
                add_block(height, &mut edge, PANEL, x_rows, inputs, &panel);
                for r in 0..height {
                    let out_row = &mut output[at + r * outputs..at + r * outputs + width];
                    out_row.copy_from_slice(&edge[r * PANEL..r * PANEL + width]);
                }
            }
            row += height;
        }
    }
}

/// [`micro_kernel`] for `height` (1 to [`ROWS`]) rows of `x`, each `inputs` long.
#[inline(always)]
fn add_block(
    height: usize,
    block: &mut [f32],
    stride: usize,
    x: &[f32],
    inputs: usize,
    panel: &[f32],
) {
    match height {
        ROWS => micro_kernel::<ROWS>(block, stride, x, inputs, panel),
        2 => micro_kernel::<2>(block, stride, x, inputs, panel),
        _ => micro_kernel::<1>(block, stride, x, inputs, panel),
    }
}

/// Columns `first..first + width` of `weight` (`outputs` wide) into `panel`, `PANEL` values per
/// input, zeros past `width`.
fn pack_panel(panel: &mut [f32], weight: &[f32], outputs: usize, first: usize, width: usize) {
    for (packed, row) in panel
        .chunks_exact_mut(PANEL)
        .zip(weight.chunks_exact(outputs))
    {
        packed[..width].copy_from_slice(&row[first..first + width]);
        packed[width..].fill(0.0);
    }
}

/// `block[r][c] += Σₖ x[r][k] · panel[k][c]` for `R` rows (`block` rows `stride` apart, `x` rows
/// `inputs` long) and the panel's `PANEL` columns.
#[inline(always)]
fn micro_kernel<const R: usize>(
    block: &mut [f32],
    stride: usize,
    x: &[f32],
    inputs: usize,
    panel: &[f32],
) {
    let x_rows: [&[f32]; R] = std::array::from_fn(|r| &x[r * inputs..(r + 1) * inputs]);
    let mut sums = [[vector::zero(); VECTORS]; R];
    for (k, weights) in panel[..inputs * PANEL].chunks_exact(PANEL).enumerate() {
        let w: [vector::F32x4; VECTORS] =
            std::array::from_fn(|v| vector::load(&weights[4 * v..4 * v + 4]));
        for (row_sums, x_row) in sums.iter_mut().zip(&x_rows) {
            let xk = vector::splat(x_row[k]);
            for (sum, &w) in row_sums.iter_mut().zip(&w) {
                *sum = vector::add(*sum, vector::mul(xk, w));
            }
        }
    }
    for (r, row_sums) in sums.iter().enumerate() {
        let out = &mut block[r * stride..r * stride + PANEL];
        for (v, &sum) in row_sums.iter().enumerate() {
            let lane = &mut out[4 * v..4 * v + 4];
            vector::store(lane, vector::add(vector::load(lane), sum));
        }
    }
}

/// Four float32 lanes: WebAssembly's `v128`.
#[cfg(target_arch = "wasm32")]
mod vector {
    use core::arch::wasm32::{f32x4_add, f32x4_mul, f32x4_splat, v128, v128_load, v128_store};

    pub(super) type F32x4 = v128;

    #[inline(always)]
    pub(super) fn zero() -> F32x4 {
        f32x4_splat(0.0)
    }

    #[inline(always)]
    pub(super) fn splat(value: f32) -> F32x4 {
        f32x4_splat(value)
    }

    #[inline(always)]
    pub(super) fn load(lanes: &[f32]) -> F32x4 {
        assert!(lanes.len() >= 4);
        // SAFETY: four floats are readable at `lanes` (checked); v128 loads need no alignment.
        unsafe { v128_load(lanes.as_ptr().cast()) }
    }

    #[inline(always)]
    pub(super) fn store(lanes: &mut [f32], value: F32x4) {
        assert!(lanes.len() >= 4);
        // SAFETY: four floats are writable at `lanes` (checked); v128 stores need no alignment.
        unsafe { v128_store(lanes.as_mut_ptr().cast(), value) }
    }

    #[inline(always)]
    pub(super) fn mul(a: F32x4, b: F32x4) -> F32x4 {
        f32x4_mul(a, b)
    }

    #[inline(always)]
    pub(super) fn add(a: F32x4, b: F32x4) -> F32x4 {
        f32x4_add(a, b)
    }
}

/// Four float32 lanes as a plain array, with the same arithmetic as the wasm vectors.
#[cfg(not(target_arch = "wasm32"))]
mod vector {
    pub(super) type F32x4 = [f32; 4];

    pub(super) fn zero() -> F32x4 {
        [0.0; 4]
    }

    pub(super) fn splat(value: f32) -> F32x4 {
        [value; 4]
    }

    pub(super) fn load(lanes: &[f32]) -> F32x4 {
        std::array::from_fn(|i| lanes[i])
    }

    pub(super) fn store(lanes: &mut [f32], value: F32x4) {
        lanes[..4].copy_from_slice(&value);
    }

    pub(super) fn mul(a: F32x4, b: F32x4) -> F32x4 {
        std::array::from_fn(|i| a[i] * b[i])
    }

    pub(super) fn add(a: F32x4, b: F32x4) -> F32x4 {
        std::array::from_fn(|i| a[i] + b[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cpu::tests::random;

    /// Every result equals its sum taken in order of `k` in float32, `output + Σ x·w` (the same
    /// roundings), on shapes with partial panels and partial row blocks.
    #[test]
    fn the_product_is_the_ordered_float32_sum() {
        let shapes = [
            (1, 1, 1),
            (3, 5, 12),
            (7, 33, 2),
            (10, 16, 25),
            (384, 64, 36),
        ];
        for (case, &(rows, inputs, outputs)) in shapes.iter().enumerate() {
            let seed = 10 * case as u64;
            let x = random(rows * inputs, seed, 1.0);
            let weight = random(inputs * outputs, seed + 1, 1.0);
            let start = random(rows * outputs, seed + 2, 1.0);
            let mut output = start.clone();
            product_add(&mut output, &x, &weight, rows, inputs, outputs);
            for r in 0..rows {
                for c in 0..outputs {
                    let mut sum = 0.0f32;
                    for k in 0..inputs {
                        sum += x[r * inputs + k] * weight[k * outputs + c];
                    }
                    let expected = start[r * outputs + c] + sum;
                    assert_eq!(
                        output[r * outputs + c].to_bits(),
                        expected.to_bits(),
                        "{rows}x{inputs}x{outputs}, result ({r}, {c})"
                    );
                }
            }
        }
    }
}
