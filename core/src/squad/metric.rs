//! The official SQuAD v1.1 metric (`evaluate-v1.1.py`): exact match and token-bag F1 after
//! normalisation, best over the gold answers, averaged over all questions (missing predictions
//! score 0), as percentages.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::data::SquadDataset;
use super::postprocess::Answer;

/// Lower-case, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace.
pub fn normalize_answer(text: &str) -> String {
    static ARTICLES: OnceLock<Regex> = OnceLock::new();
    let articles = ARTICLES.get_or_init(|| Regex::new(r"\b(a|an|the)\b").expect("valid regex"));
    let lower = text.to_lowercase();
    let without_punctuation: String = lower
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    let without_articles = articles.replace_all(&without_punctuation, " ");
    without_articles
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether the normalised texts are equal.
pub fn exact_match(prediction: &str, ground_truth: &str) -> bool {
    normalize_answer(prediction) == normalize_answer(ground_truth)
}

/// Harmonic mean of token precision and recall over the bags of normalised tokens (0 when they
/// share none, even when both are empty: the v1.1 script's quirk).
pub fn f1(prediction: &str, ground_truth: &str) -> f64 {
    let prediction = normalize_answer(prediction);
    let ground_truth = normalize_answer(ground_truth);
    let predicted: Vec<&str> = prediction.split_whitespace().collect();
    let gold: Vec<&str> = ground_truth.split_whitespace().collect();
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for token in &gold {
        *counts.entry(token).or_default() += 1;
    }
    let mut same = 0;
    for token in &predicted {
        if let Some(count) = counts.get_mut(token) {
            if *count > 0 {
                *count -= 1;
                same += 1;
            }
        }
    }
    if same == 0 {
        return 0.0;
    }
    let precision = same as f64 / predicted.len() as f64;
    let recall = same as f64 / gold.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// Scores of one question.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QuestionScore {
    /// 1 when the prediction matches a gold answer exactly (after normalisation).
    pub exact_match: f64,
    /// Best F1 over the gold answers.
    pub f1: f64,
}

/// Totals as `evaluate-v1.1.py` prints them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SquadScores {
    /// Percentage of exact matches.
    pub exact_match: f64,
    /// Mean F1 as a percentage.
    pub f1: f64,
    /// Question ids without a prediction (they score 0).
    #[serde(skip)]
    pub missing: Vec<String>,
    /// Per question, by id.
    #[serde(skip)]
    pub per_question: BTreeMap<String, QuestionScore>,
}

/// Scores the best of each question's n-best `answers` (by question id) on `dataset`.
pub fn evaluate_answers(
    dataset: &SquadDataset,
    answers: &BTreeMap<String, Vec<Answer>>,
) -> SquadScores {
    let predictions = answers
        .iter()
        .map(|(id, nbest)| (id.clone(), nbest.first().map(|a| a.text.clone())))
        .collect();
    evaluate(dataset, &predictions)
}

/// Scores `predictions` (question id to answer text; `None` counts as missing) on `dataset`.
pub fn evaluate(
    dataset: &SquadDataset,
    predictions: &HashMap<String, Option<String>>,
) -> SquadScores {
    let mut per_question = BTreeMap::new();
    let mut missing = Vec::new();
    let (mut exact_sum, mut f1_sum, mut total) = (0.0, 0.0, 0usize);
    for article in &dataset.data {
        for paragraph in &article.paragraphs {
            for qa in &paragraph.qas {
                total += 1;
                let Some(Some(prediction)) = predictions.get(&qa.id) else {
                    missing.push(qa.id.clone());
                    per_question.insert(
                        qa.id.clone(),
                        QuestionScore {
                            exact_match: 0.0,
                            f1: 0.0,
                        },
                    );
                    continue;
                };
                let best = |metric: &dyn Fn(&str, &str) -> f64| {
                    qa.answers
                        .iter()
                        .map(|a| metric(prediction, &a.text))
                        .fold(0.0, f64::max)
                };
                let score = QuestionScore {
                    exact_match: best(&|p, g| f64::from(u8::from(exact_match(p, g)))),
                    f1: best(&f1),
                };
                exact_sum += score.exact_match;
                f1_sum += score.f1;
                per_question.insert(qa.id.clone(), score);
            }
        }
    }
    let total = total.max(1) as f64;
    SquadScores {
        exact_match: 100.0 * exact_sum / total,
        f1: 100.0 * f1_sum / total,
        missing,
        per_question,
    }
}
