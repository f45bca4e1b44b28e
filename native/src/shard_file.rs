//! Pretraining shards as HDF5 files in NVIDIA's layout (gzip, exact dtypes), read and written.

use std::path::Path;

use anyhow::{bail, Context, Result};
use bert_core::data::shard::DATASETS;
use bert_core::data::ShardArrays;
use bert_core::io::{commit_temporary, temporary_path};
use hdf5::types::{IntSize, TypeDescriptor};
use ndarray::{ArrayView1, ArrayView2};

/// gzip level of the reference's h5py writer (`compression='gzip'` defaults to 4).
const GZIP_LEVEL: u8 = 4;

/// Writes a shard atomically (temporary file, fsync, rename).
pub fn write_shard(path: &Path, arrays: &ShardArrays) -> Result<()> {
    let tmp = temporary_path(path)?;
    let write = || -> Result<()> {
        let file = hdf5::File::create(&tmp)?;
        let (n, l, p) = (
            arrays.num_instances,
            arrays.max_seq_length,
            arrays.max_predictions_per_seq,
        );
        file.new_dataset_builder()
            .deflate(GZIP_LEVEL)
            .with_data(matrix(&arrays.input_ids, n, l)?)
            .create("input_ids")?;
        file.new_dataset_builder()
            .deflate(GZIP_LEVEL)
            .with_data(matrix(&arrays.input_mask, n, l)?)
            .create("input_mask")?;
        file.new_dataset_builder()
            .deflate(GZIP_LEVEL)
            .with_data(matrix(&arrays.segment_ids, n, l)?)
            .create("segment_ids")?;
        file.new_dataset_builder()
            .deflate(GZIP_LEVEL)
            .with_data(matrix(&arrays.masked_lm_positions, n, p)?)
            .create("masked_lm_positions")?;
        file.new_dataset_builder()
            .deflate(GZIP_LEVEL)
            .with_data(matrix(&arrays.masked_lm_ids, n, p)?)
            .create("masked_lm_ids")?;
        file.new_dataset_builder()
            .deflate(GZIP_LEVEL)
            .with_data(ArrayView1::from(&arrays.next_sentence_labels[..]))
            .create("next_sentence_labels")?;
        file.close()?;
        Ok(commit_temporary(&tmp, path)?)
    };
    write().map_err(|error| {
        let _ = std::fs::remove_file(&tmp);
        error.context(format!("cannot write shard {}", path.display()))
    })
}

fn matrix<T>(values: &[T], rows: usize, columns: usize) -> Result<ArrayView2<'_, T>> {
    Ok(ArrayView2::from_shape((rows, columns), values)?)
}

/// Reads a shard, checking every dataset's presence, dtype and shape (the reference's loader
/// silently casts; a wrong dtype here means a wrong writer). In a child process when
/// [`crate::shard_sandbox`] is enabled (as `bert-native` does), here otherwise.
pub fn read_shard(path: &Path) -> Result<ShardArrays> {
    crate::shard_sandbox::read_if_enabled(path).unwrap_or_else(|| read_shard_here(path))
}

/// [`read_shard`] in this process.
pub fn read_shard_here(path: &Path) -> Result<ShardArrays> {
    read(path).with_context(|| format!("{}: not a valid pretraining shard", path.display()))
}

/// The most deflate (gzip) can compress: about 1032 to 1.
pub(crate) const MAX_DEFLATE_RATIO: u64 = 1032;

