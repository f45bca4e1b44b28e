//! Question answering over a text of any length in a few lines, as Hugging Face's
//! `pipeline("question-answering")`:
//!
//! ```text
//! cargo run --release -p bert-examples --bin question-answering -- QA_MODEL_DIR "Who wrote it?" article.txt
//! ```
//! QA_MODEL_DIR is a fine-tuned question-answering folder (e.g. `quickstart/qa-model` after
//! `bert-native quickstart`). Prints the three best answers with their probabilities and offsets.

use anyhow::{Context, Result};
use bert_core::pipelines::QuestionAnswering;
use burn::backend::flex::{Flex, FlexDevice};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model_dir, question, context_file] = &args[..] else {
        anyhow::bail!("usage: question-answering QA_MODEL_DIR QUESTION CONTEXT_FILE");
    };
    let context = std::fs::read_to_string(context_file)
        .with_context(|| format!("cannot read {context_file}"))?;
    let model = QuestionAnswering::<Flex>::from_folder(model_dir, &FlexDevice)?;
    for answer in model.answer(question, &context)?.iter().take(3) {
        let (p, offsets) = (answer.probability, answer.offsets);
        println!(
            "{:?} (probability {p:.3}, characters {offsets:?})",
            answer.text
        );
    }
    Ok(())
}
