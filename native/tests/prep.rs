//! `bert-native prep` end to end: real text (the GNU and other licenses shipped in
//! `fixtures/corpus/licenses`, one document per file) and a miniature Wikipedia dump to HDF5 shards
//! that pass the reference layout checks; determinism across thread counts and re-runs; the
//! masking and next-sentence statistics within binomial tolerance; clear errors on bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bert_tests::{arg, fixture, minilm_dir, TempDir};

fn bert_native(args: &[&str], threads: usize) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bert-native"))
        .args(args)
        .env("RAYON_NUM_THREADS", threads.to_string())
        .output()
        .expect("bert-native runs")
}

fn succeed(args: &[&str], threads: usize) -> Output {
    let output = bert_native(args, threads);
    assert!(
        output.status.success(),
        "bert-native {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn fail(args: &[&str]) -> String {
    let output = bert_native(args, 2);
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(
        output.status.code(),
        Some(1),
        "bert-native {args:?}: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

const HDF5_DIR: &str =
    "hdf5_lower_case_1_seq_len_128_max_pred_20_masked_lm_prob_0.15_random_seed_12345_dupe_factor_5";

/// `prep all` over `input` into `out` with the acceptance checks' flags.
fn prep_all(
    input: &Path,
    out: &Path,
    dupe_factor: &str,
    shards: (&str, &str),
    threads: usize,
) -> Output {
    let vocab = minilm_dir().join("vocab.txt");
    succeed(
        &[
            "prep",
            "all",
            "--input",
            arg(input),
            "--output-dir",
            arg(out),
            "--vocab-file",
            arg(&vocab),
            "--lower-case",
            "--max-seq-length",
            "128",
            "--max-predictions-per-seq",
            "20",
            "--masked-lm-prob",
            "0.15",
            "--short-seq-prob",
            "0.1",
            "--dupe-factor",
            dupe_factor,
            "--random-seed",
            "12345",
            "--n-training-shards",
            shards.0,
            "--n-test-shards",
            shards.1,
        ],
        threads,
    )
}

fn hdf5_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "hdf5"))
        .collect();
    files.sort();
    files
}

#[test]
fn licenses_become_valid_identical_shards_whatever_the_thread_count() {
    let tmp = TempDir::new("licenses");
    let corpus = fixture("corpus/licenses");
    let (one, two) = (tmp.0.join("one"), tmp.0.join("two"));
    prep_all(&corpus, &one, "5", ("3", "1"), 1);
    prep_all(&corpus, &two, "5", ("3", "1"), 2);

    let shards = hdf5_files(&one.join(HDF5_DIR).join("licenses"));
    let names: Vec<String> = shards
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "licenses_test_0.hdf5",
            "licenses_training_0.hdf5",
            "licenses_training_1.hdf5",
            "licenses_training_2.hdf5"
        ]
    );
    for shard in &shards {
        let twin = two
            .join(HDF5_DIR)
            .join("licenses")
            .join(shard.file_name().unwrap());
        assert_eq!(
            std::fs::read(shard).unwrap(),
            std::fs::read(&twin).unwrap(),
            "{}",
            shard.display()
        );
    }
    let validation = succeed(
        &[
            "prep",
            "validate",
            arg(&one.join(HDF5_DIR).join("licenses")),
        ],
        2,
    );
    let lines = String::from_utf8(validation.stdout).unwrap();
    assert_eq!(
        lines
            .lines()
            .filter(|l| l.contains("\"valid\":true"))
            .count(),
        4,
        "{lines}"
    );

    // A re-run skips everything; a lost shard is rebuilt identically.
    let lost = &shards[1];
    let before = std::fs::read(lost).unwrap();
    std::fs::remove_file(lost).unwrap();
    let rerun = prep_all(&corpus, &one, "5", ("3", "1"), 2);
    let stderr = String::from_utf8_lossy(&rerun.stderr);
    assert!(
        stderr.contains("format: ") && stderr.contains("skipping"),
        "{stderr}"
    );
    assert!(
        stderr.contains("\"shards_skipped\":3") && stderr.contains("\"shards_written\":1"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(lost).unwrap(), before);
    // The DLLogger log has a line per stage and run.
    let log = std::fs::read_to_string(one.join("prep_log.json")).unwrap();
    assert!(log.lines().all(|l| l.starts_with("DLLL {")), "{log}");
    assert!(log.contains("\"instances_per_second\""));
}

/// Reads one dataset of a shard as i64 values.
fn dataset(file: &hdf5::File, name: &str) -> Vec<i64> {
    file.dataset(name).unwrap().read_raw::<i64>().unwrap()
}

