//! Progress bars of the pipeline (hidden when stderr is not a terminal).

use indicatif::{ProgressBar, ProgressStyle};

/// A bar counting bytes.
pub fn bytes_bar(stage: &str, total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>9} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(stage.to_string());
    bar
}

/// A bar counting items (shards, documents).
pub fn items_bar(stage: &str, total: u64, unit: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{prefix:>9}} [{{bar:40}}] {{pos}}/{{len}} {unit} eta {{eta}}"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(stage.to_string());
    bar
}
