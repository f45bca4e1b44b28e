//! File output that never leaves a half-written file behind.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically: to a temporary file in the same folder, flushed to disk,
/// then renamed over `path`. Readers see the old file or the new one, never a torn one, even if
/// the process dies mid-write. An error names `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut writer = AtomicWriter::create(path)?;
    writer.write_all(bytes)?;
    writer.commit()
}

/// The temporary name `path` is written under before it is renamed into place.
pub fn temporary_path(path: &Path) -> io::Result<PathBuf> {
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    Ok(parent_dir(path).join(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    )))
}

/// Moves a finished temporary file over `path`, flushing both to disk first.
pub fn commit_temporary(tmp: &Path, path: &Path) -> io::Result<()> {
    File::open(tmp)?.sync_all()?;
    fs::rename(tmp, path)?;
    // Persist the rename itself; not every platform can open a directory, so best effort.
    if let Ok(dir) = File::open(parent_dir(path)) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// `error`, its message prefixed with the file it happened to: "cannot write PATH: ...", so that
/// every caller's report names the file without adding it itself.
fn naming(path: &Path, error: io::Error) -> io::Error {
    io::Error::new(
        error.kind(),
        format!("cannot write {}: {error}", path.display()),
    )
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// A buffered file that appears at its path only when [`commit`](Self::commit) succeeds; dropped
/// uncommitted, it leaves nothing behind. Every error it returns names the final path.
pub struct AtomicWriter {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<BufWriter<File>>,
}

impl AtomicWriter {
    /// Starts writing `path`.
    pub fn create(path: &Path) -> io::Result<Self> {
        let tmp = temporary_path(path).map_err(|e| naming(path, e))?;
        // 64 KiB: large enough for throughput, small enough for hundreds of shard files at once.
        let file = File::create(&tmp).map_err(|e| naming(path, e))?;
        let file = BufWriter::with_capacity(64 << 10, file);
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            file: Some(file),
        })
    }

    /// Flushes, syncs and renames the file into place. If any of that fails (a full disk
    /// refuses the last buffer), the temporary file is removed and `path` keeps what it held.
    pub fn commit(mut self) -> io::Result<()> {
        let file = self.file.take().expect("commit is called once");
        let committed = file
            .into_inner()
            .map_err(io::IntoInnerError::into_error)
            .and_then(|file| file.sync_all())
            .and_then(|()| commit_temporary(&self.tmp, &self.path));
        if committed.is_err() {
            let _ = fs::remove_file(&self.tmp);
        }
        committed.map_err(|e| naming(&self.path, e))
    }
}

impl Write for AtomicWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let file = self.file.as_mut().expect("not committed");
        file.write(buf).map_err(|e| naming(&self.path, e))
    }

    fn flush(&mut self) -> io::Result<()> {
        let file = self.file.as_mut().expect("not committed");
        file.flush().map_err(|e| naming(&self.path, e))
    }
}

impl Drop for AtomicWriter {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("bert-core-io-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.bin");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("out.bin")]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_uncommitted_writer_leaves_nothing() {
        let dir = std::env::temp_dir().join(format!("bert-core-io-drop-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.txt");
        {
            let mut writer = AtomicWriter::create(&path).unwrap();
            writer.write_all(b"partial").unwrap();
        }
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        let mut writer = AtomicWriter::create(&path).unwrap();
        writer.write_all(b"whole").unwrap();
        writer.commit().unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"whole");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fails_cleanly_when_the_folder_is_missing() {
        let path = std::env::temp_dir().join("bert-core-no-such-dir/x/out.bin");
        let error = write_atomic(&path, b"x").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
        let message = error.to_string();
        assert!(
            message.starts_with(&format!("cannot write {}: ", path.display())),
            "{message}"
        );
    }
}
