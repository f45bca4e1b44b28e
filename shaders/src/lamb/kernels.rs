//! The NVLAMB step as four CubeCL kernels over flat buffers (apex's `multi_tensor_lamb` and
//! `multi_tensor_l2norm` in spirit): every parameter tensor lies in one buffer, split into chunks
//! of at most 4096 elements that never straddle two tensors, and each cube works on one chunk (or,
//! for the trust ratios, on one tensor).
//!
//! Tables are packed to keep the number of buffers a kernel binds low (browsers' WebGPU may allow
//! as few as 8): `chunks` holds `[tensor, start, end)` for each chunk, `tensors` holds
//! `[first chunk, end chunk, trust ratio applies]` for each tensor, and `coefficients` holds the
//! step's constants followed by each tensor's weight decay.

use cubecl::prelude::*;

/// Units in every cube.
pub const CUBE_UNITS: u32 = 256;

/// Entries per chunk in the chunk table.
pub const CHUNK_ENTRIES: usize = 3;

/// Entries per tensor in the tensor table.
pub const TENSOR_ENTRIES: usize = 3;

/// Leading entries of `coefficients`: beta1, 1 - beta1, beta2, 1 - beta2, 1 - beta1^t,
/// 1 - beta2^t, eps, learning rate; each tensor's weight decay follows.
pub const STEP_COEFFICIENTS: usize = 8;

/// Lays parameter tensors `first_tensor..first_tensor + sources.len()` out in `flat`, one cube
/// per chunk of theirs (chunks `first_chunk..end_chunk`): the elements of a chunk `[start, end)`
/// of tensor `t` are `sources[t - first_tensor]` from `start - offset(t)`, `offset(t)` being
/// where `t` starts (its first chunk's start). One launch copies as many tensors as a kernel can
/// bind buffers, where a copy per tensor would take a launch each.
#[allow(clippy::too_many_arguments)]
#[cube(launch)]
pub fn lay_out_chunks(
    sources: &Sequence<Array<f32>>,
    chunks: &Array<u32>,
    tensors: &Array<u32>,
    flat: &mut Array<f32>,
    first_tensor: u32,
    first_chunk: u32,
    end_chunk: u32,
) {
    let chunk = first_chunk as usize + CUBE_POS;
    if chunk >= end_chunk as usize {
        terminate!();
    }
    let entry = chunk * CHUNK_ENTRIES;
    let tensor = chunks[entry];
    let start = chunks[entry + 1] as usize;
    let end = chunks[entry + 2] as usize;
    let tensor_first_chunk = tensors[tensor as usize * TENSOR_ENTRIES] as usize;
    let tensor_start = chunks[tensor_first_chunk * CHUNK_ENTRIES + 1] as usize;
    let source = (tensor - first_tensor) as usize;
    let count = comptime![sources.len()];
    #[unroll]
    for s in 0..count {
        if source == s {
            let values = &sources[s];
            let mut i = start + UNIT_POS as usize;
            while i < end {
                flat[i] = values[i - tensor_start];
                i += CUBE_DIM as usize;
            }
        }
    }
}

/// The sum of every unit's `value`, returned to all units (tree reduction in shared memory).
#[cube]
fn cube_sum(value: f32, shared: &mut SharedMemory<f32>) -> f32 {
    let unit = UNIT_POS as usize;
    shared[unit] = value;
    sync_cube();
    let mut stride = (CUBE_DIM / 2) as usize;
    while stride > 0 {
        if unit < stride {
            shared[unit] += shared[unit + stride];
        }
        sync_cube();
        stride /= 2;
    }
    let total = shared[0];
    sync_cube();
    total
}

/// `partials[c] = sum(values[i]^2)` (or `sum(values[i])` when not `square`) over the elements
/// `i` of chunk `c`.
#[cube(launch)]
pub fn sum_by_chunk(
    values: &Array<f32>,
    chunks: &Array<u32>,
    partials: &mut Array<f32>,
    #[comptime] square: bool,
) {
    let chunk = CUBE_POS;
    if chunk >= partials.len() {
        terminate!();
    }
    let entry = chunk * CHUNK_ENTRIES;
    let end = chunks[entry + 2] as usize;
    let mut sum = 0.0f32;
    let mut i = chunks[entry + 1] as usize + UNIT_POS as usize;
    while i < end {
        let x = values[i];
        if square {
            sum += x * x;
        } else {
            sum += x;
        }
        i += CUBE_DIM as usize;
    }
    let mut shared = SharedMemory::<f32>::new(CUBE_UNITS as usize);
    let total = cube_sum(sum, &mut shared);
    if UNIT_POS == 0 {
        partials[chunk] = total;
    }
}

