//! `create_pretraining_data.py` (Google's algorithm, as NVIDIA runs it): documents of tokenized
//! sentences to masked-LM / next-sentence training instances.
//!
//! For each document (repeated `dupe_factor` times): sentences are accumulated up to a target
//! length (`max_seq_length - 3`, or with probability `short_seq_prob` a random length in
//! `[2, max - 3]`); segment A is the first `a_end` of them; with probability 0.5 (always when
//! there is one sentence) segment B is taken from a random other document (label 1, "random
//! next") and the unused sentences are put back, otherwise B is the rest of the chunk (label 0);
//! `truncate_seq_pair` trims the longer side from the front or back at random; then
//! `num_to_predict = min(max_pred, max(1, round(len * masked_lm_prob)))` of the non-special tokens
//! are masked: 80% `[MASK]`, 10% kept, 10% a random vocabulary entry; positions are sorted.
//! Everything works on token ids; the randomness comes from one [`PrepRng`] stream.

use serde::{Deserialize, Serialize};

use super::rng::PrepRng;

/// A document: its sentences, each a list of WordPiece ids.
pub type Document = Vec<Vec<u32>>;

/// Parameters of instance creation; the defaults are the recipe's phase 1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct InstanceConfig {
    /// Tokens per instance, `[CLS]`/`[SEP]` included.
    pub max_seq_length: usize,
    /// Most masked positions per instance.
    pub max_predictions_per_seq: usize,
    /// Fraction of tokens to mask.
    pub masked_lm_prob: f64,
    /// Probability of a shorter target length.
    pub short_seq_prob: f64,
    /// How many times each document is used (with different masks and pairings).
    pub dupe_factor: usize,
    /// Mask whole words (all WordPieces of a word together) instead of single pieces.
    pub whole_word_masking: bool,
}

impl Default for InstanceConfig {
    fn default() -> Self {
        Self {
            max_seq_length: 128,
            max_predictions_per_seq: 20,
            masked_lm_prob: 0.15,
            short_seq_prob: 0.1,
            dupe_factor: 5,
            whole_word_masking: false,
        }
    }
}

/// What the generator needs to know of the vocabulary.
#[derive(Debug, Clone)]
pub struct VocabInfo {
    /// `[CLS]` id.
    pub cls: u32,
    /// `[SEP]` id.
    pub sep: u32,
    /// `[MASK]` id.
    pub mask: u32,
    /// For each id, whether it is a `##` continuation piece (for whole-word masking).
    pub is_continuation: Vec<bool>,
}

impl VocabInfo {
    /// Number of vocabulary entries (random replacements are drawn from all of them).
    pub fn vocab_size(&self) -> usize {
        self.is_continuation.len()
    }
}

/// One training instance before padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainingInstance {
    /// `[CLS] A [SEP] B [SEP]` after masking.
    pub tokens: Vec<u32>,
    /// 0 for `[CLS] A [SEP]`, 1 for `B [SEP]`.
    pub segment_ids: Vec<u8>,
    /// Masked positions, ascending.
    pub masked_lm_positions: Vec<u32>,
    /// The original ids at those positions.
    pub masked_lm_ids: Vec<u32>,
    /// Whether B was drawn from another document (next-sentence label 1).
    pub is_random_next: bool,
}

/// All instances of a set of documents, shuffled: what one shard becomes.
///
/// `documents` are shuffled first (as the reference does); empty documents are dropped.
pub fn create_training_instances(
    mut documents: Vec<Document>,
    config: &InstanceConfig,
    vocab: &VocabInfo,
    rng: &mut PrepRng,
) -> Vec<TrainingInstance> {
    documents.retain(|d| !d.is_empty());
    rng.shuffle(&mut documents);
    let mut instances = Vec::new();
    for _ in 0..config.dupe_factor {
        for document_index in 0..documents.len() {
            instances.extend(create_instances_from_document(
                &documents,
                document_index,
                config,
                vocab,
                rng,
            ));
        }
    }
    rng.shuffle(&mut instances);
    instances
}

