//! `bert-native embed`: sentence embeddings of a text file, one text per line, as
//! sentence-transformers computes them (bert-core's `SentenceEmbeddings` pipeline), saved as
//! NumPy `.npy`, safetensors or JSON lines.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bert_core::error::PipelineError;
use bert_core::pipelines::{SentenceEmbeddings, Truncation};
use burn::tensor::backend::Backend;
use clap::Args;

use crate::backend::{self, BackendKind, Job};
use crate::prep::progress::items_bar;

/// Texts embedded between two updates of the progress bar.
const TEXTS_PER_STEP: usize = 256;

/// Arguments of `embed`.
#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// Model folder: a Hugging Face BERT (config.json, weights, tokenizer) with, for
    /// sentence-transformers models, modules.json and the pooling configuration (without them:
    /// mean pooling, not normalised).
    #[arg(long)]
    model: PathBuf,
    /// Text file, one text per line (UTF-8).
    #[arg(long)]
    input: PathBuf,
    /// Output file, by extension: .npy (float32 [texts, dimension]), .safetensors (tensor
    /// `embeddings`), or .jsonl (one {"index", "embedding"} object per line).
    #[arg(long)]
    output: PathBuf,
    /// Texts per forward pass (sorted by length first).
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Fail on a text longer than the model takes instead of cutting it (with a warning).
    #[arg(long)]
    refuse_long: bool,
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Flex)]
    backend: BackendKind,
}

/// The file formats `--output` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Npy,
    Safetensors,
    JsonLines,
}

impl Format {
    fn of(path: &Path) -> Result<Self> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("npy") => Ok(Self::Npy),
            Some("safetensors") => Ok(Self::Safetensors),
            Some("jsonl") => Ok(Self::JsonLines),
            _ => bail!(
                "{}: unknown output format: name it .npy, .safetensors or .jsonl",
                path.display()
            ),
        }
    }
}

/// Runs `embed`.
pub fn run(args: EmbedArgs) -> Result<()> {
    let format = Format::of(&args.output)?;
    let text = std::fs::read_to_string(&args.input)
        .with_context(|| format!("cannot read {} (UTF-8 text expected)", args.input.display()))?;
    let texts: Vec<String> = text.lines().map(str::to_string).collect();
    if texts.is_empty() {
        bail!("{}: no texts (the file is empty)", args.input.display());
    }
    let job = EmbedJob {
        model: args.model,
        texts,
        batch_size: args.batch_size,
        truncation: if args.refuse_long {
            Truncation::Refuse
        } else {
            Truncation::Cut
        },
    };
    let embedded = backend::run(args.backend, job)
        .with_context(|| format!("cannot embed {}", args.input.display()))?;
    if !embedded.truncated.is_empty() {
        let lines: Vec<String> = embedded
            .truncated
            .iter()
            .take(10)
            .map(|index| (index + 1).to_string())
            .collect();
        eprintln!(
            "WARNING: {} text(s) longer than the model's {} tokens were cut (lines {}{})",
            embedded.truncated.len(),
            embedded.max_tokens,
            lines.join(", "),
            if embedded.truncated.len() > 10 {
                ", ..."
            } else {
                ""
            }
        );
    }
    let bytes = match format {
        Format::Npy => npy(&embedded.vectors, embedded.dimension),
        Format::Safetensors => safetensors(&embedded.vectors, embedded.dimension)?,
        Format::JsonLines => json_lines(&embedded.vectors)?,
    };
    bert_core::io::write_atomic(&args.output, &bytes)?;
    eprintln!(
        "wrote {} embeddings of dimension {} to {}",
        embedded.vectors.len(),
        embedded.dimension,
        args.output.display()
    );
    Ok(())
}

struct EmbedJob {
    model: PathBuf,
    texts: Vec<String>,
    batch_size: usize,
    truncation: Truncation,
}

/// What the job hands back: every vector in input order, and the texts that were cut.
struct Embedded {
    vectors: Vec<Vec<f32>>,
    truncated: Vec<usize>,
    dimension: usize,
    max_tokens: usize,
}

impl Job for EmbedJob {
    type Output = Embedded;

    fn run<B: Backend>(self, device: B::Device) -> Result<Embedded> {
        let pipeline = SentenceEmbeddings::<B>::from_folder(&self.model, &device)?
            .with_batch_size(self.batch_size)
            .with_truncation(self.truncation);
        for notice in pipeline.notices() {
            eprintln!("NOTE: {notice}");
        }
        let bar = items_bar("embed", self.texts.len() as u64, "texts");
        let mut embedded = Embedded {
            vectors: Vec::with_capacity(self.texts.len()),
            truncated: Vec::new(),
            dimension: pipeline.dimension(),
            max_tokens: pipeline.max_tokens(),
        };
        for (step, texts) in self.texts.chunks(TEXTS_PER_STEP).enumerate() {
            let mut part = pipeline.embed(texts).map_err(|error| match error {
                PipelineError::TextTooLong {
                    index,
                    tokens,
                    limit,
                } => anyhow::anyhow!(
                    "line {}: {tokens} tokens, more than the model's {limit}: shorten it, or \
                     leave out --refuse-long to cut it",
                    step * TEXTS_PER_STEP + index + 1
                ),
                error => error.into(),
            })?;
            let offset = step * TEXTS_PER_STEP;
            embedded
                .truncated
                .extend(part.truncated.iter().map(|index| offset + index));
            embedded.vectors.append(&mut part.vectors);
            bar.inc(texts.len() as u64);
        }
        bar.finish_and_clear();
        Ok(embedded)
    }
}

/// A NumPy `.npy` file (format 1.0): little-endian float32, C order, shape `[texts, dimension]`.
fn npy(vectors: &[Vec<f32>], dimension: usize) -> Vec<u8> {
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
        vectors.len(),
        dimension
    );
    // Magic (6), version (2) and header length (2), then the header padded with spaces and ended
    // by a newline so that the data starts on a 64-byte boundary.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + vectors.len() * dimension * 4);
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for value in vectors.iter().flatten() {
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    bytes
}

/// A safetensors file with one float32 tensor, `embeddings` `[texts, dimension]`.
fn safetensors(vectors: &[Vec<f32>], dimension: usize) -> Result<Vec<u8>> {
    let data: Vec<u8> = vectors
        .iter()
        .flatten()
        .flat_map(|value| value.to_le_bytes())
        .collect();
    let view = safetensors::tensor::TensorView::new(
        safetensors::Dtype::F32,
        vec![vectors.len(), dimension],
        &data,
    )?;
    Ok(safetensors::tensor::serialize(
        [("embeddings".to_string(), view)],
        None,
    )?)
}

/// One `{"index": i, "embedding": [...]}` line per text, `index` counting from 0.
fn json_lines(vectors: &[Vec<f32>]) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    for (index, vector) in vectors.iter().enumerate() {
        serde_json::to_writer(
            &mut bytes,
            &serde_json::json!({ "index": index, "embedding": vector }),
        )?;
        bytes.write_all(b"\n")?;
    }
    Ok(bytes)
}
