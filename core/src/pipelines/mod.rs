//! Ready-made tasks over a model folder, each loaded in one call and answering a batch of texts
//! with plain Rust values: [`SentenceEmbeddings`] (sentence-transformers' `encode`) and
//! [`QuestionAnswering`] (Hugging Face's `pipeline("question-answering")`, contexts of any length).
//!
//! A pipeline owns its model, tokenizer and settings, and is `Send + Sync` on the CPU backends:
//! one loaded pipeline serves many threads (each call runs its own forward pass; no lock is
//! held).

mod question_answering;
mod sentence_embeddings;

pub use question_answering::QuestionAnswering;
pub use sentence_embeddings::{Embeddings, Pooling, PoolingMode, SentenceEmbeddings, Truncation};
