//! The contents of one pretraining shard in NVIDIA's layout, and its validation.
//!
//! | dataset | dtype | shape |
//! |---|---|---|
//! | `input_ids` | i4 | `[N, L]` `[CLS] A [SEP] B [SEP]` then 0 |
//! | `input_mask` | i1 | `[N, L]` 1 on real tokens |
//! | `segment_ids` | i1 | `[N, L]` 0 for A, 1 for B, 0 on padding |
//! | `masked_lm_positions` | i4 | `[N, P]` ascending, then 0 |
//! | `masked_lm_ids` | i4 | `[N, P]` original ids, then 0 |
//! | `next_sentence_labels` | i1 | `[N]` 1 = B is random |
//!
//! The checks are those of `shared/oracle/hdf5_layout.py` (the reference loader's assumptions),
//! so a shard that passes here trains the same under NVIDIA's `run_pretraining.py`.

use super::instances::TrainingInstance;

/// The six arrays of a shard, row-major.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShardArrays {
    /// Number of instances `N`.
    pub num_instances: usize,
    /// `L`.
    pub max_seq_length: usize,
    /// `P`.
    pub max_predictions_per_seq: usize,
    /// `[N, L]`.
    pub input_ids: Vec<i32>,
    /// `[N, L]`.
    pub input_mask: Vec<i8>,
    /// `[N, L]`.
    pub segment_ids: Vec<i8>,
    /// `[N, P]`.
    pub masked_lm_positions: Vec<i32>,
    /// `[N, P]`.
    pub masked_lm_ids: Vec<i32>,
    /// `[N]`.
    pub next_sentence_labels: Vec<i8>,
}

/// The dataset names of a shard, in the order the reference writes them.
pub const DATASETS: [&str; 6] = [
    "input_ids",
    "input_mask",
    "segment_ids",
    "masked_lm_positions",
    "masked_lm_ids",
    "next_sentence_labels",
];

/// Special ids the structural checks need.
const PAD: i32 = 0;
const CLS: i32 = 101;
const SEP: i32 = 102;

impl ShardArrays {
    /// Pads instances into arrays (`write_instance_to_example_files`).
    pub fn from_instances(
        instances: &[TrainingInstance],
        max_seq_length: usize,
        max_predictions_per_seq: usize,
    ) -> Self {
        let n = instances.len();
        let mut arrays = Self {
            num_instances: n,
            max_seq_length,
            max_predictions_per_seq,
            input_ids: vec![0; n * max_seq_length],
            input_mask: vec![0; n * max_seq_length],
            segment_ids: vec![0; n * max_seq_length],
            masked_lm_positions: vec![0; n * max_predictions_per_seq],
            masked_lm_ids: vec![0; n * max_predictions_per_seq],
            next_sentence_labels: vec![0; n],
        };
        for (row, instance) in instances.iter().enumerate() {
            let tokens = row * max_seq_length;
            for (i, (&token, &segment)) in instance
                .tokens
                .iter()
                .zip(&instance.segment_ids)
                .enumerate()
            {
                arrays.input_ids[tokens + i] = token as i32;
                arrays.input_mask[tokens + i] = 1;
                arrays.segment_ids[tokens + i] = segment as i8;
            }
            let predictions = row * max_predictions_per_seq;
            for (i, (&position, &id)) in instance
                .masked_lm_positions
                .iter()
                .zip(&instance.masked_lm_ids)
                .enumerate()
            {
                arrays.masked_lm_positions[predictions + i] = position as i32;
                arrays.masked_lm_ids[predictions + i] = id as i32;
            }
            arrays.next_sentence_labels[row] = i8::from(instance.is_random_next);
        }
        arrays
    }

    /// The rows `rows` (in that order) as a smaller set: a training micro-batch.
    pub fn select_rows(&self, rows: &[usize]) -> Self {
        let (l, p) = (self.max_seq_length, self.max_predictions_per_seq);
        let gather = |values: &[i32], width: usize| -> Vec<i32> {
            rows.iter()
                .flat_map(|&r| Self::row(values, width, r).iter().copied())
                .collect()
        };
        let gather8 = |values: &[i8], width: usize| -> Vec<i8> {
            rows.iter()
                .flat_map(|&r| Self::row(values, width, r).iter().copied())
                .collect()
        };
        Self {
            num_instances: rows.len(),
            max_seq_length: l,
            max_predictions_per_seq: p,
            input_ids: gather(&self.input_ids, l),
            input_mask: gather8(&self.input_mask, l),
            segment_ids: gather8(&self.segment_ids, l),
            masked_lm_positions: gather(&self.masked_lm_positions, p),
            masked_lm_ids: gather(&self.masked_lm_ids, p),
            next_sentence_labels: gather8(&self.next_sentence_labels, 1),
        }
    }

