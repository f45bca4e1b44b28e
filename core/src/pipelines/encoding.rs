//! Tokenizing a pipeline's inputs, each cut at the model's limit or refused as the caller asks,
//! and grouping them into batches of similar lengths.

use crate::error::PipelineError;
use crate::tokenizer::{BertTokenizer, Encoding};

/// What to do with a text longer than the model takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Truncation {
    /// Cut it at the limit, as sentence-transformers does (the default); the result lists it.
    #[default]
    Cut,
    /// Refuse the whole call with an error naming the text.
    Refuse,
}

/// Texts as pipeline inputs (no pairs).
pub(super) fn single_texts<S: AsRef<str>>(texts: &[S]) -> Vec<(&str, Option<&str>)> {
    texts.iter().map(|text| (text.as_ref(), None)).collect()
}

/// Pairs of texts as pipeline inputs.
pub(super) fn text_pairs<A: AsRef<str>, C: AsRef<str>>(
    pairs: &[(A, C)],
) -> Vec<(&str, Option<&str>)> {
    pairs
        .iter()
        .map(|(a, b)| (a.as_ref(), Some(b.as_ref())))
        .collect()
}

/// A pipeline's inputs tokenized.
pub(super) struct Encoded {
    /// One encoding per input, in order.
    pub encodings: Vec<Encoding>,
    /// The positions of the inputs that were cut to fit.
    pub truncated: Vec<usize>,
}

/// Encodes every input (a text, or a pair framed `[CLS] a [SEP] b [SEP]`) in at most `limit`
/// tokens: longer ones are cut (pairs as the reference's `truncate_seq_pair` does) or, with
/// [`Truncation::Refuse`], refused with an error naming the input. An empty list is an error.
pub(super) fn encode_inputs(
    tokenizer: &BertTokenizer,
    inputs: &[(&str, Option<&str>)],
    limit: usize,
    truncation: Truncation,
) -> Result<Encoded, PipelineError> {
    if inputs.is_empty() {
        return Err(PipelineError::NoTexts);
    }
    let mut truncated = Vec::new();
    let mut encodings = Vec::with_capacity(inputs.len());
    for (index, &(text, pair)) in inputs.iter().enumerate() {
        let whole = tokenizer.encode(text, pair, None)?;
        if whole.len() <= limit {
            encodings.push(whole);
            continue;
        }
        if truncation == Truncation::Refuse {
            return Err(PipelineError::TextTooLong {
                index,
                tokens: whole.len(),
                limit,
            });
        }
        truncated.push(index);
        encodings.push(tokenizer.encode(text, pair, Some(limit))?);
    }
    Ok(Encoded {
        encodings,
        truncated,
    })
}

/// The positions of `encodings` sorted by length and grouped `batch_size` at a time, so a batch
/// holds inputs of similar lengths and little padding.
pub(super) fn batches_by_length(encodings: &[Encoding], batch_size: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..encodings.len()).collect();
    order.sort_by_key(|&index| encodings[index].len());
    order
        .chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect()
}

/// The encodings at `positions`, padded into one batch.
pub(super) fn token_batch(
    tokenizer: &BertTokenizer,
    encodings: &[Encoding],
    positions: &[usize],
) -> crate::model::TokenBatch {
    let batch: Vec<Encoding> = positions.iter().map(|&i| encodings[i].clone()).collect();
    tokenizer.batch(&batch, None)
}
