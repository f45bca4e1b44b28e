//! The SQuAD v1.1 JSON format and its examples, read as `run_squad.py` reads them: the context
//! split on whitespace into `doc_tokens` with a character-to-word map, answers located by word.

use serde::{Deserialize, Serialize};

/// A SQuAD file: `{"version": ..., "data": [{"title", "paragraphs": [{"context", "qas"}]}]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SquadDataset {
    /// Format version ("1.1").
    #[serde(default)]
    pub version: String,
    /// Articles.
    pub data: Vec<SquadArticle>,
}

/// An article: paragraphs with questions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SquadArticle {
    /// Title.
    #[serde(default)]
    pub title: String,
    /// Paragraphs.
    pub paragraphs: Vec<SquadParagraph>,
}

/// A context and its questions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SquadParagraph {
    /// The text questions are answered from.
    pub context: String,
    /// Questions.
    pub qas: Vec<SquadQuestion>,
}

/// A question with its gold answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SquadQuestion {
    /// Unique id.
    pub id: String,
    /// The question.
    pub question: String,
    /// Gold answers (the first is the training target).
    #[serde(default)]
    pub answers: Vec<SquadAnswer>,
}

/// An answer span.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SquadAnswer {
    /// Its text, verbatim in the context.
    pub text: String,
    /// Character offset in the context.
    pub answer_start: usize,
}

impl SquadDataset {
    /// Parses a SQuAD JSON file's text.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Splits the paragraphs into a training part and a held-out part of about `fraction` of
    /// them (every `round(1 / fraction)`-th paragraph, so both parts span the whole file; at
    /// least one paragraph each when there are two). A paragraph's questions stay together, so
    /// held-out contexts are never trained on.
    pub fn split_held_out(&self, fraction: f64) -> (SquadDataset, SquadDataset) {
        let paragraphs: usize = self.data.iter().map(|a| a.paragraphs.len()).sum();
        let every = if fraction > 0.0 {
            ((1.0 / fraction).round() as usize).clamp(2, paragraphs.max(2))
        } else {
            usize::MAX
        };
        let empty = |article: &SquadArticle| SquadArticle {
            title: article.title.clone(),
            paragraphs: Vec::new(),
        };
        let (mut train, mut held_out) = (Vec::new(), Vec::new());
        let mut index = 0usize;
        for article in &self.data {
            let (mut kept, mut out) = (empty(article), empty(article));
            for paragraph in &article.paragraphs {
                let part = if index % every == every - 1 {
                    &mut out
                } else {
                    &mut kept
                };
                part.paragraphs.push(paragraph.clone());
                index += 1;
            }
            for (part, article) in [(&mut train, kept), (&mut held_out, out)] {
                if !article.paragraphs.is_empty() {
                    part.push(article);
                }
            }
        }
        let dataset = |data| SquadDataset {
            version: self.version.clone(),
            data,
        };
        (dataset(train), dataset(held_out))
    }

    /// Number of questions.
    pub fn num_questions(&self) -> usize {
        self.data
            .iter()
            .flat_map(|a| &a.paragraphs)
            .map(|p| p.qas.len())
            .sum()
    }
}

/// One question as the model sees it: the context as whitespace-separated words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SquadExample {
    /// The question's id.
    pub qas_id: String,
    /// The question.
    pub question_text: String,
    /// The context split on whitespace (`run_squad.py`'s `doc_tokens`).
    pub doc_tokens: Vec<String>,
    /// Character offset (in the context, counted in chars) where each doc token starts.
    pub doc_token_starts: Vec<usize>,
    /// The context itself.
    pub context: String,
    /// The first gold answer's text (training).
    pub orig_answer_text: Option<String>,
    /// First and last doc token of the answer (training).
    pub answer_words: Option<(usize, usize)>,
}

/// Python's `c == " " or c == "\t" or c == "\r" or c == "\n" or ord(c) == 0x202F`.
fn is_squad_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n' | '\u{202F}')
}

