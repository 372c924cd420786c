//! The storage interface every backend implements, the types it speaks, and the ingest
//! pipeline that turns files into atoms on top of it.
//!
//! **API boundary:** backends see only [`Store`] and [`Session`]; they never see files or
//! decoders. The pipeline sees only these traits, never a backend.

pub mod error;
pub mod ingest;
pub mod types;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use error::StoreError;
pub use types::*;

use hart_core::{Hash, HilbertKey};
use std::io::Write;

/// A place atoms live: the embedded engine, PostgreSQL, … All methods are safe to call from
/// several threads; writes are serialised by the backend.
pub trait Store: Send + Sync {
    /// Short name of the backend, for `stats` and logs.
    fn backend(&self) -> &'static str;

    /// How many sessions may usefully put batches at the same time: [`crate::ingest::ingest_files`]
    /// stores that many files at once. One for an engine with a single writer.
    fn parallel_sessions(&self) -> usize {
        1
    }

    /// Start ingesting one object. Atoms put through the session are deduplicated against the
    /// whole store; the object becomes visible (and its root referenced) on [`Session::commit`].
    fn begin(&self, source: SourceInfo) -> Result<Box<dyn Session + '_>, StoreError>;

    /// An atom by content hash.
    fn get(&self, hash: &Hash) -> Result<Option<AtomRecord>, StoreError>;

    /// An atom by Hilbert key.
    fn get_by_key(&self, key: &HilbertKey) -> Result<Option<AtomRecord>, StoreError>;

    /// Hashes of live atoms whose hex form starts with `prefix` (at most `limit`).
    fn find_prefix(&self, prefix: &str, limit: usize) -> Result<Vec<Hash>, StoreError>;

    /// Write the bytes under `root` (its leaves' values in order) to `out`; returns the count.
    fn cat(&self, root: &Hash, out: &mut dyn Write) -> Result<u64, StoreError>;

    /// Every object in the ingestion log, oldest first.
    fn objects(&self) -> Result<Vec<ObjectInfo>, StoreError>;

    /// Delete an object: its log entry is marked deleted and its root released.
    fn delete_object(&self, id: u64) -> Result<ObjectInfo, StoreError>;

    /// Remove atoms whose reference count is zero (and, transitively, what they alone held).
    fn gc(&self) -> Result<GcReport, StoreError>;

    /// Recount every reference from scratch, re-hash atoms, rebuild every object.
    fn fsck(&self, progress: &dyn Fn(u64, u64)) -> Result<FsckReport, StoreError>;

    /// Counts and sizes.
    fn stats(&self) -> Result<Stats, StoreError>;

    /// Make everything committed so far durable.
    fn flush(&self) -> Result<(), StoreError>;
}

/// One object being ingested.
pub trait Session {
    /// Put atoms, children before parents. Existing atoms are found, new ones written. A
    /// backend may buffer what is put and write it in larger units (PostgreSQL does): errors
    /// about the content of a batch (a collision) then surface at the next [`Session::sync`],
    /// `put` or `commit`.
    fn put(&mut self, batch: &Batch) -> Result<(), StoreError>;

    /// Write everything put so far (still unreferenced until commit); report any error about
    /// it. A no-op for backends that write on `put`.
    fn sync(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Register the object with its root (which must have been put) and finish.
    fn commit(self: Box<Self>, root: &Hash, summary: &ObjectSummary) -> Result<ObjectInfo, StoreError>;

    /// Give up: the log entry is marked failed; atoms already written stay unreferenced
    /// until `gc`.
    fn abort(self: Box<Self>, error: &str) -> Result<(), StoreError>;
}
