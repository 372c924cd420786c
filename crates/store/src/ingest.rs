//! The ingest pipeline: files → decoders → leaves → content-defined trees → batches → a store.
//!
//! Decoding and hashing run on worker threads (one file each), the store's writes on the
//! calling thread, files committed in the order given; channels between them are bounded, so
//! memory stays bounded whatever the file sizes. A backend whose writers work in parallel
//! ([`Store::parallel_sessions`]) stores that many files at once, each on a session and a
//! thread of its own; outcomes are still reported in the order given.

use crate::{Batch, ObjectInfo, ObjectSummary, SourceInfo, Store, StoreError};
use crossbeam_channel::{bounded, Receiver, Sender};
use hart_core::atom::push_node_encoding;
use hart_core::features::leaf_identity;
use hart_core::many::Messages;
use hart_core::tree::{make_node_hashed, GroupBuilder, NodeOut, TreeBuilder, MAX_FANOUT};
use hart_core::{Child, Hash, Modality};
use hart_decode::LeafSink;
use rustc_hash::FxHashMap;
use std::hash::{BuildHasher, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Ops per batch handed to the store.
const BATCH_OPS: usize = 8192;
/// Composites' children per batch handed to the store (at most; a batch also ends at
/// [`BATCH_OPS`] atoms).
const BATCH_KIDS: usize = 32_768;
/// Batches in flight per file.
const CHANNEL_DEPTH: usize = 4;
/// Read size.
const READ_BLOCK: usize = 1 << 20;
/// Slots of the "already sent" table of each stage: small enough to stay in cache (it is
/// probed once per composite; a repeat it forgot is merely sent again).
const SENT_SLOTS: usize = 1 << 13;
/// Entries of the token cache before it is dropped and rebuilt.
const LEAF_CACHE_MAX: usize = 1 << 16;

/// How to ingest.
#[derive(Debug, Clone, Default)]
pub struct IngestOptions {
    /// Force a modality instead of detecting one per file.
    pub modality: Option<Modality>,
    /// Decoder threads (0: one per core).
    pub workers: usize,
    /// Files stored at once, each on its own session (0: what the store says it takes,
    /// [`Store::parallel_sessions`]). With more than one, which of two files sharing atoms
    /// creates them depends on timing; the store's contents do not.
    pub sessions: usize,
}

/// Counters the caller may watch from another thread (for progress bars).
#[derive(Debug, Default)]
pub struct Progress {
    pub bytes_done: AtomicU64,
    pub files_done: AtomicU64,
}

/// What happened to one input.
#[derive(Debug)]
pub enum Outcome {
    /// Stored; `info.status` is `Completed` or `Unchanged`.
    Stored { path: PathBuf, info: ObjectInfo },
    /// Could not be ingested; nothing already stored was harmed.
    Failed { path: PathBuf, error: String },
}

/// Files to ingest and their sizes.
pub type FileList = Vec<(PathBuf, u64)>;
/// Entries that could not be read, and why.
pub type Unreadable = Vec<(PathBuf, String)>;

/// Every regular file under `paths` (directories recursively, in name order), and the
/// entries that could not be read.
pub fn collect_files(paths: &[PathBuf]) -> (FileList, Unreadable) {
    collect_files_excluding(paths, None)
}

/// As [`collect_files`], skipping everything under `exclude` (a canonical path: the store's
/// own directory, which would otherwise grow while it is being read).
pub fn collect_files_excluding(paths: &[PathBuf], exclude: Option<&Path>) -> (FileList, Unreadable) {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for p in paths {
        walk(p, exclude, &mut files, &mut errors);
    }
    (files, errors)
}

fn walk(p: &Path, exclude: Option<&Path>, files: &mut Vec<(PathBuf, u64)>, errors: &mut Vec<(PathBuf, String)>) {
    let meta = match std::fs::metadata(p) {
        Ok(m) => m,
        Err(e) => return errors.push((p.to_path_buf(), format!("cannot read: {e}"))),
    };
    if let Some(ex) = exclude {
        if std::fs::canonicalize(p).is_ok_and(|c| c.starts_with(ex)) {
            return errors.push((p.to_path_buf(), "skipped: this is the store itself".into()));
        }
    }
    if meta.is_file() {
        files.push((p.to_path_buf(), meta.len()));
    } else if meta.is_dir() {
        let rd = match std::fs::read_dir(p) {
            Ok(rd) => rd,
            Err(e) => return errors.push((p.to_path_buf(), format!("cannot list directory: {e}"))),
        };
        let mut entries: Vec<PathBuf> = Vec::new();
        for e in rd {
            match e {
                Ok(e) => entries.push(e.path()),
                Err(e) => errors.push((p.to_path_buf(), format!("cannot list directory entry: {e}"))),
            }
        }
        entries.sort();
        for e in entries {
            // Symlinks to directories are not followed (no cycles); to files they are.
            match std::fs::symlink_metadata(&e) {
                Ok(m) if m.file_type().is_symlink() && e.is_dir() => {}
                _ => walk(&e, exclude, files, errors),
            }
        }
    } else {
        errors.push((p.to_path_buf(), "not a regular file or directory (skipped)".into()));
    }
}

/// `file://` URI of a path, byte for byte: every byte outside `A–Z a–z 0–9 - . _ ~ /` is
/// percent-encoded (RFC 3986), so names that are not UTF-8 keep distinct URIs.
pub fn file_uri(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = String::from("file://");
    for &b in abs.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Messages from a decoding worker to the store thread, for one file.
enum Msg {
    Begin(SourceInfo),
    /// Atoms to put, and where to return the emptied batch for reuse (its buffers keep their
    /// capacity, so they are not allocated and faulted in again for every batch).
    Batch(Batch, Sender<Batch>),
    End {
        root: Hash,
        summary: ObjectSummary,
    },
    Error(String),
}

/// Ingest `files` (from [`collect_files`]) into `store`, calling `on_outcome` for each file in
/// order. Returns when every file is done; per-file failures are reported, not fatal. A
/// store error that makes further writes impossible (full disk, poisoned store) stops the run
/// and is returned.
pub fn ingest_files(
    store: &dyn Store,
    files: &[(PathBuf, u64)],
    opts: &IngestOptions,
    progress: &Progress,
    on_outcome: &mut dyn FnMut(Outcome),
) -> Result<(), StoreError> {
    let workers = match opts.workers {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
        n => n,
    }
    .clamp(1, files.len().max(1));
    let writers = match opts.sessions {
        0 => store.parallel_sessions(),
        n => n,
    }
    .clamp(1, files.len().max(1));
    let known = KnownObjects::of(store)?;
    let known = &known;
    let (job_tx, job_rx) = bounded::<(PathBuf, Sender<Msg>)>(workers);
    let (order_tx, order_rx) = bounded::<(PathBuf, Receiver<Msg>)>(workers + writers);
    let result = std::thread::scope(|s| {
        for _ in 0..workers {
            let job_rx = job_rx.clone();
            let modality = opts.modality;
            s.spawn(move || {
                for (path, tx) in job_rx {
                    decode_file(&path, modality, known, progress, &tx);
                }
            });
        }
        drop(job_rx);
        s.spawn(move || {
            for (path, _) in files {
                let (tx, rx) = bounded(CHANNEL_DEPTH);
                if order_tx.send((path.clone(), rx)).is_err() || job_tx.send((path.clone(), tx)).is_err() {
                    break;
                }
            }
        });
        if writers > 1 {
            return store_in_parallel(s, store, writers, order_rx, progress, on_outcome);
        }
        let mut fatal = None;
        for (path, rx) in order_rx.iter() {
            if fatal.is_some() {
                continue; // drain so workers can finish
            }
            let r = store_file(store, &rx);
            if let Some(e) = report(path, r, on_outcome) {
                fatal = Some(e);
            }
            progress.files_done.fetch_add(1, Ordering::Relaxed);
            drop(rx);
        }
        fatal
    });
    match result {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Pass one file's result to `on_outcome`, or return the store error that stops the run.
fn report(path: PathBuf, r: Result<ObjectInfo, FileError>, on_outcome: &mut dyn FnMut(Outcome)) -> Option<StoreError> {
    match r {
        Ok(info) => on_outcome(Outcome::Stored { path, info }),
        Err(FileError::Input(error)) => on_outcome(Outcome::Failed { path, error }),
        Err(FileError::Store(e)) if is_fatal(&e) => return Some(e),
        Err(FileError::Store(e)) => on_outcome(Outcome::Failed { path, error: e.to_string() }),
    }
    None
}

/// A store error that makes further writes impossible (full disk, poisoned store): the run
/// stops rather than fail every remaining file the same way.
fn is_fatal(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::DiskFull { .. } | StoreError::ReadOnly { .. } | StoreError::Poisoned(_) | StoreError::Io { .. }
    )
}

/// The store side of [`ingest_files`] for a backend that takes `writers` sessions at once:
/// that many threads each take the next file, begin its session (in the order given, so
/// objects are numbered in that order) and store it; the calling thread reports outcomes in
/// the order given. After a fatal store error no file is begun; files already in flight end
/// as they may, and are reported (a later fatal error as a failed file).
fn store_in_parallel<'scope>(
    s: &'scope std::thread::Scope<'scope, '_>,
    store: &'scope dyn Store,
    writers: usize,
    order_rx: Receiver<(PathBuf, Receiver<Msg>)>,
    progress: &'scope Progress,
    on_outcome: &mut dyn FnMut(Outcome),
) -> Option<StoreError> {
    // The next file and its number, taken and begun under one lock.
    let turn = std::sync::Arc::new(std::sync::Mutex::new((order_rx, 0usize)));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    type Done = (usize, PathBuf, Option<Result<ObjectInfo, FileError>>);
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<Done>();
    for _ in 0..writers {
        let (turn, stop, done_tx) = (turn.clone(), stop.clone(), done_tx.clone());
        s.spawn(move || loop {
            let (i, path, rx, begun) = {
                let mut t = turn.lock().unwrap_or_else(|p| p.into_inner());
                let Ok((path, rx)) = t.0.recv() else { break };
                let i = t.1;
                t.1 += 1;
                if stop.load(Ordering::Relaxed) {
                    drop(t);
                    drop(rx); // its decoder stops
                    let _ = done_tx.send((i, path, None));
                    continue;
                }
                let begun = begin_file(store, &rx);
                (i, path, rx, begun)
            };
            let r = begun.and_then(|session| finish_file(session, &rx));
            if matches!(&r, Err(FileError::Store(e)) if is_fatal(e)) {
                stop.store(true, Ordering::Relaxed);
            }
            progress.files_done.fetch_add(1, Ordering::Relaxed);
            drop(rx);
            if done_tx.send((i, path, Some(r))).is_err() {
                break;
            }
        });
    }
    drop(done_tx);
    let mut waiting: std::collections::BTreeMap<usize, (PathBuf, Option<Result<ObjectInfo, FileError>>)> =
        Default::default();
    let mut next = 0;
    let mut fatal = None;
    for (i, path, r) in done_rx {
        waiting.insert(i, (path, r));
        while let Some((path, r)) = waiting.remove(&next) {
            next += 1;
            let Some(r) = r else { continue };
            if let Some(e) = report(path.clone(), r, on_outcome) {
                match fatal {
                    None => fatal = Some(e),
                    Some(_) => on_outcome(Outcome::Failed { path, error: e.to_string() }),
                }
            }
        }
    }
    fatal
}

enum FileError {
    Input(String),
    Store(StoreError),
}

fn store_file(store: &dyn Store, rx: &Receiver<Msg>) -> Result<ObjectInfo, FileError> {
    finish_file(begin_file(store, rx)?, rx)
}

/// Wait for the decoder's first message and begin the file's session.
fn begin_file<'a>(store: &'a dyn Store, rx: &Receiver<Msg>) -> Result<Box<dyn crate::Session + 'a>, FileError> {
    let source = match rx.recv() {
        Ok(Msg::Begin(s)) => s,
        Ok(Msg::Error(e)) => return Err(FileError::Input(e)),
        _ => return Err(FileError::Input("decoder stopped unexpectedly".into())),
    };
    store.begin(source).map_err(FileError::Store)
}

