//! WordPiece tokenization with the `tokenizers` crate, from `vocab.txt` or `tokenizer.json`,
//! and the reference's `[CLS] A [SEP] B [SEP]` framing with `truncate_seq_pair`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::{
    AddedToken, Normalizer, NormalizerWrapper, OffsetReferential, OffsetType, PreTokenizedString,
    PreTokenizer, Tokenizer,
};

use vocab_learning::learn_wordpiece_tokens;

use crate::error::TokenizerError;
use crate::model::TokenBatch;

mod vocab_learning;

/// The five special tokens of every BERT vocabulary.
const SPECIAL_TOKENS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// One encoded sequence or pair, framed with `[CLS]`/`[SEP]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Encoding {
    /// WordPiece tokens, `[CLS]` first.
    pub tokens: Vec<String>,
    /// Their vocabulary ids.
    pub ids: Vec<u32>,
    /// 0 for `[CLS]`, sentence A and its `[SEP]`; 1 for sentence B and its `[SEP]`.
    pub token_type_ids: Vec<u32>,
    /// `[start, end)` character (Unicode scalar value) offsets into the text each token came
    /// from (A or B); `[0, 0]` for special tokens.
    pub offsets: Vec<(usize, usize)>,
    /// Which text each token came from: `Some(0)` for A, `Some(1)` for B, `None` for specials.
    pub sequence_ids: Vec<Option<usize>>,
}

impl Encoding {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are no tokens (never true for a framed encoding).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Tokens of one text before framing: ids, strings and character offsets.
#[derive(Debug, Clone, Default)]
struct Pieces {
    ids: Vec<u32>,
    tokens: Vec<String>,
    offsets: Vec<(usize, usize)>,
}

impl Pieces {
    fn truncate(&mut self, len: usize) {
        self.ids.truncate(len);
        self.tokens.truncate(len);
        self.offsets.truncate(len);
    }
}

/// A lower-casing choice that contradicts the vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasingMismatch {
    /// Lower-casing with a cased vocabulary: capitalised entries are never used.
    LowerCasingCasedVocab,
    /// Keeping case with an uncased vocabulary: capitalised words fall apart or become `[UNK]`.
    KeepingCaseUncasedVocab,
}

impl std::fmt::Display for CasingMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::LowerCasingCasedVocab => write!(
                f,
                "the vocabulary is cased but the tokenizer lower-cases its input: capitalised \
                 vocabulary entries are never used; drop --lower-case for a cased model"
            ),
            Self::KeepingCaseUncasedVocab => write!(
                f,
                "the vocabulary is uncased but the tokenizer keeps case: capitalised words become \
                 [UNK] or split badly (this costs ~10 F1 points on SQuAD); pass --lower-case for an \
                 uncased model"
            ),
        }
    }
}

/// BERT's WordPiece tokenizer.
#[derive(Clone)]
pub struct BertTokenizer {
    inner: Tokenizer,
    lower_case: bool,
    cls_id: u32,
    sep_id: u32,
    pad_id: u32,
    mask_id: u32,
}

impl BertTokenizer {
    /// Builds the tokenizer of the reference from the text of a `vocab.txt` (one token per line,
    /// the line number is the id): BERT normaliser (accents stripped when lower-casing, CJK
    /// characters split), BERT pre-tokenizer, WordPiece with `##` continuation and `[UNK]`.
    pub fn from_vocab(vocab_txt: &str, lower_case: bool) -> Result<Self, TokenizerError> {
        let vocab = WordPiece::read_bytes(vocab_txt.as_bytes())
            .map_err(|e| TokenizerError::Build(e.to_string()))?;
        let model = WordPiece::builder()
            .vocab(vocab)
            .unk_token("[UNK]".into())
            .continuing_subword_prefix("##".into())
            .max_input_chars_per_word(100)
            .build()
            .map_err(|e| TokenizerError::Build(e.to_string()))?;
        let mut inner = Tokenizer::new(model);
        inner
            .with_normalizer(Some(BertNormalizer::new(true, true, None, lower_case)))
            .map_err(|e| TokenizerError::Build(e.to_string()))?;
        inner.with_pre_tokenizer(Some(BertPreTokenizer));
        Self::finish(inner, lower_case)
    }

