//! Filling in `[MASK]` in a few lines, as Hugging Face's `pipeline("fill-mask")`:
//!
//! ```text
//! cargo run --release -p bert-examples --bin fill-mask -- MODEL_DIR "Paris is the [MASK] of France."
//! ```
//! MODEL_DIR holds a model with its masked-LM head (a pretraining checkpoint, `bert-base-uncased`);
//! prints the five best fillers of every mask with their probabilities.

use anyhow::{Context, Result};
use bert_core::pipelines::FillMask;
use burn::backend::flex::{Flex, FlexDevice};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let model_dir = args.next().context("usage: fill-mask MODEL_DIR TEXT...")?;
    let texts: Vec<String> = args.collect();
    let model = FillMask::<Flex>::from_folder(&model_dir, &FlexDevice)?.with_top_k(5);
    for (text, masks) in texts.iter().zip(model.fill(&texts)?.fillers) {
        println!("{text:?}");
        for (mask, fillers) in masks.iter().enumerate() {
            for filler in fillers {
                println!("  mask {mask}: {:.3} {}", filler.score, filler.sequence);
            }
        }
    }
    Ok(())
}
