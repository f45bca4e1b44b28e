//! GPU kernels of bert-rs, written once in CubeCL so the same code runs on CUDA (burn-cuda) and
//! WebGPU/Vulkan (burn-wgpu), with or without burn's fusion.
//!
//! Each kernel has a plain-tensor twin in `bert-core` that every backend runs; the functions here
//! return `None` for backends they do not know (ndarray, or a GPU backend whose feature is off),
//! and callers fall back to the twin.

pub mod lamb;

/// The code of every kernel here. cubecl's cache of compiled kernels knows a kernel by its name
/// and launch settings, not by its code, so a cache kept across builds must be told apart by this.
pub const KERNEL_SOURCE: &str = include_str!("lamb/kernels.rs");

#[cfg(feature = "gpu")]
mod backend;
