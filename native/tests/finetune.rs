//! Fine-tuning and inference from the command line: SQuAD (train, predict, eval, `squad evaluate`)
//! on the real MiniLM checkpoint with questions about synthetic articles, GLUE SST-2 and MRPC, and
//! `qa` on a context longer than one window.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bert_core::data::synthetic::{split_held_out, squad_dataset, Encyclopedia};
use bert_tests::{
    arg, fixture, launch_args, logged_steps, max_abs_diff, minilm_dir, read_safetensors, TempDir,
};
use serde_json::Value;

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

fn fail(args: &[&str]) -> String {
    let output = bert_native(args);
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(
        output.status.code(),
        Some(1),
        "bert-native {args:?}: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn last_json_line(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.lines().last().expect("a line")).unwrap()
}

/// Questions about synthetic articles: `train` from the first articles, `dev` from others.
fn synthetic_squad(dir: &Path, train_questions: usize) -> (PathBuf, PathBuf) {
    let articles = Encyclopedia::generate(120, 11).articles(11);
    let (train_articles, dev_articles) = split_held_out(&articles, 11);
    let mut train = squad_dataset(&train_articles);
    let mut kept = 0;
    train.data.retain(|a| {
        kept += a.paragraphs[0].qas.len();
        kept <= train_questions
    });
    let dev = squad_dataset(&dev_articles[..25]);
    let (train_file, dev_file) = (dir.join("train.json"), dir.join("dev.json"));
    std::fs::write(&train_file, serde_json::to_string(&train).unwrap()).unwrap();
    std::fs::write(&dev_file, serde_json::to_string(&dev).unwrap()).unwrap();
    (train_file, dev_file)
}

#[test]
fn squad_fine_tuning_of_minilm_learns_to_answer() {
    let tmp = TempDir::new("squad");
    let (train, dev) = synthetic_squad(&tmp.0, 320);
    let out = tmp.0.join("out");
    let output = succeed(&[
        "squad",
        "--model",
        arg(&minilm_dir()),
        "--train-file",
        arg(&train),
        "--predict-file",
        arg(&dev),
        "--do-train",
        "--do-predict",
        "--do-eval",
        "--output-dir",
        arg(&out),
        "--max-seq-length",
        "128",
        "--doc-stride",
        "64",
        "--train-batch-size",
        "8",
        "--learning-rate",
        "2e-4",
        "--num-train-epochs",
        "1",
        "--seed",
        "3",
    ]);
    let scores = last_json_line(&output);
    let (exact_match, f1) = (
        scores["exact_match"].as_f64().unwrap(),
        scores["f1"].as_f64().unwrap(),
    );
    // A fresh head answers with random spans (EM ~1, F1 ~11 on these questions). One epoch of 40
    // steps on 320 questions (EM 29, F1 30 measured) first learns which kind of span answers:
    assert!(f1 > 20.0 && exact_match > 15.0, "{scores}");

    // The reference's files, and the standalone scorer agrees with --do-eval.
    let predictions: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("predictions.json")).unwrap())
            .unwrap();
    let nbest: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("nbest_predictions.json")).unwrap())
            .unwrap();
    let (id, answer) = predictions.as_object().unwrap().iter().next().unwrap();
    let first = &nbest[id][0];
    assert_eq!(&first["text"], answer);
    assert!(first["probability"].as_f64().unwrap() > 0.0 && first["start_logit"].is_number());
    let evaluated = succeed(&[
        "squad",
        "evaluate",
        "--data-file",
        arg(&dev),
        "--predictions",
        arg(&out.join("predictions.json")),
    ]);
    assert_eq!(last_json_line(&evaluated), scores);
    let log = std::fs::read_to_string(out.join("dllogger.json")).unwrap();
    for key in [
        "e2e_train_time",
        "training_sequences_per_second",
        "final_loss",
        "inference_sequences_per_second",
        "latency_ms_p99",
        "exact_match",
        "F1",
    ] {
        assert!(log.contains(key), "{key} missing from the log");
    }

    // The fine-tuned folder answers questions, with offsets into the context, through `qa`,
    // also when the context is far longer than one window.
    let dev_data: Value = serde_json::from_str(&std::fs::read_to_string(&dev).unwrap()).unwrap();
    let paragraph = &dev_data["data"][0]["paragraphs"][0];
    let question = &paragraph["qas"][0];
    let context = paragraph["context"].as_str().unwrap();
    let filler = "The weather was mild that year and nothing else of note happened. ".repeat(40);
    let long_context = format!("{filler}{context} {filler}");
    let qa = succeed(&[
        "qa",
        "--model",
        arg(&out),
        "--question",
        question["question"].as_str().unwrap(),
        "--context",
        &long_context,
        "--max-seq-length",
        "128",
        "--doc-stride",
        "64",
        "--n-best",
        "3",
    ]);
    let reply = last_json_line(&qa);
    let (start, end) = (
        reply["start"].as_u64().unwrap() as usize,
        reply["end"].as_u64().unwrap() as usize,
    );
    let highlighted: String = long_context.chars().skip(start).take(end - start).collect();
    assert_eq!(
        highlighted,
        reply["answer"].as_str().unwrap(),
        "offsets point at the answer"
    );
    assert_eq!(reply["n_best"].as_array().unwrap().len(), 3);
    // The same question in a SQuAD file gets the same answer from `squad --do-predict`.
    let long_file = tmp.0.join("long.json");
    let long_question = serde_json::json!({"data": [{"title": "long", "paragraphs": [{
        "context": long_context, "qas": [{"id": "long", "question": question["question"],
        "answers": []}]}]}]});
    std::fs::write(&long_file, long_question.to_string()).unwrap();
    let long_out = tmp.0.join("long-out");
    succeed(&[
        "squad",
        "--model",
        arg(&out),
        "--predict-file",
        arg(&long_file),
        "--do-predict",
        "--output-dir",
        arg(&long_out),
        "--max-seq-length",
        "128",
        "--doc-stride",
        "64",
    ]);
    let long_predictions: Value =
        serde_json::from_str(&std::fs::read_to_string(long_out.join("predictions.json")).unwrap())
            .unwrap();
    assert_eq!(reply["answer"], long_predictions["long"], "{reply}");
}

