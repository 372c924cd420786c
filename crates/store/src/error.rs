//! Errors of the storage interface.

use std::path::PathBuf;

/// What can go wrong in a store. Messages say what, where, and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },

    #[error(
        "the disk holding {path} is full; free space and run the command again (nothing already stored was changed)"
    )]
    DiskFull { path: PathBuf },

    #[error("the store at {path} is read-only ({reason}); use a writable --store directory")]
    ReadOnly { path: PathBuf, reason: String },

    #[error("the store at {path} is locked by another writer (pid {pid}); wait for it to finish")]
    Locked { path: PathBuf, pid: String },

    #[error("{path} is not a Hartonomous store ({reason})")]
    NotAStore { path: PathBuf, reason: String },

    #[error("store at {path} has format version {found}, this build reads {expected}")]
    Version { path: PathBuf, found: u32, expected: u32 },

    #[error("corruption in {path} at offset {offset}: {what}; run `hart fsck` and restore from a copy if it persists")]
    Corrupt { path: PathBuf, offset: u64, what: String },

    /// Stored bytes that do not hash to what they must. Nothing of the damaged part was
    /// returned: a stream stops before it (`byte` bytes of good output precede it).
    #[error(
        "damaged data at {location}: {what} (expected hash {expected}, found {found}){}; \
         run `hart fsck` to see every object it affects, then ingest a good copy of the file (or \
         `hart repair --from PATH`) to heal it",
        byte.map(|b| format!("; the damaged part starts at byte {b} of the output")).unwrap_or_default()
    )]
    Damaged { expected: String, found: String, location: String, what: String, byte: Option<u64> },

    /// A store whose log is damaged before its end (or shorter than its checkpoint says):
    /// writing would build on the damage, so it is refused until the store is repaired.
    #[error(
        "the store at {path} is damaged: {detail}; nothing was written. Reads still work and verify \
         every byte: run `hart fsck` to see which objects it affects, then `hart fsck --repair` to \
         rebuild the store around the damage (and ingest good copies of the affected files to heal them)"
    )]
    StoreDamaged { path: PathBuf, detail: String },

    #[error("position collision: atom {new} would take key {key}, already held by atom {existing}")]
    Collision { key: String, existing: String, new: String },

    #[error("no {what} {id} in this store")]
    NotFound { what: &'static str, id: String },

    #[error("no store at {path}: ingest something first, or pass --store DIR (or set HART_STORE)")]
    NoStore { path: PathBuf },

    #[error("invalid input: {0}")]
    Invalid(String),

    #[error("an earlier write failed ({0}); the store must be reopened, which recovers it")]
    Poisoned(String),

    #[error("{0}")]
    Backend(String),

    #[error("everything written is durable, but the index checkpoint could not be saved ({0}); it is retried by the next command that writes")]
    CheckpointDeferred(String),
}

impl StoreError {
    /// Wrap an I/O error with its operation and path, recognising a full disk.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        match source.raw_os_error() {
            // ENOSPC, EDQUOT (quota), EFBIG (file-size limit): no room to write.
            Some(28) | Some(122) | Some(27) => StoreError::DiskFull { path },
            Some(30) => StoreError::ReadOnly { path, reason: "read-only file system".into() },
            Some(13) if op != "read" => StoreError::ReadOnly { path, reason: "permission denied".into() },
            _ => StoreError::Io { op, path, source },
        }
    }
}
