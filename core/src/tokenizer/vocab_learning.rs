//! Learning a WordPiece vocabulary from text, deterministically.
//!
//! This is the algorithm of the `tokenizers` crate's `WordPieceTrainer` (byte-pair merges over
//! words split into a first character and `##`-prefixed continuation characters, the most frequent
//! adjacent pair merged first), with its one source of run-to-run variation removed: the crate
//! numbers the `##` characters in the order a hash map happens to visit the words, and those
//! numbers break ties between equally frequent pairs, so equal inputs gave different
//! vocabularies. Here every order is fixed: characters by code point, words by their text, ties by
//! the pair's token numbers, which only depend on the input.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

/// The continuation prefix of WordPiece tokens that do not start a word.
const CONTINUATION: &str = "##";

/// Adjacent token pair, by token number.
type Pair = (u32, u32);

/// The tokens learned from `word_counts` (word → occurrences), `special_tokens` first, until
/// there are `vocab_size` tokens or no pair is left to merge. Order: the special tokens, every
/// character by code point, every character that continues a word as `##c` by code point, then
/// the merged tokens in the order they were learned.
pub(crate) fn learn_wordpiece_tokens(
    word_counts: &BTreeMap<String, u64>,
    special_tokens: &[&str],
    vocab_size: usize,
) -> Vec<String> {
    let mut vocab = Vocabulary::default();
    for token in special_tokens {
        vocab.id_of(token);
    }
    let starts: BTreeSet<char> = word_counts.keys().flat_map(|w| w.chars()).collect();
    let continuations: BTreeSet<char> =
        word_counts.keys().flat_map(|w| w.chars().skip(1)).collect();
    for c in &starts {
        vocab.id_of(&c.to_string());
    }
    for c in &continuations {
        vocab.id_of(&format!("{CONTINUATION}{c}"));
    }

    let mut words: Vec<Word> = word_counts
        .iter()
        .map(|(text, &count)| {
            let symbols = text
                .chars()
                .enumerate()
                .map(|(i, c)| match i {
                    0 => vocab.id_of(&c.to_string()),
                    _ => vocab.id_of(&format!("{CONTINUATION}{c}")),
                })
                .collect();
            Word {
                symbols,
                count: count as i64,
            }
        })
        .collect();

    let mut pairs = PairStatistics::default();
    for (index, word) in words.iter().enumerate() {
        pairs.add(index, word, 1);
    }
    let mut queue: BinaryHeap<(i64, Reverse<Pair>)> = pairs
        .counts
        .iter()
        .filter(|(_, &count)| count > 0)
        .map(|(&pair, &count)| (count, Reverse(pair)))
        .collect();

    while vocab.tokens.len() < vocab_size {
        let Some((count, Reverse(pair))) = queue.pop() else {
            break;
        };
        let current = pairs.counts.get(&pair).copied().unwrap_or(0);
        if current != count {
            if current > 0 {
                queue.push((current, Reverse(pair)));
            }
            continue;
        }
        let merged = format!(
            "{}{}",
            vocab.tokens[pair.0 as usize],
            vocab.tokens[pair.1 as usize]
                .strip_prefix(CONTINUATION)
                .unwrap_or(&vocab.tokens[pair.1 as usize])
        );
        let merged_id = vocab.id_of(&merged);
        let mut touched = BTreeSet::new();
        for index in pairs.occurrences.remove(&pair).unwrap_or_default() {
            let word = &mut words[index];
            if !word.contains(pair) {
                continue;
            }
            pairs.add(index, word, -1);
            word.merge(pair, merged_id);
            pairs.add(index, word, 1);
            touched.extend(
                word.symbols
                    .windows(2)
                    .map(|w| (w[0], w[1]))
                    .filter(|&(a, b)| a == merged_id || b == merged_id),
            );
        }
        for pair in touched {
            let count = pairs.counts.get(&pair).copied().unwrap_or(0);
            if count > 0 {
                queue.push((count, Reverse(pair)));
            }
        }
    }
    vocab.tokens
}