#[test]
fn squad_and_qa_refuse_bad_input_clearly() {
    let tmp = TempDir::new("squad-bad");
    let model = minilm_dir();
    let junk = tmp.0.join("junk.json");
    std::fs::write(&junk, "{\"data\": 3}").unwrap();
    let stderr = fail(&[
        "squad",
        "evaluate",
        "--data-file",
        arg(&junk),
        "--predictions",
        arg(&junk),
    ]);
    assert!(
        stderr.contains("junk.json") && stderr.contains("SQuAD"),
        "{stderr}"
    );
    let stderr = fail(&[
        "squad",
        "--model",
        arg(&model),
        "--do-predict",
        "--output-dir",
        arg(&tmp.0),
    ]);
    assert!(stderr.contains("--predict-file"), "{stderr}");
    let (_, dev) = synthetic_squad(&tmp.0, 10);
    // MiniLM has no question-answering head: prediction needs a fine-tuned model.
    let stderr = fail(&[
        "squad",
        "--model",
        arg(&model),
        "--predict-file",
        arg(&dev),
        "--do-predict",
        "--output-dir",
        arg(&tmp.0),
    ]);
    assert!(
        stderr.contains("qa_outputs") && stderr.contains("--do-train"),
        "{stderr}"
    );
    let stderr = fail(&[
        "qa",
        "--model",
        arg(&model),
        "--question",
        "Who?",
        "--context",
        "Nobody.",
    ]);
    assert!(stderr.contains("question-answering"), "{stderr}");
    let stderr = fail(&[
        "squad",
        "--model",
        arg(&model),
        "--predict-file",
        arg(&dev),
        "--do-predict",
        "--output-dir",
        arg(&tmp.0),
        "--max-seq-length",
        "1024",
    ]);
    assert!(stderr.contains("512"), "{stderr}");
}

