//! The fused NVLAMB steps against the plain-tensor NVLAMB on the same device: bert-shaders' CubeCL
//! kernels (compiled to WGSL for Mesa's lavapipe) on wgpu, and bert-core's two-pass CPU step on
//! Flex. Three fused steps of each trust-ratio variant over tensors of one, several and partial
//! chunks (and, on Flex, of several threaded pieces), with and without clipping and a loss scale,
//! then a fourth step with the fused kernels turned off (on wgpu the moments leave their flat
//! buffers).

use bert_core::optim::{Lamb, LambConfig, NamedParam, TrustRatio};
use burn::backend::flex::{Flex, FlexDevice};
use burn::backend::wgpu::{Wgpu, WgpuDevice};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};

/// Parameter names and sizes: a matrix of two chunks and a bit, a tiny bias, exactly one chunk,
/// LayerNorm weights, a tensor smaller than a cube, and one of three CPU pieces and a bit.
const PARAMS: [(&str, usize); 6] = [
    ("encoder.layer.0.attention.query.weight", 9000),
    ("encoder.layer.0.attention.query.bias", 3),
    ("encoder.layer.0.intermediate.dense.weight", 4096),
    ("encoder.layer.0.output.LayerNorm.gamma", 384),
    ("cls.predictions.decoder.weight", 100),
    ("embeddings.word_embeddings.weight", 3 * 32768 + 5),
];

fn random<B: Backend>(len: usize, scale: f64, device: &B::Device) -> Tensor<B, 1> {
    Tensor::random([len], Distribution::Normal(0.0, scale), device)
}

fn host<B: Backend>(tensor: &Tensor<B, 1>) -> Vec<f32> {
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
fn compare<B: Backend>(device: &B::Device, config: LambConfig, gradient_scale: f64, grad_std: f64) {
    let mut fused = Lamb::<B>::new(config);
    let mut plain = Lamb::<B>::new(config);
    plain.set_fused_kernels(false);
    let mut fused_values: Vec<Tensor<B, 1>> = PARAMS
        .iter()
        .map(|(_, len)| random(*len, 0.05, device))
        .collect();
    let mut plain_values = fused_values.clone();
    for step in 1..=4 {
        if step == 4 {
            fused.set_fused_kernels(false);
        }
        let grads: Vec<Tensor<B, 1>> = PARAMS
            .iter()
            .map(|(_, len)| random(*len, grad_std, device) * gradient_scale)
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

/// Each trust-ratio variant, with and without clipping and a loss scale, on `device`.
fn compare_variants<B: Backend>(device: &B::Device) {
    // Gradients small enough not to be clipped, then large ones clipped to norm 1.
    compare::<B>(device, LambConfig::default(), 1.0, 1e-4);
    compare::<B>(device, LambConfig::default(), 1.0, 1.0);
    compare::<B>(
        device,
        LambConfig {
            trust_ratio: TrustRatio::Always,
            ..LambConfig::default()
        },
        1.0,
        1.0,
    );
    // The fine-tuning Adam (no trust ratio, no bias correction), gradients under a loss scale.
    compare::<B>(device, LambConfig::fine_tuning_adam(), 1024.0, 0.1);
}

#[test]
fn fused_lamb_matches_the_plain_step_on_wgpu() {
    let device = WgpuDevice::default();
    let probe = Tensor::<Wgpu, 1>::zeros([1], &device);
    assert!(
        bert_shaders::lamb::runs_on(&probe),
        "the kernels run on this wgpu device"
    );
    compare_variants::<Wgpu>(&device);
}

#[test]
fn cpu_lamb_matches_the_plain_step_on_flex() {
    compare_variants::<Flex>(&FlexDevice);
}

/// Where no norm enters the step (no trust ratio, no clipping), the CPU step computes the plain
/// step's float32 operations in the same order: the same bits, values and moments.
#[test]
fn cpu_lamb_is_the_plain_step_bit_for_bit_where_no_norm_enters() {
    let device = FlexDevice;
    let config = LambConfig {
        trust_ratio: TrustRatio::Never,
        max_grad_norm: 0.0,
        ..LambConfig::default()
    };
    let mut fused = Lamb::<Flex>::new(config);
    let mut plain = Lamb::<Flex>::new(config);
    plain.set_fused_kernels(false);
    let mut values: Vec<Tensor<Flex, 1>> = PARAMS
        .iter()
        .map(|(_, len)| random(*len, 0.05, &device))
        .collect();
    for step in 1..=3 {
        let params: Vec<NamedParam<Flex>> = PARAMS
            .iter()
            .zip(&values)
            .map(|((name, len), value)| NamedParam {
                name: name.to_string(),
                value: value.clone(),
                grad: random(*len, 0.1, &device),
            })
            .collect();
        assert!(fused.runs_fused(&params) && !plain.runs_fused(&params));
        let fused_step = fused.step(1e-2, params.clone());
        let plain_step = plain.step(1e-2, params);
        for (((name, _), f), p) in PARAMS
            .iter()
            .zip(&fused_step.values)
            .zip(&plain_step.values)
        {
            assert_eq!(host(f), host(p), "step {step} {name}");
            let (fm, pm) = (&fused.moments()[*name], &plain.moments()[*name]);
            assert_eq!(host(&fm.exp_avg), host(&pm.exp_avg), "step {step} {name} m");
            assert_eq!(
                host(&fm.exp_avg_sq),
                host(&pm.exp_avg_sq),
                "step {step} {name} v"
            );
        }
        values = fused_step.values;
    }
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
    let tensors: Vec<Tensor<Wgpu, 1>> = lens.iter().map(|&len| random(len, 1.0, &device)).collect();
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
