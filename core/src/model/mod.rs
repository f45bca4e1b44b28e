//! The BERT model: the encoder ([`bert`]), its task heads ([`heads`]) and its inputs ([`input`]).

pub mod bert;
pub mod heads;
pub mod input;
pub mod precision;

pub use bert::{AttentionKernel, BertModel, BertOutput, KeyMask};
pub use heads::{
    BertForPreTraining, BertForQuestionAnswering, BertForSequenceClassification, BertWithHeads,
    HeadOutputs, Heads, MaskedLmHead,
};
pub use input::{BertInput, TokenBatch};
pub use precision::Precision;
