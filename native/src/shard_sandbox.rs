//! Shards read in a child process: libhdf5 is C, and a corrupt file can crash it (fuzzing found a
//! segfault inside `H5Dread`, docs/reliability.md). `bert-native` turns this on at start-up
//! ([`enable`]); every shard it reads is then decoded by a child, `bert-native
//! internal-read-shard FILE`, which streams the arrays back through a pipe. A crash ends the
//! child, and the run stops with an error naming the file instead of dying mid-step.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use bert_core::data::ShardArrays;
use clap::Args;

/// The binary that reads shards for this process, once [`enable`]d.
static READER: OnceLock<PathBuf> = OnceLock::new();

/// The first bytes of a child's answer.
const MAGIC: &[u8; 8] = b"BRTSHD01";

/// Reads every shard of this process in a child process running this same executable (which
/// must be `bert-native`: the child is its `internal-read-shard` command).
pub fn enable() -> Result<()> {
    let executable = std::env::current_exe().context("cannot find this executable's path")?;
    let _ = READER.set(executable);
    Ok(())
}

/// Reads `path` in a child process if [`enable`]d; `None` otherwise.
pub(crate) fn read_if_enabled(path: &Path) -> Option<Result<ShardArrays>> {
    READER
        .get()
        .map(|executable| read_in_child(executable, path))
}

/// Arguments of the hidden `internal-read-shard` command.
#[derive(Debug, Args)]
pub struct ReadShardArgs {
    /// The HDF5 shard to read.
    file: PathBuf,
}

/// The child's side: reads the shard here and writes its arrays to standard output.
pub fn run(args: ReadShardArgs) -> Result<()> {
    let arrays = crate::shard_file::read_shard_here(&args.file)?;
    let mut out = BufWriter::with_capacity(1 << 20, io::stdout().lock());
    encode(&arrays, &mut out)
        .and_then(|()| out.flush())
        .context("cannot send the shard to the reading process")
}

fn read_in_child(executable: &Path, path: &Path) -> Result<ShardArrays> {
    let mut child = Command::new(executable)
        .arg("internal-read-shard")
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{}: cannot start a process to read it", path.display()))?;
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    // At most what the file could hold decompressed: the child checked each dataset against it.
    let limit = std::fs::metadata(path)
        .map(|m| m.len())
        .unwrap_or(0)
        .saturating_mul(crate::shard_file::MAX_DEFLATE_RATIO);
    let decoded = decode(
        &mut BufReader::with_capacity(1 << 20, child.stdout.take().expect("stdout is piped")),
        limit,
    );
    let status = child.wait().context("cannot wait for the shard reader")?;
    let errors = errors.join().unwrap_or_default();
    if let Some(signal) = crashed_by(&status) {
        bail!(
            "{}: not a valid pretraining shard: libhdf5 crashed reading it (signal {signal}, in \
             the child process that reads shards); the file is corrupt",
            path.display()
        );
    }
    if !status.success() {
        let message = errors.trim();
        if message.is_empty() {
            bail!("{}: the shard reader failed ({status})", path.display());
        }
        bail!(
            "{}",
            message.strip_prefix("error: ").unwrap_or(message).trim()
        );
    }
    decoded.with_context(|| format!("{}: the shard reader's answer is malformed", path.display()))
}

#[cfg(unix)]
fn crashed_by(status: &std::process::ExitStatus) -> Option<i32> {
    std::os::unix::process::ExitStatusExt::signal(status)
}

#[cfg(not(unix))]
fn crashed_by(_status: &std::process::ExitStatus) -> Option<i32> {
    None
}