fn read(path: &Path) -> Result<ShardArrays> {
    let file = hdf5::File::open(path).context("cannot open as HDF5")?;
    let names = file.member_names()?;
    let missing: Vec<&str> = DATASETS
        .iter()
        .copied()
        .filter(|d| !names.iter().any(|n| n == d))
        .collect();
    if !missing.is_empty() {
        bail!("missing datasets: {}", missing.join(", "));
    }
    let expected_dtype = |name: &str| match name {
        "input_ids" | "masked_lm_positions" | "masked_lm_ids" => {
            TypeDescriptor::Integer(IntSize::U4)
        }
        _ => TypeDescriptor::Integer(IntSize::U1),
    };
    // The declared shapes size the arrays read below: each must fit what the file can hold (the
    // bytes stored for it, at most the file's, times deflate's largest ratio), or a small file
    // declaring a huge shape would allocate it (found by fuzzing, `fuzz/regressions/`).
    let file_bytes = file.size();
    for name in DATASETS {
        let dataset = file.dataset(name)?;
        let dtype = dataset.dtype()?;
        let descriptor = dtype.to_descriptor()?;
        let expected = expected_dtype(name);
        if descriptor != expected {
            bail!("{name} has dtype {descriptor} (the reference writes {expected})");
        }
        let shape = dataset.shape();
        let declared = shape
            .iter()
            .try_fold(dtype.size() as u64, |bytes, &extent| {
                bytes.checked_mul(extent as u64)
            });
        let stored = dataset.storage_size().min(file_bytes);
        if declared.is_none_or(|bytes| bytes > stored.saturating_mul(MAX_DEFLATE_RATIO)) {
            bail!("{name} declares shape {shape:?}, more than the {stored} bytes stored for it can hold");
        }
    }
    let input_ids = file.dataset("input_ids")?.read_2d::<i32>()?;
    let masked_lm_positions = file.dataset("masked_lm_positions")?.read_2d::<i32>()?;
    let (num_instances, max_seq_length) = input_ids.dim();
    let max_predictions_per_seq = masked_lm_positions.dim().1;
    let flat_2d = |name: &str, columns: usize| -> Result<Vec<i8>> {
        let array = file.dataset(name)?.read_2d::<i8>()?;
        if array.dim() != (num_instances, columns) {
            bail!(
                "{name} has shape {:?}, expected [{num_instances}, {columns}]",
                array.dim()
            );
        }
        Ok(array.into_iter().collect())
    };
    let input_mask = flat_2d("input_mask", max_seq_length)?;
    let segment_ids = flat_2d("segment_ids", max_seq_length)?;
    let masked_lm_ids = file.dataset("masked_lm_ids")?.read_2d::<i32>()?;
    if masked_lm_ids.dim() != masked_lm_positions.dim()
        || masked_lm_positions.dim().0 != num_instances
    {
        bail!(
            "masked_lm_ids {:?} / masked_lm_positions {:?} must both be [{num_instances}, P]",
            masked_lm_ids.dim(),
            masked_lm_positions.dim()
        );
    }
    let next_sentence_labels: Vec<i8> = file
        .dataset("next_sentence_labels")?
        .read_1d::<i8>()?
        .to_vec();
    if next_sentence_labels.len() != num_instances {
        bail!(
            "next_sentence_labels has {} values for {num_instances} instances",
            next_sentence_labels.len()
        );
    }
    Ok(ShardArrays {
        num_instances,
        max_seq_length,
        max_predictions_per_seq,
        input_ids: input_ids.into_iter().collect(),
        input_mask,
        segment_ids,
        masked_lm_positions: masked_lm_positions.into_iter().collect(),
        masked_lm_ids: masked_lm_ids.into_iter().collect(),
        next_sentence_labels,
    })
}

