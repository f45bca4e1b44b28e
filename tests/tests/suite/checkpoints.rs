//! Checkpoint formats: one tiny seeded BERT saved by PyTorch/transformers as Hugging Face
//! safetensors, a legacy `pytorch_model.bin` (old `gamma`/`beta` names, no `bert.` prefix) and an
//! NVIDIA `ckpt.pt` (`module.` prefixes, `dense_act`, vocabulary padded to a multiple of 8) must
//! load to the same model and compute what transformers computed. Saving and reloading is exact.

use std::path::Path;

use bert_core::checkpoint::{to_safetensors, Checkpoint};
use bert_core::error::CheckpointError;
use bert_core::model::{BertForQuestionAnswering, BertWithHeads, Heads};
use bert_core::pretrained::{load_model, ModelFiles};
use bert_core::BertConfig;
use burn::backend::NdArray;

use bert_tests::{assert_close, case_input, fixture, read_safetensors, values};

type B = NdArray;

fn tiny_dir() -> std::path::PathBuf {
    fixture("checkpoints")
}

fn tiny_config() -> BertConfig {
    BertConfig::from_json(&std::fs::read_to_string(tiny_dir().join("config.json")).unwrap())
        .unwrap()
}

/// Loads `weights` with the folder's config and checks all outputs against transformers.
fn check_against_transformers(weights: &Path) -> BertWithHeads<B> {
    let device = Default::default();
    let files = ModelFiles::find(&tiny_dir(), Some(weights)).unwrap();
    let loaded = load_model::<B>(&files, &[], &device).unwrap();
    assert!(
        loaded.report.missing.is_empty(),
        "{:?}",
        loaded.report.missing
    );
    assert!(
        loaded.report.unexpected.is_empty(),
        "{:?}",
        loaded.report.unexpected
    );
    assert_eq!(
        loaded.model.heads(),
        Heads {
            pooler: true,
            mlm: true,
            nsp: true,
            qa: true,
            classifier_labels: None
        }
    );

    let expected = read_safetensors(&fixture("checkpoints/expected.safetensors"));
    let input = case_input::<B>(&expected, &loaded.config, &device);
    let out = loaded.model.forward(input);
    let what = weights.file_name().unwrap().to_string_lossy();
    assert_close(
        &format!("{what} last_hidden_state"),
        &values(out.last_hidden_state),
        &expected["last_hidden_state"].f32,
        1e-5,
    );
    assert_close(
        &format!("{what} pooler_output"),
        &values(out.pooler_output.unwrap()),
        &expected["pooler_output"].f32,
        1e-5,
    );
    assert_close(
        &format!("{what} nsp_logits"),
        &values(out.nsp_logits.unwrap()),
        &expected["nsp_logits"].f32,
        1e-5,
    );
    assert_close(
        &format!("{what} start_logits"),
        &values(out.start_logits.unwrap()),
        &expected["start_logits"].f32,
        1e-5,
    );
    assert_close(
        &format!("{what} end_logits"),
        &values(out.end_logits.unwrap()),
        &expected["end_logits"].f32,
        1e-5,
    );
    let mlm = values(out.mlm_logits.unwrap());
    let vocab = expected["mlm_logits"].shape[2];
    // NVIDIA's padded vocabulary adds columns: compare the real vocabulary only.
    let padded_vocab = loaded.config.vocab_size;
    let real: Vec<f32> = mlm
        .chunks(padded_vocab)
        .flat_map(|row| row[..vocab].to_vec())
        .collect();
    assert_close(
        &format!("{what} mlm_logits"),
        &real,
        &expected["mlm_logits"].f32,
        1e-5,
    );
    loaded.model
}

#[test]
fn hugging_face_safetensors_matches_transformers() {
    check_against_transformers(&tiny_dir().join("model.safetensors"));
}

#[test]
fn legacy_pytorch_bin_matches_transformers() {
    check_against_transformers(&tiny_dir().join("pytorch_model.bin"));
}

#[test]
fn nvidia_checkpoint_with_padded_vocab_matches_transformers() {
    let model = check_against_transformers(&tiny_dir().join("nvidia_ckpt.pt"));
    assert_eq!(
        model.bert.embeddings.word_embeddings.weight.dims(),
        [32, 16]
    );
}

#[test]
fn nvidia_bert_config_reads_like_the_hugging_face_one() {
    let hf = std::fs::read_to_string(tiny_dir().join("config.json")).unwrap();
    let nvidia = std::fs::read_to_string(tiny_dir().join("bert_config.json")).unwrap();
    assert_eq!(
        BertConfig::from_json(&hf).unwrap(),
        BertConfig::from_json(&nvidia).unwrap()
    );
}

#[test]
fn save_then_load_gives_identical_tensors() {
    let device = Default::default();
    let checkpoint = Checkpoint::from_file(tiny_dir().join("model.safetensors")).unwrap();
    let config = tiny_config();
    let mut model = BertWithHeads::<B>::new(&config, checkpoint.heads(), &device);
    checkpoint
        .load_into(&mut model)
        .unwrap()
        .require_exact()
        .unwrap();

    let saved = to_safetensors(&model).unwrap();
    let reread = read_safetensors_bytes(&saved);
    let original = read_safetensors(&tiny_dir().join("model.safetensors"));
    // Same names and the same values as transformers wrote (Hugging Face layout: no transposes left).
    let mut saved_names: Vec<_> = reread.keys().cloned().collect();
    let mut original_names: Vec<_> = original
        .keys()
        .filter(|name| *name != "cls.predictions.decoder.bias")
        .cloned()
        .collect();
    saved_names.sort();
    original_names.sort();
    assert_eq!(saved_names, original_names);
    for name in &original_names {
        let tensor = &original[name];
        assert_eq!(reread[name].shape, tensor.shape, "{name}");
        assert_eq!(reread[name].f32, tensor.f32, "{name}");
    }

    let mut again = BertWithHeads::<B>::new(&config, checkpoint.heads(), &device);
    let report = Checkpoint::from_bytes(saved.clone(), "saved")
        .unwrap()
        .load_into(&mut again)
        .unwrap();
    report.require_exact().unwrap();
    assert_eq!(
        to_safetensors(&again).unwrap(),
        saved,
        "load -> save -> load changed a tensor"
    );
}

