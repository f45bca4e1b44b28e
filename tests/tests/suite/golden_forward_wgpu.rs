//! Two golden cases on the wgpu backend (Mesa's lavapipe Vulkan driver on CPU-only machines):
//! padding and a full 384-token SQuAD window, and the padded case again through burn's fused
//! attention (under burn's fusion, as inference runs it). Kept few: wgpu compiles and autotunes
//! its kernels on first use.

use bert_core::model::AttentionKernel;
use burn::backend::wgpu::{Wgpu, WgpuDevice};

#[test]
fn wgpu_matches_the_reference() {
    let device = WgpuDevice::default();
    for (case, attention) in [
        ("padded_batch", AttentionKernel::Explicit),
        ("squad_384", AttentionKernel::Explicit),
        ("padded_batch", AttentionKernel::Fused),
    ] {
        bert_tests::golden::check_case::<Wgpu>(case, attention, &device);
    }
}
