//! Comparison of one golden case (see `fixtures/forward/manifest.json`) on any backend.

use std::collections::HashMap;

use bert_core::model::AttentionKernel;
use bert_core::pretrained::{load_model, ModelFiles};
use burn::tensor::backend::Backend;

use crate::{
    assert_close, case_batch, case_input, fixture, minilm_dir, read_safetensors, values, HostTensor,
};

/// Tolerances of the manifest: real tokens, `[PAD]` positions of real rows, all-`[PAD]` rows
/// (where float32 keeps only ~1e-3 of each score next to -10000).
const REAL_TOKEN_ATOL: f32 = 1e-4;
const PAD_TOKEN_ATOL: f32 = 5e-4;
const ALL_PAD_ROW_ATOL: f32 = 2e-3;
const MLM_ATOL: f32 = 5e-4;

/// Per-position tolerance for a `[B, S]` mask.
struct Tolerances {
    mask: Vec<Vec<i64>>,
}

impl Tolerances {
    fn row_is_padding(&self, row: usize) -> bool {
        self.mask[row].iter().all(|&m| m == 0)
    }

    fn at(&self, row: usize, position: usize) -> f32 {
        if self.row_is_padding(row) {
            ALL_PAD_ROW_ATOL
        } else if self.mask[row][position] == 0 {
            PAD_TOKEN_ATOL
        } else {
            REAL_TOKEN_ATOL
        }
    }

    fn row(&self, row: usize, base: f32) -> f32 {
        if self.row_is_padding(row) {
            ALL_PAD_ROW_ATOL
        } else {
            base
        }
    }
}

/// Compares `[B, S, inner]` values position by position.
fn compare_per_position(
    what: &str,
    actual: &[f32],
    expected: &HostTensor,
    tolerances: &Tolerances,
) {
    let (batch, seq) = (expected.shape[0], expected.shape[1]);
    let inner = expected.f32.len() / (batch * seq);
    assert_eq!(actual.len(), expected.f32.len(), "{what}: size");
    for b in 0..batch {
        for s in 0..seq {
            let range = (b * seq + s) * inner..(b * seq + s + 1) * inner;
            assert_close(
                &format!("{what}[{b},{s}]"),
                &actual[range.clone()],
                &expected.f32[range],
                tolerances.at(b, s),
            );
        }
    }
}

/// Compares `[B, inner]` values row by row.
fn compare_per_row(
    what: &str,
    actual: &[f32],
    expected: &HostTensor,
    tolerances: &Tolerances,
    base: f32,
) {
    let batch = expected.shape[0];
    let inner = expected.f32.len() / batch;
    assert_eq!(actual.len(), expected.f32.len(), "{what}: size");
    for b in 0..batch {
        let range = b * inner..(b + 1) * inner;
        assert_close(
            &format!("{what}[{b}]"),
            &actual[range.clone()],
            &expected.f32[range],
            tolerances.row(b, base),
        );
    }
}

/// Loads MiniLM plus the seeded heads, runs `case` with `attention` computed as it says and checks
/// every output the case holds.
pub fn check_case<B: Backend>(case: &str, attention: AttentionKernel, device: &B::Device) {
    let files = ModelFiles::find(&minilm_dir(), None).expect("model folder");
    let heads = fixture("forward/weights/heads.safetensors");
    let mut loaded = load_model::<B>(&files, &[heads], device).expect("MiniLM loads");
    loaded.model.bert.attention_kernel = attention;
    assert!(
        loaded.report.missing.is_empty(),
        "missing: {:?}",
        loaded.report.missing
    );
    assert!(
        loaded.report.unexpected.is_empty(),
        "unexpected: {:?}",
        loaded.report.unexpected
    );

    let golden: HashMap<String, HostTensor> =
        read_safetensors(&fixture(&format!("forward/cases/{case}.safetensors")));
    let input = case_input::<B>(&golden, &loaded.config, device);
    let tolerances = Tolerances {
        mask: case_batch(&golden).attention_mask.expect("mask"),
    };

    let (output, hidden_states) = loaded.model.bert.forward_with_hidden_states(input.clone());
    compare_per_position(
        &format!("{case} last_hidden_state"),
        &values(output.sequence_output),
        &golden["last_hidden_state"],
        &tolerances,
    );
    if let Some(expected) = golden.get("hidden_states") {
        let layers = expected.shape[0];
        assert_eq!(
            hidden_states.len(),
            layers,
            "{case}: number of hidden states"
        );
        let per_layer = expected.f32.len() / layers;
        for (layer, actual) in hidden_states.into_iter().enumerate() {
            let expected_layer = HostTensor {
                shape: expected.shape[1..].to_vec(),
                f32: expected.f32[layer * per_layer..(layer + 1) * per_layer].to_vec(),
                ..HostTensor::default()
            };
            compare_per_position(
                &format!("{case} hidden_states[{layer}]"),
                &values(actual),
                &expected_layer,
                &tolerances,
            );
        }
    }

    let outputs = loaded.model.forward(input);
    compare_per_row(
        &format!("{case} pooler_output"),
        &values(outputs.pooler_output.expect("pooler")),
        &golden["pooler_output"],
        &tolerances,
        REAL_TOKEN_ATOL,
    );
    compare_per_row(
        &format!("{case} nsp_logits"),
        &values(outputs.nsp_logits.expect("nsp head")),
        &golden["nsp_logits"],
        &tolerances,
        REAL_TOKEN_ATOL,
    );
    for (name, actual) in [
        ("qa_start_logits", outputs.start_logits.expect("qa head")),
        ("qa_end_logits", outputs.end_logits.expect("qa head")),
    ] {
        compare_per_position(
            &format!("{case} {name}"),
            &values(actual),
            &golden[name],
            &tolerances,
        );
    }

    let mlm_logits = values(outputs.mlm_logits.expect("mlm head"));
    let positions = &golden["mlm_positions"];
    let expected = &golden["mlm_logits"];
    let seq_len = golden["input_ids"].shape[1];
    let vocab = expected.shape[1];
    for (k, pair) in positions.i64.chunks(2).enumerate() {
        let (b, s) = (pair[0] as usize, pair[1] as usize);
        let at = (b * seq_len + s) * vocab;
        assert_close(
            &format!("{case} mlm_logits[{b},{s}]"),
            &mlm_logits[at..at + vocab],
            &expected.f32[k * vocab..(k + 1) * vocab],
            tolerances.row(b, MLM_ATOL),
        );
    }
}

