//! The random source of data preparation: a seeded ChaCha stream (identical on every platform and
//! thread count) with the few draws `create_pretraining_data.py` makes of Python's `random`.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A deterministic random stream: one per (seed, stream) pair, e.g. one stream per shard so the
/// output does not depend on how shards are spread over threads.
#[derive(Debug, Clone)]
pub struct PrepRng(ChaCha8Rng);

impl PrepRng {
    /// The stream `stream` of generator `seed`.
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        Self(rng)
    }

    /// Uniform in `[0, 1)`, like `random.random()`.
    pub fn random(&mut self) -> f64 {
        self.0.random::<f64>()
    }

    /// Uniform integer in `[low, high]` (both ends included), like `random.randint`.
    pub fn randint(&mut self, low: usize, high: usize) -> usize {
        self.0.random_range(low..=high)
    }

    /// Shuffles in place (Fisher-Yates), like `random.shuffle`.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.0.random_range(0..=i);
            items.swap(i, j);
        }
    }

    /// The generator's exact position, for resuming (seed, stream and word position).
    pub fn state(&self) -> RngState {
        RngState {
            seed: self.0.get_seed(),
            stream: self.0.get_stream(),
            word_pos: self.0.get_word_pos(),
        }
    }

    /// A generator at a saved position.
    pub fn from_state(state: &RngState) -> Self {
        let mut rng = ChaCha8Rng::from_seed(state.seed);
        rng.set_stream(state.stream);
        rng.set_word_pos(state.word_pos);
        Self(rng)
    }
}

/// A saved [`PrepRng`] position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RngState {
    /// The 32-byte ChaCha key.
    pub seed: [u8; 32],
    /// The stream number.
    pub stream: u64,
    /// Words consumed so far.
    pub word_pos: u128,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_independent() {
        let draws = |seed, stream| {
            let mut rng = PrepRng::new(seed, stream);
            (0..5).map(|_| rng.randint(0, 1000)).collect::<Vec<_>>()
        };
        assert_eq!(draws(12345, 0), draws(12345, 0));
        assert_ne!(draws(12345, 0), draws(12345, 1));
        assert_ne!(draws(12345, 0), draws(12346, 0));
    }

    #[test]
    fn randint_includes_both_ends_and_shuffle_permutes() {
        let mut rng = PrepRng::new(1, 0);
        let values: Vec<usize> = (0..2000).map(|_| rng.randint(2, 4)).collect();
        for v in 2..=4 {
            assert!(values.contains(&v));
        }
        assert!(values.iter().all(|v| (2..=4).contains(v)));
        let mut items: Vec<u32> = (0..50).collect();
        rng.shuffle(&mut items);
        let mut sorted = items.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_ne!(items, sorted);
    }

    #[test]
    fn a_saved_state_resumes_the_same_draws() {
        let mut rng = PrepRng::new(7, 3);
        for _ in 0..17 {
            rng.random();
        }
        let state = rng.state();
        let ahead: Vec<f64> = (0..5).map(|_| rng.random()).collect();
        let mut resumed = PrepRng::from_state(&state);
        let again: Vec<f64> = (0..5).map(|_| resumed.random()).collect();
        assert_eq!(ahead, again);
    }
}