/// The instances of one document (`create_instances_from_document`).
pub fn create_instances_from_document(
    documents: &[Document],
    document_index: usize,
    config: &InstanceConfig,
    vocab: &VocabInfo,
    rng: &mut PrepRng,
) -> Vec<TrainingInstance> {
    let document = &documents[document_index];
    let max_num_tokens = config.max_seq_length - 3;
    let target_seq_length = if rng.random() < config.short_seq_prob {
        rng.randint(2, max_num_tokens)
    } else {
        max_num_tokens
    };

    let mut instances = Vec::new();
    let mut current_chunk: Vec<&Vec<u32>> = Vec::new();
    let mut current_length = 0;
    let mut i = 0;
    while i < document.len() {
        let segment = &document[i];
        current_chunk.push(segment);
        current_length += segment.len();
        if i == document.len() - 1 || current_length >= target_seq_length {
            let a_end = if current_chunk.len() >= 2 {
                rng.randint(1, current_chunk.len() - 1)
            } else {
                1
            };
            let mut tokens_a: Vec<u32> = current_chunk[..a_end]
                .iter()
                .flat_map(|s| s.iter().copied())
                .collect();
            let mut tokens_b = Vec::new();
            let is_random_next;
            if current_chunk.len() == 1 || rng.random() < 0.5 {
                let target_b_length = target_seq_length.saturating_sub(tokens_a.len());
                let mut random_document_index = document_index;
                for _ in 0..10 {
                    random_document_index = rng.randint(0, documents.len() - 1);
                    if random_document_index != document_index {
                        break;
                    }
                }
                // With a single document the "random" B comes from the same one: not random.
                is_random_next = random_document_index != document_index;
                let random_document = &documents[random_document_index];
                let random_start = rng.randint(0, random_document.len() - 1);
                for sentence in &random_document[random_start..] {
                    tokens_b.extend_from_slice(sentence);
                    if tokens_b.len() >= target_b_length {
                        break;
                    }
                }
                // The sentences of the chunk not used for A go back to the document.
                i -= current_chunk.len() - a_end;
            } else {
                is_random_next = false;
                tokens_b = current_chunk[a_end..]
                    .iter()
                    .flat_map(|s| s.iter().copied())
                    .collect();
            }
            truncate_seq_pair(&mut tokens_a, &mut tokens_b, max_num_tokens, rng);
            if !tokens_a.is_empty() && !tokens_b.is_empty() {
                instances.push(build_instance(
                    tokens_a,
                    tokens_b,
                    is_random_next,
                    config,
                    vocab,
                    rng,
                ));
            }
            current_chunk.clear();
            current_length = 0;
        }
        i += 1;
    }
    instances
}

/// Trims the longer of A and B, one token at a time from its front or back (at random), until
/// the pair fits in `max_num_tokens`.
pub fn truncate_seq_pair(
    tokens_a: &mut Vec<u32>,
    tokens_b: &mut Vec<u32>,
    max_num_tokens: usize,
    rng: &mut PrepRng,
) {
    while tokens_a.len() + tokens_b.len() > max_num_tokens {
        let longer = if tokens_a.len() > tokens_b.len() {
            &mut *tokens_a
        } else {
            &mut *tokens_b
        };
        if rng.random() < 0.5 {
            longer.remove(0);
        } else {
            longer.pop();
        }
    }
}

fn build_instance(
    tokens_a: Vec<u32>,
    tokens_b: Vec<u32>,
    is_random_next: bool,
    config: &InstanceConfig,
    vocab: &VocabInfo,
    rng: &mut PrepRng,
) -> TrainingInstance {
    let mut tokens = Vec::with_capacity(tokens_a.len() + tokens_b.len() + 3);
    tokens.push(vocab.cls);
    tokens.extend_from_slice(&tokens_a);
    tokens.push(vocab.sep);
    let mut segment_ids = vec![0u8; tokens.len()];
    tokens.extend_from_slice(&tokens_b);
    tokens.push(vocab.sep);
    segment_ids.resize(tokens.len(), 1);
    let (tokens, masked_lm_positions, masked_lm_ids) =
        create_masked_lm_predictions(tokens, config, vocab, rng);
    TrainingInstance {
        tokens,
        segment_ids,
        masked_lm_positions,
        masked_lm_ids,
        is_random_next,
    }
}