    /// Learns a WordPiece vocabulary of about `vocab_size` entries from `texts` and returns it as
    /// the text of a `vocab.txt` laid out like BERT's: `[PAD]` at 0, `[unused0..98]`, then
    /// `[UNK]` 100, `[CLS]` 101, `[SEP]` 102, `[MASK]` 103, so the special ids match the ones the
    /// reference's shard layout assumes. Deterministic: the same texts give the same file, whatever
    /// the process, machine or thread count.
    pub fn train_vocab<'a>(
        texts: impl Iterator<Item = &'a str>,
        vocab_size: usize,
        lower_case: bool,
    ) -> Result<String, TokenizerError> {
        let normalizer = BertNormalizer::new(true, true, None, lower_case);
        let mut word_counts = BTreeMap::<String, u64>::new();
        for text in texts {
            let mut words = PreTokenizedString::from(text);
            words
                .normalize(|text| normalizer.normalize(text))
                .and_then(|()| BertPreTokenizer.pre_tokenize(&mut words))
                .map_err(|e| TokenizerError::Build(e.to_string()))?;
            for (word, _, _) in words.get_splits(OffsetReferential::Original, OffsetType::Byte) {
                *word_counts.entry(word.to_owned()).or_default() += 1;
            }
        }
        let learned = learn_wordpiece_tokens(&word_counts, &SPECIAL_TOKENS, vocab_size);
        let mut lines = vec!["[PAD]".to_string()];
        lines.extend((0..99).map(|i| format!("[unused{i}]")));
        lines.extend(["[UNK]", "[CLS]", "[SEP]", "[MASK]"].map(String::from));
        lines.extend(learned.into_iter().skip(SPECIAL_TOKENS.len()));
        Ok(lines.join("\n") + "\n")
    }

    /// Reads a `vocab.txt` file.
    pub fn from_vocab_file(
        path: impl AsRef<Path>,
        lower_case: bool,
    ) -> Result<Self, TokenizerError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| TokenizerError::Build(format!("{}: {e}", path.display())))?;
        Self::from_vocab(&text, lower_case)
            .map_err(|e| TokenizerError::Build(format!("{}: {e}", path.display())))
    }

    /// Builds the tokenizer a Hugging Face `tokenizer.json` describes; its own padding and
    /// truncation settings are switched off (framing and truncation are ours).
    ///
    /// The `tokenizers` crate (0.23) panics on some malformed documents instead of failing: a
    /// control character inside a decoder's strings (found by fuzzing, `fuzz/regressions/`), a
    /// bad `Precompiled` normalizer. The JSON syntax is checked first, and where panics unwind
    /// (everywhere but wasm) one is turned into this function's error.
    pub fn from_tokenizer_json(json: &[u8]) -> Result<Self, TokenizerError> {
        serde_json::from_slice::<serde::de::IgnoredAny>(json)
            .map_err(|e| TokenizerError::Build(format!("not valid JSON: {e}")))?;
        let mut inner = std::panic::catch_unwind(|| Tokenizer::from_bytes(json))
            .map_err(|_| {
                TokenizerError::Build("the tokenizers crate cannot read this document".into())
            })?
            .map_err(|e| TokenizerError::Build(e.to_string()))?;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| TokenizerError::Build(e.to_string()))?;
        let lower_case = match inner.get_normalizer() {
            Some(NormalizerWrapper::BertNormalizer(normalizer)) => normalizer.lowercase,
            _ => inner
                .encode("A", false)
                .map(|e| e.get_tokens().iter().all(|t| !t.contains('A')))
                .unwrap_or(false),
        };
        Self::finish(inner, lower_case)
    }

    /// Reads a `tokenizer.json` file.
    pub fn from_tokenizer_file(path: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .map_err(|e| TokenizerError::Build(format!("{}: {e}", path.display())))?;
        Self::from_tokenizer_json(&bytes)
            .map_err(|e| TokenizerError::Build(format!("{}: {e}", path.display())))
    }

    fn finish(mut inner: Tokenizer, lower_case: bool) -> Result<Self, TokenizerError> {
        let id = |inner: &Tokenizer, token: &'static str| {
            inner
                .token_to_id(token)
                .ok_or(TokenizerError::MissingSpecialToken(token))
        };
        for token in SPECIAL_TOKENS {
            id(&inner, token)?;
        }
        // Special tokens written in the text ("[MASK]") stay whole, as in the reference.
        let specials: Vec<AddedToken> = SPECIAL_TOKENS
            .iter()
            .map(|token| AddedToken::from(*token, true))
            .collect();
        inner
            .add_special_tokens(specials)
            .map_err(|e| TokenizerError::Build(e.to_string()))?;
        Ok(Self {
            cls_id: id(&inner, "[CLS]")?,
            sep_id: id(&inner, "[SEP]")?,
            pad_id: id(&inner, "[PAD]")?,
            mask_id: id(&inner, "[MASK]")?,
            inner,
            lower_case,
        })
    }

    /// Whether input is lower-cased (and accents stripped) before WordPiece.
    pub fn lower_case(&self) -> bool {
        self.lower_case
    }

    /// Number of vocabulary entries.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token, if the vocabulary has it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The id of `[MASK]` (every BERT vocabulary has one).
    pub fn mask_id(&self) -> u32 {
        self.mask_id
    }

    /// The token of an id, if the vocabulary has it.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Whether the lower-casing choice contradicts the vocabulary: a vocabulary is cased when
    /// more than 1% of its ordinary entries contain an upper-case letter.
    pub fn casing_mismatch(&self) -> Option<CasingMismatch> {
        let vocab = self.inner.get_vocab(false);
        let ordinary = vocab
            .keys()
            .filter(|token| !(token.starts_with('[') && token.ends_with(']')));
        let (mut total, mut upper) = (0usize, 0usize);
        for token in ordinary {
            total += 1;
            upper += usize::from(token.chars().any(char::is_uppercase));
        }
        let cased_vocab = upper * 100 > total;
        match (self.lower_case, cased_vocab) {
            (true, true) => Some(CasingMismatch::LowerCasingCasedVocab),
            (false, false) => Some(CasingMismatch::KeepingCaseUncasedVocab),
            _ => None,
        }
    }

    fn pieces(&self, text: &str) -> Result<Pieces, TokenizerError> {
        let encoding = self
            .inner
            .encode_char_offsets(text, false)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(Pieces {
            ids: encoding.get_ids().to_vec(),
            tokens: encoding.get_tokens().to_vec(),
            offsets: encoding.get_offsets().to_vec(),
        })
    }

    /// WordPiece tokens of a text, without framing.
    pub fn tokenize(&self, text: &str) -> Result<Vec<String>, TokenizerError> {
        Ok(self.pieces(text)?.tokens)
    }

    /// WordPiece ids of a text, without framing.
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        Ok(self.pieces(text)?.ids)
    }

    /// WordPiece ids and tokens of a text, without framing.
    pub fn wordpieces(&self, text: &str) -> Result<(Vec<u32>, Vec<String>), TokenizerError> {
        let pieces = self.pieces(text)?;
        Ok((pieces.ids, pieces.tokens))
    }

    /// The reference's `BasicTokenizer`: the normaliser (lower-casing, accent stripping, CJK
    /// splitting) and the pre-tokenizer (whitespace and punctuation splits), without WordPiece.
    pub fn basic_tokenize(&self, text: &str) -> Result<Vec<String>, TokenizerError> {
        use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};
        let error = |e: tokenizers::Error| TokenizerError::Encode(e.to_string());
        let mut pretokenized = PreTokenizedString::from(text);
        if let Some(normalizer) = self.inner.get_normalizer() {
            pretokenized
                .normalize(|s| tokenizers::Normalizer::normalize(normalizer, s))
                .map_err(error)?;
        }
        if let Some(pre_tokenizer) = self.inner.get_pre_tokenizer() {
            pre_tokenizer
                .pre_tokenize(&mut pretokenized)
                .map_err(error)?;
        }
        Ok(pretokenized
            .get_splits(OffsetReferential::Original, OffsetType::Char)
            .into_iter()
            .map(|(token, _, _)| token.to_string())
            .collect())
    }

    /// `[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]`. With `max_len`, the pair is cut as the
    /// reference's `truncate_seq_pair` does: one token at a time from the end of the longer text.
    pub fn encode(
        &self,
        text: &str,
        pair: Option<&str>,
        max_len: Option<usize>,
    ) -> Result<Encoding, TokenizerError> {
        let mut first = self.pieces(text)?;
        let mut second = pair.map(|p| self.pieces(p)).transpose()?;
        if let Some(max_len) = max_len {
            let specials = if second.is_some() { 3 } else { 2 };
            let budget = max_len.saturating_sub(specials);
            truncate_seq_pair(&mut first, second.as_mut(), budget);
        }

        let mut encoding = Encoding {
            tokens: vec!["[CLS]".into()],
            ids: vec![self.cls_id],
            token_type_ids: vec![0],
            offsets: vec![(0, 0)],
            sequence_ids: vec![None],
        };
        for (segment, pieces) in std::iter::once(first).chain(second).enumerate() {
            encoding.tokens.extend(pieces.tokens);
            encoding.ids.extend(&pieces.ids);
            encoding.offsets.extend(pieces.offsets);
            encoding
                .token_type_ids
                .extend(vec![segment as u32; pieces.ids.len()]);
            encoding
                .sequence_ids
                .extend(vec![Some(segment); pieces.ids.len()]);
            encoding.tokens.push("[SEP]".into());
            encoding.ids.push(self.sep_id);
            encoding.token_type_ids.push(segment as u32);
            encoding.offsets.push((0, 0));
            encoding.sequence_ids.push(None);
        }
        Ok(encoding)
    }

    /// Right-pads encodings with `[PAD]` to the longest (or to `pad_to`, if longer) and stacks
    /// them into a batch with its attention mask.
    pub fn batch(&self, encodings: &[Encoding], pad_to: Option<usize>) -> TokenBatch {
        let longest = encodings.iter().map(Encoding::len).max().unwrap_or(0);
        let seq_len = longest.max(pad_to.unwrap_or(0));
        let pad = |values: &[u32], fill: i64| {
            let mut row: Vec<i64> = values.iter().map(|&v| i64::from(v)).collect();
            row.resize(seq_len, fill);
            row
        };
        TokenBatch {
            input_ids: encodings
                .iter()
                .map(|e| pad(&e.ids, i64::from(self.pad_id)))
                .collect(),
            token_type_ids: Some(
                encodings
                    .iter()
                    .map(|e| pad(&e.token_type_ids, 0))
                    .collect(),
            ),
            attention_mask: Some(
                encodings
                    .iter()
                    .map(|e| pad(&vec![1; e.len()], 0))
                    .collect(),
            ),
        }
    }
}