/// First stage of a step, one cube per chunk: clips the gradient (`grad / clip_divisor[0]`),
/// advances both moments, writes the update `m_hat / (sqrt(v_hat) + eps) + weight_decay * value`,
/// and the chunk's sums of `value^2` and `update^2` (`partials[2c]` and `partials[2c + 1]`) for
/// the trust ratios.
#[allow(clippy::too_many_arguments)]
#[cube(launch)]
pub fn lamb_update(
    grad: &Array<f32>,
    value: &Array<f32>,
    exp_avg: &Array<f32>,
    exp_avg_sq: &Array<f32>,
    clip_divisor: &Array<f32>,
    chunks: &Array<u32>,
    coefficients: &Array<f32>,
    new_exp_avg: &mut Array<f32>,
    new_exp_avg_sq: &mut Array<f32>,
    update: &mut Array<f32>,
    partials: &mut Array<f32>,
) {
    let chunk = CUBE_POS;
    if chunk * 2 >= partials.len() {
        terminate!();
    }
    let beta1 = coefficients[0];
    let one_minus_beta1 = coefficients[1];
    let beta2 = coefficients[2];
    let one_minus_beta2 = coefficients[3];
    let correction1 = coefficients[4];
    let correction2 = coefficients[5];
    let eps = coefficients[6];
    let divisor = clip_divisor[0];
    let entry = chunk * CHUNK_ENTRIES;
    let decay = coefficients[STEP_COEFFICIENTS + chunks[entry] as usize];
    let end = chunks[entry + 2] as usize;
    let mut value_sum = 0.0f32;
    let mut update_sum = 0.0f32;
    let mut i = chunks[entry + 1] as usize + UNIT_POS as usize;
    while i < end {
        let g = grad[i] / divisor;
        let m = exp_avg[i] * beta1 + g * one_minus_beta1;
        let v = exp_avg_sq[i] * beta2 + (g * g) * one_minus_beta2;
        let w = value[i];
        let mut u = (m / correction1) / (f32::sqrt(v / correction2) + eps);
        if decay != 0.0 {
            u += w * decay;
        }
        new_exp_avg[i] = m;
        new_exp_avg_sq[i] = v;
        update[i] = u;
        value_sum += w * w;
        update_sum += u * u;
        i += CUBE_DIM as usize;
    }
    let mut shared = SharedMemory::<f32>::new(CUBE_UNITS as usize);
    let value_total = cube_sum(value_sum, &mut shared);
    let update_total = cube_sum(update_sum, &mut shared);
    if UNIT_POS == 0 {
        partials[chunk * 2] = value_total;
        partials[chunk * 2 + 1] = update_total;
    }
}

/// Second stage, one cube per tensor: `step_sizes[t] = lr * ||w|| / ||u||` where the trust
/// ratio applies to tensor `t` and both norms are positive, else `lr`.
#[cube(launch)]
pub fn lamb_step_sizes(
    partials: &Array<f32>,
    tensors: &Array<u32>,
    coefficients: &Array<f32>,
    step_sizes: &mut Array<f32>,
) {
    let tensor = CUBE_POS;
    if tensor >= step_sizes.len() {
        terminate!();
    }
    let entry = tensor * TENSOR_ENTRIES;
    let end = tensors[entry + 1] as usize;
    let mut value_sum = 0.0f32;
    let mut update_sum = 0.0f32;
    let mut chunk = tensors[entry] as usize + UNIT_POS as usize;
    while chunk < end {
        value_sum += partials[chunk * 2];
        update_sum += partials[chunk * 2 + 1];
        chunk += CUBE_DIM as usize;
    }
    let mut shared = SharedMemory::<f32>::new(CUBE_UNITS as usize);
    let value_norm = f32::sqrt(cube_sum(value_sum, &mut shared));
    let update_norm = f32::sqrt(cube_sum(update_sum, &mut shared));
    if UNIT_POS == 0 {
        let lr = coefficients[7];
        let mut step = lr;
        if tensors[entry + 2] != 0 && value_norm > 0.0 && update_norm > 0.0 {
            step = (value_norm / update_norm) * lr;
        }
        step_sizes[tensor] = step;
    }
}

/// Last stage, one cube per chunk: `new_value = value - step_sizes[tensor] * update`.
#[cube(launch)]
pub fn lamb_apply(
    value: &Array<f32>,
    update: &Array<f32>,
    chunks: &Array<u32>,
    step_sizes: &Array<f32>,
    new_value: &mut Array<f32>,
) {
    let chunk = CUBE_POS;
    let entry = chunk * CHUNK_ENTRIES;
    if entry >= chunks.len() {
        terminate!();
    }
    let step = step_sizes[chunks[entry] as usize];
    let end = chunks[entry + 2] as usize;
    let mut i = chunks[entry + 1] as usize + UNIT_POS as usize;
    while i < end {
        new_value[i] = value[i] - update[i] * step;
        i += CUBE_DIM as usize;
    }
}
