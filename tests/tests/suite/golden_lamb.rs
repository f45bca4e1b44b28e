//! NVLAMB and the PolyWarmUp schedule against the reference's float64 golden data
//! (`fixtures/lamb/`, made by `shared/oracle/lamb_step.py` with apex FusedLAMB semantics):
//! three steps of both variants (trust ratio on decayed tensors only, and `use_nvlamb`), every
//! parameter, moment and the global gradient norm, to 1e-9 relative in float64; the learning-rate
//! curves of phase 1 and 2 at every step.

use std::collections::HashMap;

use bert_core::optim::{Lamb, LambConfig, LrSchedule, NamedParam, TrustRatio};
use bert_tests::{fixture, read_safetensors, HostTensor};
use burn::backend::NdArray;
use burn::tensor::{DType, Tensor, TensorData};
use serde_json::Value;

/// Float64 tensors on ndarray, asked for explicitly: the default float type of ndarray's device
/// is process-wide, and other tests of this binary use float32.
type B = NdArray;

fn manifest() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("lamb/lamb_manifest.json")).unwrap())
        .unwrap()
}

fn tensor(host: &HostTensor) -> Tensor<B, 1> {
    Tensor::from_data(
        TensorData::new(host.f64.clone(), [host.f64.len()]),
        (&Default::default(), DType::F64),
    )
}

fn host(tensor: Tensor<B, 1>) -> Vec<f64> {
    tensor.into_data().to_vec().unwrap()
}

fn assert_rel_close(what: &str, actual: &[f64], expected: &[f64]) {
    assert_eq!(actual.len(), expected.len(), "{what}");
    let scale = expected
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs()))
        .max(1e-300);
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= 1e-9 * scale,
            "{what}[{i}]: {a} vs {e} (relative {})",
            (a - e).abs() / scale
        );
    }
}

fn check_variant(variant: &str, trust_ratio: TrustRatio) {
    let manifest = manifest();
    let golden: HashMap<String, HostTensor> =
        read_safetensors(&fixture("lamb/lamb_steps.safetensors"));
    let names: Vec<String> = manifest["param_names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    let lrs: Vec<f64> = manifest["lr_per_step"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let steps = manifest["variants"][variant]["steps"].as_array().unwrap();

    let mut optimizer = Lamb::<B>::new(LambConfig {
        trust_ratio,
        ..LambConfig::default()
    });
    let mut values: Vec<Tensor<B, 1>> = names
        .iter()
        .map(|n| tensor(&golden[&format!("step0/param/{n}")]))
        .collect();
    for (t, lr) in (1..=3).zip(lrs) {
        let params = names
            .iter()
            .zip(values)
            .map(|(name, value)| NamedParam {
                name: name.clone(),
                value,
                grad: tensor(&golden[&format!("step{t}/grad/{name}")]),
            })
            .collect();
        let step = optimizer.step(lr, params);
        let norm = host(step.global_grad_norm)[0];
        let expected_norm = steps[t - 1]["global_grad_norm"].as_f64().unwrap();
        assert!(
            (norm - expected_norm).abs() <= 1e-12 * expected_norm,
            "{variant} step {t} norm"
        );
        for (name, value) in names.iter().zip(&step.values) {
            let prefix = format!("{variant}/step{t}");
            assert_rel_close(
                &format!("{prefix}/param/{name}"),
                &host(value.clone()),
                &golden[&format!("{prefix}/param/{name}")].f64,
            );
            let moments = &optimizer.moments()[name];
            assert_rel_close(
                &format!("{prefix}/exp_avg/{name}"),
                &host(moments.exp_avg.clone()),
                &golden[&format!("{prefix}/exp_avg/{name}")].f64,
            );
            assert_rel_close(
                &format!("{prefix}/exp_avg_sq/{name}"),
                &host(moments.exp_avg_sq.clone()),
                &golden[&format!("{prefix}/exp_avg_sq/{name}")].f64,
            );
        }
        values = step.values;
    }
    assert_eq!(optimizer.step_count(), 3);
}

#[test]
fn apex_fused_lamb_matches_the_reference() {
    check_variant("apex", TrustRatio::DecayedOnly);
}

#[test]
fn use_nvlamb_matches_the_reference() {
    check_variant("nvlamb", TrustRatio::Always);
}

#[test]
fn no_decay_follows_the_recipes_name_rule() {
    let optimizer = Lamb::<B>::new(LambConfig::default());
    let manifest = manifest();
    let step = &manifest["variants"]["apex"]["steps"][0]["tensors"];
    for (name, stats) in step.as_object().unwrap() {
        assert_eq!(
            optimizer.weight_decay(name),
            stats["weight_decay"].as_f64().unwrap(),
            "{name}"
        );
    }
    // Our own module paths follow the same rule (LayerNorm parameters are gamma/beta there).
    assert_eq!(
        optimizer.weight_decay("bert.encoder.layers.0.output_layer_norm.gamma"),
        0.0
    );
    assert_eq!(optimizer.weight_decay("mlm.bias"), 0.0);
    assert_eq!(
        optimizer.weight_decay("bert.encoder.layers.0.attention.query.weight"),
        0.01
    );
}

/// Reads a 1-D little-endian float64 `.npy` file.
fn read_npy_f64(path: &std::path::Path) -> Vec<f64> {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(
        header.contains("'<f8'") && header.contains("False"),
        "{header}"
    );
    bytes[10 + header_len..]
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn poly_warm_up_matches_the_reference_curves() {
    let phases = [
        (
            LrSchedule::poly_warm_up(6e-3, 0.2843, 7038),
            "lamb/poly_warmup_phase1_lr_curve.npy",
        ),
        (
            LrSchedule::poly_warm_up(4e-3, 0.128, 1563),
            "lamb/poly_warmup_phase2_lr_curve.npy",
        ),
    ];
    for (schedule, curve) in phases {
        let expected = read_npy_f64(&fixture(curve));
        for (k, want) in (1..).zip(&expected) {
            let got = schedule.lr(k);
            assert!(
                (got - want).abs() <= 1e-15 + 1e-12 * want.abs(),
                "{curve} step {k}: {got} vs {want}"
            );
        }
    }
    let points: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("lamb/poly_warmup_lr.json")).unwrap(),
    )
    .unwrap();
    let phase1 = LrSchedule::poly_warm_up(6e-3, 0.2843, 7038);
    for (k, want) in points["phase1"]["lr_at_step"].as_object().unwrap() {
        let got = phase1.lr(k.parse().unwrap());
        assert!(
            (got - want.as_f64().unwrap()).abs() < 1e-15,
            "phase 1 step {k}"
        );
    }
}
