//! The BERT model: the encoder ([`bert`]), its task heads ([`heads`]), its inputs ([`input`]), the
//! operations with fused kernels it is built from ([`ops`]) and the arithmetic of its products
//! ([`precision`]).

pub mod bert;
pub(crate) mod cpu;
pub mod heads;
pub mod input;
pub mod ops;
pub mod precision;

pub use bert::{AttentionKernel, BertModel, BertOutput, KeyMask};
pub use heads::{
    BertForPreTraining, BertForQuestionAnswering, BertForSequenceClassification, BertWithHeads,
    HeadOutputs, Heads, MaskedLmHead,
};
pub use input::{BertInput, TokenBatch};
pub use ops::LayerNorm;
pub use precision::Precision;