/// Put the file's batches through `session` and commit it (or abort it on an error).
fn finish_file(mut session: Box<dyn crate::Session + '_>, rx: &Receiver<Msg>) -> Result<ObjectInfo, FileError> {
    loop {
        match rx.recv() {
            Ok(Msg::Batch(b, back)) => {
                if let Err(e) = session.put(&b) {
                    let _ = session.abort(&e.to_string());
                    return Err(FileError::Store(e));
                }
                let _ = back.try_send(b);
            }
            Ok(Msg::End { root, summary }) => return session.commit(&root, &summary).map_err(FileError::Store),
            Ok(Msg::Error(e)) => {
                session.abort(&e).map_err(FileError::Store)?;
                return Err(FileError::Input(e));
            }
            Ok(Msg::Begin(_)) | Err(_) => {
                let e = "decoder stopped unexpectedly".to_string();
                let _ = session.abort(&e);
                return Err(FileError::Input(e));
            }
        }
    }
}

/// Leaf occurrences per chunk handed from the leaf stage to the node stage: small enough
/// that a chunk (48 bytes per leaf) and the encodings hashed from it stay in a core's L2
/// (measured: 65,536 costs 10-15 % more CPU than 16,384; 8,192 about 3 % less).
const CHUNK_KIDS: usize = 8_192;

