//! The flash-attention kernel that inference takes where burn's autotuner picks it (burn's
//! `attention` on the CubeCL backends; see `bert_core::model::AttentionKernel`) agrees with the
//! explicit form on a padded batch, reading the padding mask exactly as the model builds it.

use bert_core::model::KeyMask;
use burn::backend::wgpu::{CubeBackend, WgpuDevice, WgpuRuntime};
use burn::tensor::activation::softmax;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Distribution, Int, Tensor, TensorData, TensorPrimitive};
use burn_cubecl::kernel::attention::{attention, AttentionStrategy};

/// burn's wgpu backend without fusion, whose float primitive the kernel launches on.
type B = CubeBackend<WgpuRuntime, f32, i32, u32>;

#[test]
fn flash_attention_leaves_out_the_padded_keys() {
    let device = WgpuDevice::default();
    let [batch_size, heads, seq_len, head_size] = [3, 2, 40, 16];
    let random = || {
        Tensor::<B, 4>::random(
            [batch_size, heads, seq_len, head_size],
            Distribution::Normal(0.0, 1.0),
            &device,
        )
    };
    let (query, key, value) = (random(), random(), random());
    // Row 0 is full, row 1 has 25 tokens and 15 padded keys, row 2 none at all.
    let tokens = [seq_len, 25, 0];
    let mask: Vec<i64> = (0..batch_size * seq_len)
        .map(|i| i64::from(i % seq_len < tokens[i / seq_len]))
        .collect();
    let attention_mask =
        Tensor::<B, 2, Int>::from_data(TensorData::new(mask, [batch_size, seq_len]), &device);
    let (KeyMask::Padded(padded_keys), KeyMask::Additive(bias)) = (
        KeyMask::padded(attention_mask.clone(), heads),
        KeyMask::additive(attention_mask),
    ) else {
        panic!("KeyMask::padded and KeyMask::additive build the other form")
    };

    let flash = attention::<WgpuRuntime>(
        query.clone().into_primitive().tensor(),
        key.clone().into_primitive().tensor(),
        value.clone().into_primitive().tensor(),
        Some(padded_keys.into_primitive()),
        None,
        AttentionModuleOptions::default(),
        AttentionStrategy::FlashUnit,
    )
    .expect("the flash kernel runs on this device");
    let flash = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(flash));

    let scores = query.matmul(key.transpose()) / (head_size as f64).sqrt() + bias;
    let explicit = softmax(scores, 3).matmul(value);
    // The flash kernel's own rounding is ~1e-3 here (the same without a mask); a misread mask
    // is off by ~1.
    let difference = (flash - explicit).abs().max().into_scalar();
    assert!(difference < 5e-3, "largest difference {difference}");
}
