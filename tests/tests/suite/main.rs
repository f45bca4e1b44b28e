//! The cross-crate tests, one module per subject, in one test binary: burn's backends are generic
//! code compiled into each binary that uses them, so one binary compiles and links them once
//! (ARCHITECTURE.md, "Tests").
//!
//! Tests in one process share burn's process-wide state: a device's default float type and its
//! random seed. A test that needs float64 or a seeded draw asks for it explicitly (see
//! `golden_lamb` and `golden_forward_half`).

mod checkpoints;
mod data_parallel_wgpu;
mod fill_mask;
mod flash_attention_wgpu;
mod fused_lamb;
mod golden_forward;
mod golden_forward_half;
mod golden_forward_wgpu;
mod golden_lamb;
mod golden_squad;
mod golden_tokenize;
mod question_answering;
mod sentence_embeddings;
mod sequence_classification;