/// The objects stored before an [`ingest_files`] run, by size: a file whose size matches one
/// is hashed first, and if its bytes and modality are an object's already, that object's root
/// is committed without decoding the file again (re-ingesting an unchanged tree, or a copy,
/// costs a read and a hash per file instead of the whole pipeline).
struct KnownObjects {
    by_size: FxHashMap<u64, Vec<KnownObject>>,
}

struct KnownObject {
    source_hash: Hash,
    modality: Modality,
    root: Hash,
    /// Atom occurrences of the object (what its summary said at commit).
    occurrences: u64,
}

impl KnownObjects {
    fn of(store: &dyn Store) -> Result<Self, StoreError> {
        let mut by_size: FxHashMap<u64, Vec<KnownObject>> = FxHashMap::default();
        for o in store.objects()? {
            let live = matches!(o.status, crate::Status::Completed | crate::Status::Unchanged);
            if let (true, Some(root), Some(source_hash)) = (live, o.root, o.source_hash) {
                by_size.entry(o.size).or_default().push(KnownObject {
                    source_hash,
                    modality: o.modality,
                    root,
                    occurrences: o.atoms_created + o.atoms_skipped,
                });
            }
        }
        Ok(KnownObjects { by_size })
    }

    /// The stored object with the bytes of `file` (read to its end) and this modality, when
    /// `size` (what the file system reported) is a stored object's size. The file is taken at
    /// its word only for choosing whether to hash: its bytes are read to EOF, and a file whose
    /// length differs from `size` (a /proc file reports 0; a file may grow or shrink) is no
    /// match, so the caller decodes what is there.
    fn find(&self, file: &mut std::fs::File, size: u64, modality: Modality) -> std::io::Result<Option<&KnownObject>> {
        let Some(same_size) = self.by_size.get(&size) else { return Ok(None) };
        if !same_size.iter().any(|k| k.modality == modality) {
            return Ok(None);
        }
        let mut h = blake3::Hasher::new();
        if std::io::copy(file, &mut h)? != size {
            return Ok(None);
        }
        let hash = Hash(*h.finalize().as_bytes());
        Ok(same_size.iter().find(|k| k.source_hash == hash && k.modality == modality))
    }
}