/// Reads and validates a shard against a vocabulary size: the layout and every row.
pub fn read_valid_shard(path: &Path, vocab_size: usize) -> Result<ShardArrays> {
    let arrays = read_shard(path)?;
    let errors = arrays.validate(vocab_size, 5);
    if !errors.is_empty() {
        bail!(
            "{}: invalid pretraining shard: {}",
            path.display(),
            errors.join("; ")
        );
    }
    Ok(arrays)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bert_tests::fixture;

    fn contents(name: &str) -> serde_json::Value {
        let text = std::fs::read_to_string(fixture(&format!("hdf5/{name}.contents.json"))).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn flat(value: &serde_json::Value) -> Vec<i64> {
        match value {
            serde_json::Value::Array(items) => items.iter().flat_map(flat).collect(),
            other => vec![other.as_i64().unwrap()],
        }
    }

    #[test]
    fn reads_the_reference_shards_exactly() {
        for (name, length, predictions) in [
            ("tiny_seq128_training_0", 128, 20),
            ("tiny_seq512_training_0", 512, 80),
        ] {
            let arrays = read_valid_shard(&fixture(&format!("hdf5/{name}.hdf5")), 30522).unwrap();
            assert_eq!(
                (arrays.max_seq_length, arrays.max_predictions_per_seq),
                (length, predictions)
            );
            let expected = contents(name);
            let widen = |values: &[i32]| values.iter().map(|&v| i64::from(v)).collect::<Vec<_>>();
            let widen8 = |values: &[i8]| values.iter().map(|&v| i64::from(v)).collect::<Vec<_>>();
            assert_eq!(
                widen(&arrays.input_ids),
                flat(&expected["input_ids"]),
                "{name}"
            );
            assert_eq!(
                widen8(&arrays.input_mask),
                flat(&expected["input_mask"]),
                "{name}"
            );
            assert_eq!(
                widen8(&arrays.segment_ids),
                flat(&expected["segment_ids"]),
                "{name}"
            );
            assert_eq!(
                widen(&arrays.masked_lm_positions),
                flat(&expected["masked_lm_positions"])
            );
            assert_eq!(
                widen(&arrays.masked_lm_ids),
                flat(&expected["masked_lm_ids"])
            );
            assert_eq!(
                widen8(&arrays.next_sentence_labels),
                flat(&expected["next_sentence_labels"])
            );
            if let Some(labels) = expected.get("nvidia_loader_row0_masked_lm_labels") {
                assert_eq!(
                    arrays.masked_lm_labels(0),
                    flat(labels),
                    "{name}: the loader's view"
                );
            }
        }
    }

    #[test]
    fn writes_what_it_reads() {
        let original = read_shard(&fixture("hdf5/tiny_seq128_training_0.hdf5")).unwrap();
        let dir = std::env::temp_dir().join(format!("bert-native-shard-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("copy_training_0.hdf5");
        write_shard(&path, &original).unwrap();
        assert_eq!(read_shard(&path).unwrap(), original);
        let file = hdf5::File::open(&path).unwrap();
        for name in DATASETS {
            let filters = file.dataset(name).unwrap().filters();
            assert!(
                filters
                    .iter()
                    .any(|f| matches!(f, hdf5::filters::Filter::Deflate(_))),
                "{name} is gzip"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_declared_shape_the_file_cannot_hold_is_refused_before_it_is_read() {
        let dir = std::env::temp_dir().join(format!("bert-native-shape-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("huge_training_0.hdf5");
        {
            // 2^20 x 4096 int32 (16 GiB) declared, chunked, nothing written.
            let file = hdf5::File::create(&path).unwrap();
            file.new_dataset::<i32>()
                .chunk((1024, 128))
                .shape((1 << 20, 4096))
                .create("input_ids")
                .unwrap();
            for name in &DATASETS[1..] {
                if name.starts_with("masked_lm") {
                    file.new_dataset::<i32>().shape((1, 1)).create(*name)
                } else {
                    file.new_dataset::<i8>().shape((1, 1)).create(*name)
                }
                .unwrap();
            }
        }
        let error = format!("{:#}", read_shard(&path).unwrap_err());
        assert!(
            error.contains("input_ids declares shape [1048576, 4096]"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rejects_every_bad_reference_shard_with_its_reason() {
        let reasons = [
            ("masked_position_in_padding", "outside the real tokens"),
            ("masked_position_zero_first", "no masked positions"),
            ("masked_positions_descending", "ascending"),
            ("missing_final_sep", "[SEP]"),
            (
                "missing_next_sentence_labels",
                "missing datasets: next_sentence_labels",
            ),
            ("next_sentence_label_2", "next_sentence_labels value 2"),
            ("wrong_dtype_input_ids_i8", "input_ids has dtype"),
        ];
        for (name, reason) in reasons {
            let path = fixture(&format!("hdf5/bad/{name}.hdf5"));
            let error = format!("{:#}", read_valid_shard(&path, 30522).unwrap_err());
            assert!(
                error.contains(reason) && error.contains(name),
                "{name}: {error}"
            );
        }
        let error = format!(
            "{:#}",
            read_shard(&fixture("hdf5/layout.json")).unwrap_err()
        );
        assert!(
            error.contains("layout.json") && error.contains("HDF5"),
            "{error}"
        );
    }
}
