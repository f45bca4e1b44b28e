//! From start/end logits to answers, as `run_squad.py`'s `get_answers` does: the best
//! `n_best_size` starts and ends of every window, spans that lie in the context with a
//! max-context start, `end >= start` and at most `max_answer_length` tokens, sorted by summed
//! logits and de-duplicated, mapped back to the original text with `get_final_text`, with softmax
//! probabilities over the n-best. Answers also carry their character offsets in the context.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::data::SquadExample;
use super::features::SquadFeature;
use crate::error::TokenizerError;
use crate::tokenizer::BertTokenizer;

/// Post-processing parameters; the defaults are the reference's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswerConfig {
    /// Starts and ends considered per window, and answers kept.
    pub n_best_size: usize,
    /// Longest answer in WordPiece tokens.
    pub max_answer_length: usize,
}

impl Default for AnswerConfig {
    fn default() -> Self {
        Self {
            n_best_size: 20,
            max_answer_length: 30,
        }
    }
}

/// One candidate answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// The answer as it appears in the context ("empty" when there is none).
    pub text: String,
    /// Softmax of the summed logits over the n-best list.
    pub probability: f64,
    /// Start logit.
    pub start_logit: f32,
    /// End logit.
    pub end_logit: f32,
    /// Character offsets `[start, end)` of `text` in the context (for highlighting).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offsets: Option<(usize, usize)>,
}

/// The logits the model gave one window.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowLogits {
    /// `[S]` start logits.
    pub start: Vec<f32>,
    /// `[S]` end logits.
    pub end: Vec<f32>,
}

/// Indices of the `n` largest values, largest first (ties by position).
fn best_indexes(logits: &[f32], n: usize) -> Vec<usize> {
    let mut indexes: Vec<usize> = (0..logits.len()).collect();
    indexes.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    indexes.truncate(n);
    indexes
}

/// Softmax with the maximum subtracted (`_compute_softmax`).
fn softmax(scores: &[f32]) -> Vec<f64> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = scores.iter().map(|&s| f64::from(s - max).exp()).collect();
    let total: f64 = exps.iter().sum();
    exps.iter().map(|e| e / total).collect()
}

struct Candidate {
    feature: usize,
    start: usize,
    end: usize,
    start_logit: f32,
    end_logit: f32,
}

/// The n-best answers of one example from its windows' features and logits.
pub fn best_answers(
    example: &SquadExample,
    features: &[&SquadFeature],
    logits: &[&WindowLogits],
    tokenizer: &BertTokenizer,
    config: &AnswerConfig,
) -> Result<Vec<Answer>, TokenizerError> {
    let mut candidates = Vec::new();
    for (index, (feature, logits)) in features.iter().zip(logits).enumerate() {
        let length = feature.tokens.len();
        for &start in &best_indexes(
            &logits.start[..length.min(logits.start.len())],
            config.n_best_size,
        ) {
            for &end in &best_indexes(
                &logits.end[..length.min(logits.end.len())],
                config.n_best_size,
            ) {
                let in_context =
                    feature.token_to_orig[start].is_some() && feature.token_to_orig[end].is_some();
                if !in_context || !feature.token_is_max_context[start] || end < start {
                    continue;
                }
                if end - start + 1 > config.max_answer_length {
                    continue;
                }
                candidates.push(Candidate {
                    feature: index,
                    start,
                    end,
                    start_logit: logits.start[start],
                    end_logit: logits.end[end],
                });
            }
        }
    }
    candidates
        .sort_by(|a, b| (b.start_logit + b.end_logit).total_cmp(&(a.start_logit + a.end_logit)));

    let mut answers: Vec<Answer> = Vec::new();
    for candidate in candidates {
        if answers.len() >= config.n_best_size {
            break;
        }
        let feature = features[candidate.feature];
        let (text, offsets) = if candidate.start > 0 {
            let wordpieces = feature.tokens[candidate.start..=candidate.end].join(" ");
            let predicted = wordpieces.replace(" ##", "").replace("##", "");
            let predicted = predicted.split_whitespace().collect::<Vec<_>>().join(" ");
            let first = feature.token_to_orig[candidate.start].expect("checked in the context");
            let last = feature.token_to_orig[candidate.end].expect("checked in the context");
            let original = example.doc_tokens[first..=last].join(" ");
            let (text, within) = final_text(&predicted, &original, tokenizer)?;
            (text, Some(context_offsets(example, first, within)))
        } else {
            (String::new(), None)
        };
        if answers.iter().any(|a| a.text == text) {
            continue;
        }
        answers.push(Answer {
            text,
            probability: 0.0,
            start_logit: candidate.start_logit,
            end_logit: candidate.end_logit,
            offsets: offsets.flatten(),
        });
    }
    if answers.is_empty() {
        answers.push(Answer {
            text: "empty".into(),
            probability: 0.0,
            start_logit: 0.0,
            end_logit: 0.0,
            offsets: None,
        });
    }
    let scores: Vec<f32> = answers
        .iter()
        .map(|a| a.start_logit + a.end_logit)
        .collect();
    for (answer, probability) in answers.iter_mut().zip(softmax(&scores)) {
        answer.probability = probability;
    }
    Ok(answers)
}