#[test]
fn masking_and_next_sentence_statistics_hold_on_real_text() {
    let tmp = TempDir::new("stats");
    let out = tmp.0.join("out");
    prep_all(&fixture("corpus/licenses"), &out, "20", ("1", "0"), 2);
    let dir = out.join(
        "hdf5_lower_case_1_seq_len_128_max_pred_20_masked_lm_prob_0.15_random_seed_12345_dupe_factor_20",
    );
    let file = hdf5::File::open(dir.join("licenses").join("licenses_training_0.hdf5")).unwrap();
    let (ids, mask) = (dataset(&file, "input_ids"), dataset(&file, "input_mask"));
    let (positions, labels) = (
        dataset(&file, "masked_lm_positions"),
        dataset(&file, "masked_lm_ids"),
    );
    let next = dataset(&file, "next_sentence_labels");
    let n = next.len();
    assert!(n > 1500, "{n} instances");

    let (mut masked, mut kept, mut random, mut total) = (0usize, 0usize, 0usize, 0usize);
    let mut short = 0;
    for row in 0..n {
        let real = mask[row * 128..(row + 1) * 128]
            .iter()
            .filter(|&&m| m == 1)
            .count();
        short += usize::from(real < 100);
        let row_positions = &positions[row * 20..(row + 1) * 20];
        let k = row_positions.iter().position(|&p| p == 0).unwrap_or(20);
        assert_eq!(
            k,
            20.min(((real as f64 * 0.15).round_ties_even() as usize).max(1)),
            "row {row}"
        );
        for j in 0..k {
            let token = ids[row * 128 + row_positions[j] as usize];
            let original = labels[row * 20 + j];
            total += 1;
            if token == 103 {
                masked += 1;
            } else if token == original {
                kept += 1;
            } else {
                random += 1;
            }
        }
    }
    // 80% [MASK], 10% kept, 10% random (a random draw equal to the original counts as kept:
    // 1 in 30522, negligible). Four standard deviations of a binomial proportion.
    let within = |count: usize, p: f64, what: &str| {
        let fraction = count as f64 / total as f64;
        let sigma = (p * (1.0 - p) / total as f64).sqrt();
        assert!(
            (fraction - p).abs() < 4.0 * sigma,
            "{what}: {fraction} vs {p} (n = {total})"
        );
    };
    within(masked, 0.8, "[MASK]");
    within(kept, 0.1, "kept");
    within(random, 0.1, "random");

    // Next-sentence labels: 1 with probability 1/2 for chunks of several sentences, always for a
    // chunk of one sentence (legal text has long sentences, so a good part of the short-target
    // chunks). The exact 1/2 is checked in bert-core's unit tests where chunk sizes are known.
    let random_next = next.iter().filter(|&&l| l == 1).count() as f64 / n as f64;
    let sigma = (0.25 / n as f64).sqrt();
    assert!(
        random_next > 0.5 - 4.0 * sigma && random_next < 0.75,
        "random next {random_next}"
    );
    // Short targets (probability 0.1 per document pass) and document ends make some instances
    // shorter, most fill the 128 tokens.
    let short_fraction = short as f64 / n as f64;
    assert!(
        short_fraction > 0.05 && short_fraction < 0.4,
        "short fraction {short_fraction}"
    );
}

#[test]
fn wikipedia_dumps_plain_and_bzip2_give_the_article_text() {
    let tmp = TempDir::new("wiki");
    for dump in ["enwiki-mini.xml", "enwiki-mini.xml.bz2"] {
        let out = tmp.0.join(dump);
        succeed(
            &[
                "prep",
                "format",
                "--input",
                arg(&fixture(&format!("corpus/wiki/{dump}"))),
                "--output-dir",
                arg(&out),
            ],
            2,
        );
        let formatted = std::fs::read_to_string(out.join("formatted/enwiki-mini.txt")).unwrap();
        let lines: Vec<&str> = formatted.lines().collect();
        assert_eq!(lines.len(), 3, "{formatted}");
        assert_eq!(
            lines[0],
            "Zurich is the largest city in Switzerland. It lies at the north end of Lake Zurich. \
             The Romans founded a customs post called Turicum here. In 1519 Zwingli began the Swiss \
             Reformation in the city."
        );
        assert_eq!(
            lines[1],
            "Bern is the de facto capital of Switzerland. The old town is a World Heritage Site. \
             The river Aare flows around it & its bridges are famous."
        );
        assert!(
            lines[2].starts_with("Geneva is home")
                && lines[2].ends_with("The city hosts the Red Cross.")
        );
        succeed(
            &[
                "prep",
                "segment",
                "--output-dir",
                arg(&out),
                "--corpus-name",
                "enwiki-mini",
            ],
            2,
        );
        let sentences = std::fs::read_to_string(out.join("sentences/enwiki-mini.txt")).unwrap();
        assert!(sentences
            .starts_with("Zurich is the largest city in Switzerland.\nIt lies at the north end"));
        assert_eq!(sentences.matches("\n\n").count(), 3, "three documents");
    }
}

