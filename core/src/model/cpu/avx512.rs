//! The fully connected layers' products on x86-64 with AVX-512, from a weight packed once.
//!
//! The `gemm` crate (which computes every other product) packs the weight into panels on every
//! call, on every thread that needs them: about 7% of a forward pass's samples at batch 1. Here
//! the weight is packed once ([`PackedWeight`], kept by `weight_cache` for as long as the
//! weight's buffer lives) and each call only runs the micro-kernel over it.
//!
//! The arithmetic is the `gemm` crate's, bit for bit, so that a packed product gives what the
//! crate gives (tests hold the two to equal bits): the inner dimension is cut into the crate's
//! blocks (`kc`, from `gemm_common::cache::kernel_params`: at most 512 inputs, of equal length,
//! with the L1 caches of AVX-512 CPUs); within a block each result is one chain of fused
//! multiply-adds in increasing order of the input, started at zero; each block's sum is then
//! added to the destination, block after block (or the first block's sum written, when the
//! destination is not read). Tiles are 64 outputs (four vectors) by 6 rows, as the crate's, so
//! 24 accumulators stay in registers; the panel is prefetched ahead of the loads.

use std::arch::x86_64::{
    __m512, __mmask16, _mm512_add_ps, _mm512_fmadd_ps, _mm512_load_ps, _mm512_mask_storeu_ps,
    _mm512_maskz_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps, _mm_prefetch, _MM_HINT_T0,
};

use rayon::prelude::*;

use super::kernels::SharedOutput;

/// Float32 lanes of a vector.
const LANES: usize = 16;
/// Vectors of outputs per tile.
const VECTORS: usize = 4;
/// Outputs per tile: the width of a packed panel.
const PANEL: usize = LANES * VECTORS;
/// Rows of `x` per tile.
const TILE_ROWS: usize = 6;
/// Packed weight one task reads over and over: half of a 2 MiB L2 cache.
const TASK_WEIGHT_BYTES: usize = 1 << 20;
/// Tasks per thread. One: each task brings its panels into its core's L2 cache once, so more
/// tasks cost more than the evening out they buy (measured: 2-thread products 5-15% slower
/// at four per thread).
const TASKS_PER_THREAD: usize = 1;
/// How many inputs ahead the micro-kernel asks for the panel's values to be in L1: the
/// hardware's own prefetching leaves the loop waiting on L2 (measured: products 10-15% faster
/// with it, at 8 or 16 alike).
const PREFETCH: usize = 16;

/// Whether this CPU runs the kernel (AVX-512 F, as the `gemm` crate's kernels it matches).
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
}

/// Whether [`product`] takes a product of `rows x inputs x outputs`: on a CPU with AVX-512, for
/// the sizes whose arithmetic in the `gemm` crate it reproduces.
pub(crate) fn takes(rows: usize, inputs: usize, outputs: usize) -> bool {
    available() && matches_gemm(rows, inputs, outputs)
}

/// Whether a product of `rows x inputs x outputs` takes the same path through the `gemm` crate as
/// the one reproduced here; the crate computes the others (a single row or output, an inner
/// dimension of one or two, tiny products) with other kernels or blocks, so they stay with it.
fn matches_gemm(rows: usize, inputs: usize, outputs: usize) -> bool {
    rows >= 2 && outputs >= 2 && inputs > 2 && rows * outputs > 256 && (rows > 64 || outputs > 64)
}

/// 16 float32 values, aligned as a vector.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(64))]
struct Lanes([f32; LANES]);

/// A weight `[inputs, outputs]` (burn's `Linear` layout) packed for [`product`]: for each block
/// of the inner dimension, the panels of [`PANEL`] outputs one after the other, each holding its
/// block's inputs in order, [`PANEL`] values per input (zeros past the last output).
#[derive(Debug)]
pub(crate) struct PackedWeight {
    inputs: usize,
    outputs: usize,
    /// The length of the inner dimension's blocks (the last may be shorter).
    depth: usize,
    vectors: Vec<Lanes>,
}

