//! Embedding bert-core in an application: load a Hugging Face BERT folder and encode a sentence.
//!
//! ```text
//! cargo run -p bert-examples --bin encode-sentence -- MODEL_DIR "The quick brown fox."
//! ```
//! Prints the tokens and the first values of the `[CLS]` hidden state, then the mean-pooled
//! sentence embedding's norm.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use bert_core::pretrained::{load_model, ModelFiles};
use burn::backend::NdArray;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(model_dir), Some(sentence)) = (args.next(), args.next()) else {
        bail!("usage: encode-sentence MODEL_DIR SENTENCE");
    };
    let files = ModelFiles::find(&PathBuf::from(&model_dir), None)?;
    let tokenizer = files.read_tokenizer(None)?;
    let device = Default::default();
    let loaded = load_model::<NdArray>(&files, &[], &device)?;

    let encoding =
        tokenizer.encode(&sentence, None, Some(loaded.config.max_position_embeddings))?;
    println!("tokens: {:?}", encoding.tokens);
    let input = tokenizer
        .batch(std::slice::from_ref(&encoding), None)
        .to_input::<NdArray>(&loaded.config, &device)
        .context("sentence does not fit the model")?;
    let hidden = loaded.model.bert.forward(input).sequence_output;

    let cls: Vec<f32> = hidden.clone().narrow(1, 0, 1).into_data().to_vec()?;
    println!(
        "[CLS] hidden state, first 8 of {}: {:?}",
        cls.len(),
        &cls[..8.min(cls.len())]
    );
    let mean = hidden.mean_dim(1);
    let norm: f32 = mean.clone().powf_scalar(2.0).sum().sqrt().into_scalar();
    println!("mean-pooled embedding norm: {norm:.4}");
    Ok(())
}
