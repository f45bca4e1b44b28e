//! The `bert-native` contracts of the foundation, driven as a user drives them: `encode`,
//! `tokenize`, `info`, `convert`, and clear errors (exit status 1, the file named, no panic) on
//! bad input.

use std::path::Path;
use std::process::{Command, Output};

use bert_tests::{
    arg, assert_close, case_batch, fixture, golden_embeddings, minilm_dir, read_safetensors,
    GoldenEmbeddings, TempDir,
};

fn bert_native(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bert-native"))
        .args(args)
        .output()
        .expect("bert-native runs")
}

fn succeed(args: &[&str]) -> Output {
    let output = bert_native(args);
    assert!(
        output.status.success(),
        "bert-native {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs a command that must fail cleanly and returns its stderr.
fn fail(args: &[&str]) -> String {
    let output = bert_native(args);
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(
        output.status.code(),
        Some(1),
        "bert-native {args:?}: {stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "bert-native {args:?} panicked: {stderr}"
    );
    stderr
}

/// Writes the input of a golden case as the JSON `encode` reads.
fn write_case_json(case: &str, path: &Path) {
    let golden = read_safetensors(&fixture(&format!("forward/cases/{case}.safetensors")));
    let batch = case_batch(&golden);
    std::fs::write(path, serde_json::to_string(&batch).unwrap()).unwrap();
}

#[test]
fn encode_reproduces_the_reference_on_a_padded_batch() {
    let tmp = TempDir::new("encode");
    let (input, output) = (tmp.path("in.json"), tmp.path("out.safetensors"));
    write_case_json("padded_batch", &input);
    let model = minilm_dir();
    let heads = fixture("forward/weights/heads.safetensors");
    succeed(&[
        "encode",
        "--model",
        arg(&model),
        "--extra-weights",
        arg(&heads),
        "--input",
        arg(&input),
        "--output",
        arg(&output),
    ]);

    let got = read_safetensors(&output);
    let golden = read_safetensors(&fixture("forward/cases/padded_batch.safetensors"));
    let mask = case_batch(&golden).attention_mask.unwrap();
    let hidden = 384;
    assert_eq!(got["last_hidden_state"].shape, [3, 19, hidden]);
    for (b, row) in mask.iter().enumerate() {
        for (p, &m) in row.iter().enumerate() {
            let at = (b * 19 + p) * hidden..(b * 19 + p + 1) * hidden;
            let atol = if m == 1 { 1e-4 } else { 5e-4 };
            assert_close(
                &format!("last_hidden_state[{b},{p}]"),
                &got["last_hidden_state"].f32[at.clone()],
                &golden["last_hidden_state"].f32[at],
                atol,
            );
        }
    }
    assert_close(
        "pooler_output",
        &got["pooler_output"].f32,
        &golden["pooler_output"].f32,
        1e-4,
    );
    assert_close(
        "nsp_logits",
        &got["nsp_logits"].f32,
        &golden["nsp_logits"].f32,
        1e-4,
    );
    assert_close(
        "start_logits",
        &got["start_logits"].f32,
        &golden["qa_start_logits"].f32,
        5e-4,
    );
    assert_close(
        "end_logits",
        &got["end_logits"].f32,
        &golden["qa_end_logits"].f32,
        5e-4,
    );
    let vocab = 30522;
    assert_eq!(got["mlm_logits"].shape, [3, 19, vocab]);
    for (k, pair) in golden["mlm_positions"].i64.chunks(2).enumerate() {
        let at = (pair[0] as usize * 19 + pair[1] as usize) * vocab;
        assert_close(
            "mlm_logits",
            &got["mlm_logits"].f32[at..at + vocab],
            &golden["mlm_logits"].f32[k * vocab..(k + 1) * vocab],
            5e-4,
        );
    }
}

#[test]
fn encode_tokenizes_text_with_the_folders_vocabulary() {
    let tmp = TempDir::new("text");
    let output = tmp.path("out.safetensors");
    succeed(&[
        "encode",
        "--model",
        arg(&minilm_dir()),
        "--text",
        "The quick brown fox jumps over the lazy dog.",
        "--output",
        arg(&output),
    ]);
    let got = read_safetensors(&output);
    let golden = read_safetensors(&fixture("forward/cases/single_sentence.safetensors"));
    assert_close(
        "last_hidden_state",
        &got["last_hidden_state"].f32,
        &golden["last_hidden_state"].f32,
        1e-4,
    );
    // MiniLM is a bare encoder: no head outputs.
    assert!(!got.contains_key("mlm_logits") && !got.contains_key("start_logits"));
}

#[test]
fn nvidia_checkpoint_encodes_and_converts_to_an_identical_hugging_face_folder() {
    let tmp = TempDir::new("nvidia");
    let dir = fixture("checkpoints");
    let input = tmp.path("in.json");
    let expected = read_safetensors(&fixture("checkpoints/expected.safetensors"));
    std::fs::write(
        &input,
        serde_json::to_string(&case_batch(&expected)).unwrap(),
    )
    .unwrap();

    let direct = tmp.path("direct.safetensors");
    succeed(&[
        "encode",
        "--model",
        arg(&dir),
        "--checkpoint",
        arg(&dir.join("nvidia_ckpt.pt")),
        "--input",
        arg(&input),
        "--output",
        arg(&direct),
    ]);
    let converted = tmp.path("converted");
    succeed(&[
        "convert",
        "--model",
        arg(&dir),
        "--checkpoint",
        arg(&dir.join("nvidia_ckpt.pt")),
        "--output",
        arg(&converted),
    ]);
    let via_conversion = tmp.path("via.safetensors");
    succeed(&[
        "encode",
        "--model",
        arg(&converted),
        "--input",
        arg(&input),
        "--output",
        arg(&via_conversion),
    ]);

    let direct = read_safetensors(&direct);
    let via_conversion = read_safetensors(&via_conversion);
    for name in [
        "last_hidden_state",
        "pooler_output",
        "nsp_logits",
        "start_logits",
        "end_logits",
        "mlm_logits",
    ] {
        assert_eq!(
            direct[name].f32, via_conversion[name].f32,
            "{name} changed through convert"
        );
    }
    assert_close(
        "start_logits",
        &direct["start_logits"].f32,
        &expected["start_logits"].f32,
        1e-5,
    );
    // The padded vocabulary (32 rows) is kept: logits have 32 columns.
    assert_eq!(direct["mlm_logits"].shape, [2, 9, 32]);

    // --half: float16 weights, half the file, outputs within float16 rounding.
    let half = tmp.path("half");
    succeed(&[
        "convert",
        "--model",
        arg(&converted),
        "--output",
        arg(&half),
        "--half",
    ]);
    let size = |dir: &std::path::Path| {
        std::fs::metadata(dir.join("model.safetensors"))
            .unwrap()
            .len()
    };
    assert!(
        size(&half) * 10 < size(&converted) * 6,
        "{} vs {}",
        size(&half),
        size(&converted)
    );
    let via_half = tmp.path("via-half.safetensors");
    succeed(&[
        "encode",
        "--model",
        arg(&half),
        "--input",
        arg(&input),
        "--output",
        arg(&via_half),
    ]);
    let via_half = read_safetensors(&via_half);
    assert_close(
        "last_hidden_state",
        &via_half["last_hidden_state"].f32,
        &direct["last_hidden_state"].f32,
        2e-2,
    );
}

#[test]
fn tokenize_prints_ids_types_and_offsets() {
    let output = succeed(&[
        "tokenize",
        "--vocab",
        arg(&minilm_dir().join("vocab.txt")),
        "--lower-case",
        "--text",
        "Who wrote Moby-Dick?",
        "--text-pair",
        "Herman Melville wrote it in 1851.",
    ]);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let ids: Vec<u64> = json["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            101, 2040, 2626, 11240, 2100, 1011, 5980, 1029, 102, 11458, 20154, 2626, 2009, 1999,
            8792, 1012, 102
        ]
    );
    assert_eq!(json["tokens"][3], "mob");
    assert_eq!(json["token_type_ids"][9], 1);
    assert_eq!(json["offsets"][10], serde_json::json!([7, 15]));

    let from_json = succeed(&[
        "tokenize",
        "--tokenizer",
        arg(&minilm_dir().join("tokenizer.json")),
        "--text",
        "Who wrote Moby-Dick?",
        "--text-pair",
        "Herman Melville wrote it in 1851.",
    ]);
    assert_eq!(from_json.stdout, output.stdout);
}

#[test]
fn tokenize_warns_when_casing_contradicts_the_vocabulary() {
    let output = succeed(&[
        "tokenize",
        "--vocab",
        arg(&minilm_dir().join("vocab.txt")),
        "--text",
        "Paris",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("WARNING") && stderr.contains("uncased"),
        "{stderr}"
    );
}

#[test]
fn info_describes_the_model() {
    let output = succeed(&["info", "--model", arg(&fixture("checkpoints"))]);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["config"]["hidden_size"], 16);
    assert_eq!(json["backend"], "flex");
    let heads: Vec<&str> = json["heads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap())
        .collect();
    assert_eq!(
        heads,
        ["pooler", "masked_lm", "next_sentence", "question_answering"]
    );
    // 2 layers x 16 wide: embeddings 30*16 + 24*16 + 2*16 + 32, per layer 4*(16*16+16) + 2*32 +
    // 16*32+32 + 32*16+16 + 32, pooler 16*16+16, MLM 16*16+16 + 32 + 30, NSP 16*2+2, QA 16*2+2.
    let embeddings = 30 * 16 + 24 * 16 + 2 * 16 + 32;
    let layer = 4 * (16 * 16 + 16) + 2 * 32 + (16 * 32 + 32) + (32 * 16 + 16);
    let heads = (16 * 16 + 16) + (16 * 16 + 16 + 32 + 30) + (16 * 2 + 2) * 2;
    assert_eq!(json["parameters"], embeddings + 2 * layer + heads);
}

#[test]
fn bad_input_is_a_clear_error() {
    let tmp = TempDir::new("bad");
    let model = minilm_dir();
    let out = tmp.path("out.safetensors");
    let run_with = |name: &str, json: &str| {
        let input = tmp.path(name);
        std::fs::write(&input, json).unwrap();
        let stderr = fail(&[
            "encode",
            "--model",
            arg(&model),
            "--input",
            arg(&input),
            "--output",
            arg(&out),
        ]);
        assert!(stderr.contains(name), "{name}: {stderr}");
        stderr
    };
    let stderr = run_with("malformed.json", "{\"input_ids\": [[101, 102]");
    assert!(stderr.contains("expected"), "{stderr}");
    let stderr = run_with("vocab.json", "{\"input_ids\": [[101, 30522, 102]]}");
    assert!(
        stderr.contains("30522") && stderr.contains("input_ids"),
        "{stderr}"
    );
    let stderr = run_with("ragged.json", "{\"input_ids\": [[101, 102], [101]]}");
    assert!(stderr.contains("row 1"), "{stderr}");
    let long = format!("{{\"input_ids\": [[{}]]}}", vec!["101"; 513].join(","));
    let stderr = run_with("long.json", &long);
    assert!(stderr.contains("513") && stderr.contains("512"), "{stderr}");
    let stderr = run_with(
        "mask.json",
        "{\"input_ids\": [[101, 102]], \"attention_mask\": [[1, 2]]}",
    );
    assert!(stderr.contains("attention_mask"), "{stderr}");
    run_with("empty.json", "{\"input_ids\": []}");
    assert!(!out.exists(), "no output may be written for bad input");

    let stderr = fail(&[
        "encode",
        "--model",
        "/no/such/model",
        "--text",
        "hi",
        "--output",
        arg(&out),
    ]);
    assert!(stderr.contains("/no/such/model"), "{stderr}");

    let junk = tmp.path("junk.pt");
    std::fs::write(&junk, b"\x80\x02 not really a pickle").unwrap();
    let stderr = fail(&[
        "encode",
        "--model",
        arg(&model),
        "--checkpoint",
        arg(&junk),
        "--text",
        "hi",
        "--output",
        arg(&out),
    ]);
    assert!(stderr.contains("junk.pt"), "{stderr}");

    let stderr = fail(&[
        "encode",
        "--model",
        arg(&model),
        "--text",
        "hi",
        "--output",
        "/no/such/dir/out.safetensors",
    ]);
    assert!(stderr.contains("/no/such/dir/out.safetensors"), "{stderr}");
}

#[test]
fn a_backend_that_was_not_built_in_is_named() {
    let stderr = fail(&[
        "info",
        "--model",
        arg(&fixture("checkpoints")),
        "--backend",
        "cuda",
    ]);
    assert!(stderr.contains("cuda"), "{stderr}");
}

#[test]
fn embed_writes_sentence_transformers_vectors_in_every_format() {
    let tmp = TempDir::new("embed");
    let GoldenEmbeddings {
        sentences,
        embeddings: expected,
        ..
    } = golden_embeddings();
    let input = tmp.path("texts.txt");
    std::fs::write(&input, sentences.join("\n") + "\n").unwrap();
    let model = minilm_dir();
    let run = |output: &Path| {
        let args = ["embed", "--model", arg(&model), "--input", arg(&input)];
        let output =
            succeed(&[&args[..], &["--output", arg(output), "--batch-size", "3"]].concat());
        String::from_utf8_lossy(&output.stderr).to_string()
    };
    let dimension = expected[0].len();
    let check = |got: &[f32], what: &str| {
        assert_eq!(got.len(), expected.len() * dimension, "{what}");
        assert_close(what, got, &expected.concat(), 1e-5);
    };

    let npy = tmp.path("out.npy");
    let stderr = run(&npy);
    // The last sentence is over the model's 256 tokens: cut, with a warning naming its line.
    assert!(
        stderr.contains("WARNING: 1 text(s)") && stderr.contains("(lines 8)"),
        "{stderr}"
    );
    let bytes = std::fs::read(&npy).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(
        header.contains(&format!("'shape': (8, {dimension})")),
        "{header}"
    );
    assert_eq!((10 + header_len) % 64, 0, "data aligned to 64 bytes");
    let values: Vec<f32> = bytes[10 + header_len..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    check(&values, "npy");

    let safetensors = tmp.path("out.safetensors");
    run(&safetensors);
    let tensors = read_safetensors(&safetensors);
    assert_eq!(tensors["embeddings"].shape, [8, dimension]);
    check(&tensors["embeddings"].f32, "safetensors");

    let jsonl = tmp.path("out.jsonl");
    run(&jsonl);
    let values: Vec<f32> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .enumerate()
        .flat_map(|(i, line)| {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(record["index"], i);
            let embedding = record["embedding"].as_array().unwrap().clone();
            embedding.into_iter().map(|x| x.as_f64().unwrap() as f32)
        })
        .collect();
    check(&values, "jsonl");

    // Refusing long texts names the line; an unknown format and an empty file are refused.
    let refused = tmp.path("refused.npy");
    let args = ["embed", "--model", arg(&model), "--input", arg(&input)];
    let stderr = fail(&[&args[..], &["--output", arg(&refused), "--refuse-long"]].concat());
    assert!(
        stderr.contains("line 8: 642 tokens, more than the model's 256"),
        "{stderr}"
    );
    assert!(!refused.exists(), "no output after a failure");
    let stderr = fail(&[&args[..], &["--output", arg(&tmp.path("out.csv"))]].concat());
    assert!(
        stderr.contains("out.csv: unknown output format"),
        "{stderr}"
    );
    let empty = tmp.path("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let stderr = fail(&[
        "embed",
        "--model",
        arg(&model),
        "--input",
        arg(&empty),
        "--output",
        arg(&npy),
    ]);
    assert!(stderr.contains("empty.txt: no texts"), "{stderr}");
}