/// `get_final_text`: the span of `original` (context words joined by single spaces) that
/// `predicted` (normalised WordPiece text) covers, aligned character by character ignoring spaces
/// after the reference's basic tokenization; the whole of `original` when they do not align.
/// Returns the text and its `[start, end)` character range within `original`.
fn final_text(
    predicted: &str,
    original: &str,
    tokenizer: &BertTokenizer,
) -> Result<(String, (usize, usize)), TokenizerError> {
    let whole = || (original.to_string(), (0, original.chars().count()));
    let tokenized = tokenizer.basic_tokenize(original)?.join(" ");
    let tokenized_chars: Vec<char> = tokenized.chars().collect();
    let predicted_chars: Vec<char> = predicted.chars().collect();
    let Some(start) = find_chars(&tokenized_chars, &predicted_chars) else {
        return Ok(whole());
    };
    let end = start + predicted_chars.len() - 1;

    let strip_spaces = |chars: &[char]| -> (Vec<char>, Vec<usize>) {
        let mut kept = Vec::new();
        let mut positions = Vec::new();
        for (i, &c) in chars.iter().enumerate() {
            if c != ' ' {
                kept.push(c);
                positions.push(i);
            }
        }
        (kept, positions)
    };
    let original_chars: Vec<char> = original.chars().collect();
    let (original_stripped, original_positions) = strip_spaces(&original_chars);
    let (tokenized_stripped, tokenized_positions) = strip_spaces(&tokenized_chars);
    if original_stripped.len() != tokenized_stripped.len() {
        return Ok(whole());
    }
    let to_stripped: HashMap<usize, usize> = tokenized_positions
        .iter()
        .enumerate()
        .map(|(stripped, &full)| (full, stripped))
        .collect();
    let map = |position: usize| {
        to_stripped
            .get(&position)
            .and_then(|&s| original_positions.get(s))
            .copied()
    };
    let (Some(original_start), Some(original_end)) = (map(start), map(end)) else {
        return Ok(whole());
    };
    let text: String = original_chars[original_start..=original_end]
        .iter()
        .collect();
    Ok((text, (original_start, original_end + 1)))
}

fn find_chars(haystack: &[char], needle: &[char]) -> Option<usize> {
    if needle.is_empty() || needle.len() > haystack.len() {
        return None;
    }
    (0..=haystack.len() - needle.len()).find(|&i| haystack[i..i + needle.len()] == *needle)
}

