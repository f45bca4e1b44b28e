//! `convert_examples_to_features` of `run_squad.py`: WordPiece the question (cut to
//! `max_query_length`) and every context word, slide windows of `max_seq_length` over the context
//! with `doc_stride`, mark for each window token whether this window gives it the most context,
//! and (training) place the answer in the window or on `[CLS]` when it is outside.

use serde::{Deserialize, Serialize};

use super::data::SquadExample;
use crate::error::TokenizerError;
use crate::model::TokenBatch;
use crate::tokenizer::BertTokenizer;

/// Window parameters; the defaults are the reference's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureConfig {
    /// Tokens per window, `[CLS]`/`[SEP]` included.
    pub max_seq_length: usize,
    /// Tokens between the starts of consecutive windows.
    pub doc_stride: usize,
    /// Question tokens kept.
    pub max_query_length: usize,
}

impl Default for FeatureConfig {
    fn default() -> Self {
        Self {
            max_seq_length: 384,
            doc_stride: 128,
            max_query_length: 64,
        }
    }
}

/// One window of one example.
#[derive(Debug, Clone, PartialEq)]
pub struct SquadFeature {
    /// Index of the example in the list given to [`convert_examples_to_features`].
    pub example_index: usize,
    /// Which window of the example this is.
    pub doc_span_index: usize,
    /// `[CLS] question [SEP] window [SEP]` as WordPiece tokens.
    pub tokens: Vec<String>,
    /// Their ids (not padded).
    pub input_ids: Vec<u32>,
    /// 0 for the question part, 1 for the window.
    pub segment_ids: Vec<u32>,
    /// For window tokens: the index of the context word they come from (`None` elsewhere).
    pub token_to_orig: Vec<Option<usize>>,
    /// For window tokens: whether this window gives them the most context.
    pub token_is_max_context: Vec<bool>,
    /// Training target: start and end token of the answer, `(0, 0)` (`[CLS]`) when the answer is
    /// not in this window.
    pub answer_tokens: Option<(usize, usize)>,
}

/// The WordPiece view of an example's context.
struct DocPieces {
    tokens: Vec<String>,
    ids: Vec<u32>,
    tok_to_orig: Vec<usize>,
    orig_to_tok: Vec<usize>,
}

fn doc_pieces(
    tokenizer: &BertTokenizer,
    example: &SquadExample,
) -> Result<DocPieces, TokenizerError> {
    let mut pieces = DocPieces {
        tokens: Vec::new(),
        ids: Vec::new(),
        tok_to_orig: Vec::new(),
        orig_to_tok: Vec::with_capacity(example.doc_tokens.len()),
    };
    for (word_index, word) in example.doc_tokens.iter().enumerate() {
        pieces.orig_to_tok.push(pieces.tokens.len());
        let (ids, tokens) = tokenizer.wordpieces(word)?;
        for (id, token) in ids.into_iter().zip(tokens) {
            pieces.tok_to_orig.push(word_index);
            pieces.tokens.push(token);
            pieces.ids.push(id);
        }
    }
    Ok(pieces)
}

/// `_improve_answer_span`: the tightest token span whose text is the tokenized answer.
fn improve_answer_span(
    doc_tokens: &[String],
    start: usize,
    end: usize,
    tokenizer: &BertTokenizer,
    answer: &str,
) -> Result<(usize, usize), TokenizerError> {
    let answer_tokens = tokenizer.tokenize(answer)?.join(" ");
    for new_start in start..=end {
        for new_end in (new_start..=end).rev() {
            if doc_tokens[new_start..=new_end].join(" ") == answer_tokens {
                return Ok((new_start, new_end));
            }
        }
    }
    Ok((start, end))
}

/// A window over the context tokens.
#[derive(Debug, Clone, Copy)]
struct DocSpan {
    start: usize,
    length: usize,
}

/// `_check_is_max_context`: whether `spans[current]` gives `position` the best context, scored
/// `min(left, right) + 0.01 * length`.
fn is_max_context(spans: &[DocSpan], current: usize, position: usize) -> bool {
    let mut best: Option<(f64, usize)> = None;
    for (index, span) in spans.iter().enumerate() {
        let end = span.start + span.length - 1;
        if position < span.start || position > end {
            continue;
        }
        let left = position - span.start;
        let right = end - position;
        let score = left.min(right) as f64 + 0.01 * span.length as f64;
        if best.is_none_or(|(best_score, _)| score > best_score) {
            best = Some((score, index));
        }
    }
    best.is_some_and(|(_, index)| index == current)
}