/// SST-2-format sentiment sentences: positive and negative words in templates.
fn sentiment(count: usize, seed: usize) -> String {
    let positive = [
        "wonderful",
        "moving",
        "brilliant",
        "delightful",
        "charming",
        "superb",
    ];
    let negative = ["dull", "tedious", "awful", "clumsy", "boring", "dreadful"];
    let templates = [
        "a {} film from start to finish .",
        "the acting is {} and the story is {} .",
        "what a {} way to spend an evening .",
    ];
    let mut tsv = String::from("sentence\tlabel\n");
    for i in 0..count {
        let label = (i + seed) % 2;
        let words = if label == 1 { &positive } else { &negative };
        let template = templates[(i * 7 + seed) % templates.len()];
        let mut sentence = template.to_string();
        for k in 0..2 {
            sentence = sentence.replacen("{}", words[(i * 5 + k * 3 + seed) % words.len()], 1);
        }
        tsv.push_str(&format!("{sentence}\t{label}\n"));
    }
    tsv
}

#[test]
fn glue_sst2_fine_tuning_beats_chance_and_mrpc_runs() {
    let tmp = TempDir::new("glue");
    let sst = tmp.0.join("SST-2");
    std::fs::create_dir_all(&sst).unwrap();
    std::fs::write(sst.join("train.tsv"), sentiment(160, 0)).unwrap();
    std::fs::write(sst.join("dev.tsv"), sentiment(60, 1)).unwrap();
    std::fs::write(
        sst.join("test.tsv"),
        "index\tsentence\n0\ta superb film .\n1\ta dreadful film .\n",
    )
    .unwrap();
    let out = tmp.0.join("sst-out");
    let output = succeed(&[
        "glue",
        "--task-name",
        "sst-2",
        "--model",
        arg(&minilm_dir()),
        "--data-dir",
        arg(&sst),
        "--do-train",
        "--do-eval",
        "--do-predict",
        "--output-dir",
        arg(&out),
        "--max-seq-length",
        "32",
        "--train-batch-size",
        "16",
        "--learning-rate",
        "1e-4",
        "--num-train-epochs",
        "1",
    ]);
    let scores = last_json_line(&output);
    assert!(scores["accuracy"].as_f64().unwrap() >= 0.85, "{scores}");
    let predictions = std::fs::read_to_string(out.join("predictions.tsv")).unwrap();
    assert_eq!(predictions, "index\tprediction\n0\t1\n1\t0\n");
    // The saved folder names its classes: the text-classification pipeline agrees with the
    // predictions, in words.
    let classifier =
        bert_core::pipelines::SequenceClassification::<burn::backend::NdArray>::from_folder(
            &out,
            &Default::default(),
        )
        .unwrap();
    assert_eq!(classifier.labels(), ["negative", "positive"]);
    let classes = classifier
        .classify(&["a superb film .", "a dreadful film ."])
        .unwrap()
        .scores;
    assert_eq!(
        [classes[0][0].label.as_str(), classes[1][0].label.as_str()],
        ["positive", "negative"]
    );

    let mrpc = tmp.0.join("MRPC");
    std::fs::create_dir_all(&mrpc).unwrap();
    let rows = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tThe cat sat on the mat.\tA cat was sitting on the mat.\n0\t3\t4\tStocks fell sharply.\tThe river is long.\n";
    std::fs::write(mrpc.join("train.tsv"), rows).unwrap();
    std::fs::write(mrpc.join("dev.tsv"), rows).unwrap();
    let output = succeed(&[
        "glue",
        "--task-name",
        "mrpc",
        "--model",
        arg(&minilm_dir()),
        "--data-dir",
        arg(&mrpc),
        "--do-train",
        "--do-eval",
        "--output-dir",
        arg(&tmp.0.join("mrpc-out")),
        "--max-seq-length",
        "32",
        "--train-batch-size",
        "2",
        "--num-train-epochs",
        "1",
    ]);
    let scores = last_json_line(&output);
    assert!(
        scores["f1"].is_number() && scores["acc_and_f1"].is_number(),
        "{scores}"
    );

    // The fine-tuned folder classifies; a missing split is named.
    let stderr = fail(&[
        "glue",
        "--task-name",
        "sst-2",
        "--model",
        arg(&out),
        "--data-dir",
        arg(&tmp.0.join("none")),
        "--do-eval",
        "--output-dir",
        arg(&tmp.0.join("again")),
    ]);
    assert!(stderr.contains("dev.tsv"), "{stderr}");
    let stderr = fail(&[
        "glue",
        "--task-name",
        "sst-2",
        "--model",
        arg(&minilm_dir()),
        "--data-dir",
        arg(&sst),
        "--do-eval",
        "--output-dir",
        arg(&tmp.0.join("again")),
    ]);
    assert!(stderr.contains("classification"), "{stderr}");
}

