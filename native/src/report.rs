//! Messages about what a checkpoint load did, for people.

use bert_core::checkpoint::LoadReport;

/// Names of task heads: a checkpoint of one task loaded into a model of another leaves them over.
fn is_task_head(name: &str) -> bool {
    ["cls.", "qa_outputs.", "classifier.", "bert.pooler."]
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

/// Prints what was loaded, and warns about missing and unexpected tensors (other tasks' heads
/// are only noted: fine-tuning from a pretraining checkpoint leaves them over by design).
pub fn print_load_report(report: &LoadReport) {
    eprintln!("loaded {} tensors from {}", report.loaded, report.source);
    if !report.missing.is_empty() {
        eprintln!(
            "note: not in the checkpoint, freshly initialised: {}",
            report.missing.join(", ")
        );
    }
    let (heads, others): (Vec<&String>, Vec<&String>) = report
        .unexpected
        .iter()
        .partition(|name| is_task_head(name));
    if !heads.is_empty() {
        let names: Vec<&str> = heads.iter().map(|n| n.as_str()).collect();
        eprintln!(
            "note: other task heads in the checkpoint are not used: {}",
            names.join(", ")
        );
    }
    if !others.is_empty() {
        let names: Vec<&str> = others.iter().map(|n| n.as_str()).collect();
        eprintln!(
            "WARNING: in the checkpoint but not used by this model: {}",
            names.join(", ")
        );
    }
}