/// The tokens so far, numbered in the order they were added.
#[derive(Default)]
struct Vocabulary {
    tokens: Vec<String>,
    ids: HashMap<String, u32>,
}

impl Vocabulary {
    /// The number of `token`, added at the end when new.
    fn id_of(&mut self, token: &str) -> u32 {
        if let Some(&id) = self.ids.get(token) {
            return id;
        }
        let id = self.tokens.len() as u32;
        self.tokens.push(token.to_owned());
        self.ids.insert(token.to_owned(), id);
        id
    }
}

/// A distinct word of the corpus as its current tokens, and how often it occurs.
struct Word {
    symbols: Vec<u32>,
    count: i64,
}

impl Word {
    fn contains(&self, pair: Pair) -> bool {
        self.symbols.windows(2).any(|w| (w[0], w[1]) == pair)
    }

    /// Replaces every occurrence of `pair`, left to right and without overlaps, by `merged`.
    fn merge(&mut self, pair: Pair, merged: u32) {
        let mut symbols = Vec::with_capacity(self.symbols.len());
        let mut i = 0;
        while i < self.symbols.len() {
            if i + 1 < self.symbols.len() && (self.symbols[i], self.symbols[i + 1]) == pair {
                symbols.push(merged);
                i += 2;
            } else {
                symbols.push(self.symbols[i]);
                i += 1;
            }
        }
        self.symbols = symbols;
    }
}

/// How often each adjacent pair occurs in the corpus, and in which words (a superset: a word may
/// have lost the pair since).
#[derive(Default)]
struct PairStatistics {
    counts: HashMap<Pair, i64>,
    occurrences: HashMap<Pair, BTreeSet<usize>>,
}

impl PairStatistics {
    /// Counts (`sign` 1) or uncounts (`sign` -1) the pairs of word `index`.
    fn add(&mut self, index: usize, word: &Word, sign: i64) {
        for w in word.symbols.windows(2) {
            let pair = (w[0], w[1]);
            *self.counts.entry(pair).or_default() += sign * word.count;
            if sign > 0 {
                self.occurrences.entry(pair).or_default().insert(index);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(words: &[(&str, u64)]) -> BTreeMap<String, u64> {
        words.iter().map(|&(w, c)| (w.to_owned(), c)).collect()
    }

    #[test]
    fn merges_the_most_frequent_pair_first_and_continuations_keep_their_prefix() {
        let tokens = learn_wordpiece_tokens(
            &counts(&[("hug", 10), ("pug", 5), ("hugs", 3)]),
            &["[UNK]"],
            100,
        );
        // [UNK], characters g h p s u, continuations ##g ##s ##u, then the merges.
        assert_eq!(
            &tokens[..9],
            ["[UNK]", "g", "h", "p", "s", "u", "##g", "##s", "##u"]
        );
        // ("##u", "##g") occurs 18 times: the first merge.
        assert_eq!(tokens[9], "##ug");
        assert!(tokens.contains(&"hug".to_owned()), "{tokens:?}");
        assert!(tokens.contains(&"hugs".to_owned()), "{tokens:?}");
    }

    #[test]
    fn equal_counts_are_broken_by_the_pairs_not_by_chance() {
        // Every pair occurs once: the order of the merges is fixed by the token numbers alone.
        let words = counts(&[("ab", 1), ("cd", 1), ("ef", 1), ("gh", 1)]);
        let first = learn_wordpiece_tokens(&words, &[], 100);
        assert_eq!(&first[first.len() - 4..], ["ab", "cd", "ef", "gh"]);
        for _ in 0..5 {
            assert_eq!(learn_wordpiece_tokens(&words, &[], 100), first);
        }
    }

    #[test]
    fn stops_at_the_vocabulary_size_and_when_nothing_is_left_to_merge() {
        let words = counts(&[("aaaa", 3), ("ab", 2)]);
        let all = learn_wordpiece_tokens(&words, &[], 100);
        assert!(all.contains(&"aaaa".to_owned()), "{all:?}");
        let limited = learn_wordpiece_tokens(&words, &[], 5);
        assert_eq!(limited.len(), 5);
        assert_eq!(limited[..], all[..5]);
    }
}