fn decode_file(path: &Path, forced: Option<Modality>, known: &KnownObjects, progress: &Progress, tx: &Sender<Msg>) {
    let fail = |what: &str, e: std::io::Error| {
        let _ = tx.send(Msg::Error(format!("{what} {}: {e}", path.display())));
    };
    let modality = match forced {
        Some(m) => m,
        None => match hart_decode::choose_modality(path) {
            Ok(m) => m,
            Err(e) => return fail("cannot read", e),
        },
    };
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return fail("cannot open", e),
    };
    let size = file.metadata().ok().map(|m| m.len());
    let uri = file_uri(path);
    if let Some(n) = size {
        match known.find(&mut file, n, modality) {
            Ok(Some(k)) => {
                // The same bytes as a stored object: commit its root (the store checks it
                // is still there) instead of decoding them again.
                if tx.send(Msg::Begin(SourceInfo { uri, modality, size })).is_ok() {
                    progress.bytes_done.fetch_add(n, Ordering::Relaxed);
                    let summary = ObjectSummary { source_hash: k.source_hash, size: n, occurrences: k.occurrences };
                    let _ = tx.send(Msg::End { root: k.root, summary });
                }
                return;
            }
            Ok(None) => {}
            Err(e) => return fail("cannot read", e),
        }
        if let Err(e) = std::io::Seek::rewind(&mut file) {
            return fail("cannot read", e);
        }
    }
    // Read to EOF, whatever size the file system reported: a /proc file reports 0 and a file
    // may grow or shrink while it is read. What was read is what is stored (its size and
    // hash are counted from the bytes; `size` here is only the first estimate).
    if tx.send(Msg::Begin(SourceInfo { uri, modality, size })).is_err() {
        return;
    }
    if let Err(e) = decode_stream(&mut file, modality, progress, tx) {
        fail("cannot read", e);
    }
}

/// Decode everything `reader` yields as one object of `modality` and send its batches, then
/// its root and summary, to `tx` (after the caller's `Msg::Begin`). A read error is returned
/// for the caller to report.
///
/// Decoding, the leaf stage and the node stage share the calling thread: the store's writer
/// is the other busy thread, and on two cores a third (the node stage on a thread of its
/// own, as before) cost more in handing chunks between cores than it gained (decision 0012).
fn decode_stream(
    reader: &mut dyn Read,
    modality: Modality,
    progress: &Progress,
    tx: &Sender<Msg>,
) -> std::io::Result<()> {
    let mut leaves = LeafStage::new(modality, NodeStage::new(modality, tx.clone()));
    let mut decoder = hart_decode::StaticDecoder::for_modality(modality);
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; READ_BLOCK];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                leaves.abandon();
                return Err(e);
            }
        };
        hasher.update(&buf[..n]);
        decoder.feed_with(&buf[..n], &mut leaves);
        total += n as u64;
        progress.bytes_done.fetch_add(n as u64, Ordering::Relaxed);
        if leaves.closed {
            leaves.abandon();
            return Ok(());
        }
    }
    decoder.finish_with(&mut leaves);
    let Some((root, occurrences)) = leaves.finish() else { return Ok(()) };
    let summary = ObjectSummary { source_hash: Hash(*hasher.finalize().as_bytes()), size: total, occurrences };
    let _ = tx.send(Msg::End { root, summary });
    Ok(())
}

/// Leaves and group ends handed from the leaf stage to the node stage.
#[derive(Default)]
struct Chunk {
    /// Ops of leaves not sent before; the node stage appends its composites after them.
    batch: Batch,
    /// Every leaf occurrence, in order.
    kids: Vec<Child>,
    /// Group ends: a group closes after `kids[..end]`.
    ends: Vec<u32>,
}

impl Chunk {
    fn with_capacity() -> Self {
        Chunk {
            batch: Batch::default(),
            kids: Vec::with_capacity(CHUNK_KIDS),
            ends: Vec::with_capacity(CHUNK_KIDS / 8),
        }
    }
}

