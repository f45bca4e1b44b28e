//! PyTorch `torch.save` files through burn-store's pickle reader (feature `pytorch`).

use std::collections::HashMap;
use std::path::Path;

use burn_store::TensorSnapshot;

use super::PYTORCH_FORMAT;
use crate::error::CheckpointError;

/// The tensors of a PyTorch file: NVIDIA's `{'model': state_dict, ...}` or a bare state dict.
/// `is_zip` tells the zip format (PyTorch >= 1.6) from the legacy pickle stream.
#[cfg(feature = "pytorch")]
pub(super) fn read_file(
    path: &Path,
    source_name: &str,
    is_zip: bool,
) -> Result<HashMap<String, TensorSnapshot>, CheckpointError> {
    use burn_store::pytorch::{PytorchError, PytorchReader};

    let reader = match PytorchReader::with_top_level_key(path, "model") {
        Err(PytorchError::KeyNotFound(_)) => PytorchReader::new(path),
        other => other,
    }
    .map_err(|e| CheckpointError::Format {
        source_name: source_name.to_string(),
        format: PYTORCH_FORMAT,
        message: e.to_string(),
    })?;
    let tensors = reader.into_tensors();
    if !is_zip {
        check_legacy_length(path, source_name, &tensors)?;
    }
    Ok(tensors)
}

/// Without the `pytorch` feature (the browser build) PyTorch files are refused with advice.
#[cfg(not(feature = "pytorch"))]
pub(super) fn read_file(
    _path: &Path,
    source_name: &str,
    _is_zip: bool,
) -> Result<HashMap<String, TensorSnapshot>, CheckpointError> {
    Err(CheckpointError::Format {
        source_name: source_name.to_string(),
        format: PYTORCH_FORMAT,
        message:
            "this build reads safetensors only; convert the checkpoint with `bert-native convert`"
                .into(),
    })
}

/// burn-store's reader of legacy (pre-zip) PyTorch files fills storages it cannot read with zeros
/// instead of failing, so a truncated download would load as a silently zeroed model. The tensor
/// data follows the pickles, so the file must hold at least the bytes of every (untied) tensor.
#[cfg(feature = "pytorch")]
fn check_legacy_length(
    path: &Path,
    source_name: &str,
    tensors: &HashMap<String, TensorSnapshot>,
) -> Result<(), CheckpointError> {
    use super::names::{canonical_name, StoredName};

    let needed: u64 = tensors
        .iter()
        .filter(|(name, _)| canonical_name(name) != StoredName::TiedDecoderWeight)
        .map(|(_, t)| (t.shape.num_elements() * t.dtype.size()) as u64)
        .sum();
    let length = std::fs::metadata(path)
        .map_err(|source| CheckpointError::Io {
            path: source_name.to_string(),
            source,
        })?
        .len();
    if length < needed {
        return Err(CheckpointError::Format {
            source_name: source_name.to_string(),
            format: PYTORCH_FORMAT,
            message: format!(
                "the file has {length} bytes but its tensors need at least {needed}: it is truncated"
            ),
        });
    }
    Ok(())
}
