//! Ready-made tasks over a model folder, each loaded in one call and answering a batch of texts
//! with plain Rust values: today [`SentenceEmbeddings`] (sentence-transformers' `encode`).
//!
//! A pipeline owns its model, tokenizer and settings, and is `Send + Sync` on the CPU backends:
//! one loaded pipeline serves many threads (each call runs its own forward pass; no lock is
//! held).

mod sentence_embeddings;

pub use sentence_embeddings::{Embeddings, Pooling, PoolingMode, SentenceEmbeddings, Truncation};