/// Splits a context into `doc_tokens` and the word index of every character.
pub fn split_context(context: &str) -> (Vec<String>, Vec<usize>, Vec<usize>) {
    let mut doc_tokens: Vec<String> = Vec::new();
    let mut starts = Vec::new();
    let mut char_to_word = Vec::new();
    let mut previous_is_whitespace = true;
    for (position, c) in context.chars().enumerate() {
        if is_squad_whitespace(c) {
            previous_is_whitespace = true;
        } else {
            if previous_is_whitespace {
                doc_tokens.push(String::new());
                starts.push(position);
            }
            doc_tokens.last_mut().expect("pushed above").push(c);
            previous_is_whitespace = false;
        }
        char_to_word.push(doc_tokens.len().saturating_sub(1));
    }
    (doc_tokens, starts, char_to_word)
}

/// The examples of a dataset. With `training`, questions whose answer text cannot be found at its
/// offset are skipped (as the reference does) and their ids returned.
pub fn read_examples(dataset: &SquadDataset, training: bool) -> (Vec<SquadExample>, Vec<String>) {
    let mut examples = Vec::new();
    let mut skipped = Vec::new();
    for paragraph in dataset.data.iter().flat_map(|a| &a.paragraphs) {
        let (doc_tokens, starts, char_to_word) = split_context(&paragraph.context);
        for qa in &paragraph.qas {
            let mut example = SquadExample {
                qas_id: qa.id.clone(),
                question_text: qa.question.clone(),
                doc_tokens: doc_tokens.clone(),
                doc_token_starts: starts.clone(),
                context: paragraph.context.clone(),
                orig_answer_text: None,
                answer_words: None,
            };
            if training {
                let Some(answer) = qa.answers.first() else {
                    skipped.push(qa.id.clone());
                    continue;
                };
                let length = answer.text.chars().count();
                let end_char = answer.answer_start + length.saturating_sub(1);
                if length == 0 || end_char >= char_to_word.len() {
                    skipped.push(qa.id.clone());
                    continue;
                }
                let (start, end) = (char_to_word[answer.answer_start], char_to_word[end_char]);
                let actual = doc_tokens[start..=end].join(" ");
                let cleaned = answer.text.split_whitespace().collect::<Vec<_>>().join(" ");
                if !actual.contains(&cleaned) {
                    skipped.push(qa.id.clone());
                    continue;
                }
                example.orig_answer_text = Some(answer.text.clone());
                example.answer_words = Some((start, end));
            }
            examples.push(example);
        }
    }
    (examples, skipped)
}

#[cfg(test)]
mod split_tests {
    use super::*;

    fn dataset(paragraphs: usize) -> SquadDataset {
        SquadDataset {
            version: "1.1".into(),
            data: vec![SquadArticle {
                title: "t".into(),
                paragraphs: (0..paragraphs)
                    .map(|p| SquadParagraph {
                        context: format!("context {p}"),
                        qas: (0..2)
                            .map(|q| SquadQuestion {
                                id: format!("{p}/{q}"),
                                question: "q".into(),
                                answers: Vec::new(),
                            })
                            .collect(),
                    })
                    .collect(),
            }],
        }
    }

    #[test]
    fn held_out_paragraphs_keep_their_questions_and_are_never_trained_on() {
        let (train, held_out) = dataset(10).split_held_out(0.2);
        assert_eq!(held_out.num_questions(), 4);
        assert_eq!(train.num_questions(), 16);
        let contexts = |d: &SquadDataset| -> Vec<String> {
            d.data
                .iter()
                .flat_map(|a| a.paragraphs.iter().map(|p| p.context.clone()))
                .collect()
        };
        let held = contexts(&held_out);
        assert!(contexts(&train).iter().all(|c| !held.contains(c)));
        let (train, held_out) = dataset(2).split_held_out(0.2);
        assert_eq!((train.num_questions(), held_out.num_questions()), (2, 2));
    }
}
