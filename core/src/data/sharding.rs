//! Assigning documents to training and test shards of balanced size (`bertPrep.py`'s sharding):
//! a random test fraction first, then largest-first into the currently smallest shard. Documents
//! are never split; the plan depends only on the document sizes and the seed.

use super::rng::PrepRng;

/// Which shard a document goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ShardId {
    /// Training shard `k`.
    Training(usize),
    /// Test shard `k`.
    Test(usize),
}

/// Why documents cannot be sharded as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardingError {
    /// Fewer documents than shards: some shard would be empty.
    #[error(
        "{documents} {set} documents cannot fill {shards} {set} shards; lower --n-{set}-shards"
    )]
    TooFewDocuments {
        /// `training` or `test`.
        set: &'static str,
        /// Documents available for that set.
        documents: usize,
        /// Shards asked for.
        shards: usize,
    },
    /// No training shard was asked for.
    #[error("at least one training shard is needed")]
    NoTrainingShards,
}

/// The shard of every document, by document index.
pub fn plan_shards(
    document_sizes: &[u64],
    n_training_shards: usize,
    n_test_shards: usize,
    fraction_test_set: f64,
    rng: &mut PrepRng,
) -> Result<Vec<ShardId>, ShardingError> {
    if n_training_shards == 0 {
        return Err(ShardingError::NoTrainingShards);
    }
    let mut order: Vec<usize> = (0..document_sizes.len()).collect();
    rng.shuffle(&mut order);
    let n_test = if n_test_shards == 0 {
        0
    } else {
        ((document_sizes.len() as f64 * fraction_test_set).round() as usize).max(n_test_shards)
    };
    let (test, training) = order.split_at(n_test.min(order.len()));

    let mut plan = vec![ShardId::Training(0); document_sizes.len()];
    for (set, documents, shards, make) in [
        (
            "training",
            training,
            n_training_shards,
            ShardId::Training as fn(usize) -> ShardId,
        ),
        (
            "test",
            test,
            n_test_shards,
            ShardId::Test as fn(usize) -> ShardId,
        ),
    ] {
        if shards == 0 {
            continue;
        }
        if documents.len() < shards {
            return Err(ShardingError::TooFewDocuments {
                set,
                documents: documents.len(),
                shards,
            });
        }
        let mut by_size = documents.to_vec();
        // Largest first; ties by index so the plan does not depend on the sort's stability.
        by_size.sort_by(|&a, &b| document_sizes[b].cmp(&document_sizes[a]).then(a.cmp(&b)));
        let mut totals = vec![0u64; shards];
        for document in by_size {
            let (smallest, _) = totals
                .iter()
                .enumerate()
                .min_by_key(|&(k, &total)| (total, k))
                .expect("at least one shard");
            totals[smallest] += document_sizes[document];
            plan[document] = make(smallest);
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_balanced_complete_and_deterministic() {
        let mut sizes_rng = PrepRng::new(1, 0);
        let sizes: Vec<u64> = (0..1000)
            .map(|_| sizes_rng.randint(100, 5000) as u64)
            .collect();
        let plan = plan_shards(&sizes, 8, 2, 0.1, &mut PrepRng::new(12345, 0)).unwrap();
        let again = plan_shards(&sizes, 8, 2, 0.1, &mut PrepRng::new(12345, 0)).unwrap();
        assert_eq!(plan, again);

        let mut training = [0u64; 8];
        let mut test = [0u64; 2];
        for (document, shard) in plan.iter().enumerate() {
            match *shard {
                ShardId::Training(k) => training[k] += sizes[document],
                ShardId::Test(k) => test[k] += sizes[document],
            }
        }
        let test_documents = plan
            .iter()
            .filter(|s| matches!(s, ShardId::Test(_)))
            .count();
        assert_eq!(test_documents, 100);
        let (min, max) = (
            *training.iter().min().unwrap(),
            *training.iter().max().unwrap(),
        );
        assert!(
            max - min <= 5000,
            "largest-first keeps shards within one document: {training:?}"
        );
        assert!(test.iter().all(|&t| t > 0));
    }

    #[test]
    fn too_few_documents_is_an_error() {
        let sizes = [10; 5];
        let error = plan_shards(&sizes, 8, 0, 0.0, &mut PrepRng::new(1, 0)).unwrap_err();
        assert_eq!(
            error,
            ShardingError::TooFewDocuments {
                set: "training",
                documents: 5,
                shards: 8
            }
        );
        assert!(error.to_string().contains("--n-training-shards"));
        assert!(plan_shards(&sizes, 0, 0, 0.0, &mut PrepRng::new(1, 0)).is_err());
    }
}