/// First stage: hashes and places leaves (through a cache for leaves that repeat, such as
/// tokens), records group ends, and sends each new leaf once per file.
pub struct LeafStage {
    modality: Modality,
    grouped: bool,
    chunk: Chunk,
    emitted: SentSet,
    /// Recent tokens of up to [`SHORT_TOKEN`] bytes, and longer ones.
    short: Vec<ShortToken>,
    short_len: Vec<u8>,
    /// Every short token identified during this file (bounded): a token that lost its slot
    /// to another is found here rather than hashed again.
    short_seen: FxHashMap<([u64; 2], u8), Child>,
    leaf_cache: FxHashMap<u64, CachedLeaf>,
    occurrences: u64,
    /// Where chunks go; None once the store side went away or the input failed.
    nodes: Option<Box<NodeStage>>,
    closed: bool,
}

/// Tokens of at most this many bytes (nearly all of them) are cached in a direct-mapped
/// table keyed by their bytes, read as two words.
const SHORT_TOKEN: usize = 16;
/// Slots of that table.
const SHORT_SLOTS: usize = 1 << 15;

/// A slot of that table: one cache line. Its token's length is kept apart (`short_len`), and
/// a token in the table has been sent to the store during this file (a miss asks the sent
/// table before it fills the slot).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct ShortToken {
    /// The token's bytes, little-endian, zero-padded.
    words: [u64; 2],
    child: Child,
}

const NO_TOKEN: ShortToken = ShortToken { words: [0; 2], child: Child { hash: Hash([0; 32]), pos: ZERO_POS } };
/// `short_len` of an empty slot.
const NO_LEN: u8 = u8::MAX;
const ZERO_POS: hart_core::Position = hart_core::Position { x: 0, y: 0, z: 0, m: 0 };

/// The bytes of a token of at most 16 bytes as two little-endian words, zero-padded, read
/// with overlapping loads rather than byte by byte.
#[inline(always)]
fn short_words(v: &[u8]) -> [u64; 2] {
    let n = v.len();
    debug_assert!(n <= SHORT_TOKEN);
    let u32_at = |i: usize| u64::from(u32::from_le_bytes(v[i..i + 4].try_into().expect("4")));
    let u64_at = |i: usize| u64::from_le_bytes(v[i..i + 8].try_into().expect("8"));
    if n >= 8 {
        // Bytes 8..n: the last eight bytes shifted down past the ones already in word 0.
        let hi = if n > 8 { u64_at(n - 8) >> (8 * (16 - n)) } else { 0 };
        [u64_at(0), hi]
    } else if n >= 4 {
        [u32_at(0) | (u32_at(n - 4) << (8 * (n - 4))), 0]
    } else if n > 0 {
        let b = |i: usize| u64::from(v[i]);
        [b(0) | (b(n / 2) << (8 * (n / 2))) | (b(n - 1) << (8 * (n - 1))), 0]
    } else {
        [0, 0]
    }
}

#[inline(always)]
fn short_slot(words: [u64; 2], len: u8) -> usize {
    let h = (words[0] ^ words[1].rotate_left(29) ^ u64::from(len)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h >> (64 - SHORT_SLOTS.trailing_zeros())) as usize
}

struct CachedLeaf {
    len: u8,
    /// Already sent to the store during this file.
    sent: bool,
    bytes: [u8; hart_core::LEAF_MAX],
    child: Child,
}

impl LeafStage {
    fn new(modality: Modality, nodes: NodeStage) -> Self {
        LeafStage {
            modality,
            grouped: modality != Modality::Binary,
            chunk: Chunk::with_capacity(),
            emitted: SentSet::new(),
            short: if modality == Modality::Binary { Vec::new() } else { vec![NO_TOKEN; SHORT_SLOTS] },
            short_len: if modality == Modality::Binary { Vec::new() } else { vec![NO_LEN; SHORT_SLOTS] },
            short_seen: FxHashMap::default(),
            leaf_cache: FxHashMap::default(),
            occurrences: 0,
            nodes: Some(Box::new(nodes)),
            closed: false,
        }
    }

    /// Hash and place a leaf, and say whether it still has to be sent to the store.
    #[inline]
    fn identify(&mut self, value: &[u8]) -> (Child, bool) {
        if !self.grouped {
            let (hash, pos) = leaf_identity(self.modality, value);
            let child = Child { hash, pos };
            return (child, self.emitted.insert(hash));
        }
        if value.len() <= SHORT_TOKEN {
            let words = short_words(value);
            let len = value.len() as u8;
            let i = short_slot(words, len);
            if self.short_len[i] == len && self.short[i].words == words {
                return (self.short[i].child, false);
            }
            // A token that lost its slot to another one: seen (and sent) already.
            if let Some(&child) = self.short_seen.get(&(words, len)) {
                self.short[i] = ShortToken { words, child };
                self.short_len[i] = len;
                return (child, false);
            }
            let (hash, pos) = leaf_identity(self.modality, value);
            let child = Child { hash, pos };
            // The token may have been sent before the seen map was last cleared: ask the
            // other cache.
            let send = self.emitted.insert(hash);
            if self.short_seen.len() >= LEAF_CACHE_MAX {
                self.short_seen.clear();
            }
            self.short_seen.insert((words, len), child);
            self.short[i] = ShortToken { words, child };
            self.short_len[i] = len;
            return (child, send);
        }
        self.identify_long(value)
    }

