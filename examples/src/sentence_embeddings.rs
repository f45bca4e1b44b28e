//! Sentence embeddings in a few lines, as sentence-transformers' `model.encode(sentences)`:
//!
//! ```text
//! cargo run --release -p bert-examples --bin sentence-embeddings -- MODEL_DIR "A cat sits." "A dog runs."
//! ```
//! Prints each text's first values, then the cosine similarity of every text with the first.

use anyhow::{Context, Result};
use bert_core::pipelines::SentenceEmbeddings;
use burn::backend::flex::{Flex, FlexDevice};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let model_dir = args
        .next()
        .context("usage: sentence-embeddings MODEL_DIR TEXT...")?;
    let texts: Vec<String> = args.collect();
    let model = SentenceEmbeddings::<Flex>::from_folder(&model_dir, &FlexDevice)?;
    let vectors = model.embed(&texts)?.vectors;
    for (text, vector) in texts.iter().zip(&vectors) {
        // The folder's vectors are normalised, so the dot product is the cosine.
        let cosine: f32 = vector.iter().zip(&vectors[0]).map(|(a, b)| a * b).sum();
        println!(
            "{text:?}: {:.4?}... cosine with the first {cosine:.4}",
            &vector[..4]
        );
    }
    Ok(())
}
