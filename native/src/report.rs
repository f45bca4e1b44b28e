//! Messages about what a checkpoint load did, for people.

use bert_core::checkpoint::LoadReport;

/// Prints what was loaded, and warns about missing and unexpected tensors.
pub fn print_load_report(report: &LoadReport) {
    eprintln!("loaded {} tensors from {}", report.loaded, report.source);
    if !report.missing.is_empty() {
        eprintln!(
            "WARNING: not in the checkpoint, freshly initialised: {}",
            report.missing.join(", ")
        );
    }
    if !report.unexpected.is_empty() {
        eprintln!(
            "WARNING: in the checkpoint but not used by this model: {}",
            report.unexpected.join(", ")
        );
    }
}
