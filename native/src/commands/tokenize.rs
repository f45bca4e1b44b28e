//! `bert-native tokenize`: WordPiece a text (or pair) and print tokens, ids and offsets as JSON.

use std::path::PathBuf;

use anyhow::{bail, Result};
use bert_core::tokenizer::BertTokenizer;
use clap::Args;

/// Arguments of `tokenize`.
#[derive(Debug, Args)]
pub struct TokenizeArgs {
    /// WordPiece vocabulary, one token per line (the reference's `--vocab_file`).
    #[arg(
        long,
        conflicts_with = "tokenizer",
        required_unless_present = "tokenizer"
    )]
    vocab: Option<PathBuf>,
    /// Hugging Face tokenizer.json instead of --vocab.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Lower-case and strip accents before WordPiece (the reference's `--do_lower_case`);
    /// with --vocab only.
    #[arg(long, requires = "vocab")]
    lower_case: bool,
    /// Text (sentence A).
    #[arg(long)]
    text: String,
    /// Optional sentence B.
    #[arg(long)]
    text_pair: Option<String>,
    /// Truncate the pair to this many tokens, [CLS]/[SEP] included.
    #[arg(long)]
    max_seq_length: Option<usize>,
}

/// Runs `tokenize`.
pub fn run(args: TokenizeArgs) -> Result<()> {
    let tokenizer = match (&args.vocab, &args.tokenizer) {
        (Some(vocab), _) => BertTokenizer::from_vocab_file(vocab, args.lower_case)?,
        (None, Some(json)) => BertTokenizer::from_tokenizer_file(json)?,
        (None, None) => bail!("give --vocab vocab.txt or --tokenizer tokenizer.json"),
    };
    if let Some(mismatch) = tokenizer.casing_mismatch() {
        eprintln!("WARNING: {mismatch}");
    }
    let encoding = tokenizer.encode(&args.text, args.text_pair.as_deref(), args.max_seq_length)?;
    let json = serde_json::json!({
        "tokens": encoding.tokens,
        "ids": encoding.ids,
        "token_type_ids": encoding.token_type_ids,
        "offsets": encoding.offsets,
    });
    println!("{json}");
    Ok(())
}