/// The windows of every example; `training` also computes answer positions.
pub fn convert_examples_to_features(
    examples: &[SquadExample],
    tokenizer: &BertTokenizer,
    config: &FeatureConfig,
    training: bool,
) -> Result<Vec<SquadFeature>, TokenizerError> {
    let cls = tokenizer
        .token_to_id("[CLS]")
        .ok_or(TokenizerError::MissingSpecialToken("[CLS]"))?;
    let sep = tokenizer
        .token_to_id("[SEP]")
        .ok_or(TokenizerError::MissingSpecialToken("[SEP]"))?;
    let mut features = Vec::new();
    for (example_index, example) in examples.iter().enumerate() {
        let (mut query_ids, mut query_tokens) = tokenizer.wordpieces(&example.question_text)?;
        query_ids.truncate(config.max_query_length);
        query_tokens.truncate(config.max_query_length);
        let doc = doc_pieces(tokenizer, example)?;

        let answer = match (training, example.answer_words, &example.orig_answer_text) {
            (true, Some((start_word, end_word)), Some(text)) if !doc.tokens.is_empty() => {
                let start = doc.orig_to_tok[start_word];
                let end = if end_word + 1 < example.doc_tokens.len() {
                    doc.orig_to_tok[end_word + 1] - 1
                } else {
                    doc.tokens.len() - 1
                };
                Some(improve_answer_span(
                    &doc.tokens,
                    start,
                    end.max(start),
                    tokenizer,
                    text,
                )?)
            }
            _ => None,
        };

        let max_tokens_for_doc = config
            .max_seq_length
            .saturating_sub(query_tokens.len() + 3)
            .max(1);
        let mut spans = Vec::new();
        let mut start_offset = 0;
        while start_offset < doc.tokens.len() {
            let length = (doc.tokens.len() - start_offset).min(max_tokens_for_doc);
            spans.push(DocSpan {
                start: start_offset,
                length,
            });
            if start_offset + length == doc.tokens.len() {
                break;
            }
            start_offset += length.min(config.doc_stride.max(1));
        }

        for (span_index, span) in spans.iter().enumerate() {
            let mut feature = SquadFeature {
                example_index,
                doc_span_index: span_index,
                tokens: vec!["[CLS]".to_string()],
                input_ids: vec![cls],
                segment_ids: vec![0],
                token_to_orig: vec![None],
                token_is_max_context: vec![false],
                answer_tokens: None,
            };
            for (id, token) in query_ids.iter().zip(&query_tokens) {
                feature.push(token.clone(), *id, 0, None, false);
            }
            feature.push("[SEP]".into(), sep, 0, None, false);
            let doc_offset = feature.tokens.len();
            for i in 0..span.length {
                let position = span.start + i;
                feature.push(
                    doc.tokens[position].clone(),
                    doc.ids[position],
                    1,
                    Some(doc.tok_to_orig[position]),
                    is_max_context(&spans, span_index, position),
                );
            }
            feature.push("[SEP]".into(), sep, 1, None, false);
            if let Some((start, end)) = answer {
                let span_end = span.start + span.length - 1;
                feature.answer_tokens = Some(if start >= span.start && end <= span_end {
                    (
                        start - span.start + doc_offset,
                        end - span.start + doc_offset,
                    )
                } else {
                    (0, 0)
                });
            }
            features.push(feature);
        }
    }
    Ok(features)
}

impl SquadFeature {
    fn push(
        &mut self,
        token: String,
        id: u32,
        segment: u32,
        orig: Option<usize>,
        max_context: bool,
    ) {
        self.tokens.push(token);
        self.input_ids.push(id);
        self.segment_ids.push(segment);
        self.token_to_orig.push(orig);
        self.token_is_max_context.push(max_context);
    }
}

