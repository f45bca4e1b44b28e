//! The sentence-embeddings pipeline on the real all-MiniLM-L6-v2 folder against
//! sentence-transformers' own `encode` (fixtures/embeddings, made by
//! scripts/make_embedding_fixtures.py): the same vectors, one pipeline shared by many threads,
//! and clear errors for what it cannot do.

use std::sync::Arc;

use bert_core::error::PipelineError;
use bert_core::pipelines::{Pooling, PoolingMode, SentenceEmbeddings, Truncation};
use bert_tests::{golden_embeddings, model_bytes, TempDir};
use burn::backend::flex::{Flex, FlexDevice};
use burn::backend::NdArray;
use burn::tensor::backend::Backend;

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot = |x: &[f32], y: &[f32]| -> f64 {
        x.iter()
            .zip(y)
            .map(|(p, q)| f64::from(*p) * f64::from(*q))
            .sum()
    };
    dot(a, b) / (dot(a, a).sqrt() * dot(b, b).sqrt())
}

fn matches_sentence_transformers<B: Backend>(device: &B::Device) {
    let golden = golden_embeddings();
    // A batch size that splits the texts unevenly, so padding and the restored order matter.
    let pipeline = SentenceEmbeddings::<B>::from_folder(bert_tests::minilm_dir(), device)
        .unwrap()
        .with_batch_size(3);
    assert_eq!(
        pipeline.pooling(),
        &Pooling {
            mode: PoolingMode::Mean,
            normalize: true,
            max_seq_length: Some(256),
        }
    );
    assert!(pipeline.notices().is_empty());
    assert_eq!(pipeline.max_tokens(), golden.max_seq_length);
    let embeddings = pipeline.embed(&golden.sentences).unwrap();
    // The same files in memory, with the same pooling, give the same vectors.
    let from_bytes = SentenceEmbeddings::<B>::from_bytes(
        &model_bytes(&bert_tests::minilm_dir()),
        pipeline.pooling().clone(),
        device,
    )
    .unwrap()
    .with_batch_size(3);
    assert_eq!(from_bytes.embed(&golden.sentences).unwrap(), embeddings);
    let over_limit: Vec<usize> = (0..golden.sentences.len())
        .filter(|&i| golden.tokens_before_truncation[i] > golden.max_seq_length)
        .collect();
    assert!(!over_limit.is_empty(), "the fixtures include a text to cut");
    assert_eq!(embeddings.truncated, over_limit);
    for (i, (ours, theirs)) in embeddings
        .vectors
        .iter()
        .zip(&golden.embeddings)
        .enumerate()
    {
        assert_eq!(ours.len(), pipeline.dimension());
        let max_error = ours
            .iter()
            .zip(theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        let cosine = cosine(ours, theirs);
        assert!(
            cosine >= 0.99999 && max_error <= 1e-5,
            "sentence {i} ({:?}): cosine {cosine}, max abs error {max_error}",
            golden.sentences[i]
        );
    }
}

#[test]
fn sentence_embeddings_match_sentence_transformers_on_flex() {
    matches_sentence_transformers::<Flex>(&FlexDevice);
}

#[test]
fn sentence_embeddings_match_sentence_transformers_on_ndarray() {
    matches_sentence_transformers::<NdArray>(&Default::default());
}

#[test]
fn one_pipeline_serves_eight_threads_at_once() {
    let golden = golden_embeddings();
    let pipeline = Arc::new(
        SentenceEmbeddings::<Flex>::from_folder(bert_tests::minilm_dir(), &FlexDevice).unwrap(),
    );
    let alone = pipeline.embed(&golden.sentences[..4]).unwrap().vectors;
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let pipeline = Arc::clone(&pipeline);
            let texts: Vec<String> = golden.sentences[..4].to_vec();
            std::thread::spawn(move || {
                (0..3)
                    .map(|_| pipeline.embed(&texts[t % 4..]).unwrap().vectors)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for (t, thread) in threads.into_iter().enumerate() {
        for vectors in thread.join().unwrap() {
            // The same texts give the same vectors, whichever thread and batch they ran in.
            for (got, expected) in vectors.iter().zip(&alone[t % 4..]) {
                let cosine = cosine(got, expected);
                assert!(cosine >= 0.999999, "thread {t}: cosine {cosine}");
            }
        }
    }
}

#[test]
fn bad_inputs_get_clear_errors() {
    let golden = golden_embeddings();
    let pipeline = SentenceEmbeddings::<Flex>::from_folder(bert_tests::minilm_dir(), &FlexDevice)
        .unwrap()
        .with_truncation(Truncation::Refuse);
    let none: &[&str] = &[];
    assert!(matches!(pipeline.embed(none), Err(PipelineError::NoTexts)));
    let long = golden
        .tokens_before_truncation
        .iter()
        .position(|&n| n > golden.max_seq_length)
        .unwrap();
    let texts = ["short", golden.sentences[long].as_str()];
    let error = pipeline.embed(&texts).unwrap_err();
    assert!(
        matches!(
            error,
            PipelineError::TextTooLong {
                index: 1,
                limit: 256,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("text 1 has"), "{error}");
}

/// A copy of the MiniLM folder with only the files Hugging Face needs (no sentence-transformers
/// files), plus, when given, a pooling configuration.
fn bare_folder(name: &str, pooling_config: Option<&str>) -> TempDir {
    let dir = TempDir::new(name);
    let source = bert_tests::minilm_dir();
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(source.join(file), dir.path(file)).unwrap();
    }
    if let Some(config) = pooling_config {
        let modules = r#"[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]"#;
        std::fs::write(dir.path("modules.json"), modules).unwrap();
        std::fs::create_dir_all(dir.path("1_Pooling")).unwrap();
        std::fs::write(dir.path("1_Pooling/config.json"), config).unwrap();
    }
    dir
}

#[test]
fn a_folder_without_pooling_files_pools_the_mean_and_says_so() {
    let golden = golden_embeddings();
    let dir = bare_folder("no-pooling", None);
    let pipeline = SentenceEmbeddings::<Flex>::from_folder(&dir.0, &FlexDevice).unwrap();
    assert_eq!(pipeline.pooling(), &Pooling::MEAN);
    assert_eq!(pipeline.notices().len(), 1);
    assert!(pipeline.notices()[0].contains("no modules.json"));
    // The mean, not normalised: the same direction as sentence-transformers' unit vector.
    let vectors = pipeline.embed(&golden.sentences[..2]).unwrap().vectors;
    for (ours, theirs) in vectors.iter().zip(&golden.embeddings) {
        let norm = ours.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() > 1e-3, "not normalised: norm {norm}");
        assert!(cosine(ours, theirs) >= 0.99999);
    }
}

#[test]
fn cls_and_max_pooling_and_unsupported_modes() {
    let text = ["A man is playing a guitar."];
    let config =
        |mode: &str| format!(r#"{{"word_embedding_dimension": 384, "pooling_mode_{mode}": true}}"#);
    let cls_dir = bare_folder("cls", Some(&config("cls_token")));
    let cls = SentenceEmbeddings::<Flex>::from_folder(&cls_dir.0, &FlexDevice).unwrap();
    assert_eq!(cls.pooling().mode, PoolingMode::Cls);
    let max_dir = bare_folder("max", Some(&config("max_tokens")));
    let max = SentenceEmbeddings::<Flex>::from_folder(&max_dir.0, &FlexDevice).unwrap();
    assert_eq!(max.pooling().mode, PoolingMode::Max);
    let mean_dir = bare_folder("mean", None);
    let mean = SentenceEmbeddings::<Flex>::from_folder(&mean_dir.0, &FlexDevice).unwrap();
    let [cls, max, mean] = [cls, max, mean].map(|p| p.embed(&text).unwrap().vectors.remove(0));
    // The maximum over tokens bounds both the [CLS] vector and the mean, element by element.
    for i in 0..cls.len() {
        assert!(max[i] >= cls[i] && max[i] >= mean[i] - 1e-6, "element {i}");
    }
    assert!(cosine(&cls, &mean) < 0.9999, "CLS pooling is not the mean");
    let sqrt_dir = bare_folder("sqrt", Some(&config("mean_sqrt_len_tokens")));
    let error = SentenceEmbeddings::<Flex>::from_folder(&sqrt_dir.0, &FlexDevice)
        .err()
        .unwrap();
    let message = error.to_string();
    assert!(
        message.contains("1_Pooling/config.json") && message.contains("mean_sqrt_len_tokens"),
        "{message}"
    );
}
