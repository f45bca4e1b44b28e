//! Stage 1, `format`: a Wikipedia dump or plain text files to one document per line.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bert_core::data::text::{collapse_whitespace, wikitext_to_plain};
use bert_core::io::AtomicWriter;

use super::progress::bytes_bar;

/// What an input path holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// A Wikipedia XML dump.
    WikiXml,
    /// A bzip2-compressed Wikipedia XML dump.
    WikiXmlBz2,
    /// One text file, documents separated by blank lines.
    TextFile,
    /// A folder of text files, one document per file.
    TextFolder,
}

/// Recognises the input by its name (and whether it is a folder).
pub fn input_kind(path: &Path) -> Result<InputKind> {
    let metadata =
        std::fs::metadata(path).with_context(|| format!("cannot read input {}", path.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    Ok(if metadata.is_dir() {
        InputKind::TextFolder
    } else if name.ends_with(".xml.bz2") {
        InputKind::WikiXmlBz2
    } else if name.ends_with(".xml") {
        InputKind::WikiXml
    } else {
        InputKind::TextFile
    })
}

/// What `format` did.
#[derive(Debug, Clone, Copy, Default)]
pub struct FormatStats {
    /// Bytes read from the input (compressed size for `.bz2`).
    pub input_bytes: u64,
    /// Documents written.
    pub documents: u64,
    /// Bytes written.
    pub output_bytes: u64,
}

/// Writes one document per line to `output`. Fails on empty, unreadable or truncated input.
pub fn format(input: &Path, output: &Path) -> Result<FormatStats> {
    let kind = input_kind(input)?;
    let mut writer = AtomicWriter::create(output)?;
    let mut stats = FormatStats::default();
    let mut emit = |text: &str, stats: &mut FormatStats| -> Result<()> {
        let line = collapse_whitespace(text);
        if !line.is_empty() {
            writeln!(writer, "{line}")?;
            stats.documents += 1;
            stats.output_bytes += line.len() as u64 + 1;
        }
        Ok(())
    };
    match kind {
        InputKind::WikiXml | InputKind::WikiXmlBz2 => {
            let size = std::fs::metadata(input)?.len();
            let bar = bytes_bar("format", size);
            let file = bar.wrap_read(File::open(input)?);
            let reader: Box<dyn BufRead> = if kind == InputKind::WikiXmlBz2 {
                Box::new(BufReader::new(bzip2::read::MultiBzDecoder::new(file)))
            } else {
                Box::new(BufReader::new(file))
            };
            super::wiki::for_each_article(reader, |wikitext| {
                emit(&wikitext_to_plain(wikitext), &mut stats)
            })
            .with_context(|| format!("{}: cannot read the Wikipedia dump", input.display()))?;
            bar.finish_and_clear();
            stats.input_bytes = size;
        }
        InputKind::TextFile => {
            let size = std::fs::metadata(input)?.len();
            let bar = bytes_bar("format", size);
            let reader = BufReader::new(bar.wrap_read(File::open(input)?));
            let mut document = String::new();
            for line in reader.lines() {
                let line = line.with_context(|| format!("{}: not UTF-8 text", input.display()))?;
                if line.trim().is_empty() {
                    emit(&document, &mut stats)?;
                    document.clear();
                } else {
                    document.push_str(&line);
                    document.push(' ');
                }
            }
            emit(&document, &mut stats)?;
            bar.finish_and_clear();
            stats.input_bytes = size;
        }
        InputKind::TextFolder => {
            let files = text_files(input)?;
            let total = files.iter().map(|f| f.1).sum();
            let bar = bytes_bar("format", total);
            for (path, size) in files {
                let mut text = String::new();
                File::open(&path)
                    .and_then(|mut f| f.read_to_string(&mut text))
                    .with_context(|| format!("{}: cannot read as UTF-8 text", path.display()))?;
                emit(&text, &mut stats)?;
                bar.inc(size);
                stats.input_bytes += size;
            }
            bar.finish_and_clear();
        }
    }
    if stats.documents == 0 {
        bail!(
            "{}: no documents found (empty input or no article text); refusing to write an empty corpus",
            input.display()
        );
    }
    writer.commit()?;
    Ok(stats)
}

/// Regular, non-hidden files under `dir`, recursively, in name order, with their sizes.
fn text_files(dir: &Path) -> Result<Vec<(PathBuf, u64)>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current)
            .with_context(|| format!("cannot list {}", current.display()))?;
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let metadata = entry.metadata()?;
            if metadata.is_dir() {
                pending.push(path);
            } else if metadata.is_file() {
                files.push((path, metadata.len()));
            }
        }
    }
    files.sort();
    Ok(files)
}
