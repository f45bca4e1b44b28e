//! Tokenization equals the reference (`tokenizers.BertWordPieceTokenizer` over the MiniLM
//! `vocab.txt`, see `fixtures/tokenize/tokenize_cases.json`) on ~70 tricky strings and 3 pairs:
//! ids, tokens, token types and character offsets, from `vocab.txt` and from `tokenizer.json`.

use bert_core::tokenizer::{BertTokenizer, Encoding};
use serde_json::Value;

use bert_tests::{fixture, minilm_dir};

fn cases() -> Value {
    let text = std::fs::read_to_string(fixture("tokenize/tokenize_cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn tokenizers() -> Vec<(&'static str, BertTokenizer)> {
    let dir = minilm_dir();
    vec![
        (
            "vocab.txt",
            BertTokenizer::from_vocab_file(dir.join("vocab.txt"), true).unwrap(),
        ),
        (
            "tokenizer.json",
            BertTokenizer::from_tokenizer_file(dir.join("tokenizer.json")).unwrap(),
        ),
    ]
}

fn as_u32s(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

fn as_strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

fn as_offsets(value: &Value) -> Vec<(usize, usize)> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| {
            let pair = pair.as_array().unwrap();
            (
                pair[0].as_u64().unwrap() as usize,
                pair[1].as_u64().unwrap() as usize,
            )
        })
        .collect()
}

/// The encoding without its `[CLS]`/`[SEP]` framing.
fn inner_offsets(encoding: &Encoding) -> Vec<(usize, usize)> {
    encoding.offsets[1..encoding.len() - 1].to_vec()
}

#[test]
fn single_texts_match_the_reference() {
    let cases = cases();
    let cases = cases["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 70);
    for (source, tokenizer) in tokenizers() {
        assert!(tokenizer.lower_case(), "{source}: MiniLM is uncased");
        assert_eq!(tokenizer.casing_mismatch(), None, "{source}");
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let text = case["text"].as_str().unwrap();
            let encoding = tokenizer.encode(text, None, None).unwrap();
            let framed = &case["with_special_tokens"];
            assert_eq!(
                encoding.ids,
                as_u32s(&framed["ids"]),
                "{source} {name}: ids"
            );
            assert_eq!(
                encoding.tokens,
                as_strings(&framed["tokens"]),
                "{source} {name}: tokens"
            );
            assert_eq!(
                encoding.token_type_ids,
                as_u32s(&framed["token_type_ids"]),
                "{source} {name}: token types"
            );
            assert_eq!(
                inner_offsets(&encoding),
                as_offsets(&case["offsets_char"]),
                "{source} {name}: offsets"
            );
        }
    }
}

#[test]
fn pairs_match_the_reference() {
    let cases = cases();
    for (source, tokenizer) in tokenizers() {
        for pair in cases["pairs"].as_array().unwrap() {
            let name = pair["name"].as_str().unwrap();
            let encoding = tokenizer
                .encode(
                    pair["text_a"].as_str().unwrap(),
                    Some(pair["text_b"].as_str().unwrap()),
                    None,
                )
                .unwrap();
            assert_eq!(encoding.ids, as_u32s(&pair["ids"]), "{source} {name}: ids");
            assert_eq!(
                encoding.tokens,
                as_strings(&pair["tokens"]),
                "{source} {name}"
            );
            assert_eq!(
                encoding.token_type_ids,
                as_u32s(&pair["token_type_ids"]),
                "{source} {name}: token types"
            );
            assert_eq!(
                encoding.offsets,
                as_offsets(&pair["offsets_char"]),
                "{source} {name}: offsets"
            );
            let sequence_ids: Vec<Option<usize>> = pair["sequence_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| usize::try_from(v.as_i64().unwrap()).ok())
                .collect();
            assert_eq!(
                encoding.sequence_ids, sequence_ids,
                "{source} {name}: sequence ids"
            );
        }
    }
}

#[test]
fn a_cased_reading_of_the_uncased_vocabulary_is_flagged() {
    let tokenizer = BertTokenizer::from_vocab_file(minilm_dir().join("vocab.txt"), false).unwrap();
    assert!(tokenizer.casing_mismatch().is_some());
}