    /// [`LeafStage::identify`] for tokens longer than [`SHORT_TOKEN`] bytes.
    #[inline(never)]
    fn identify_long(&mut self, value: &[u8]) -> (Child, bool) {
        let mut h = rustc_hash::FxBuildHasher.build_hasher();
        h.write(value);
        let k = h.finish();
        if let Some(c) = self.leaf_cache.get_mut(&k) {
            if &c.bytes[..c.len as usize] == value {
                let send = !c.sent;
                c.sent = true;
                return (c.child, send);
            }
        }
        let (hash, pos) = leaf_identity(self.modality, value);
        let child = Child { hash, pos };
        if self.leaf_cache.len() >= LEAF_CACHE_MAX {
            self.leaf_cache.clear();
        }
        let mut bytes = [0u8; hart_core::LEAF_MAX];
        bytes[..value.len()].copy_from_slice(value);
        // A token may have been sent before the cache was last cleared: ask the other cache.
        let send = self.emitted.insert(hash);
        self.leaf_cache.insert(k, CachedLeaf { len: value.len() as u8, sent: true, bytes, child });
        (child, send)
    }

    fn hand_off(&mut self) {
        if self.chunk.kids.is_empty() && self.chunk.batch.is_empty() {
            return;
        }
        let ok = match &mut self.nodes {
            Some(nodes) => nodes.consume(&mut self.chunk),
            None => false,
        };
        self.closed |= !ok;
    }

    /// End of input: the root and the count of atom occurrences, or None if the store side
    /// went away.
    fn finish(&mut self) -> Option<(Hash, u64)> {
        self.hand_off();
        let (root, nodes) = self.nodes.take()?.finish()?;
        Some((root, self.occurrences + nodes))
    }

    /// Stop without a root (input error).
    fn abandon(&mut self) {
        self.nodes = None;
    }
}

impl LeafSink for LeafStage {
    /// The common case inline (a token in the short cache, already sent): one table probe
    /// and a push; everything else out of line.
    #[inline]
    fn leaf(&mut self, value: &[u8]) {
        if self.grouped && value.len() <= SHORT_TOKEN && self.short_hit(short_words(value), value.len()) {
            return;
        }
        self.leaf_slow(value);
    }

    /// As `leaf`, reading the token as two words straight from `data` when sixteen bytes
    /// are there (no branch on its length).
    #[inline]
    fn leaf_at(&mut self, data: &[u8], start: usize, end: usize) {
        let len = end - start;
        if self.grouped && len <= SHORT_TOKEN {
            if let Some(w) = data.get(start..start + 16) {
                let word = |i: usize| u64::from_le_bytes(w[i..i + 8].try_into().expect("8"));
                let (lo, hi) = (len.min(8), len.saturating_sub(8));
                let mask = |n: usize| if n == 0 { 0 } else { u64::MAX >> (64 - 8 * n) };
                if self.short_hit([word(0) & mask(lo), word(8) & mask(hi)], len) {
                    return;
                }
                return self.leaf_slow(&data[start..end]);
            }
        }
        self.leaf(&data[start..end]);
    }

    fn end_group(&mut self) {
        self.chunk.ends.push(self.chunk.kids.len() as u32);
    }
}

impl LeafStage {
    /// A token already in the short cache and already sent: count it and push its child.
    #[inline(always)]
    fn short_hit(&mut self, words: [u64; 2], len: usize) -> bool {
        let len = len as u8;
        let i = short_slot(words, len);
        if self.short_len[i] != len || self.short[i].words != words {
            return false;
        }
        let child = self.short[i].child;
        self.occurrences += 1;
        self.chunk.kids.push(child);
        if self.chunk.kids.len() >= CHUNK_KIDS {
            self.hand_off();
        }
        true
    }

    #[inline(never)]
    fn leaf_slow(&mut self, value: &[u8]) {
        let (child, send) = self.identify(value);
        self.occurrences += 1;
        if send {
            self.chunk.batch.push_leaf(self.modality, child.hash, child.pos, value);
        }
        self.chunk.kids.push(child);
        if self.chunk.kids.len() >= CHUNK_KIDS || self.chunk.batch.len() >= BATCH_OPS {
            self.hand_off();
        }
    }
}