impl PackedWeight {
    /// `weight` (`[inputs, outputs]`, row-major) packed, on all threads.
    pub(crate) fn new(weight: &[f32], inputs: usize, outputs: usize) -> Self {
        assert_eq!(weight.len(), inputs * outputs, "a weight of the wrong size");
        let panels = outputs.div_ceil(PANEL);
        let depth = block_depth(inputs);
        let mut vectors = vec![Lanes::default(); inputs * panels * VECTORS];
        if !vectors.is_empty() {
            vectors
                .par_chunks_mut(depth * panels * VECTORS)
                .enumerate()
                .for_each(|(block, packed)| {
                    let first_input = block * depth;
                    let len = depth.min(inputs - first_input);
                    for (panel, packed) in packed.chunks_exact_mut(len * VECTORS).enumerate() {
                        let first_output = panel * PANEL;
                        let width = PANEL.min(outputs - first_output);
                        for (input, packed) in packed.chunks_exact_mut(VECTORS).enumerate() {
                            let at = (first_input + input) * outputs + first_output;
                            let row = &weight[at..at + width];
                            for (lanes, values) in packed.iter_mut().zip(row.chunks(LANES)) {
                                lanes.0[..values.len()].copy_from_slice(values);
                            }
                        }
                    }
                });
        }
        Self {
            inputs,
            outputs,
            depth,
            vectors,
        }
    }

    /// Features in.
    pub(crate) fn inputs(&self) -> usize {
        self.inputs
    }

    /// Features out.
    pub(crate) fn outputs(&self) -> usize {
        self.outputs
    }

    fn panels(&self) -> usize {
        self.outputs.div_ceil(PANEL)
    }

    fn blocks(&self) -> usize {
        self.inputs.div_ceil(self.depth)
    }

    /// The first input of `block` and its number of inputs.
    fn block(&self, block: usize) -> (usize, usize) {
        let first = block * self.depth;
        (first, self.depth.min(self.inputs - first))
    }

    /// Panel `panel` of block `block`: its inputs' vectors, [`VECTORS`] per input.
    fn panel(&self, block: usize, panel: usize) -> &[Lanes] {
        let (first, len) = self.block(block);
        let at = (first * self.panels() + panel * len) * VECTORS;
        &self.vectors[at..at + len * VECTORS]
    }
}

/// The `gemm` crate's block of the inner dimension for its AVX-512 kernels (64 x 6 float32):
/// it depends on `inputs` and the L1 cache only (read from gemm-common's source), so the other
/// sizes given are any that take its general path.
fn block_depth(inputs: usize) -> usize {
    let sizes = (PANEL + 1, TILE_ROWS + 1);
    let params = gemm_common::cache::kernel_params(sizes.0, sizes.1, inputs, PANEL, TILE_ROWS, 4);
    params.kc.max(1)
}

/// `output (+)= x · weight`: `x` `[rows, inputs]` and `output` `[rows, outputs]`, row-major; the
/// product is added to `output` when `accumulate`, else written over it. On all threads; the
/// result does not depend on their number (each output is computed whole by one task).
///
/// # Panics
/// When the sizes disagree, or the CPU lacks AVX-512 ([`available`]).
pub(crate) fn product(
    output: &mut [f32],
    x: &[f32],
    weight: &PackedWeight,
    rows: usize,
    accumulate: bool,
) {
    let (inputs, outputs) = (weight.inputs, weight.outputs);
    assert!(
        x.len() == rows * inputs && output.len() == rows * outputs,
        "product of the wrong sizes: {rows} x {inputs} x {outputs}"
    );
    assert!(available(), "the AVX-512 product on a CPU without AVX-512");
    if rows == 0 || outputs == 0 {
        return;
    }
    // Panels in groups of equal size that fit the budget, rows in chunks so that every thread
    // gets as many tasks as every other.
    let panels = weight.panels();
    let panel_bytes = weight.depth * PANEL * size_of::<f32>();
    let panel_groups = panels.div_ceil((TASK_WEIGHT_BYTES / panel_bytes).max(1));
    let panels_per_task = panels.div_ceil(panel_groups);
    let threads = rayon::current_num_threads();
    let row_tiles = rows.div_ceil(TILE_ROWS);
    let row_chunks = (TASKS_PER_THREAD * threads)
        .div_ceil(panel_groups)
        .next_multiple_of(threads)
        .min(row_tiles);
    let rows_per_task = row_tiles.div_ceil(row_chunks) * TILE_ROWS;
    let tasks: Vec<Task> = (0..rows)
        .step_by(rows_per_task)
        .flat_map(|first_row| {
            (0..panels).step_by(panels_per_task).map(move |first| Task {
                rows: first_row..(first_row + rows_per_task).min(rows),
                panels: first..(first + panels_per_task).min(panels),
            })
        })
        .collect();
    let destination = SharedOutput::new(output);
    tasks.into_par_iter().for_each(|task| {
        // SAFETY: AVX-512 F is there (asserted above); the task reads `x` and the weight inside
        // their sizes (checked above) and writes only its own rows and panels of `output`, which
        // no other task touches, while this call waits for them all.
        unsafe { run_task(&task, destination, x, weight, accumulate) }
    });
}

