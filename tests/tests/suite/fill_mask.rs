//! The fill-mask pipeline on MiniLM with the fixtures' seeded MLM head: the same fillers as
//! Hugging Face's `pipeline("fill-mask", top_k=5)` (fixtures/pipelines, made by
//! scripts/make_task_fixtures.py), the same probabilities as the golden forward pass's MLM logits
//! for a pair, and clear errors.

use bert_core::error::PipelineError;
use bert_core::pipelines::{FillMask, Filler};
use bert_tests::{fixture, minilm_dir, minilm_with_heads, model_bytes, read_safetensors, TempDir};
use burn::backend::flex::{Flex, FlexDevice};
use serde_json::Value;

fn mlm_folder(name: &str) -> TempDir {
    minilm_with_heads(
        name,
        &[fixture("forward/weights/heads.safetensors")],
        serde_json::json!({}),
    )
}

#[test]
fn fills_masks_as_hugging_faces_pipeline() {
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("pipelines/tasks.json")).unwrap())
            .unwrap();
    let cases = &golden["fill_mask"];
    let texts: Vec<&str> = cases["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let dir = mlm_folder("fill-golden");
    let pipeline = FillMask::<Flex>::from_folder(&dir.0, &FlexDevice).unwrap();
    let filled = pipeline.fill(&texts).unwrap();
    assert!(filled.truncated.is_empty());
    let from_bytes = FillMask::<Flex>::from_bytes(&model_bytes(&dir.0), &FlexDevice).unwrap();
    assert_eq!(
        from_bytes.fill(&texts).unwrap(),
        filled,
        "the same files in memory"
    );
    let expected = cases["fillers"].as_array().unwrap();
    for (t, (ours, theirs)) in filled.fillers.iter().zip(expected).enumerate() {
        let theirs = theirs.as_array().unwrap();
        assert_eq!(ours.len(), theirs.len(), "text {t}: one list per mask");
        for (m, (ours, theirs)) in ours.iter().zip(theirs).enumerate() {
            let theirs = theirs.as_array().unwrap();
            let ids: Vec<u64> = theirs
                .iter()
                .map(|f| f["token"].as_u64().unwrap())
                .collect();
            let our_ids: Vec<u64> = ours.iter().map(|f| u64::from(f.token_id)).collect();
            assert_eq!(our_ids, ids, "text {t} mask {m}");
            for (filler, reference) in ours.iter().zip(theirs) {
                assert_eq!(filler.token, reference["token_str"].as_str().unwrap());
                let score = reference["score"].as_f64().unwrap() as f32;
                assert!(
                    (filler.score - score).abs() <= 1e-6,
                    "text {t} mask {m} {}: {} vs {score}",
                    filler.token,
                    filler.score
                );
                // Hugging Face decodes the ids (lower-cased); one mask leaves the rest alone.
                if theirs.len() == 1 || ours.len() == 1 {
                    let sequence = reference["sequence"].as_str().unwrap();
                    assert_eq!(filler.sequence.to_lowercase(), sequence);
                }
            }
        }
    }
}

#[test]
fn fills_pairs_as_the_golden_forward_pass_predicts() {
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("forward/manifest.json")).unwrap())
            .unwrap();
    let case = manifest["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "masked_lm")
        .unwrap();
    let (a, b) = (
        case["text"][0][0].as_str().unwrap(),
        case["text"][0][1].as_str().unwrap(),
    );
    let tensors = read_safetensors(&fixture("forward/cases/masked_lm.safetensors"));
    let logits = &tensors["mlm_logits"];
    let vocab = logits.shape[1];
    let dir = mlm_folder("fill-pairs");
    let top_k = 7;
    let pipeline = FillMask::<Flex>::from_folder(&dir.0, &FlexDevice)
        .unwrap()
        .with_top_k(top_k);
    let filled = pipeline.fill_pairs(&[(a, b)]).unwrap();
    let masks = &filled.fillers[0];
    // The case's first three MLM positions are its masks, in reading order.
    assert_eq!(masks.len(), 3);
    for (m, fillers) in masks.iter().enumerate() {
        let row = &logits.f32[m * vocab..(m + 1) * vocab];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = row.iter().map(|&x| f64::from(x - max).exp()).sum();
        let probability = |id: usize| (f64::from(row[id] - max).exp() / sum) as f32;
        let mut ids: Vec<usize> = (0..vocab).collect();
        ids.sort_by(|&x, &y| row[y].total_cmp(&row[x]));
        let expected: Vec<u32> = ids[..top_k].iter().map(|&id| id as u32).collect();
        let ours: Vec<u32> = fillers.iter().map(|f| f.token_id).collect();
        assert_eq!(ours, expected, "mask {m}");
        for filler in fillers {
            let p = probability(filler.token_id as usize);
            assert!(
                (filler.score - p).abs() <= 1e-6,
                "mask {m}: {} vs {p}",
                filler.score
            );
        }
    }
    // Masks 2 and 3 are in text B: their sequences are B with the filler in place.
    let Filler {
        token, sequence, ..
    } = &masks[1][0];
    let piece = token.trim_start_matches("##");
    assert!(
        sequence.starts_with("Paris is a") && sequence.contains(piece),
        "{sequence}"
    );
    assert!(
        sequence.contains("[MASK]"),
        "the other mask stays: {sequence}"
    );
}

#[test]
fn bad_folders_and_inputs_get_clear_errors() {
    let error = FillMask::<Flex>::from_folder(minilm_dir(), &FlexDevice)
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("no masked-LM head"), "{error}");
    let dir = mlm_folder("fill-errors");
    let pipeline = FillMask::<Flex>::from_folder(&dir.0, &FlexDevice).unwrap();
    match pipeline.fill(&["a [MASK] here", "no mask here"]) {
        Err(error @ PipelineError::NoMask { index: 1, .. }) => {
            assert!(
                error.to_string().contains("text 1 has no [MASK]"),
                "{error}"
            )
        }
        other => panic!("expected text 1 to be refused, got {other:?}"),
    }
    // A mask beyond the model's limit is cut away with the rest of the text.
    let late_mask = format!("{} [MASK].", "word ".repeat(600));
    assert!(matches!(
        pipeline.fill(&[late_mask.as_str()]),
        Err(PipelineError::NoMask {
            index: 0,
            limit: 512
        })
    ));
    assert!(matches!(
        pipeline.fill(&[] as &[&str]),
        Err(PipelineError::NoTexts)
    ));
}
