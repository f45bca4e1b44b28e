//! `bert-native qa`: answer a question about a context of any length with a question-answering
//! checkpoint (a Hugging Face SQuAD model or one fine-tuned here), as `inference.py` does.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use bert_core::model::BertForQuestionAnswering;
use bert_core::pipelines::QuestionAnswering;
use bert_core::squad::{AnswerConfig, FeatureConfig};
use burn::tensor::backend::Backend;
use clap::Args;
use serde_json::json;

use super::{ModelArgs, ModelSource};
use crate::backend::{self, BackendKind, Job};

/// Arguments of `qa`.
#[derive(Debug, Args)]
pub struct QaArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The question.
    #[arg(long)]
    question: String,
    /// The text to answer from.
    #[arg(
        long,
        conflicts_with = "context_file",
        required_unless_present = "context_file"
    )]
    context: Option<String>,
    /// A file holding the text to answer from.
    #[arg(long)]
    context_file: Option<PathBuf>,
    /// Answers to print, best first.
    #[arg(long, default_value_t = 1)]
    n_best: usize,
    /// Tokens per window.
    #[arg(long, default_value_t = 384)]
    max_seq_length: usize,
    /// Tokens between window starts.
    #[arg(long, default_value_t = 128)]
    doc_stride: usize,
    /// Longest answer in tokens.
    #[arg(long, default_value_t = 30)]
    max_answer_length: usize,
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Flex)]
    backend: BackendKind,
}

/// Runs `qa`: prints one JSON object with the answer, its probability, its character offsets in
/// the context and the n-best list.
pub fn run(args: QaArgs) -> Result<()> {
    let context = match (&args.context, &args.context_file) {
        (Some(text), _) => text.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        (None, None) => bail!("give --context or --context-file"),
    };
    if context.trim().is_empty() || args.question.trim().is_empty() {
        bail!("the question and the context must not be empty");
    }
    let source = args.model.resolve()?;
    let backend = args.backend;
    backend::run(
        backend,
        QaJob {
            args,
            source,
            context,
        },
    )
}

struct QaJob {
    args: QaArgs,
    source: ModelSource,
    context: String,
}

impl Job for QaJob {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        let mut model = BertForQuestionAnswering::<B>::new(&self.source.config, &device);
        self.source.load_into(&mut model, true)?;
        let answerer = QuestionAnswering::from_model(
            model,
            self.source.config,
            self.source.tokenizer,
            &device,
        )
        .with_windows(FeatureConfig {
            max_seq_length: self.args.max_seq_length,
            doc_stride: self.args.doc_stride,
            max_query_length: 64,
        })
        .with_answers(AnswerConfig {
            n_best_size: self.args.n_best.max(20),
            max_answer_length: self.args.max_answer_length,
        });
        let answers = answerer.answer(&self.args.question, &self.context)?;
        let Some(best) = answers.first() else {
            bail!("no answer span found in the context");
        };
        eprintln!("{} ({:.1}%)", best.text, 100.0 * best.probability);
        let n_best: Vec<_> = answers.iter().take(self.args.n_best.max(1)).collect();
        println!(
            "{}",
            json!({
                "answer": best.text,
                "score": best.probability,
                "start": best.offsets.map(|o| o.0),
                "end": best.offsets.map(|o| o.1),
                "n_best": n_best,
            })
        );
        Ok(())
    }
}
