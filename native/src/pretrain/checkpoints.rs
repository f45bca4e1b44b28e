//! Checkpoint files of a pretraining run: `OUTPUT_DIR/ckpt_{step}.safetensors`, written
//! atomically, the last few kept, the newest valid one found on resume.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bert_core::io::write_atomic;
use bert_core::pretraining::checkpoint::{decode, DecodedCheckpoint};

/// The file of the checkpoint at `step`.
pub fn checkpoint_path(dir: &Path, step: u64) -> PathBuf {
    dir.join(format!("ckpt_{step}.safetensors"))
}

/// Checkpoints in `dir` by step, newest first.
fn checkpoints(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    if !dir.exists() {
        return Ok(found);
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        if let Some(step) = name
            .strip_prefix("ckpt_")
            .and_then(|rest| rest.strip_suffix(".safetensors"))
            .and_then(|step| step.parse().ok())
        {
            found.push((step, path));
        }
    }
    found.sort_by_key(|(step, _)| std::cmp::Reverse(*step));
    Ok(found)
}

/// Writes a checkpoint and removes all but the newest `keep`.
pub fn save(dir: &Path, step: u64, bytes: &[u8], keep: usize) -> Result<PathBuf> {
    let path = checkpoint_path(dir, step);
    write_atomic(&path, bytes).context("cannot save a training checkpoint")?;
    for (_, old) in checkpoints(dir)?.into_iter().skip(keep.max(1)) {
        std::fs::remove_file(&old)
            .with_context(|| format!("cannot remove old checkpoint {}", old.display()))?;
    }
    Ok(path)
}

/// The newest checkpoint of `dir` that reads back and verifies; damaged newer ones are reported
/// on stderr and skipped. `None` when there is no checkpoint at all.
pub fn newest_valid(dir: &Path) -> Result<Option<(PathBuf, DecodedCheckpoint)>> {
    let candidates = checkpoints(dir)?;
    let total = candidates.len();
    for (_, path) in candidates {
        let name = path.display().to_string();
        let decoded = std::fs::read(&path)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| Ok(decode(bytes, &name)?));
        match decoded {
            Ok(decoded) => return Ok(Some((path, decoded))),
            Err(error) => eprintln!("WARNING: skipping damaged checkpoint {name}: {error:#}"),
        }
    }
    if total > 0 {
        anyhow::bail!(
            "{}: none of the {total} checkpoints is readable",
            dir.display()
        );
    }
    Ok(None)
}
