//! The acceptance bar of the foundation: our forward pass on the real all-MiniLM-L6-v2 checkpoint
//! (with the seeded heads) equals the reference's float32 outputs within the manifest's tolerances,
//! on both CPU backends (Flex, the default, with bert-core's fused CPU kernels; ndarray, the plain
//! composition of burn operations), with attention computed both ways inference can.
//! `golden_forward_wgpu.rs` repeats two cases on wgpu.

use bert_core::model::AttentionKernel;
use burn::backend::flex::{Flex, FlexDevice};
use burn::backend::NdArray;

fn check(case: &str) {
    for attention in [AttentionKernel::Explicit, AttentionKernel::Fused] {
        bert_tests::golden::check_case::<Flex>(case, attention, &FlexDevice);
        bert_tests::golden::check_case::<NdArray>(case, attention, &Default::default());
    }
}

#[test]
fn single_sentence() {
    check("single_sentence");
}

#[test]
fn sentence_pair() {
    check("sentence_pair");
}

#[test]
fn padded_batch() {
    check("padded_batch");
}

#[test]
fn masked_lm() {
    check("masked_lm");
}

#[test]
fn unicode_accents() {
    check("unicode_accents");
}

#[test]
fn squad_384() {
    check("squad_384");
}

#[test]
fn all_pad_edge() {
    check("all_pad_edge");
}

#[test]
fn max_len_512() {
    check("max_len_512");
}