/// Data-parallel fine-tuning as `run_glue.py` under torch.distributed: two ranks with batch 2
/// each take the steps one process takes with batch 4 (each rank its half of every batch, the
/// gradients averaged), so they end at the same weights; rank 0 alone writes the model and scores.
/// A dropout-free 2-layer model from a fixed seed, so both runs see the same arithmetic.
#[test]
fn glue_on_two_ranks_equals_one_rank_with_twice_the_batch() {
    let tmp = TempDir::new("glue-ranks");
    let sst = tmp.0.join("SST-2");
    std::fs::create_dir_all(&sst).unwrap();
    std::fs::write(sst.join("train.tsv"), sentiment(16, 0)).unwrap();
    std::fs::write(sst.join("dev.tsv"), sentiment(8, 1)).unwrap();
    let vocab = minilm_dir().join("vocab.txt");
    let config = fixture("pretrain/config.json");
    let run = |out: &Path, batch: &str| -> Vec<String> {
        [
            "glue",
            "--task-name",
            "sst-2",
            "--config-file",
            arg(&config),
            "--vocab-file",
            arg(&vocab),
            "--data-dir",
            arg(&sst),
            "--do-train",
            "--do-eval",
            "--output-dir",
            arg(out),
            "--max-seq-length",
            "32",
            "--train-batch-size",
            batch,
            "--learning-rate",
            "1e-3",
            "--num-train-epochs",
            "1",
            "--log-freq",
            "1",
        ]
        .map(String::from)
        .to_vec()
    };
    let single = tmp.0.join("single");
    let args = run(&single, "4");
    succeed(&args.iter().map(String::as_str).collect::<Vec<_>>());

    let parallel = tmp.0.join("parallel");
    let args = run(&parallel, "2");
    let launch = launch_args(2, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let output = succeed(&launch.iter().map(String::as_str).collect::<Vec<_>>());
    let scores: Vec<&str> = std::str::from_utf8(&output.stdout)
        .unwrap()
        .lines()
        .filter(|line| line.contains("accuracy"))
        .collect();
    assert_eq!(scores.len(), 1, "rank 0 alone evaluates: {scores:?}");

    let (ours, reference) = (
        read_safetensors(&parallel.join("model.safetensors")),
        read_safetensors(&single.join("model.safetensors")),
    );
    assert_eq!(ours.len(), reference.len());
    for (name, tensor) in &reference {
        let (diff, _) = max_abs_diff(&ours[name].f32, &tensor.f32);
        assert!(diff < 1e-5, "{name} differs by {diff}");
    }
    let losses = |log: &Path| -> Vec<f64> {
        logged_steps(log)
            .iter()
            .map(|data| data["loss"].as_f64().unwrap())
            .collect()
    };
    let (root, other, alone) = (
        losses(&parallel.join("dllogger.json")),
        losses(&parallel.join("dllogger.rank1.json")),
        losses(&single.join("dllogger.json")),
    );
    assert_eq!(alone.len(), 4, "16 sentences in batches of 4");
    assert_eq!(root.len(), alone.len());
    for ((a, b), c) in root.iter().zip(&other).zip(&alone) {
        assert!(
            (a - c).abs() < 1e-5 && a == b,
            "averaged losses {a} {b}, one rank {c}"
        );
    }
    let files = |dir: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let mut expected = files(&single);
    expected.push("dllogger.rank1.json".into());
    expected.sort();
    assert_eq!(files(&parallel), expected, "rank 1 writes its log only");
}