    /// Row `i` of a `[N, width]` array.
    fn row<T>(values: &[T], width: usize, i: usize) -> &[T] {
        &values[i * width..(i + 1) * width]
    }

    /// Number of real predictions of row `i`: up to the first 0 position, as the loader reads it.
    pub fn num_predictions(&self, row: usize) -> usize {
        let positions = Self::row(&self.masked_lm_positions, self.max_predictions_per_seq, row);
        positions
            .iter()
            .position(|&p| p == 0)
            .unwrap_or(positions.len())
    }

    /// Every layout error (empty when the shard is valid), at most `limit` of them.
    pub fn validate(&self, vocab_size: usize, limit: usize) -> Vec<String> {
        let mut errors = Vec::new();
        let (n, l, p) = (
            self.num_instances,
            self.max_seq_length,
            self.max_predictions_per_seq,
        );
        let sizes = [
            ("input_ids", self.input_ids.len(), n * l),
            ("input_mask", self.input_mask.len(), n * l),
            ("segment_ids", self.segment_ids.len(), n * l),
            ("masked_lm_positions", self.masked_lm_positions.len(), n * p),
            ("masked_lm_ids", self.masked_lm_ids.len(), n * p),
            ("next_sentence_labels", self.next_sentence_labels.len(), n),
        ];
        for (name, actual, expected) in sizes {
            if actual != expected {
                errors.push(format!("{name} has {actual} values, expected {expected}"));
            }
        }
        if n == 0 {
            errors.push("shard has no instances".into());
        }
        if !errors.is_empty() {
            return errors;
        }
        for row in 0..n {
            if errors.len() >= limit {
                break;
            }
            self.validate_row(row, vocab_size, &mut errors);
        }
        errors.truncate(limit);
        errors
    }

    fn validate_row(&self, i: usize, vocab_size: usize, errors: &mut Vec<String>) {
        let (l, p) = (self.max_seq_length, self.max_predictions_per_seq);
        let ids = Self::row(&self.input_ids, l, i);
        let mask = Self::row(&self.input_mask, l, i);
        let segments = Self::row(&self.segment_ids, l, i);
        let positions = Self::row(&self.masked_lm_positions, p, i);
        let masked_ids = Self::row(&self.masked_lm_ids, p, i);
        let mut error = |message: String| errors.push(format!("row {i}: {message}"));

        if let Some(&bad) = ids.iter().find(|&&id| id < 0 || id as usize >= vocab_size) {
            return error(format!("input_ids value {bad} outside [0, {vocab_size})"));
        }
        let label = self.next_sentence_labels[i];
        if label != 0 && label != 1 {
            return error(format!(
                "next_sentence_labels value {label} (expected 0 or 1)"
            ));
        }
        let n_real = mask.iter().take_while(|&&m| m == 1).count();
        if n_real == 0 || mask[n_real..].iter().any(|&m| m != 0) {
            return error("input_mask is not ones followed by zeros".into());
        }
        let k = self.num_predictions(i);
        if k == 0 {
            return error("no masked positions (first masked_lm_position is 0)".into());
        }
        if positions[k..].iter().any(|&x| x != 0) || masked_ids[k..].iter().any(|&x| x != 0) {
            return error("masked_lm_positions/ids have values after the first 0 position".into());
        }
        let (positions, masked_ids) = (&positions[..k], &masked_ids[..k]);
        if positions.iter().any(|&x| x < 1 || x as usize >= n_real) {
            return error(format!(
                "masked position outside the real tokens [1, {}]: {positions:?}",
                n_real - 1
            ));
        }
        if positions.windows(2).any(|w| w[0] >= w[1]) {
            return error(format!(
                "masked positions not ascending and unique: {positions:?}"
            ));
        }
        if masked_ids
            .iter()
            .any(|&x| x <= 0 || x as usize >= vocab_size || x == CLS || x == SEP)
        {
            return error(format!(
                "masked_lm_ids outside the vocabulary or special: {masked_ids:?}"
            ));
        }
        let mut original = ids[..n_real].to_vec();
        for (&position, &id) in positions.iter().zip(masked_ids) {
            original[position as usize] = id;
        }
        if original[0] != CLS || original[n_real - 1] != SEP {
            return error("real tokens do not start with [CLS] and end with [SEP]".into());
        }
        if ids[n_real..].iter().any(|&x| x != PAD) || segments[n_real..].iter().any(|&x| x != 0) {
            return error("input_ids/segment_ids not 0 on padding".into());
        }
        let n_a = segments[..n_real].iter().take_while(|&&s| s == 0).count();
        if segments[n_a..n_real].iter().any(|&s| s != 1) {
            return error("segment_ids not 0...0 1...1 over the real tokens".into());
        }
        let separators: Vec<usize> = (0..n_real).filter(|&j| original[j] == SEP).collect();
        if n_a < n_real && (original[n_a - 1] != SEP || separators.len() != 2) {
            return error(format!(
                "expected [SEP] closing segment A at {} and exactly two [SEP], got {separators:?}",
                n_a - 1
            ));
        }
        if original[1..].contains(&CLS) {
            error("[CLS] inside the sequence".into());
        }
    }

