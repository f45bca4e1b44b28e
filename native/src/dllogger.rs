//! DLLogger-compatible JSON lines, as the reference writes them:
//! `DLLL {"timestamp": ..., "datetime": ..., "elapsedtime": ..., "type": "LOG", "step": ..., "data": {...}}`.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde_json::{json, Value};

/// Appends DLLogger lines to a file.
pub struct DlLogger {
    file: BufWriter<File>,
    path: PathBuf,
    started: Instant,
}

impl DlLogger {
    /// Opens (appending) the log at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open log {}", path.display()))?;
        Ok(Self {
            file: BufWriter::new(file),
            path: path.to_path_buf(),
            started: Instant::now(),
        })
    }

    /// Opens the log of rank `rank` of a data-parallel job: `path` itself for rank 0 (the
    /// reference's log), `NAME.rankR.json` beside it for the others.
    pub fn open_for_rank(path: &Path, rank: usize) -> Result<Self> {
        if rank == 0 {
            Self::open(path)
        } else {
            Self::open(&path.with_extension(format!("rank{rank}.json")))
        }
    }

    /// Writes one line; `step` is `"PARAMETER"`, `[epoch, step]` or `[]` for final figures.
    pub fn log(&mut self, step: Value, data: Value) -> Result<()> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let line = json!({
            "timestamp": now.as_secs_f64(),
            "datetime": iso8601(now.as_secs()),
            "elapsedtime": self.started.elapsed().as_secs_f64(),
            "type": "LOG",
            "step": step,
            "data": data,
        });
        writeln!(self.file, "DLLL {line}")
            .and_then(|()| self.file.flush())
            .with_context(|| format!("cannot write log {}", self.path.display()))
    }
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) from seconds since the epoch.
fn iso8601(seconds: u64) -> String {
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_dates_like_the_reference() {
        assert_eq!(iso8601(0), "1970-01-01 00:00:00");
        assert_eq!(iso8601(1_795_651_200), "2026-11-26 00:00:00");
        assert_eq!(iso8601(951_782_400 + 3661), "2000-02-29 01:01:01");
    }
}
