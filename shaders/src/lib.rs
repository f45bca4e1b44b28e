//! GPU kernels of bert-rs, written once in CubeCL so the same code runs on CUDA (burn-cuda) and
//! WebGPU/Vulkan (burn-wgpu), with or without burn's fusion.
//!
//! Each kernel has a plain-tensor twin in `bert-core` that every backend runs; the functions here
//! return `None` for backends they do not know (ndarray, or a GPU backend whose feature is off),
//! and callers fall back to the twin.

pub mod lamb;

#[cfg(feature = "gpu")]
mod backend;