/// The reference's `truncate_seq_pair`, deterministic variant used at inference: pops tokens from
/// the end of the longer sequence until the pair fits in `budget`.
fn truncate_seq_pair(first: &mut Pieces, mut second: Option<&mut Pieces>, budget: usize) {
    loop {
        let second_len = second.as_ref().map_or(0, |s| s.ids.len());
        if first.ids.len() + second_len <= budget {
            return;
        }
        match second.as_deref_mut() {
            Some(s) if s.ids.len() > first.ids.len() => s.truncate(s.ids.len() - 1),
            _ => first.truncate(first.ids.len() - 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VOCAB: &str =
        "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\nquick\nfox\nrun\n##s\n.\n,\ncafe\n";

    /// A WordPiece `tokenizer.json` over [`VOCAB`] with `normalizer` and `decoder` as given.
    fn tokenizer_json(normalizer: &str, decoder: &str) -> String {
        let vocab: Vec<String> = VOCAB
            .lines()
            .enumerate()
            .map(|(id, token)| format!("{token:?}: {id}"))
            .collect();
        format!(
            r###"{{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": {normalizer}, "pre_tokenizer": {{"type": "BertPreTokenizer"}},
            "post_processor": null, "decoder": {decoder},
            "model": {{"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                       "max_input_chars_per_word": 100, "vocab": {{{}}}}}}}"###,
            vocab.join(", ")
        )
    }

    #[test]
    fn malformed_tokenizer_json_is_an_error_where_the_tokenizers_crate_panics() {
        let bert = r#"{"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true}"#;
        let wordpiece = r###"{"type": "WordPiece", "prefix": "##", "cleanup": true}"###;
        let tokenizer =
            BertTokenizer::from_tokenizer_json(tokenizer_json(bert, wordpiece).as_bytes()).unwrap();
        assert_eq!(
            tokenizer.tokenize("The fox runs.").unwrap(),
            ["the", "fox", "run", "##s", "."]
        );

        // A raw control character inside a decoder's string: `expect("Helper")` in tokenizers.
        let control = "{\"type\": \"WordPiece\", \"prefix\": \"#\u{1}#\", \"cleanup\": true}";
        let error = BertTokenizer::from_tokenizer_json(tokenizer_json(bert, control).as_bytes())
            .err()
            .unwrap();
        assert!(error.to_string().contains("not valid JSON"), "{error}");
        // A `Precompiled` normalizer whose map is not one: `expect("Precompiled")`.
        let precompiled = r#"{"type": "Precompiled", "precompiled_charsmap": "bm90IGEgbWFw"}"#;
        let json = tokenizer_json(precompiled, wordpiece);
        assert!(BertTokenizer::from_tokenizer_json(json.as_bytes()).is_err());
    }

    #[test]
    fn frames_pairs_and_maps_offsets_in_characters() {
        let tokenizer = BertTokenizer::from_vocab(VOCAB, true).unwrap();
        let encoding = tokenizer
            .encode("The fox runs.", Some("Café, quick"), None)
            .unwrap();
        assert_eq!(
            encoding.tokens,
            ["[CLS]", "the", "fox", "run", "##s", ".", "[SEP]", "cafe", ",", "quick", "[SEP]"]
        );
        assert_eq!(encoding.ids, [2, 5, 7, 8, 9, 10, 3, 12, 11, 6, 3]);
        assert_eq!(encoding.token_type_ids, [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1]);
        assert_eq!(encoding.offsets[3], (8, 11));
        assert_eq!(encoding.offsets[4], (11, 12));
        // "Café" is 4 characters (5 bytes): the comma starts at character 4.
        assert_eq!(encoding.offsets[8], (4, 5));
        assert_eq!(encoding.sequence_ids[7], Some(1));
        assert_eq!(encoding.sequence_ids[10], None);
    }

    #[test]
    fn truncates_the_longer_sequence_first() {
        let tokenizer = BertTokenizer::from_vocab(VOCAB, true).unwrap();
        let encoding = tokenizer
            .encode("the the the the the", Some("fox fox"), Some(7))
            .unwrap();
        assert_eq!(encoding.len(), 7);
        assert_eq!(
            encoding.tokens,
            ["[CLS]", "the", "the", "[SEP]", "fox", "fox", "[SEP]"]
        );
        let single = tokenizer.encode("the quick fox", None, Some(3)).unwrap();
        assert_eq!(single.tokens, ["[CLS]", "the", "[SEP]"]);
    }

    #[test]
    fn keeps_special_tokens_written_in_text_whole() {
        let tokenizer = BertTokenizer::from_vocab(VOCAB, true).unwrap();
        assert_eq!(
            tokenizer.tokenize("the [MASK].").unwrap(),
            ["the", "[MASK]", "."]
        );
    }

    #[test]
    fn detects_casing_that_contradicts_the_vocabulary() {
        let uncased = BertTokenizer::from_vocab(VOCAB, false).unwrap();
        assert_eq!(
            uncased.casing_mismatch(),
            Some(CasingMismatch::KeepingCaseUncasedVocab)
        );
        assert_eq!(
            BertTokenizer::from_vocab(VOCAB, true)
                .unwrap()
                .casing_mismatch(),
            None
        );
        let cased_vocab = format!("{VOCAB}The\nFox\n");
        let cased = BertTokenizer::from_vocab(&cased_vocab, true).unwrap();
        assert_eq!(
            cased.casing_mismatch(),
            Some(CasingMismatch::LowerCasingCasedVocab)
        );
        assert_eq!(
            BertTokenizer::from_vocab(&cased_vocab, false)
                .unwrap()
                .casing_mismatch(),
            None
        );
    }

    #[test]
    fn refuses_a_vocabulary_without_special_tokens() {
        assert!(matches!(
            BertTokenizer::from_vocab("the\nfox\n", true),
            Err(TokenizerError::MissingSpecialToken("[PAD]"))
        ));
    }

    #[test]
    fn trains_a_vocabulary_with_berts_special_ids() {
        let texts = [
            "The river Kalor flows into the Ventis Sea.",
            "Mira Dolen was born in Kalor in 1888.",
        ];
        let corpus: Vec<&str> = texts.iter().cycle().take(50).copied().collect();
        let vocab = BertTokenizer::train_vocab(corpus.into_iter(), 200, true).unwrap();
        let lines: Vec<&str> = vocab.lines().collect();
        assert_eq!(lines[0], "[PAD]");
        assert_eq!(&lines[100..104], ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]);
        let tokenizer = BertTokenizer::from_vocab(&vocab, true).unwrap();
        let encoding = tokenizer
            .encode("Kalor flows into the sea.", None, None)
            .unwrap();
        assert_eq!(encoding.ids[0], 101);
        assert!(
            !encoding.ids.contains(&100),
            "no [UNK] for words of the corpus: {:?}",
            encoding.tokens
        );
    }

    #[test]
    fn learning_a_vocabulary_twice_gives_the_same_file() {
        let articles = crate::data::synthetic::Encyclopedia::generate(60, 7).articles(7);
        let learn = || {
            BertTokenizer::train_vocab(articles.iter().map(|a| a.text.as_str()), 800, true).unwrap()
        };
        let first = learn();
        assert_eq!(first.lines().count(), 99 + 800);
        for _ in 0..3 {
            assert!(
                learn() == first,
                "a second vocabulary differs from the first"
            );
        }
    }

    #[test]
    fn batches_with_padding_and_mask() {
        let tokenizer = BertTokenizer::from_vocab(VOCAB, true).unwrap();
        let a = tokenizer.encode("the fox", None, None).unwrap();
        let b = tokenizer.encode("the", Some("fox"), None).unwrap();
        let batch = tokenizer.batch(&[a, b], None);
        assert_eq!(batch.input_ids, [vec![2, 5, 7, 3, 0], vec![2, 5, 3, 7, 3]]);
        assert_eq!(
            batch.attention_mask.unwrap(),
            [vec![1, 1, 1, 1, 0], vec![1, 1, 1, 1, 1]]
        );
        assert_eq!(batch.token_type_ids.unwrap()[1], [0, 0, 0, 1, 1]);
    }
}
