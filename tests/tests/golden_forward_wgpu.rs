//! Two golden cases on the wgpu backend (Mesa's lavapipe Vulkan driver on CPU-only machines):
//! padding and a full 384-token SQuAD window. Kept few: wgpu compiles and autotunes its kernels
//! on first use.

use bert_core::model::AttentionKernel;
use burn::backend::wgpu::{Wgpu, WgpuDevice};

#[test]
fn wgpu_matches_the_reference() {
    let device = WgpuDevice::default();
    for case in ["padded_batch", "squad_384"] {
        bert_tests::golden::check_case::<Wgpu>(case, AttentionKernel::Explicit, &device);
    }
}