/// Second stage: groups (lines) and content-defined trees above them; hashes composites and
/// sends each batch — the chunk's new leaves first, then the composites built on them.
pub struct NodeStage {
    modality: Modality,
    grouped: bool,
    group: GroupBuilder,
    tree: TreeBuilder,
    emitted: SentSet,
    occurrences: u64,
    tx: Sender<Msg>,
    /// Encodings of the chunk's lines, hashed together, and their hashes.
    msgs: Messages,
    hashes: Vec<Hash>,
    /// The chunk's completed lines, for the tree.
    lines: Vec<Child>,
    /// Atoms not sent yet: a batch goes to the store once it holds [`BATCH_KIDS`] children or
    /// [`BATCH_OPS`] atoms, so that the store's per-batch work (settling the references its
    /// atoms gathered) is shared by a few chunks.
    pending: Batch,
    /// Batches the store has emptied, for reuse.
    spare_tx: Sender<Batch>,
    spare_rx: Receiver<Batch>,
}

impl NodeStage {
    fn new(modality: Modality, tx: Sender<Msg>) -> Self {
        let (spare_tx, spare_rx) = bounded(2);
        NodeStage {
            modality,
            grouped: modality != Modality::Binary,
            group: GroupBuilder::new(modality),
            tree: TreeBuilder::new(modality),
            emitted: SentSet::new(),
            occurrences: 0,
            tx,
            msgs: Messages::new(),
            hashes: Vec::new(),
            lines: Vec::new(),
            pending: Batch::default(),
            spare_tx,
            spare_rx,
        }
    }

    /// Build what `chunk` completes and send it; false if the store side went away.
    ///
    /// Lines that start and end inside the chunk and have 2..=64 tokens (nearly all of them)
    /// are hashed together first, sixteen at a time ([`Messages`]); the line that continues
    /// from the previous chunk and lines too long for one composite go through the
    /// [`GroupBuilder`] one token at a time. Composites still reach the tree and the batch in
    /// input order.
    /// The chunk's atoms join the batch being filled, which goes to the store once full (see
    /// `pending`); the chunk's buffers are left empty for reuse.
    fn consume(&mut self, chunk: &mut Chunk) -> bool {
        let mut batch = if self.pending.is_empty() {
            let spare = self.spare();
            std::mem::replace(&mut chunk.batch, spare)
        } else {
            self.pending.append(&chunk.batch);
            chunk.batch.clear();
            std::mem::take(&mut self.pending)
        };
        let (kids, ends) = (&chunk.kids, &chunk.ends);
        {
            let NodeStage { emitted, occurrences, tree, group, grouped, modality, msgs, hashes, lines, .. } = self;
            let mut sink = node_sink(&mut batch, emitted, occurrences);
            if !*grouped {
                tree.push_all(kids, msgs, hashes, &mut sink);
            } else {
                // A line whose hash is computed in the batch: it starts in this chunk (the
                // group carried from the previous chunk is empty) and fits one composite.
                let carried = !group.is_empty();
                let batched =
                    |start: usize, end: usize| (start > 0 || !carried) && (2..=MAX_FANOUT).contains(&(end - start));
                msgs.clear();
                hashes.clear();
                let mut start = 0;
                for &end in ends {
                    let end = end as usize;
                    if batched(start, end) {
                        push_node_encoding(msgs, *modality, kids[start..end].iter().map(|c| &c.hash));
                    }
                    start = end;
                }
                msgs.hash_all(hashes);
                let mut next_hash = hashes.iter();
                let mut start = 0;
                for &end in ends {
                    let end = end as usize;
                    let line = &kids[start..end];
                    let done = if batched(start, end) {
                        let hash = *next_hash.next().expect("one hash per batched line");
                        Some(make_node_hashed(*modality, line, hash, &mut sink))
                    } else {
                        for kid in line {
                            group.push(*kid, &mut sink);
                        }
                        group.finish(&mut sink)
                    };
                    if let Some(c) = done {
                        lines.push(c);
                    }
                    start = end;
                }
                for kid in &kids[start..] {
                    group.push(*kid, &mut sink);
                }
                // The tree above the lines: its lowest level hashed together too. (Its
                // composites now follow the chunk's lines in the batch, rather than come
                // between them: still each after its children.)
                tree.push_all(lines, msgs, hashes, &mut sink);
                lines.clear();
            }
        }
        chunk.kids.clear();
        chunk.ends.clear();
        if batch.kids.len() < BATCH_KIDS && batch.len() < BATCH_OPS {
            self.pending = batch;
            return true;
        }
        self.tx.send(Msg::Batch(batch, self.spare_tx.clone())).is_ok()
    }

    /// An emptied batch back from the store, or a new one.
    fn spare(&self) -> Batch {
        let mut b = self.spare_rx.try_recv().unwrap_or_default();
        b.clear();
        b
    }

