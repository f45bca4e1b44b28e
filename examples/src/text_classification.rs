//! Text classification in a few lines, as Hugging Face's `pipeline("text-classification")`:
//!
//! ```text
//! cargo run --release -p bert-examples --bin text-classification -- MODEL_DIR "What a film!"
//! ```
//! MODEL_DIR holds a sequence classifier (e.g. `bert-native glue`'s output); prints every
//! text's classes, best first, named by the folder's `config.json` (`id2label`).

use anyhow::{Context, Result};
use bert_core::pipelines::SequenceClassification;
use burn::backend::flex::{Flex, FlexDevice};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let model_dir = args
        .next()
        .context("usage: text-classification MODEL_DIR TEXT...")?;
    let texts: Vec<String> = args.collect();
    let model = SequenceClassification::<Flex>::from_folder(&model_dir, &FlexDevice)?;
    for (text, classes) in texts.iter().zip(model.classify(&texts)?.scores) {
        let named: Vec<String> = classes
            .iter()
            .map(|class| format!("{} {:.3}", class.label, class.score))
            .collect();
        println!("{text:?}: {}", named.join(", "));
    }
    Ok(())
}