    /// The loader's view of row `i` (`pretraining_dataset.__getitem__`): `masked_lm_labels` is -1
    /// everywhere except at the masked positions, which hold the original ids.
    pub fn masked_lm_labels(&self, row: usize) -> Vec<i64> {
        let mut labels = vec![-1i64; self.max_seq_length];
        let k = self.num_predictions(row);
        let positions =
            &Self::row(&self.masked_lm_positions, self.max_predictions_per_seq, row)[..k];
        let ids = &Self::row(&self.masked_lm_ids, self.max_predictions_per_seq, row)[..k];
        for (&position, &id) in positions.iter().zip(ids) {
            labels[position as usize] = i64::from(id);
        }
        labels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance() -> TrainingInstance {
        TrainingInstance {
            tokens: vec![101, 1000, 103, 102, 1002, 1003, 102],
            segment_ids: vec![0, 0, 0, 0, 1, 1, 1],
            masked_lm_positions: vec![2, 5],
            masked_lm_ids: vec![1001, 1003],
            is_random_next: true,
        }
    }

    #[test]
    fn pads_instances_as_the_reference_writes_them() {
        let arrays = ShardArrays::from_instances(&[instance()], 10, 4);
        assert_eq!(
            arrays.input_ids,
            [101, 1000, 103, 102, 1002, 1003, 102, 0, 0, 0]
        );
        assert_eq!(arrays.input_mask, [1, 1, 1, 1, 1, 1, 1, 0, 0, 0]);
        assert_eq!(arrays.segment_ids, [0, 0, 0, 0, 1, 1, 1, 0, 0, 0]);
        assert_eq!(arrays.masked_lm_positions, [2, 5, 0, 0]);
        assert_eq!(arrays.masked_lm_ids, [1001, 1003, 0, 0]);
        assert_eq!(arrays.next_sentence_labels, [1]);
        assert!(arrays.validate(30522, 10).is_empty());
        assert_eq!(
            arrays.masked_lm_labels(0),
            [-1, -1, 1001, -1, -1, 1003, -1, -1, -1, -1]
        );
    }

    #[test]
    fn finds_the_layout_errors_the_reference_loader_would_trip_on() {
        let good = ShardArrays::from_instances(&[instance()], 10, 4);
        let broken = |edit: &dyn Fn(&mut ShardArrays)| {
            let mut arrays = good.clone();
            edit(&mut arrays);
            let errors = arrays.validate(30522, 10);
            assert!(!errors.is_empty());
            errors.join("; ")
        };
        assert!(broken(&|a| a.masked_lm_positions[0] = 8).contains("outside the real tokens"));
        assert!(broken(&|a| a.masked_lm_positions.swap(0, 1)).contains("ascending"));
        assert!(
            broken(&|a| a.masked_lm_positions = vec![0, 2, 0, 0]).contains("no masked positions")
        );
        assert!(broken(&|a| a.next_sentence_labels[0] = 2).contains("next_sentence_labels"));
        assert!(broken(&|a| a.input_ids[6] = 1005).contains("[SEP]"));
        assert!(broken(&|a| a.input_ids[1] = 40000).contains("outside"));
        assert!(broken(&|a| a.input_mask[8] = 1).contains("input_mask"));
        assert!(broken(&|a| a.segment_ids[2] = 1).contains("segment_ids"));
        assert!(broken(&|a| a.next_sentence_labels.clear()).contains("next_sentence_labels"));
    }
}