/// Character offsets in the context of a range given within the words `first..` joined by single
/// spaces (the context may separate words by several whitespace characters).
fn context_offsets(
    example: &SquadExample,
    first: usize,
    (start, end): (usize, usize),
) -> Option<(usize, usize)> {
    let locate = |position: usize, is_end: bool| -> Option<usize> {
        let mut offset = 0;
        for word in first..example.doc_tokens.len() {
            let length = example.doc_tokens[word].chars().count();
            let inside = if is_end {
                position <= offset + length
            } else {
                position < offset + length
            };
            if inside {
                return Some(example.doc_token_starts[word] + position.saturating_sub(offset));
            }
            offset += length + 1;
        }
        None
    };
    Some((locate(start, false)?, locate(end, true)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::squad::data::{read_examples, SquadDataset};
    use crate::squad::features::{convert_examples_to_features, FeatureConfig};

    const VOCAB: &str = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nwho\nfounded\nit\n?\nthe\ncity\nwas\nby\nkal\n##or\n.\nin\n1887\n,\n\"\n";

    fn setup(context: &str) -> (SquadExample, Vec<SquadFeature>, BertTokenizer) {
        let tokenizer = BertTokenizer::from_vocab(VOCAB, true).unwrap();
        let json = serde_json::json!({"data": [{"paragraphs": [{"context": context,
            "qas": [{"id": "q", "question": "Who founded it?", "answers": []}]}]}]});
        let data: SquadDataset = serde_json::from_value(json).unwrap();
        let (examples, _) = read_examples(&data, false);
        let features =
            convert_examples_to_features(&examples, &tokenizer, &FeatureConfig::default(), false)
                .unwrap();
        (examples[0].clone(), features, tokenizer)
    }

    fn logits_peaking_at(length: usize, start: usize, end: usize) -> WindowLogits {
        let mut logits = WindowLogits {
            start: vec![-5.0; length],
            end: vec![-5.0; length],
        };
        logits.start[start] = 5.0;
        logits.end[end] = 5.0;
        logits
    }

    #[test]
    fn maps_the_best_span_back_to_the_original_characters() {
        let context = "The city was founded  by \"Kalor\", in 1887.";
        let (example, features, tokenizer) = setup(context);
        let tokens = &features[0].tokens;
        let start = tokens.iter().position(|t| t == "kal").unwrap();
        let logits = logits_peaking_at(tokens.len(), start, start + 1);
        let answers = best_answers(
            &example,
            &[&features[0]],
            &[&logits],
            &tokenizer,
            &AnswerConfig::default(),
        )
        .unwrap();
        // The word is `"Kalor",`; the answer drops the quotes and comma, case as in the context.
        assert_eq!(answers[0].text, "Kalor");
        let (s, e) = answers[0].offsets.unwrap();
        assert_eq!(
            context.chars().skip(s).take(e - s).collect::<String>(),
            "Kalor"
        );
        assert!(answers[0].probability > 0.5);
        let total: f64 = answers.iter().map(|a| a.probability).sum();
        assert!((total - 1.0).abs() < 1e-9);
        assert!(answers.len() <= 20);
        let texts: std::collections::HashSet<_> = answers.iter().map(|a| a.text.clone()).collect();
        assert_eq!(texts.len(), answers.len(), "no duplicates");
    }

    #[test]
    fn spans_outside_the_context_or_too_long_are_never_answers() {
        let context = "The city was founded by Kalor in 1887.";
        let (example, features, tokenizer) = setup(context);
        let length = features[0].tokens.len();
        // Peaks on the question: every span in the context is worse, but only they are valid.
        let logits = logits_peaking_at(length, 1, 2);
        let answers = best_answers(
            &example,
            &[&features[0]],
            &[&logits],
            &tokenizer,
            &AnswerConfig::default(),
        )
        .unwrap();
        assert!(answers
            .iter()
            .all(|a| context.contains(&a.text) && !a.text.is_empty()));
        let short = AnswerConfig {
            n_best_size: 20,
            max_answer_length: 2,
        };
        let answers =
            best_answers(&example, &[&features[0]], &[&logits], &tokenizer, &short).unwrap();
        assert!(
            answers
                .iter()
                .all(|a| a.text.split_whitespace().count() <= 2),
            "{answers:?}"
        );
    }

    #[test]
    fn every_span_of_a_unicode_context_round_trips_through_its_offsets() {
        let vocab = format!(
            "{VOCAB}zurich\n##'\ns\ncafe\nodeon\nopened\n«\n»\n—\n東\n京\n(\n)\n:\nnaive\n!\n"
        );
        let tokenizer = BertTokenizer::from_vocab(&vocab, true).unwrap();
        let context = "Zürich's café «Odéon» opened  in 1887 — (東京: naïve)!";
        let json = serde_json::json!({"data": [{"paragraphs": [{"context": context,
            "qas": [{"id": "q", "question": "who", "answers": []}]}]}]});
        let data: SquadDataset = serde_json::from_value(json).unwrap();
        let (examples, _) = read_examples(&data, false);
        let example = &examples[0];
        let features =
            convert_examples_to_features(&examples, &tokenizer, &FeatureConfig::default(), false)
                .unwrap();
        let feature = &features[0];
        let chars: Vec<char> = context.chars().collect();
        for first in 0..feature.tokens.len() {
            for last in first..feature.tokens.len() {
                let (Some(a), Some(b)) =
                    (feature.token_to_orig[first], feature.token_to_orig[last])
                else {
                    continue;
                };
                if last - first > 6 {
                    continue;
                }
                let logits = logits_peaking_at(feature.tokens.len(), first, last);
                let config = AnswerConfig {
                    n_best_size: 1,
                    max_answer_length: 30,
                };
                let answer =
                    &best_answers(example, &[feature], &[&logits], &tokenizer, &config).unwrap()[0];
                let (start, end) = answer.offsets.expect("a span in the context has offsets");
                // The text joins words with one space as the reference does; the offsets cover
                // the context as written, whatever whitespace lies between the words.
                let highlighted: String = chars[start..end].iter().collect();
                let highlighted = highlighted.split_whitespace().collect::<Vec<_>>().join(" ");
                assert_eq!(highlighted, answer.text, "tokens {first}..={last}");
                // The answer lies within the words its tokens came from.
                let words = example.doc_tokens[a..=b].join(" ");
                assert!(
                    words.contains(&answer.text),
                    "{:?} not in {words:?}",
                    answer.text
                );
            }
        }
    }

    #[test]
    fn final_text_falls_back_to_the_original_when_alignment_fails() {
        let tokenizer = BertTokenizer::from_vocab(VOCAB, true).unwrap();
        assert_eq!(
            final_text("kalor", "Kalor,", &tokenizer).unwrap().0,
            "Kalor"
        );
        assert_eq!(final_text("zzz", "Kalor,", &tokenizer).unwrap().0, "Kalor,");
    }
}