#[test]
fn bad_input_never_yields_a_silently_empty_corpus() {
    let tmp = TempDir::new("bad");
    let out = tmp.0.join("out");

    let bytes = std::fs::read(fixture("corpus/wiki/enwiki-mini.xml.bz2")).unwrap();
    let truncated = tmp.0.join("enwiki-cut.xml.bz2");
    std::fs::write(&truncated, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let stderr = fail(&[
        "prep",
        "format",
        "--input",
        arg(&truncated),
        "--output-dir",
        arg(&out),
    ]);
    assert!(stderr.contains("enwiki-cut.xml.bz2"), "{stderr}");

    let xml = std::fs::read(fixture("corpus/wiki/enwiki-mini.xml")).unwrap();
    let truncated_xml = tmp.0.join("enwiki-cut.xml");
    std::fs::write(&truncated_xml, &xml[..xml.len() / 2]).unwrap();
    let stderr = fail(&[
        "prep",
        "format",
        "--input",
        arg(&truncated_xml),
        "--output-dir",
        arg(&out),
    ]);
    assert!(stderr.contains("truncated"), "{stderr}");

    let empty = tmp.0.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("blank.txt"), "   \n\n").unwrap();
    let stderr = fail(&[
        "prep",
        "format",
        "--input",
        arg(&empty),
        "--output-dir",
        arg(&out),
    ]);
    assert!(stderr.contains("no documents"), "{stderr}");
    assert!(
        !out.join("formatted/empty.txt").exists(),
        "no output for bad input"
    );

    let stderr = fail(&[
        "prep",
        "format",
        "--input",
        "/no/such/corpus",
        "--output-dir",
        arg(&out),
    ]);
    assert!(stderr.contains("/no/such/corpus"), "{stderr}");

    // Too few documents for the shards asked: a clear message, before any instance is made.
    let stderr = fail(&[
        "prep",
        "all",
        "--input",
        arg(&fixture("corpus/licenses")),
        "--output-dir",
        arg(&tmp.0.join("few")),
        "--vocab-file",
        arg(&minilm_dir().join("vocab.txt")),
        "--lower-case",
        "--n-training-shards",
        "64",
        "--n-test-shards",
        "1",
    ]);
    assert!(stderr.contains("--n-training-shards"), "{stderr}");

    let stderr = fail(&[
        "prep",
        "all",
        "--input",
        arg(&fixture("corpus/licenses")),
        "--output-dir",
        arg(&tmp.0.join("novocab")),
        "--vocab-file",
        "/no/such/vocab.txt",
    ]);
    assert!(stderr.contains("/no/such/vocab.txt"), "{stderr}");
    assert!(
        !tmp.0.join("novocab/formatted").exists(),
        "the vocabulary is checked before any work"
    );

    let stderr = fail(&[
        "prep",
        "validate",
        arg(&fixture("hdf5/bad/next_sentence_label_2.hdf5")),
    ]);
    assert!(stderr.contains("1 of 1 shards are invalid"), "{stderr}");
}

#[test]
fn shards_that_crash_libhdf5_are_reported_and_the_others_still_read() {
    // Found by fuzzing: these files make libhdf5 1.10 segfault, inside `H5Dread` and inside
    // `H5Literate`. Shards are read in a child process, so only that child dies.
    let crashing = [
        fixture("hdf5/bad/crashes_libhdf5_1_10_reading_a_dataset.hdf5"),
        fixture("hdf5/bad/crashes_libhdf5_1_10_listing_the_groups.hdf5"),
    ];
    let good = fixture("hdf5/tiny_seq128_training_0.hdf5");
    let output = bert_native(
        &[
            "prep",
            "validate",
            arg(&crashing[0]),
            arg(&crashing[1]),
            arg(&good),
        ],
        1,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("2 of 3 shards are invalid"), "{stderr}");
    let reports: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(reports.len(), 3, "{reports:?}");
    for (report, file) in reports.iter().zip(&crashing) {
        assert_eq!(report["valid"], false);
        let error = report["error"].as_str().unwrap();
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(
            error.contains(name) && error.contains("libhdf5 crashed"),
            "{error}"
        );
    }
    assert_eq!(reports[2]["valid"], true);
    assert_eq!(reports[2]["num_instances"], 16, "{reports:?}");
}
