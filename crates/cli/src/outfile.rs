//! Where `hart cat` writes an object: `-o PATH` or stdout.
//!
//! A regular file, or a path where nothing is yet, gets the object whole or not at all: the
//! bytes go to a temporary file in the same directory (`.NAME.hart-PID-N.tmp`), which is
//! fsynced and renamed over PATH only after the store returned success; on any failure it is
//! removed and PATH is left as it was. The new file keeps the permission bits of the file it
//! replaces.
//!
//! Anything else at PATH is written through and never replaced: a character or block device
//! (`/dev/null`, `/dev/full`), a FIFO, and a symlink (whatever it names: `/dev/stdout`, a
//! file elsewhere — that file is truncated and written in place). Like stdout, such a
//! stream signals failure only by the exit code and the message on stderr: the bytes
//! already written may be a prefix of the object.
//!
//! The writer's own errors are told apart from the store's: "cannot write /dev/full: No
//! space left on device", not "the disk holding output is full".

use anyhow::{anyhow, Context, Result};
use hart_store::StoreError;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What `-o PATH` is, and so how it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file, or nothing yet: a temporary file renamed into place.
    Replace,
    /// A device, FIFO or symlink: opened and written through.
    Through,
}

/// How `path` will be written, or why it cannot be.
pub fn kind_of(path: &Path) -> Result<Kind> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Kind::Replace),
        Err(e) => Err(e).with_context(|| format!("cannot write {}", path.display())),
        Ok(m) => {
            let t = m.file_type();
            if t.is_file() {
                Ok(Kind::Replace)
            } else if t.is_dir() {
                Err(anyhow!("cannot write {}: it is a directory; give a file name", path.display()))
            } else if t.is_socket() {
                Err(anyhow!("cannot write {}: it is a socket", path.display()))
            } else {
                // Symlink, character or block device, FIFO.
                Ok(Kind::Through)
            }
        }
    }
}

/// Write an object to `path` with `cat` (the store's, handed a writer): whole or not at all
/// for a regular file or a new path, through for anything else (see the module doc).
/// Returns the bytes written.
pub fn write_to(path: &Path, cat: impl FnOnce(&mut dyn Write) -> Result<u64, StoreError>) -> Result<u64> {
    match kind_of(path)? {
        Kind::Replace => replace(path, cat),
        Kind::Through => through(path, cat),
    }
}

/// Write an object to stdout. A reader that closed the pipe ends it quietly (Ok with the bytes
/// written so far, see `stdio`); any other failure is an error (the bytes already written
/// may be a prefix of the object).
pub fn write_to_stdout(cat: impl FnOnce(&mut dyn Write) -> Result<u64, StoreError>) -> Result<u64> {
    let stdout = io::stdout();
    let mut w = Watched::new(stdout.lock());
    match cat(&mut w) {
        Ok(n) => Ok(n),
        Err(_) if w.failed.as_ref().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe) => Ok(w.written),
        Err(e) => Err(output_error(e, &w, "stdout", "the bytes already written are at most a prefix of the object")),
    }
}

/// A regular file or a new path: a temporary file beside it, renamed into place on success.
fn replace(path: &Path, cat: impl FnOnce(&mut dyn Write) -> Result<u64, StoreError>) -> Result<u64> {
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("cannot write {}: it does not name a file", path.display()))?
        .to_string_lossy()
        .into_owned();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mode = std::fs::metadata(path).ok().map(|m| m.permissions().mode() & 0o7777);
    let (tmp, file) = temp_beside(&dir, &name).with_context(|| format!("cannot write {}", path.display()))?;
    let mut guard = Removal(Some(tmp.clone()));
    if let Some(mode) = mode {
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the permissions of {}", tmp.display()))?;
    }
    let mut w = Watched::new(file);
    let shown = path.display().to_string();
    let n = cat(&mut w).map_err(|e| output_error(e, &w, &shown, &format!("{shown} was left as it was")))?;
    w.inner.sync_all().with_context(|| format!("cannot write {}", tmp.display()))?;
    drop(w);
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot move {} into place as {}", tmp.display(), path.display()))?;
    guard.0 = None;
    // The rename is durable once the directory is (best effort: some file systems refuse).
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(n)
}

/// A device, FIFO or symlink: open what it names and write through.
fn through(path: &Path, cat: impl FnOnce(&mut dyn Write) -> Result<u64, StoreError>) -> Result<u64> {
    // A symlink may name nothing yet (created, as a shell's `>` would) or a regular file
    // (truncated first); on a device or FIFO, create and truncate do nothing.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("cannot open {} for writing", path.display()))?;
    let regular = file.metadata().is_ok_and(|m| m.is_file());
    let mut w = Watched::new(file);
    let shown = path.display().to_string();
    let then = format!("what {shown} received is at most a prefix of the object");
    let n = cat(&mut w).map_err(|e| output_error(e, &w, &shown, &then))?;
    if regular {
        w.inner.sync_all().with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(n)
}

/// A new file `.NAME.hart-PID-N.tmp` in `dir`, made by this call alone.
fn temp_beside(dir: &Path, name: &str) -> io::Result<(PathBuf, File)> {
    let pid = std::process::id();
    let mut n = 0u32;
    loop {
        let tmp = dir.join(format!(".{name}.hart-{pid}-{n}.tmp"));
        match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o666).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Removes the temporary file unless it was moved into place.
struct Removal(Option<PathBuf>);

impl Drop for Removal {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A writer that remembers its first error, so that a failed `cat` can say whether the output
/// or the store failed.
struct Watched<W> {
    inner: W,
    written: u64,
    failed: Option<io::Error>,
}

impl<W: Write> Watched<W> {
    fn new(inner: W) -> Self {
        Watched { inner, written: 0, failed: None }
    }

    fn note<T>(&mut self, r: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &r {
            if self.failed.is_none() {
                self.failed = Some(io::Error::new(e.kind(), e.to_string()));
            }
        }
        r
    }
}

impl<W: Write> Write for Watched<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let r = self.inner.write(buf);
        let n = self.note(r)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        let r = self.inner.flush();
        self.note(r)
    }
}

/// The error of a failed `cat`: the output's own error when it was the output that failed
/// (`what` names the output, `then` says what became of it).
fn output_error<W>(e: StoreError, w: &Watched<W>, what: &str, then: &str) -> anyhow::Error {
    match &w.failed {
        Some(io) => anyhow!("cannot write {what}: {io} (after {} bytes); {then}", w.written),
        None => anyhow::Error::new(e).context(format!("cat stopped; {then}")),
    }
}
