//! The text-classification pipeline on MiniLM with a seeded 3-class head against Hugging Face's
//! `pipeline("text-classification", top_k=None)` (fixtures/pipelines, made by
//! scripts/make_task_fixtures.py): the same classes and probabilities for texts and pairs, the
//! class names of `id2label`, one pipeline shared by many threads, and clear errors.

use std::sync::Arc;

use bert_core::error::PipelineError;
use bert_core::pipelines::{ClassScore, SequenceClassification, Truncation};
use bert_tests::{fixture, minilm_dir, minilm_with_heads, model_bytes, TempDir};
use burn::backend::flex::{Flex, FlexDevice};
use serde_json::Value;

fn golden() -> Value {
    let text = std::fs::read_to_string(fixture("pipelines/tasks.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// MiniLM with the seeded classifier and `id2label`, in a folder `name`d for its test.
fn classifier_folder(name: &str, id2label: &Value) -> TempDir {
    minilm_with_heads(
        name,
        &[fixture("pipelines/classifier_head.safetensors")],
        serde_json::json!({ "id2label": id2label }),
    )
}

/// Our classes against Hugging Face's: the same names in the same order, probabilities to 1e-5.
fn assert_same(what: &str, ours: &[Vec<ClassScore>], theirs: &Value) {
    let theirs = theirs.as_array().unwrap();
    assert_eq!(ours.len(), theirs.len(), "{what}");
    for (i, (ours, theirs)) in ours.iter().zip(theirs).enumerate() {
        let theirs = theirs.as_array().unwrap();
        let names: Vec<&str> = theirs
            .iter()
            .map(|c| c["label"].as_str().unwrap())
            .collect();
        let our_names: Vec<&str> = ours.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(our_names, names, "{what} {i}: order of the classes");
        for (class, reference) in ours.iter().zip(theirs) {
            let expected = reference["score"].as_f64().unwrap() as f32;
            assert!(
                (class.score - expected).abs() <= 1e-5,
                "{what} {i} {}: {} vs {expected}",
                class.label,
                class.score
            );
        }
        let total: f32 = ours.iter().map(|c| c.score).sum();
        assert!(
            (total - 1.0).abs() < 1e-5,
            "{what} {i}: probabilities sum to {total}"
        );
    }
}

#[test]
fn classifies_texts_and_pairs_as_hugging_faces_pipeline() {
    let golden = golden();
    let dir = classifier_folder("classify-golden", &golden["id2label"]);
    // A batch size that splits the inputs, so padding and the restored order matter.
    let pipeline = SequenceClassification::<Flex>::from_folder(&dir.0, &FlexDevice)
        .unwrap()
        .with_batch_size(3);
    assert_eq!(pipeline.labels(), ["negative", "neutral", "positive"]);
    let cases = &golden["classification"];
    let texts: Vec<&str> = cases["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let classified = pipeline.classify(&texts).unwrap();
    assert!(classified.truncated.is_empty());
    assert_same("text", &classified.scores, &cases["text_scores"]);
    // The same files in memory: the same classes, named by the same id2label.
    let from_bytes = SequenceClassification::<Flex>::from_bytes(&model_bytes(&dir.0), &FlexDevice)
        .unwrap()
        .with_batch_size(3);
    assert_eq!(from_bytes.labels(), pipeline.labels());
    assert_eq!(from_bytes.classify(&texts).unwrap(), classified);
    let pairs: Vec<(&str, &str)> = cases["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap(), p[1].as_str().unwrap()))
        .collect();
    let classified = pipeline.classify_pairs(&pairs).unwrap();
    assert_same("pair", &classified.scores, &cases["pair_scores"]);
    for scores in &classified.scores {
        for class in scores {
            assert_eq!(pipeline.labels()[class.index], class.label);
        }
    }
}

#[test]
fn one_pipeline_serves_many_threads() {
    let golden = golden();
    let dir = classifier_folder("classify-threads", &golden["id2label"]);
    let pipeline =
        Arc::new(SequenceClassification::<Flex>::from_folder(&dir.0, &FlexDevice).unwrap());
    let texts: Vec<String> = (0..8)
        .map(|i| {
            format!(
                "Review number {i}: the soup was {} hot.",
                ["not", "very"][i % 2]
            )
        })
        .collect();
    let alone = pipeline.classify(&texts).unwrap().scores;
    assert_eq!(alone.len(), texts.len());
    let threads: Vec<_> = texts
        .iter()
        .cloned()
        .map(|text| {
            let pipeline = Arc::clone(&pipeline);
            std::thread::spawn(move || pipeline.classify(&[text]).unwrap().scores.remove(0))
        })
        .collect();
    for (i, thread) in threads.into_iter().enumerate() {
        let scores = thread.join().unwrap();
        assert_eq!(scores.len(), alone[i].len());
        for (ours, batched) in scores.iter().zip(&alone[i]) {
            assert_eq!(ours.index, batched.index, "text {i}");
            assert!((ours.score - batched.score).abs() < 1e-5, "text {i}");
        }
    }
}

#[test]
fn bad_folders_and_inputs_get_clear_errors() {
    // No classifier in the weights.
    let error = SequenceClassification::<Flex>::from_folder(minilm_dir(), &FlexDevice)
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("no sequence-classification head") && error.contains("classifier.weight"),
        "{error}"
    );
    // id2label naming another number of classes than the classifier has.
    let two = serde_json::json!({"0": "no", "1": "yes"});
    let dir = classifier_folder("classify-two-labels", &two);
    let error = SequenceClassification::<Flex>::from_folder(&dir.0, &FlexDevice)
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("config.json") && error.contains("names 2 classes but the classifier has 3"),
        "{error}"
    );
    let dir = classifier_folder("classify-inputs", &golden()["id2label"]);
    let pipeline = SequenceClassification::<Flex>::from_folder(&dir.0, &FlexDevice)
        .unwrap()
        .with_truncation(Truncation::Refuse);
    assert!(matches!(
        pipeline.classify(&[] as &[&str]),
        Err(PipelineError::NoTexts)
    ));
    let long = "word ".repeat(600);
    match pipeline.classify(&["short", long.as_str()]) {
        Err(PipelineError::TextTooLong {
            index: 1,
            limit: 512,
            ..
        }) => {}
        other => panic!("expected a refusal of text 1, got {other:?}"),
    }
    let cut = pipeline
        .with_truncation(Truncation::Cut)
        .classify(&["short", long.as_str()])
        .unwrap();
    assert_eq!(cut.truncated, [1]);
}