/// A share of a product: some rows of `x` by some panels of outputs.
#[derive(Debug)]
struct Task {
    rows: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
}

/// One task of [`product`]: block after block of the inner dimension, each over the task's tiles
/// (a tile of rows held in L1 while the panels stream past it from L2).
///
/// # Safety
/// The CPU has AVX-512 F; `output` points at `[rows, outputs]` values of which this task alone
/// touches its own; `x` and `weight` are as [`product`] checked.
#[target_feature(enable = "avx512f")]
unsafe fn run_task(
    task: &Task,
    output: SharedOutput,
    x: &[f32],
    weight: &PackedWeight,
    accumulate: bool,
) {
    let (inputs, outputs) = (weight.inputs, weight.outputs);
    for block in 0..weight.blocks() {
        let (first_input, depth) = weight.block(block);
        let add = accumulate || block > 0;
        for first_row in task.rows.clone().step_by(TILE_ROWS) {
            let height = TILE_ROWS.min(task.rows.end - first_row);
            let x_tile = x[first_row * inputs + first_input..].as_ptr();
            for panel in task.panels.clone() {
                let first_output = panel * PANEL;
                let masks = lane_masks(outputs - first_output);
                let tile = Tile {
                    panel: weight.panel(block, panel).as_ptr(),
                    depth,
                    x: x_tile,
                    x_stride: inputs,
                    // SAFETY: the tile's first output lies inside `output` (row and panel in range).
                    output: unsafe { output.ptr.add(first_row * outputs + first_output) },
                    output_stride: outputs,
                    masks,
                    add,
                };
                // SAFETY: the tile lies inside the task's part of `output` and the inputs.
                unsafe {
                    match height {
                        6 => tile.run::<6>(),
                        5 => tile.run::<5>(),
                        4 => tile.run::<4>(),
                        3 => tile.run::<3>(),
                        2 => tile.run::<2>(),
                        _ => tile.run::<1>(),
                    }
                }
            }
        }
    }
}

/// Which lanes of each vector of a panel hold outputs, for `remaining` outputs from its first.
fn lane_masks(remaining: usize) -> [__mmask16; VECTORS] {
    let mut masks = [0; VECTORS];
    for (vector, mask) in masks.iter_mut().enumerate() {
        let lanes = remaining.saturating_sub(vector * LANES).min(LANES);
        *mask = ((1u32 << lanes) - 1) as __mmask16;
    }
    masks
}

/// One tile of a product: up to [`TILE_ROWS`] rows by one panel, over one block of inputs.
struct Tile {
    /// The panel's vectors for the block's inputs.
    panel: *const Lanes,
    /// Inputs in the block.
    depth: usize,
    /// The tile's first row at the block's first input.
    x: *const f32,
    x_stride: usize,
    /// The tile's first row at the panel's first output.
    output: *mut f32,
    output_stride: usize,
    /// The lanes of each vector that are outputs (the last panel may be narrower).
    masks: [__mmask16; VECTORS],
    /// Whether the block's sums are added to the output rather than written over it.
    add: bool,
}