fn read_safetensors_bytes(
    bytes: &[u8],
) -> std::collections::HashMap<String, bert_tests::HostTensor> {
    let dir = std::env::temp_dir().join(format!("bert-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("saved.safetensors");
    std::fs::write(&path, bytes).unwrap();
    let tensors = read_safetensors(&path);
    std::fs::remove_dir_all(&dir).unwrap();
    tensors
}

#[test]
fn a_task_model_reports_the_heads_it_does_not_use() {
    let device = Default::default();
    let checkpoint = Checkpoint::from_file(tiny_dir().join("model.safetensors")).unwrap();
    let config = checkpoint.fit_config(&tiny_config());
    let mut qa = BertForQuestionAnswering::<B>::new(&config, &device);
    let report = checkpoint.load_into(&mut qa).unwrap();
    assert!(report.missing.is_empty(), "{:?}", report.missing);
    assert!(report
        .unexpected
        .contains(&"cls.seq_relationship.weight".to_string()));
    assert!(report
        .unexpected
        .contains(&"bert.pooler.dense.weight".to_string()));
    assert!(report.require_exact().is_err());
    // transformers stores the decoder bias twice; the copy under `decoder` is recognised and skipped.
    assert_eq!(report.ignored, ["cls.predictions.decoder.bias"]);
}

#[test]
fn shape_mismatch_names_the_tensor_and_both_shapes() {
    let device = Default::default();
    let checkpoint = Checkpoint::from_file(tiny_dir().join("model.safetensors")).unwrap();
    let config = BertConfig {
        intermediate_size: 48,
        ..tiny_config()
    };
    let mut model = BertWithHeads::<B>::new(&config, checkpoint.heads(), &device);
    let error = checkpoint.load_into(&mut model).unwrap_err();
    match &error {
        CheckpointError::ShapeMismatch {
            name,
            expected,
            found,
            ..
        } => {
            assert!(
                name.contains("intermediate.dense.weight")
                    || name.contains("output.dense.weight")
                    || name.contains("intermediate.dense.bias"),
                "{name}"
            );
            assert_ne!(expected, found);
        }
        other => panic!("expected a shape mismatch, got {other}"),
    }
    assert!(error.to_string().contains("model.safetensors"), "{error}");
}

#[test]
fn missing_encoder_tensors_are_an_error_naming_them() {
    let device = Default::default();
    let checkpoint = Checkpoint::from_file(fixture("forward/weights/heads.safetensors")).unwrap();
    let config = BertConfig {
        vocab_size: 30522,
        hidden_size: 384,
        num_attention_heads: 12,
        intermediate_size: 1536,
        num_hidden_layers: 1,
        ..BertConfig::base()
    };
    let mut model = BertWithHeads::<B>::new(&config, checkpoint.heads(), &device);
    let report = checkpoint.load_into(&mut model).unwrap();
    let error = report.require_encoder().unwrap_err();
    let message = error.to_string();
    assert!(message.contains("heads.safetensors"), "{message}");
    assert!(
        message.contains("bert.encoder.layer.0.attention.self.query.weight"),
        "{message}"
    );
}

#[test]
fn garbage_and_truncated_files_are_refused_clearly() {
    let error = Checkpoint::from_bytes(b"definitely not a checkpoint".to_vec(), "junk.bin")
        .err()
        .unwrap();
    assert!(error.to_string().contains("junk.bin"), "{error}");

    let bytes = std::fs::read(tiny_dir().join("model.safetensors")).unwrap();
    let truncated = bytes[..bytes.len() / 2].to_vec();
    let error = Checkpoint::from_bytes(truncated, "half.safetensors")
        .err()
        .unwrap();
    assert!(error.to_string().contains("half.safetensors"), "{error}");

    let dir = std::env::temp_dir().join(format!("bert-tests-truncated-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["nvidia_ckpt.pt", "pytorch_model.bin", "model.safetensors"] {
        let bytes = std::fs::read(tiny_dir().join(name)).unwrap();
        let path = dir.join(format!("half-{name}"));
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        // Some formats are read lazily: the damage may only show when the tensors are applied.
        let error = Checkpoint::from_file(&path)
            .and_then(|checkpoint| {
                let config = checkpoint.fit_config(&tiny_config());
                let mut model =
                    BertWithHeads::<B>::new(&config, checkpoint.heads(), &Default::default());
                checkpoint.load_into(&mut model)?.require_exact()?;
                Ok(())
            })
            .expect_err(&format!("truncated {name} must not load"));
        assert!(
            error.to_string().contains(&format!("half-{name}")),
            "{error}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();

    let error = Checkpoint::from_file("/no/such/ckpt.pt").err().unwrap();
    assert!(error.to_string().contains("/no/such/ckpt.pt"), "{error}");
}