/// How far a half-precision forward may drift from the float32 reference.
#[derive(Debug, Clone, Copy)]
pub struct HalfPrecisionBounds {
    /// The least cosine similarity of any real token's last hidden state with the reference's.
    pub min_token_cosine: f32,
    /// The largest absolute difference of a span logit on a real token.
    pub max_span_logit_diff: f32,
    /// The least share of masked positions whose arg-max MLM prediction is the reference's.
    pub min_mlm_agreement: f32,
}

/// Runs `case` through MiniLM + the golden heads at `precision` and checks it stays within
/// `bounds` of the float32 reference; returns (cosine, span difference, MLM agreement).
pub fn check_case_at_precision<B: Backend>(
    case: &str,
    precision: bert_core::model::Precision,
    bounds: HalfPrecisionBounds,
    device: &B::Device,
) -> (f32, f32, f32) {
    let files = ModelFiles::find(&minilm_dir(), None).expect("model folder");
    let heads = fixture("forward/weights/heads.safetensors");
    let mut loaded = load_model::<B>(&files, &[heads], device).expect("MiniLM loads");
    loaded.model.bert.precision = precision;
    let golden: HashMap<String, HostTensor> =
        read_safetensors(&fixture(&format!("forward/cases/{case}.safetensors")));
    let input = case_input::<B>(&golden, &loaded.config, device);
    let mask = case_batch(&golden).attention_mask.expect("mask");
    let outputs = loaded.model.forward(input);

    let hidden = values(outputs.last_hidden_state);
    let expected = &golden["last_hidden_state"];
    let width = *expected.shape.last().expect("rank 3");
    let real_tokens: Vec<usize> = mask
        .iter()
        .flatten()
        .enumerate()
        .filter(|(_, &m)| m == 1)
        .map(|(i, _)| i)
        .collect();
    let cosine = real_tokens
        .iter()
        .map(|&t| {
            let (a, b) = (
                &hidden[t * width..(t + 1) * width],
                &expected.f32[t * width..(t + 1) * width],
            );
            let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
            dot / (norm(a) * norm(b))
        })
        .fold(f32::INFINITY, f32::min);
    let mut span = 0.0f32;
    for (name, actual) in [
        ("qa_start_logits", outputs.start_logits.expect("qa head")),
        ("qa_end_logits", outputs.end_logits.expect("qa head")),
    ] {
        let actual = values(actual);
        for &t in &real_tokens {
            span = span.max((actual[t] - golden[name].f32[t]).abs());
        }
    }
    let mlm_logits = values(outputs.mlm_logits.expect("mlm head"));
    let expected = &golden["mlm_logits"];
    let (seq_len, vocab) = (golden["input_ids"].shape[1], expected.shape[1]);
    let argmax = |v: &[f32]| {
        v.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
    };
    let pairs: Vec<&[i64]> = positions_of(&golden);
    let agreeing = pairs
        .iter()
        .enumerate()
        .filter(|(k, pair)| {
            let at = (pair[0] as usize * seq_len + pair[1] as usize) * vocab;
            argmax(&mlm_logits[at..at + vocab]) == argmax(&expected.f32[k * vocab..(k + 1) * vocab])
        })
        .count();
    let agreement = agreeing as f32 / pairs.len() as f32;
    assert!(
        cosine >= bounds.min_token_cosine
            && span <= bounds.max_span_logit_diff
            && agreement >= bounds.min_mlm_agreement,
        "{case} at {precision}: token cosine {cosine}, span logit difference {span}, MLM agreement {agreement}; bounds {bounds:?}"
    );
    (cosine, span, agreement)
}

/// The `(batch, position)` pairs of a case's masked positions.
fn positions_of(golden: &HashMap<String, HostTensor>) -> Vec<&[i64]> {
    golden["mlm_positions"].i64.chunks(2).collect()
}
