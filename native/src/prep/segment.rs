//! Stage 2, `segment`: one document per line to one sentence per line, a blank line between
//! documents. Documents are split in parallel, written in input order.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use bert_core::data::text::split_sentences;
use bert_core::io::AtomicWriter;
use rayon::prelude::*;

use super::progress::bytes_bar;

/// Documents handed to the thread pool at once: bounds memory, keeps every core busy.
const BATCH: usize = 2048;

/// What `segment` did.
#[derive(Debug, Clone, Copy, Default)]
pub struct SegmentStats {
    /// Bytes read.
    pub input_bytes: u64,
    /// Documents written (those with at least one sentence).
    pub documents: u64,
    /// Sentences written.
    pub sentences: u64,
}

/// Segments `input` (one document per line) into `output`.
pub fn segment(input: &Path, output: &Path) -> Result<SegmentStats> {
    let size = std::fs::metadata(input)
        .with_context(|| format!("cannot read {}", input.display()))?
        .len();
    let bar = bytes_bar("segment", size);
    let reader = BufReader::new(bar.wrap_read(File::open(input)?));
    let mut writer = AtomicWriter::create(output)?;
    let mut stats = SegmentStats {
        input_bytes: size,
        ..SegmentStats::default()
    };
    let mut lines = reader.lines();
    loop {
        let batch: Vec<String> = lines
            .by_ref()
            .take(BATCH)
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("{}: not UTF-8 text", input.display()))?;
        if batch.is_empty() {
            break;
        }
        let documents: Vec<Vec<String>> =
            batch.par_iter().map(|line| split_sentences(line)).collect();
        for sentences in documents.into_iter().filter(|s| !s.is_empty()) {
            let written = sentences
                .iter()
                .try_for_each(|sentence| writeln!(writer, "{sentence}"))
                .and_then(|()| writeln!(writer));
            written?;
            stats.documents += 1;
            stats.sentences += sentences.len() as u64;
        }
    }
    bar.finish_and_clear();
    if stats.documents == 0 {
        bail!("{}: no sentences found", input.display());
    }
    writer.commit()?;
    Ok(stats)
}
