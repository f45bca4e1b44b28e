//! `bert-native quickstart` end to end on a small world: every stage runs and pretraining
//! measurably improves masked-LM accuracy and loss on held-out articles.

use std::process::Command;

#[test]
fn pretraining_improves_masked_lm_on_held_out_articles() {
    let dir = std::env::temp_dir().join(format!("bert-native-quickstart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let output = Command::new(env!("CARGO_BIN_EXE_bert-native"))
        .args([
            "quickstart",
            "--output-dir",
            dir.to_str().unwrap(),
            "--people",
            "200",
            "--steps",
            "40",
            // This test checks pretraining; one epoch of question answering shows the stage runs.
            "--qa-epochs",
            "1",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("quickstart.json")).unwrap())
            .unwrap();
    let value = |key: &str| summary[key].as_f64().unwrap();
    assert!(
        value("mlm_loss_after") < value("mlm_loss_before") - 1.0,
        "{summary}"
    );
    assert!(
        value("mlm_accuracy_after") > value("mlm_accuracy_before") + 0.03,
        "{summary}"
    );
    assert!(value("held_out_masked_tokens") > 500.0, "{summary}");
    for file in [
        "vocab.txt",
        "config.json",
        "model/model.safetensors",
        "model/config.json",
        "model/vocab.txt",
        "model/dllogger.json",
    ] {
        assert!(dir.join(file).exists(), "{file}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
