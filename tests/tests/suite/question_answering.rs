//! The question-answering pipeline on MiniLM with the fixtures' seeded span head: the same
//! answers as the windowed SQuAD prediction it wraps (what `run_squad.py` does over a dataset),
//! whatever the batching, with the pipeline's settings or each call's, from any thread;
//! character offsets that point at the answer; and clear errors.

use std::sync::Arc;

use bert_core::error::PipelineError;
use bert_core::pipelines::QuestionAnswering;
use bert_core::squad::{
    answers_by_question, convert_examples_to_features, read_examples, window_logits, Answer,
    AnswerConfig, FeatureConfig, SquadDataset,
};
use bert_tests::{fixture, minilm_dir, minilm_with_heads, model_bytes, TempDir};
use burn::backend::flex::{Flex, FlexDevice};

/// A model folder, `name`d for its test: MiniLM's encoder and tokenizer with the seeded span
/// head.
fn qa_folder(name: &str) -> TempDir {
    minilm_with_heads(
        name,
        &[fixture("forward/weights/heads.safetensors")],
        serde_json::json!({}),
    )
}

/// A context of several 384-token windows (about 750 tokens), and two questions about it.
fn long_context() -> String {
    (0..30)
        .map(|i| {
            format!(
                "In {} the bridge number {i} over the Tamar river was rebuilt by the town of \
                 Saltash, whose mayor then was Ann Cooper.",
                1800 + 3 * i
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

const QUESTIONS: [&str; 2] = [
    "When was the bridge rebuilt?",
    "Who was the mayor of Saltash?",
];

/// The same answers: texts and offsets exactly, logits to float32 rounding (a window padded to
/// another length in a shared batch sums its products in another order).
fn same(a: &[Answer], b: &[Answer]) -> bool {
    let close = |x: f32, y: f32| (x - y).abs() <= 1e-4 * x.abs().max(1.0);
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.text == y.text
                && x.offsets == y.offsets
                && close(x.start_logit, y.start_logit)
                && close(x.end_logit, y.end_logit)
        })
}

#[test]
fn answers_as_the_windowed_prediction_does_with_offsets_into_the_context() {
    let dir = qa_folder("qa-answers");
    let pipeline = QuestionAnswering::<Flex>::from_folder(&dir.0, &FlexDevice).unwrap();
    let context = long_context();
    let answers = pipeline.answer(QUESTIONS[0], &context).unwrap();
    assert!(answers.len() > 1);
    for pair in answers.windows(2) {
        assert!(pair[0].probability >= pair[1].probability, "best first");
    }
    for answer in &answers {
        let (start, end) = answer.offsets.expect("offsets");
        let span: String = context.chars().skip(start).take(end - start).collect();
        assert_eq!(span, answer.text, "the offsets point at the answer");
    }

    // The same as SQuAD prediction over a dataset of this one question, with the same files
    // (loaded the browser's way).
    let bytes = model_bytes(&dir.0);
    let loaded = bytes.question_answering::<Flex>(true, &FlexDevice).unwrap();
    let dataset: SquadDataset = serde_json::from_value(serde_json::json!({
        "version": "1.1",
        "data": [{"title": "", "paragraphs": [{"context": context, "qas": [
            {"id": "q", "question": QUESTIONS[0], "answers": []}
        ]}]}]
    }))
    .unwrap();
    let (examples, _) = read_examples(&dataset, false);
    let windows = FeatureConfig::default();
    let features =
        convert_examples_to_features(&examples, &loaded.tokenizer, &windows, false).unwrap();
    assert!(features.len() > 1, "the context spans several windows");
    let logits = window_logits(
        &loaded.model,
        &loaded.config,
        &features,
        windows.max_seq_length,
        3,
        &FlexDevice,
    )
    .unwrap();
    let mut predicted = answers_by_question(
        &examples,
        &features,
        &logits,
        &loaded.tokenizer,
        &AnswerConfig::default(),
    )
    .unwrap();
    assert!(same(&answers, &predicted.remove("q").unwrap()));
    let from_bytes = QuestionAnswering::<Flex>::from_bytes(&bytes, &FlexDevice).unwrap();
    assert!(same(
        &answers,
        &from_bytes.answer(QUESTIONS[0], &context).unwrap()
    ));

    // One call's own windows and answer settings: as a pipeline built with them.
    let short_windows = FeatureConfig {
        max_seq_length: 128,
        doc_stride: 64,
        max_query_length: 64,
    };
    let three = AnswerConfig {
        n_best_size: 3,
        ..AnswerConfig::default()
    };
    let per_call = pipeline
        .answer_with(QUESTIONS[0], &context, &short_windows, &three)
        .unwrap();
    assert_eq!(per_call.len(), 3);
    let configured = from_bytes.with_windows(short_windows).with_answers(three);
    assert!(same(
        &per_call,
        &configured.answer(QUESTIONS[0], &context).unwrap()
    ));
    assert!(
        !same(&per_call, &answers[..3]),
        "the windows changed the logits"
    );

    // Several pairs at once: each as if alone.
    let short = "The mayor of Saltash was Ann Cooper.";
    let pairs = [
        (QUESTIONS[0], context.as_str()),
        (QUESTIONS[1], short),
        (QUESTIONS[0], context.as_str()),
    ];
    let all = pipeline.answer_all(&pairs).unwrap();
    assert_eq!(all.len(), 3);
    assert!(same(&all[0], &answers) && same(&all[2], &answers));
    assert!(same(
        &all[1],
        &pipeline.answer(QUESTIONS[1], short).unwrap()
    ));
}

#[test]
fn one_pipeline_answers_from_several_threads() {
    let dir = qa_folder("qa-threads");
    let pipeline = Arc::new(QuestionAnswering::<Flex>::from_folder(&dir.0, &FlexDevice).unwrap());
    let context = Arc::new(long_context());
    let alone: Vec<Vec<Answer>> = QUESTIONS
        .iter()
        .map(|q| pipeline.answer(q, &context).unwrap())
        .collect();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (pipeline, context) = (Arc::clone(&pipeline), Arc::clone(&context));
            std::thread::spawn(move || pipeline.answer(QUESTIONS[t % 2], &context).unwrap())
        })
        .collect();
    for (t, thread) in threads.into_iter().enumerate() {
        assert!(same(&thread.join().unwrap(), &alone[t % 2]), "thread {t}");
    }
}

#[test]
fn bad_inputs_and_folders_get_clear_errors() {
    // The encoder alone has no span head.
    let error = QuestionAnswering::<Flex>::from_folder(minilm_dir(), &FlexDevice)
        .err()
        .unwrap();
    let message = error.to_string();
    assert!(message.contains("question-answering head"), "{message}");
    let dir = qa_folder("qa-errors");
    let pipeline = QuestionAnswering::<Flex>::from_folder(&dir.0, &FlexDevice).unwrap();
    let none: &[(&str, &str)] = &[];
    assert!(matches!(
        pipeline.answer_all(none),
        Err(PipelineError::NoTexts)
    ));
    let error = pipeline
        .answer_all(&[("Who?", "Someone."), (" ", "A context.")])
        .unwrap_err();
    assert!(
        matches!(error, PipelineError::EmptyQuestionOrContext { index: 1 }),
        "{error}"
    );
}