/// Masks `min(max_pred, max(1, round(len * prob)))` positions (Python's round: half to even).
/// Returns the masked tokens, the sorted positions and the original ids there.
pub fn create_masked_lm_predictions(
    tokens: Vec<u32>,
    config: &InstanceConfig,
    vocab: &VocabInfo,
    rng: &mut PrepRng,
) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    // Candidate groups: single pieces, or with whole-word masking a word's pieces together.
    let mut candidates: Vec<Vec<usize>> = Vec::new();
    for (index, &token) in tokens.iter().enumerate() {
        if token == vocab.cls || token == vocab.sep {
            continue;
        }
        let continues_word = config.whole_word_masking
            && vocab
                .is_continuation
                .get(token as usize)
                .copied()
                .unwrap_or(false);
        match candidates.last_mut() {
            Some(group) if continues_word => group.push(index),
            _ => candidates.push(vec![index]),
        }
    }
    rng.shuffle(&mut candidates);

    let num_to_predict = config
        .max_predictions_per_seq
        .min(((tokens.len() as f64 * config.masked_lm_prob).round_ties_even() as usize).max(1));
    let mut output = tokens.clone();
    let mut masked: Vec<(u32, u32)> = Vec::new();
    for group in candidates {
        if masked.len() >= num_to_predict {
            break;
        }
        if masked.len() + group.len() > num_to_predict {
            continue;
        }
        for index in group {
            let replacement = if rng.random() < 0.8 {
                vocab.mask
            } else if rng.random() < 0.5 {
                tokens[index]
            } else {
                rng.randint(0, vocab.vocab_size() - 1) as u32
            };
            output[index] = replacement;
            masked.push((index as u32, tokens[index]));
        }
    }
    masked.sort_unstable();
    let (positions, ids) = masked.into_iter().unzip();
    (output, positions, ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLS: u32 = 101;
    const SEP: u32 = 102;
    const MASK: u32 = 103;

    fn vocab() -> VocabInfo {
        let mut is_continuation = vec![false; 2000];
        for flag in &mut is_continuation[1500..] {
            *flag = true;
        }
        VocabInfo {
            cls: CLS,
            sep: SEP,
            mask: MASK,
            is_continuation,
        }
    }

    /// `n` documents of 3..12 sentences of 4..20 ordinary ids.
    fn documents(n: usize, rng: &mut PrepRng) -> Vec<Document> {
        (0..n)
            .map(|_| {
                (0..rng.randint(3, 12))
                    .map(|_| {
                        (0..rng.randint(4, 20))
                            .map(|_| rng.randint(1000, 1499) as u32)
                            .collect()
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn instances_have_the_reference_structure() {
        let config = InstanceConfig {
            max_seq_length: 64,
            max_predictions_per_seq: 10,
            dupe_factor: 2,
            ..InstanceConfig::default()
        };
        let mut rng = PrepRng::new(12345, 0);
        let docs = documents(30, &mut rng);
        let instances = create_training_instances(docs, &config, &vocab(), &mut rng);
        assert!(instances.len() > 60);
        for instance in &instances {
            let n = instance.tokens.len();
            assert!(n <= 64);
            assert_eq!(instance.tokens[0], CLS);
            assert_eq!(instance.tokens[n - 1], SEP);
            assert_eq!(instance.segment_ids.len(), n);
            let a_len = instance.segment_ids.iter().filter(|&&s| s == 0).count();
            assert!(instance.segment_ids[..a_len].iter().all(|&s| s == 0));
            assert!(instance.segment_ids[a_len..].iter().all(|&s| s == 1));
            assert!(a_len >= 3 && a_len < n - 1, "A and B are both non-empty");
            let expected = 10.min(((n as f64 * 0.15).round_ties_even() as usize).max(1));
            assert_eq!(instance.masked_lm_positions.len(), expected);
            assert!(instance.masked_lm_positions.windows(2).all(|w| w[0] < w[1]));
            for (&p, &id) in instance
                .masked_lm_positions
                .iter()
                .zip(&instance.masked_lm_ids)
            {
                assert!(p > 0 && (p as usize) < n - 1 && p as usize != a_len - 1);
                assert!(
                    (1000..1500).contains(&id),
                    "the original id is kept as the label"
                );
            }
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_instances() {
        let config = InstanceConfig::default();
        let run = |seed| {
            let mut rng = PrepRng::new(seed, 4);
            let docs = documents(10, &mut rng);
            create_training_instances(docs, &config, &vocab(), &mut rng)
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn python_rounding_decides_the_number_of_predictions() {
        // 30 tokens * 0.15 = 4.5 rounds to 4 (half to even), 10 * 0.15 = 1.5 rounds to 2.
        let config = InstanceConfig::default();
        let mut rng = PrepRng::new(3, 0);
        for (len, expected) in [(30usize, 4usize), (10, 2), (3, 1)] {
            let mut tokens = vec![1200u32; len];
            tokens[0] = CLS;
            tokens[len - 1] = SEP;
            let (_, positions, _) =
                create_masked_lm_predictions(tokens, &config, &vocab(), &mut rng);
            assert_eq!(positions.len(), expected, "len {len}");
        }
    }

    #[test]
    fn whole_word_masking_masks_every_piece_of_a_word() {
        let config = InstanceConfig {
            whole_word_masking: true,
            max_predictions_per_seq: 40,
            masked_lm_prob: 0.3,
            ..InstanceConfig::default()
        };
        let mut rng = PrepRng::new(9, 0);
        // Words of three pieces: 1000 ##1500 ##1501.
        let mut tokens = vec![CLS];
        for _ in 0..20 {
            tokens.extend([1000, 1500, 1501]);
        }
        tokens.push(SEP);
        for _ in 0..50 {
            let (_, positions, _) =
                create_masked_lm_predictions(tokens.clone(), &config, &vocab(), &mut rng);
            assert_eq!(positions.len() % 3, 0, "{positions:?}");
            for word in positions.chunks(3) {
                assert_eq!(word[0] % 3, 1);
                assert_eq!(word[1], word[0] + 1);
                assert_eq!(word[2], word[0] + 2);
            }
        }
    }

    #[test]
    fn short_targets_occur_with_short_seq_prob_and_are_uniform() {
        // One-token sentences make every chunk exactly as long as its target, so an instance whose
        // B is the rest of its own chunk (not random next: a random B may run out of document)
        // reveals the target length drawn for the call.
        let config = InstanceConfig {
            max_seq_length: 128,
            short_seq_prob: 0.1,
            ..InstanceConfig::default()
        };
        let document: Document = (0..4000).map(|i| vec![1000 + i % 400]).collect();
        let documents = vec![document.clone(), document];
        let mut rng = PrepRng::new(2024, 0);
        let mut calls = 0;
        let mut short_targets = Vec::new();
        for _ in 0..4000 {
            let instances =
                create_instances_from_document(&documents, 0, &config, &vocab(), &mut rng);
            // A call whose every chunk went random next (1 in 2^k) tells nothing about its target.
            let Some(actual_next) = instances.iter().find(|i| !i.is_random_next) else {
                continue;
            };
            calls += 1;
            let target = actual_next.tokens.len() - 3;
            if target < 125 {
                short_targets.push(target);
            }
        }
        // randint(2, 125) returns 125 itself 1 time in 124: those look like full-length targets.
        let expected = 0.1 * (1.0 - 1.0 / 124.0);
        let fraction = short_targets.len() as f64 / calls as f64;
        let sigma = (expected * (1.0 - expected) / calls as f64).sqrt();
        assert!(
            (fraction - expected).abs() < 4.0 * sigma,
            "short fraction {fraction}"
        );
        // Uniform over [2, 124]: the mean is 63 (standard deviation of the mean ~ 35/sqrt(n)).
        let mean = short_targets.iter().sum::<usize>() as f64 / short_targets.len() as f64;
        let sigma_mean = 35.5 / (short_targets.len() as f64).sqrt();
        assert!(
            (mean - 63.0).abs() < 4.0 * sigma_mean,
            "mean short target {mean}"
        );
        assert!(short_targets.iter().all(|&t| (2..125).contains(&t)));
    }

    #[test]
    fn next_sentence_is_random_half_of_the_time() {
        // Ten-token sentences: a segment A longer than ten tokens spans at least two sentences,
        // so its chunk had three or more and the 50% draw decided B (one-sentence chunks are
        // always random next). a_end is drawn before that coin, so conditioning on it is fair.
        let config = InstanceConfig {
            short_seq_prob: 0.0,
            dupe_factor: 20,
            ..InstanceConfig::default()
        };
        let mut rng = PrepRng::new(77, 0);
        let documents: Vec<Document> = (0..50)
            .map(|d| {
                (0..40)
                    .map(|s| vec![1000 + ((d * 40 + s) % 500) as u32; 10])
                    .collect()
            })
            .collect();
        let instances = create_training_instances(documents, &config, &vocab(), &mut rng);
        let decided: Vec<bool> = instances
            .iter()
            .filter(|i| i.segment_ids.iter().filter(|&&s| s == 0).count() - 2 > 10)
            .map(|i| i.is_random_next)
            .collect();
        let n = decided.len() as f64;
        assert!(n > 1000.0, "{n} instances with a multi-sentence A");
        let fraction = decided.iter().filter(|&&r| r).count() as f64 / n;
        assert!(
            (fraction - 0.5).abs() < 4.0 * (0.25 / n).sqrt(),
            "random next {fraction} of {n}"
        );
    }

    #[test]
    fn truncation_trims_the_longer_side() {
        let mut rng = PrepRng::new(5, 0);
        let mut a: Vec<u32> = (0..30).collect();
        let mut b: Vec<u32> = (100..110).collect();
        truncate_seq_pair(&mut a, &mut b, 25, &mut rng);
        assert_eq!(a.len() + b.len(), 25);
        assert_eq!(b.len(), 10);
        // What is left of A is a contiguous run of the original.
        assert!(a.windows(2).all(|w| w[1] == w[0] + 1));
    }
}
