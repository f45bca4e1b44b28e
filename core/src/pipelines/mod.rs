//! Ready-made tasks over a model folder, each loaded in one call and answering a batch of texts
//! with plain Rust values: [`SentenceEmbeddings`] (sentence-transformers' `encode`),
//! [`QuestionAnswering`] (Hugging Face's `pipeline("question-answering")`, contexts of any
//! length), [`SequenceClassification`] (`pipeline("text-classification")`, classes named by
//! `id2label`) and [`FillMask`] (`pipeline("fill-mask")`).
//!
//! Each loads from a model folder (`from_folder`) or from the same files in memory (`from_bytes`,
//! for a browser).
//!
//! A pipeline owns its model, tokenizer and settings, and is `Send + Sync` on the CPU backends:
//! one loaded pipeline serves many threads (each call runs its own forward pass; no lock is
//! held).

mod encoding;
mod fill_mask;
mod question_answering;
mod sentence_embeddings;
mod sequence_classification;

pub use encoding::Truncation;
pub use fill_mask::{FillMask, FilledMasks, Filler};
pub use question_answering::QuestionAnswering;
pub use sentence_embeddings::{Embeddings, Pooling, PoolingMode, SentenceEmbeddings};
pub use sequence_classification::{ClassScore, Classifications, SequenceClassification};

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::error::PipelineError;

/// A result read back from the device as float32 values, without blocking (WebGPU in a browser
/// can only read back asynchronously).
async fn read_back<B: Backend, const D: usize>(
    tensor: Tensor<B, D>,
) -> Result<Vec<f32>, PipelineError> {
    fn failed(error: impl std::fmt::Debug) -> PipelineError {
        PipelineError::Backend(format!("{error:?}"))
    }
    tensor
        .into_data_async()
        .await
        .map_err(failed)?
        .convert::<f32>()
        .to_vec()
        .map_err(failed)
}
