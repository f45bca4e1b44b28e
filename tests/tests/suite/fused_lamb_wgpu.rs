//! bert-shaders' fused NVLAMB kernels (CubeCL, here compiled to WGSL for Mesa's lavapipe) against
//! the plain-tensor NVLAMB on the same wgpu device: three fused steps of each trust-ratio variant
//! over tensors of one, several and partial chunks, with and without clipping and a loss scale,
//! then a fourth step with the kernels turned off (the moments leave their flat buffers).

use bert_core::optim::{Lamb, LambConfig, NamedParam, TrustRatio};
use burn::backend::wgpu::{Wgpu, WgpuDevice};
use burn::tensor::{Distribution, Tensor};

type B = Wgpu;

/// Parameter names and sizes: a matrix of two chunks and a bit, a tiny bias, exactly one chunk,
/// LayerNorm weights, and a tensor smaller than a cube.
const PARAMS: [(&str, usize); 5] = [
    ("encoder.layer.0.attention.query.weight", 9000),
    ("encoder.layer.0.attention.query.bias", 3),
    ("encoder.layer.0.intermediate.dense.weight", 4096),
    ("encoder.layer.0.output.LayerNorm.gamma", 384),
    ("cls.predictions.decoder.weight", 100),
];

fn random(len: usize, scale: f64, device: &WgpuDevice) -> Tensor<B, 1> {
    Tensor::random([len], Distribution::Normal(0.0, scale), device)
}

fn host(tensor: &Tensor<B, 1>) -> Vec<f32> {
    tensor.clone().into_data().to_vec().unwrap()
}

fn assert_close(what: &str, actual: &[f32], expected: &[f32]) {
    assert_eq!(actual.len(), expected.len(), "{what}");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= 1e-6 + 2e-5 * e.abs(),
            "{what}[{i}]: fused {a} vs plain {e}"
        );
    }
}

/// Three steps with both optimizers from the same values and gradients.
fn compare(config: LambConfig, gradient_scale: f64, grad_std: f64) {
    let device = WgpuDevice::default();
    let mut fused = Lamb::<B>::new(config);
    let mut plain = Lamb::<B>::new(config);
    plain.set_fused_kernels(false);
    let mut fused_values: Vec<Tensor<B, 1>> = PARAMS
        .iter()
        .map(|(_, len)| random(*len, 0.05, &device))
        .collect();
    let mut plain_values = fused_values.clone();
    for step in 1..=4 {
        if step == 4 {
            fused.set_fused_kernels(false);
        }
        let grads: Vec<Tensor<B, 1>> = PARAMS
            .iter()
            .map(|(_, len)| random(*len, grad_std, &device) * gradient_scale)
            .collect();
        let named = |values: &[Tensor<B, 1>]| -> Vec<NamedParam<B>> {
            PARAMS
                .iter()
                .zip(values)
                .zip(&grads)
                .map(|(((name, _), value), grad)| NamedParam {
                    name: name.to_string(),
                    value: value.clone(),
                    grad: grad.clone(),
                })
                .collect()
        };
        // Large rates, so that an update off by 1% moves the values visibly.
        let lr = 0.1 * step as f64;
        let fused_params = named(&fused_values);
        let norm = fused.squared_grad_norm(&fused_params);
        let fused_step = fused.step_scaled(lr, fused_params, norm, gradient_scale);
        let plain_params = named(&plain_values);
        let norm = plain.squared_grad_norm(&plain_params);
        let plain_step = plain.step_scaled(lr, plain_params, norm, gradient_scale);
        assert_close(
            "global gradient norm",
            &host(&fused_step.global_grad_norm),
            &host(&plain_step.global_grad_norm),
        );
        for (((name, _), f), p) in PARAMS
            .iter()
            .zip(&fused_step.values)
            .zip(&plain_step.values)
        {
            assert_close(&format!("step {step} {name}"), &host(f), &host(p));
            let (fm, pm) = (&fused.moments()[*name], &plain.moments()[*name]);
            assert_close(
                &format!("step {step} {name} m"),
                &host(&fm.exp_avg),
                &host(&pm.exp_avg),
            );
            assert_close(
                &format!("step {step} {name} v"),
                &host(&fm.exp_avg_sq),
                &host(&pm.exp_avg_sq),
            );
        }
        fused_values = fused_step.values;
        plain_values = plain_step.values;
    }
}

#[test]
fn fused_lamb_matches_the_plain_step() {
    let probe = Tensor::<B, 1>::zeros([1], &WgpuDevice::default());
    assert!(
        bert_shaders::lamb::runs_on(&probe),
        "the kernels run on this wgpu device"
    );
    // Gradients small enough not to be clipped, then large ones clipped to norm 1.
    compare(LambConfig::default(), 1.0, 1e-4);
    compare(LambConfig::default(), 1.0, 1.0);
    compare(
        LambConfig {
            trust_ratio: TrustRatio::Always,
            ..LambConfig::default()
        },
        1.0,
        1.0,
    );
    // The fine-tuning Adam (no trust ratio, no bias correction), gradients under a loss scale.
    compare(LambConfig::fine_tuning_adam(), 1024.0, 0.1);
}

/// Laying out more tensors than one launch of the copy kernel binds (it takes a few dozen at
/// most): every tensor lands at its offset, whole, whatever launch copied it.
#[test]
fn many_tensors_are_laid_out_exactly() {
    use bert_shaders::lamb::FlatLayout;

    let device = WgpuDevice::default();
    // 75 tensors of one element to several chunks, in an irregular order.
    let lens: Vec<usize> = (0..75).map(|i| 1 + (i * 977) % 9001).collect();
    let layout = FlatLayout::of_lengths(lens.iter().copied()).unwrap();
    let tensors: Vec<Tensor<B, 1>> = lens.iter().map(|&len| random(len, 1.0, &device)).collect();
    let flat = host(&bert_shaders::lamb::lay_out(&tensors, &layout).expect("the kernels run here"));
    assert_eq!(flat.len(), layout.len());
    for (index, (tensor, &offset)) in tensors.iter().zip(layout.offsets()).enumerate() {
        let expected = host(tensor);
        assert_eq!(
            flat[offset..offset + expected.len()],
            expected[..],
            "tensor {index} at offset {offset}"
        );
    }
    // Tensors that do not match the layout are refused, not copied out of bounds.
    assert!(bert_shaders::lamb::lay_out(&tensors[1..], &layout).is_none());
    let mut swapped = tensors.clone();
    swapped.swap(0, 1);
    assert!(bert_shaders::lamb::lay_out(&swapped, &layout).is_none());
}