/// The shard as the child sends it: [`MAGIC`], `N`, `L`, `P` (little-endian u64), then the arrays
/// in [`bert_core::data::shard::DATASETS`]'s order, little-endian.
fn encode(arrays: &ShardArrays, out: &mut impl Write) -> io::Result<()> {
    out.write_all(MAGIC)?;
    for extent in [
        arrays.num_instances,
        arrays.max_seq_length,
        arrays.max_predictions_per_seq,
    ] {
        out.write_all(&(extent as u64).to_le_bytes())?;
    }
    let ints = |out: &mut dyn Write, values: &[i32]| -> io::Result<()> {
        values
            .iter()
            .try_for_each(|v| out.write_all(&v.to_le_bytes()))
    };
    let bytes = |out: &mut dyn Write, values: &[i8]| -> io::Result<()> {
        let raw: Vec<u8> = values.iter().map(|&v| v as u8).collect();
        out.write_all(&raw)
    };
    ints(out, &arrays.input_ids)?;
    bytes(out, &arrays.input_mask)?;
    bytes(out, &arrays.segment_ids)?;
    ints(out, &arrays.masked_lm_positions)?;
    ints(out, &arrays.masked_lm_ids)?;
    bytes(out, &arrays.next_sentence_labels)
}

/// Reads what [`encode`] wrote; the extents may describe at most `limit` bytes of arrays.
fn decode(input: &mut impl Read, limit: u64) -> Result<ShardArrays> {
    let mut magic = [0; 8];
    input.read_exact(&mut magic)?;
    if &magic != MAGIC {
        bail!("it does not start with {MAGIC:?}");
    }
    let mut extent = || -> Result<usize> {
        let mut raw = [0; 8];
        input.read_exact(&mut raw)?;
        Ok(usize::try_from(u64::from_le_bytes(raw))?)
    };
    let (n, l, p) = (extent()?, extent()?, extent()?);
    let total = (|| {
        let tokens = n.checked_mul(l)?;
        let predictions = n.checked_mul(p)?;
        tokens
            .checked_mul(6)?
            .checked_add(predictions.checked_mul(8)?)?
            .checked_add(n)
    })();
    if total.is_none_or(|bytes| bytes as u64 > limit) {
        bail!("it declares {n} x {l} tokens and {n} x {p} predictions, more than the file holds");
    }
    let input_ids = read_i32s(input, n * l)?;
    let input_mask = read_i8s(input, n * l)?;
    let segment_ids = read_i8s(input, n * l)?;
    let masked_lm_positions = read_i32s(input, n * p)?;
    let masked_lm_ids = read_i32s(input, n * p)?;
    let mut rest = Vec::new();
    input.read_to_end(&mut rest)?;
    if rest.len() != n {
        bail!("{} bytes of labels for {n} instances", rest.len());
    }
    Ok(ShardArrays {
        num_instances: n,
        max_seq_length: l,
        max_predictions_per_seq: p,
        input_ids,
        input_mask,
        segment_ids,
        masked_lm_positions,
        masked_lm_ids,
        next_sentence_labels: rest.into_iter().map(|b| b as i8).collect(),
    })
}

fn read_i32s(input: &mut impl Read, count: usize) -> io::Result<Vec<i32>> {
    let mut raw = vec![0; count * 4];
    input.read_exact(&mut raw)?;
    Ok(raw
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

fn read_i8s(input: &mut impl Read, count: usize) -> io::Result<Vec<i8>> {
    let mut raw = vec![0; count];
    input.read_exact(&mut raw)?;
    Ok(raw.into_iter().map(|b| b as i8).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bert_tests::fixture;

    /// The golden seq-128 shard, and what the child would send for it.
    fn golden_shard_on_the_wire() -> (ShardArrays, Vec<u8>) {
        let arrays =
            crate::shard_file::read_shard_here(&fixture("hdf5/tiny_seq128_training_0.hdf5"))
                .unwrap();
        let mut wire = Vec::new();
        encode(&arrays, &mut wire).unwrap();
        (arrays, wire)
    }

    #[test]
    fn a_shard_survives_the_pipe_exactly() {
        let (arrays, wire) = golden_shard_on_the_wire();
        let back = decode(&mut wire.as_slice(), wire.len() as u64).unwrap();
        assert_eq!(back, arrays);
    }

    #[test]
    fn a_truncated_or_oversized_answer_is_refused() {
        let (_, wire) = golden_shard_on_the_wire();
        let cut = &wire[..wire.len() - 10];
        assert!(decode(&mut &cut[..], wire.len() as u64).is_err());
        assert!(decode(&mut wire.as_slice(), 1000).is_err());
        let mut longer = wire.clone();
        longer.push(0);
        assert!(decode(&mut longer.as_slice(), wire.len() as u64).is_err());
    }
}