/// Pads features to `max_seq_length` (or the longest, when shorter) and stacks them.
pub fn features_batch(features: &[&SquadFeature], max_seq_length: usize) -> TokenBatch {
    let longest = features
        .iter()
        .map(|f| f.input_ids.len())
        .max()
        .unwrap_or(0);
    let length = longest.min(max_seq_length).max(longest);
    let pad = |values: &[u32], fill: i64| {
        let mut row: Vec<i64> = values.iter().map(|&v| i64::from(v)).collect();
        row.resize(length, fill);
        row
    };
    TokenBatch {
        input_ids: features.iter().map(|f| pad(&f.input_ids, 0)).collect(),
        token_type_ids: Some(features.iter().map(|f| pad(&f.segment_ids, 0)).collect()),
        attention_mask: Some(
            features
                .iter()
                .map(|f| pad(&vec![1; f.input_ids.len()], 0))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::squad::data::{read_examples, SquadDataset};

    const VOCAB: &str = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nwho\nfounded\nit\n?\nthe\ncity\nwas\nby\nkal\n##or\n.\nin\n1887\nriver\nflows\n";

    fn dataset(context: &str, question: &str, answer: &str) -> SquadDataset {
        let start = context.find(answer).unwrap();
        let json = serde_json::json!({"version": "1.1", "data": [{"title": "t", "paragraphs": [{
            "context": context, "qas": [{"id": "q1", "question": question,
            "answers": [{"text": answer, "answer_start": context[..start].chars().count()}]}]}]}]});
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn one_window_places_the_answer_after_the_question() {
        let tokenizer = BertTokenizer::from_vocab(VOCAB, true).unwrap();
        let data = dataset(
            "The city was founded by Kalor in 1887.",
            "Who founded it?",
            "Kalor",
        );
        let (examples, skipped) = read_examples(&data, true);
        assert!(skipped.is_empty());
        let features =
            convert_examples_to_features(&examples, &tokenizer, &FeatureConfig::default(), true)
                .unwrap();
        assert_eq!(features.len(), 1);
        let f = &features[0];
        assert_eq!(
            &f.tokens[..6],
            ["[CLS]", "who", "founded", "it", "?", "[SEP]"]
        );
        let (start, end) = f.answer_tokens.unwrap();
        assert_eq!(&f.tokens[start..=end], ["kal", "##or"]);
        assert_eq!(f.token_to_orig[start], Some(5));
        assert!(f.token_is_max_context[start]);
    }

    #[test]
    fn long_contexts_slide_windows_and_pick_max_context() {
        let tokenizer = BertTokenizer::from_vocab(VOCAB, true).unwrap();
        let filler = "the river flows . ".repeat(20);
        let context = format!("{filler}the city was founded by Kalor in 1887. {filler}");
        let data = dataset(&context, "Who founded it?", "Kalor");
        let (examples, _) = read_examples(&data, true);
        let config = FeatureConfig {
            max_seq_length: 32,
            doc_stride: 8,
            max_query_length: 64,
        };
        let features = convert_examples_to_features(&examples, &tokenizer, &config, true).unwrap();
        assert!(features.len() > 5);
        assert!(features.iter().all(|f| f.tokens.len() <= 32));
        // Every context token is the max-context token of exactly one window.
        let doc_tokens: usize = examples[0]
            .doc_tokens
            .iter()
            .map(|w| tokenizer.tokenize(w).unwrap().len())
            .sum();
        let max_context_tokens: usize = features
            .iter()
            .map(|f| f.token_is_max_context.iter().filter(|&&m| m).count())
            .sum();
        assert_eq!(max_context_tokens, doc_tokens);
        // Windows that hold the whole answer point at it; the others at [CLS].
        let with_answer: Vec<_> = features
            .iter()
            .filter(|f| f.answer_tokens != Some((0, 0)))
            .collect();
        assert!(!with_answer.is_empty() && with_answer.len() < features.len());
        for f in with_answer {
            let (s, e) = f.answer_tokens.unwrap();
            assert_eq!(&f.tokens[s..=e], ["kal", "##or"]);
        }
    }

    #[test]
    fn improves_the_span_to_the_tokenized_answer() {
        let tokenizer = BertTokenizer::from_vocab(VOCAB, true).unwrap();
        // The answer "1887" sits inside the word "1887." whose pieces are "1887" and ".".
        let data = dataset("The city was founded in 1887.", "Who founded it?", "1887");
        let (examples, _) = read_examples(&data, true);
        let features =
            convert_examples_to_features(&examples, &tokenizer, &FeatureConfig::default(), true)
                .unwrap();
        let (s, e) = features[0].answer_tokens.unwrap();
        assert_eq!(&features[0].tokens[s..=e], ["1887"]);
    }
}
