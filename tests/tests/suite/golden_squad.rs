//! The SQuAD v1.1 metric against the official `evaluate-v1.1.py` (`fixtures/squad/`, made by
//! `shared/oracle/squad_eval.py`): normalisation and F1/EM cases, and three prediction files
//! scored on a 32-question dataset, totals and every question exactly.

use std::collections::HashMap;

use bert_core::squad::metric::{exact_match, f1, normalize_answer};
use bert_core::squad::{evaluate, read_examples, SquadDataset};
use bert_tests::fixture;
use serde_json::Value;

fn json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(&format!("squad/{name}"))).unwrap())
        .unwrap()
}

#[test]
fn normalisation_and_token_f1_match_the_official_script() {
    let cases = json("normalize_cases.json");
    for case in cases["normalize_answer"].as_array().unwrap() {
        let input = case["input"].as_str().unwrap();
        assert_eq!(
            normalize_answer(input),
            case["output"].as_str().unwrap(),
            "{input:?}"
        );
    }
    for case in cases["f1_exact"].as_array().unwrap() {
        let (prediction, truth) = (
            case["prediction"].as_str().unwrap(),
            case["ground_truth"].as_str().unwrap(),
        );
        assert_eq!(
            f1(prediction, truth),
            case["f1"].as_f64().unwrap(),
            "{prediction:?} / {truth:?}"
        );
        assert_eq!(
            exact_match(prediction, truth),
            case["exact_match"].as_bool().unwrap()
        );
    }
}

#[test]
fn prediction_files_score_exactly_as_evaluate_v1_1() {
    let dataset = SquadDataset::from_json(
        &std::fs::read_to_string(fixture("squad/dev-mini-v1.1.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(dataset.num_questions(), 32);
    let expected = json("expected_scores.json");
    for (name, reference) in expected["predictions"].as_object().unwrap() {
        let file = reference["file"].as_str().unwrap();
        let predictions: HashMap<String, Option<String>> =
            serde_json::from_value(json(file)).unwrap();
        let scores = evaluate(&dataset, &predictions);
        assert_eq!(
            scores.exact_match,
            reference["exact_match"].as_f64().unwrap(),
            "{name}"
        );
        assert_eq!(scores.f1, reference["f1"].as_f64().unwrap(), "{name}");
        let missing: Vec<String> =
            serde_json::from_value(reference["missing_ids"].clone()).unwrap();
        assert_eq!(scores.missing, missing, "{name}");
        for (id, question) in reference["per_question"].as_object().unwrap() {
            let ours = scores.per_question[id];
            assert_eq!(
                ours.exact_match,
                question["exact_match"].as_f64().unwrap(),
                "{name} {id}"
            );
            assert_eq!(ours.f1, question["f1"].as_f64().unwrap(), "{name} {id}");
        }
    }
}

#[test]
fn every_golden_answer_is_found_at_its_offset() {
    let dataset = SquadDataset::from_json(
        &std::fs::read_to_string(fixture("squad/dev-mini-v1.1.json")).unwrap(),
    )
    .unwrap();
    let (examples, skipped) = read_examples(&dataset, true);
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(examples.len(), 32);
}