impl Tile {
    /// `output[r][c] (+)= Σₖ x[r][k] · panel[k][c]` for `R` rows: one fused multiply-add chain per
    /// output, in order of `k`, from zero; then one addition to the output.
    ///
    /// # Safety
    /// AVX-512 F; `R` rows of `depth` inputs at `x`, `depth` inputs of the panel, and `R` rows of
    /// the masked lanes at `output`, all valid.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn run<const R: usize>(&self) {
        let mut sums: [[__m512; VECTORS]; R] = [[_mm512_setzero_ps(); VECTORS]; R];
        let mut weights: [__m512; VECTORS] = [_mm512_setzero_ps(); VECTORS];
        for k in 0..self.depth {
            // SAFETY: input `k` of the panel and of each row are inside (see above).
            unsafe {
                let packed = self.panel.add(k * VECTORS);
                // Past the panel's end this is the next panel's start (or nothing: a prefetch
                // never faults).
                for vector in 0..VECTORS {
                    let ahead = packed.wrapping_add(PREFETCH * VECTORS + vector);
                    _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                }
                for (vector, weight) in weights.iter_mut().enumerate() {
                    *weight = _mm512_load_ps(packed.add(vector).cast());
                }
                for (row, row_sums) in sums.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*self.x.add(row * self.x_stride + k));
                    for (sum, &weight) in row_sums.iter_mut().zip(&weights) {
                        *sum = _mm512_fmadd_ps(weight, x, *sum);
                    }
                }
            }
        }
        for (row, row_sums) in sums.iter().enumerate() {
            for (vector, &sum) in row_sums.iter().enumerate() {
                let mask = self.masks[vector];
                if mask == 0 {
                    // Past the last output: not even an address to form.
                    continue;
                }
                // SAFETY: the masked lanes of this row and vector are outputs of the tile.
                unsafe {
                    let at = self.output.add(row * self.output_stride + vector * LANES);
                    let value = if self.add {
                        _mm512_add_ps(_mm512_maskz_loadu_ps(mask, at), sum)
                    } else {
                        sum
                    };
                    _mm512_mask_storeu_ps(at, mask, value);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cpu::kernels::{self, LinearShape, Weight};
    use crate::model::cpu::tests::random;

    #[test]
    fn the_packed_product_gives_the_gemm_crates_bits() {
        if !available() {
            eprintln!("no AVX-512 on this CPU: the packed product is never used here");
            return;
        }
        // The model's shapes, edges of rows and outputs, and inner dimensions of one, two and
        // uneven blocks.
        let shapes = [
            [384, 384, 384],
            [384, 384, 1536],
            [96, 1536, 384],
            [130, 768, 70],
            [7, 1100, 200],
            [200, 3, 2],
            [257, 3, 2],
            [2, 513, 300],
            [300, 1030, 64],
            [13, 37, 129],
        ];
        for (case, shape @ [rows, inputs, outputs]) in shapes.into_iter().enumerate() {
            assert!(matches_gemm(rows, inputs, outputs), "{shape:?}");
            let seed = 10 * case as u64;
            let x = random(rows * inputs, seed, 1.0);
            let weight = random(inputs * outputs, seed + 1, 1.0);
            let packed = PackedWeight::new(&weight, inputs, outputs);
            let bias = random(outputs, seed + 2, 1.0);
            let linear = LinearShape {
                rows,
                inputs,
                outputs,
            };
            // Without a bias the product is written over the output, with one added to it.
            for bias in [None, Some(&bias[..])] {
                let ours = kernels::linear(&x, Weight::Packed(&packed), bias, linear);
                let theirs = kernels::linear(&x, Weight::RowMajor(&weight), bias, linear);
                let differ = ours
                    .iter()
                    .zip(&theirs)
                    .filter(|(a, b)| a.to_bits() != b.to_bits())
                    .count();
                let add = bias.is_some();
                assert_eq!(differ, 0, "{shape:?}, add {add}: {differ} outputs differ");
            }
        }
    }

    #[test]
    fn blocks_of_the_inner_dimension_cover_it_in_order() {
        for inputs in [3, 384, 512, 768, 1100, 1536, 4096] {
            let packed = PackedWeight::new(&vec![1.0; inputs * 3], inputs, 3);
            let mut next = 0;
            for block in 0..packed.blocks() {
                let (first, len) = packed.block(block);
                assert!(
                    first == next && len > 0 && len <= packed.depth,
                    "{inputs}: {block}"
                );
                next += len;
            }
            assert_eq!(next, inputs);
        }
    }
}