    /// Close the tree: the root (the empty leaf for an empty object) and the composites'
    /// occurrences.
    fn finish(mut self) -> Option<(Hash, u64)> {
        let mut batch = std::mem::take(&mut self.pending);
        let root = {
            let modality = self.modality;
            let NodeStage { emitted, occurrences, tree, group, .. } = &mut self;
            let mut sink = node_sink(&mut batch, emitted, occurrences);
            if let Some(c) = group.finish(&mut sink) {
                tree.push(c, &mut sink);
            }
            std::mem::replace(tree, TreeBuilder::new(modality)).finish(&mut sink)
        };
        let root = match root {
            Some(c) => c.hash,
            None => {
                // An empty object's root is the empty leaf.
                let (hash, pos) = leaf_identity(self.modality, b"");
                batch.push_leaf(self.modality, hash, pos, b"");
                self.occurrences += 1;
                hash
            }
        };
        if !batch.is_empty() && self.tx.send(Msg::Batch(batch, self.spare_tx.clone())).is_err() {
            return None;
        }
        Some((root, self.occurrences))
    }
}

fn node_sink<'a>(
    batch: &'a mut Batch,
    emitted: &'a mut SentSet,
    occurrences: &'a mut u64,
) -> impl FnMut(&NodeOut<'_>) + 'a {
    move |n: &NodeOut<'_>| {
        *occurrences += 1;
        if emitted.insert(n.hash) {
            batch.push_node(n.modality, n.hash, n.pos, n.children.iter().map(|c| c.hash));
        }
    }
}

/// Atoms already sent during this file, so that a repeated one is not sent again: a
/// direct-mapped table of their hashes. It may forget an atom (which is then sent twice, and
/// the store skips the second), but never holds one it was not given.
struct SentSet {
    slots: Vec<Hash>,
}

impl SentSet {
    fn new() -> Self {
        SentSet { slots: vec![Hash::default(); SENT_SLOTS] }
    }

    /// Remember `hash`; true if it was not remembered already (send it).
    #[inline]
    fn insert(&mut self, hash: Hash) -> bool {
        let slot = &mut self.slots[(hash.prefix_u64() >> 40) as usize & (SENT_SLOTS - 1)];
        // The all-zero hash marks an empty slot; an atom with that hash is always sent.
        if *slot == hash && hash != Hash::default() {
            return false;
        }
        *slot = hash;
        true
    }
}

/// Ingest in-memory bytes as one object (tests and tools).
pub fn ingest_bytes(store: &dyn Store, uri: &str, modality: Modality, data: &[u8]) -> Result<ObjectInfo, StoreError> {
    let source = SourceInfo { uri: uri.to_string(), modality, size: Some(data.len() as u64) };
    ingest_reader(store, source, data, &Progress::default())
}

/// Ingest one object read from `reader` (a pipe, another store's `cat`, …) under `source`.
/// Decoding runs on a thread of its own, the store's writes on the calling thread, through a
/// bounded channel: memory stays bounded whatever the size.
/// A read error aborts the ingestion (its log entry is marked failed) and comes back as
/// [`StoreError::Invalid`]; `reader` is dropped before this returns, so a writer feeding it
/// sees the pipe close.
pub fn ingest_reader(
    store: &dyn Store,
    source: SourceInfo,
    mut reader: impl Read + Send,
    progress: &Progress,
) -> Result<ObjectInfo, StoreError> {
    let (tx, rx) = bounded(CHANNEL_DEPTH);
    let result = std::thread::scope(|s| {
        let (uri, modality) = (source.uri.clone(), source.modality);
        s.spawn(move || {
            if tx.send(Msg::Begin(source)).is_ok() {
                if let Err(e) = decode_stream(&mut reader, modality, progress, &tx) {
                    let _ = tx.send(Msg::Error(format!("cannot read {uri}: {e}")));
                }
            }
        });
        let result = store_file(store, &rx);
        drop(rx); // a decoder still sending (the store side failed) stops
        result
    });
    match result {
        Ok(info) => Ok(info),
        Err(FileError::Store(e)) => Err(e),
        Err(FileError::Input(e)) => Err(StoreError::Invalid(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_words_are_the_zero_padded_bytes() {
        let bytes: Vec<u8> = (1..=16).map(|i| i * 15).collect();
        for n in 0..=SHORT_TOKEN {
            let mut padded = [0u8; 16];
            padded[..n].copy_from_slice(&bytes[..n]);
            let expect = [
                u64::from_le_bytes(padded[..8].try_into().unwrap()),
                u64::from_le_bytes(padded[8..].try_into().unwrap()),
            ];
            assert_eq!(short_words(&bytes[..n]), expect, "length {n}");
        }
    }

    #[test]
    fn sent_set_forgets_but_never_invents() {
        let mut s = SentSet::new();
        let a = Hash([1; 32]);
        let mut b = a;
        b.0[31] = 2; // same slot, another atom
        assert!(s.insert(a));
        assert!(!s.insert(a));
        assert!(s.insert(b));
        assert!(s.insert(a), "a lost its slot to b: sent again");
        assert!(s.insert(Hash::default()) && s.insert(Hash::default()));
    }
}
