//! Entry points for fuzzing every parser of stored bytes (docs/decisions/0016-fuzzing.md).
//!
//! Each `fuzz_*` function takes arbitrary bytes and must return without panicking, without
//! allocating more than a small multiple of its input, and in time bounded by its input: the
//! fuzz targets in `crates/embedded/fuzz` call them, and `tests/fuzz_corpus.rs` replays the
//! kept corpus through them on every test run. Files the parsers read from disk are written
//! to a per-thread scratch directory (under `HART_FUZZ_TMP`, else `/dev/shm`, else the
//! temporary directory).
//!
//! A few guards skip inputs that reach a known, reported gap outside the parsers' own files
//! (see [`KNOWN_GAPS`]); each names the fix that removes it.

use crate::index::Run;
use crate::log::{Log, LogPos, FRAME_HEADER, FRAME_MAGIC};
use crate::record::{self, Rec};
use crate::state::State;
use crate::{EmbeddedStore, OpenOptions};
use hart_core::{Hash, Modality};
use hart_store::{SourceInfo, Status, Store};
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A fuzzing entry point.
pub type Target = fn(&[u8]);

/// The targets, by name: the corpus directory `crates/embedded/fuzz/corpus/<name>/` and the
/// fuzz target of the same name replay through each.
pub const TARGETS: &[(&str, Target)] = &[
    ("record", fuzz_record),
    ("frames", fuzz_frames),
    ("run", fuzz_run),
    ("state", fuzz_state),
    ("manifest", fuzz_manifest),
    ("store", fuzz_store),
];

/// Known gaps outside the parsers' own files, each reported with its fix (and shown by an
/// ignored test in `tests/fuzz_corpus.rs`). The harness skips the inputs that reach G1 and the
/// `stats` part of G2, so that fuzzing goes on past them; the other two parts of G2 are not
/// guarded, and a fuzzer that reaches them reports them.
pub const KNOWN_GAPS: &[&str] = &[
    "G1 lib.rs cat/fsck: a walk of a crafted DAG of small records can visit 2^k atoms \
     (childless composites and empty leaves write nothing, so no output limit stops it)",
    "G2 lib.rs: u64 arithmetic on numbers read from disk overflows: the sum of object sizes in \
     stats (guarded), object id + 1 in replay, counters - 1 when gc is replayed",
];

/// Atom visits allowed to the walks of `cat` and `fsck` on one input (guard G1).
const WALK_BUDGET: u64 = 1 << 16;

// ---------------------------------------------------------------------------------------
// Scratch directories

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

thread_local! {
    static SCRATCH: Scratch = Scratch(new_scratch());
    static TEMPLATE: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
}

fn new_scratch() -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let base = match std::env::var_os("HART_FUZZ_TMP") {
        Some(d) => PathBuf::from(d),
        None if Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
        None => std::env::temp_dir(),
    };
    let dir = base.join(format!("hart-fuzz-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&dir).expect("create the fuzzing scratch directory");
    dir
}

/// An empty directory `name` in this thread's scratch directory.
fn fresh(name: &str) -> PathBuf {
    let d = SCRATCH.with(|s| s.0.join(name));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create a scratch directory");
    d
}

fn write(path: &Path, bytes: &[u8]) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).expect("create a scratch directory");
    }
    std::fs::write(path, bytes).expect("write a scratch file");
}

// ---------------------------------------------------------------------------------------
// record

/// One record, or a payload of several: `own offset u64 LE ‖ bytes` (a shorter input is all
/// bytes, at offset 2^40). Decoding must not panic, and what it returns must be consistent.
pub fn fuzz_record(data: &[u8]) {
    let (own, b) = match data.split_first_chunk::<8>() {
        Some((o, rest)) => (u64::from_le_bytes(*o), rest),
        None => (1 << 40, data),
    };
    let mut p = 0;
    while p < b.len() {
        let Some((rec, len)) = record::decode(&b[p..], own.wrapping_add(p as u64)) else { break };
        assert!(len > 0 && len <= b.len() - p, "record length {len} at {p} of {}", b.len());
        // A peek at a record agrees with its decoding.
        match (&rec, record::peek(&b[p..])) {
            (Rec::Leaf { modality, value }, record::Peek::Leaf { modality: m, value: v }) => {
                assert_eq!((*modality, *value), (m, v), "peeked leaf");
            }
            (Rec::Node { hash, .. }, record::Peek::Node { hash: h }) => assert_eq!(*hash, h, "peeked hash"),
            (Rec::Leaf { .. } | Rec::Node { .. }, _) => panic!("peek disagrees with decode at {p}"),
            _ => {}
        }
        check_record(&rec, own.wrapping_add(p as u64));
        if let Rec::Node { modality, hash, children, .. } = rec {
            let (m, h, unchecked) = record::node_unchecked(&b[p..], own.wrapping_add(p as u64)).expect("a node");
            assert_eq!((m, h), (modality, hash), "unchecked node header");
            assert!(unchecked.eq(children), "unchecked children of a well-formed node");
        }
        p += len;
    }
    // Unchecked reading of whatever the bytes are: children strictly below, at most n of them.
    if let Some((_, _, children)) = record::node_unchecked(b, own) {
        let n = children.n;
        assert!(children.inspect(|&c| assert!(c < own, "unchecked child {c} of {own}")).count() <= n);
    }
}

fn check_record(rec: &Rec<'_>, own: u64) {
    match *rec {
        Rec::Leaf { value, .. } => assert!(value.len() <= hart_core::LEAF_MAX),
        Rec::Node { children, .. } => {
            let n = children.n;
            let mut seen = 0;
            for c in children {
                assert!(c < own, "child {c} of the record at {own}");
                seen += 1;
            }
            assert_eq!(seen, n, "children decoded");
        }
        Rec::Gc { offsets } => assert_eq!(offsets.count(), offsets.n),
        Rec::ObjBegin { .. }
        | Rec::ObjCommit { .. }
        | Rec::ObjFail { .. }
        | Rec::ObjDelete { .. }
        | Rec::Heal { .. } => {}
    }
}

// ---------------------------------------------------------------------------------------
// frames

/// The input is a log segment (with the first byte odd, two: split in the middle). Scanning
/// it, as a replay does, must stop at the first bad frame, and agree with a scan started at
/// any frame boundary it found; every record of every good frame is decoded.
pub fn fuzz_frames(data: &[u8]) {
    let dir = fresh("frames");
    let split = if data.first().is_some_and(|b| b & 1 == 1) { data.len() / 2 } else { data.len() };
    write(&dir.join("00000000.seg"), &data[..split]);
    if split < data.len() {
        write(&dir.join("00000001.seg"), &data[split..]);
    }
    let Ok(mut log) = Log::open(&dir, false) else { return };
    let mut starts = Vec::new();
    let end = log.scan(LogPos::default(), &mut |base, payload| {
        starts.push(base - FRAME_HEADER as u64);
        decode_payload(base, payload);
        Ok(())
    });
    let end = end.expect("a scan that visits without error cannot fail");
    let seg_len = |s: u32| if s == 0 { split } else { data.len() - split } as u64;
    assert!(end.off <= seg_len(end.seg), "scan ended at {end:?} past the segment");
    for &s in starts.iter().take(16) {
        let from = LogPos { seg: (s >> 32) as u32, off: s & 0xffff_ffff };
        let again = log.scan(from, &mut |_, _| Ok(())).expect("scan");
        assert_eq!(again, end, "a scan from the frame at {from:?} ends elsewhere");
    }
    // Reading past damage (what a replay does): the good frames include the scan's, the
    // damaged stretches lie inside the segments, in order, between them.
    let mut good = Vec::new();
    let mut bad: Vec<crate::log::BadStretch> = Vec::new();
    let all_end = log
        .scan_all(
            LogPos::default(),
            &mut |base, payload| {
                good.push(base - FRAME_HEADER as u64);
                decode_payload(base, payload);
                Ok(())
            },
            &mut |b| bad.push(b),
        )
        .expect("a scan that visits without error cannot fail");
    assert!(all_end.off <= seg_len(all_end.seg), "read past the segment");
    assert!(starts.iter().all(|s| good.contains(s)), "a frame the scan read was skipped");
    for b in &bad {
        assert!(b.len > 0 && b.off + b.len <= seg_len(b.seg), "stretch {b:?} outside its segment");
    }
    assert!(bad.windows(2).all(|w| (w[0].seg, w[0].off + w[0].len) <= (w[1].seg, w[1].off)), "stretches overlap");
    log.set_end(end);
    // Reads at arbitrary offsets (what a corrupt index or child delta points at).
    for o in (0..data.len() as u64).step_by(7).take(512) {
        for o in [o, 1 << 32 | o] {
            if let Some(b) = log.at(o) {
                if let Some((rec, len)) = record::decode(b, o) {
                    assert!(len <= b.len());
                    check_record(&rec, o);
                }
            }
        }
    }
}

fn decode_payload(base: u64, payload: &[u8]) {
    let mut p = 0;
    while p < payload.len() {
        let Some((rec, len)) = record::decode(&payload[p..], base + p as u64) else { return };
        check_record(&rec, base + p as u64);
        p += len;
    }
}

// ---------------------------------------------------------------------------------------
// run

/// The input is an index run file, opened as a hash run (K = 16) and as a key run (K = 8):
/// opening, verifying, streaming and every kind of lookup must not panic.
pub fn fuzz_run(data: &[u8]) {
    let dir = fresh("run");
    let path = dir.join("hash-00000001.run");
    write(&path, data);
    exercise_run::<16>(&path, data);
    exercise_run::<8>(&path, data);
}

fn exercise_run<const K: usize>(path: &Path, data: &[u8]) {
    let Ok(run) = Run::<K>::open(path, 1) else { return };
    let _ = run.verify();
    let n = run.stream().map(|s| s.count()).unwrap_or(run.len());
    assert_eq!(n, run.len(), "streamed entries");
    // Keys to look up: the fences and their neighbours, some entries, the extremes, and
    // windows of the input itself.
    let mut keys: Vec<[u8; K]> = vec![[0; K], [0xff; K]];
    for f in run.fence_keys().into_iter().take(64) {
        let mut up = f;
        let mut down = f;
        if let Some(b) = up.iter_mut().rev().find(|b| **b != 0xff) {
            *b += 1;
        }
        if let Some(b) = down.iter_mut().rev().find(|b| **b != 0) {
            *b -= 1;
        }
        keys.extend([f, up, down]);
    }
    keys.extend(data.windows(K).step_by(13).take(64).map(|w| <[u8; K]>::try_from(w).expect("K")));
    let mut out = Vec::new();
    for k in &keys {
        out.clear();
        run.find(k, &mut out);
        assert!(out.len() <= run.len());
        run.find_prefix_pread(&k[..K.min(8)], &mut out).expect("read a run just written");
        let mut range = Vec::new();
        run.range(k, &[0xff; K], 64, &mut range);
        assert!(range.len() <= 64);
    }
}

// ---------------------------------------------------------------------------------------
// state

/// The input is a state checkpoint, loaded as it is and with its CRC appended (so that the
/// fuzzer reaches past the checksum). A loaded state must save and load back the same.
pub fn fuzz_state(data: &[u8]) {
    let dir = fresh("state");
    let path = dir.join("state-00000001.bin");
    let mut fixed = data.to_vec();
    fixed.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    for bytes in [data, &fixed[..]] {
        write(&path, bytes);
        let Ok(state) = State::load(&path) else { continue };
        let _ = state.garbage();
        let again = dir.join("state-00000002.bin");
        state.save(&again).expect("save a loaded state");
        let back = State::load(&again).expect("load a saved state");
        assert_eq!(back.refs, state.refs);
        assert_eq!(back.objects.len(), state.objects.len());
        assert_eq!(back.next_object, state.next_object);
    }
}

// ---------------------------------------------------------------------------------------
// manifest

/// The input is a `MANIFEST`, placed in a small real store (made once per thread), which is
/// then opened for reading and queried.
pub fn fuzz_manifest(data: &[u8]) {
    let dir = template();
    write(&dir.join("MANIFEST"), data);
    let view = ManifestView::parse(data);
    exercise(&dir, &view, false);
}

/// The store `fuzz_manifest` places its manifests in: three small text objects ingested in
/// three sessions (several runs, a state), one of them removed and collected.
pub fn template() -> PathBuf {
    TEMPLATE.with(|t| {
        if let Some(d) = &*t.borrow() {
            return d.clone();
        }
        let dir = fresh("template");
        make_store(&dir, &[b"one two three\nfour five six\n", b"one two three\nseven\n", b"abc abc abc\n"], true);
        // Keep the store's own manifest beside it, for seeds and for tests.
        std::fs::copy(dir.join("MANIFEST"), dir.join("MANIFEST.orig")).expect("copy the manifest");
        *t.borrow_mut() = Some(dir.clone());
        dir
    })
}

/// Make a store in `dir` from `texts`, one session each (so one checkpoint each); with
/// `remove`, the first object is then removed and collected.
pub fn make_store(dir: &Path, texts: &[&[u8]], remove: bool) {
    for (i, t) in texts.iter().enumerate() {
        let store = EmbeddedStore::open(dir).expect("open a new store");
        let source = SourceInfo { uri: format!("mem://{i}"), modality: Modality::Text, size: Some(t.len() as u64) };
        hart_store::ingest::ingest_reader(&store, source, *t, &Default::default()).expect("ingest");
        store.close().expect("close");
    }
    if remove {
        let store = EmbeddedStore::open(dir).expect("open");
        let first = store.objects().expect("objects").first().map(|o| o.id);
        if let Some(id) = first {
            store.delete_object(id).expect("delete");
            store.gc().expect("gc");
        }
        store.close().expect("close");
    }
}

// ---------------------------------------------------------------------------------------
// store

/// The flags byte of a [`fuzz_store`] input that also opens the store as a writer.
pub const WRITER: u8 = b'W';

/// Section tags of a [`fuzz_store`] input (the tag byte modulo 8).
pub mod tag {
    /// `MANIFEST`, as it is.
    pub const MANIFEST: u8 = 0;
    /// A manifest built by the harness: generation u8, log segment u8, log offset u32 LE,
    /// state generation u8 (0: none), hash-run count u8 and ids u8, key-run count u8 and ids.
    pub const MANIFEST_COMPACT: u8 = 1;
    /// A frame appended to the current segment: the harness writes its header and CRC.
    pub const FRAME: u8 = 2;
    /// Bytes appended to the current segment as they are.
    pub const RAW: u8 = 3;
    /// Start the next segment (the section's bytes are ignored).
    pub const SEGMENT: u8 = 4;
    /// A state checkpoint: generation u8, then its body; the harness appends the CRC.
    pub const STATE: u8 = 5;
    /// A hash-index run: id u8, then the file as it is.
    pub const HASH_RUN: u8 = 6;
    /// A key-index run: id u8, then the file as it is.
    pub const KEY_RUN: u8 = 7;
}

/// The input is a tiny store directory: a flags byte (`W`: also open it as a writer, which
/// recovers it, and read it again; anything else: read only, as a writer's open costs some
/// 20 ms of clearing pre-sized tables), then sections `tag u8 ‖ length u32 LE ‖ bytes` (see [`tag`]; a section
/// longer than what is left takes what is left). Without a manifest section the harness
/// writes one naming every state and run present and the log from its start. The store is
/// opened for reading, replayed, and queried (objects, stats, get by hash and by key, prefix
/// search, cat of every object, fsck).
pub fn fuzz_store(data: &[u8]) {
    let dir = fresh("store");
    let Some((&flags, mut rest)) = data.split_first() else { return };
    let mut segs: Vec<Vec<u8>> = vec![Vec::new()];
    let mut manifest: Option<Vec<u8>> = None;
    let (mut states, mut hash_runs, mut key_runs) = (Vec::new(), Vec::new(), Vec::new());
    while let Some((&t, r)) = rest.split_first() {
        let (len, r) = match r.split_first_chunk::<4>() {
            Some((l, r)) => (u32::from_le_bytes(*l) as usize, r),
            None => (r.len(), &r[r.len()..]),
        };
        let (body, r) = r.split_at(len.min(r.len()));
        rest = r;
        match t % 8 {
            tag::MANIFEST => manifest = Some(body.to_vec()),
            tag::MANIFEST_COMPACT => manifest = Some(compact_manifest(body)),
            tag::FRAME => {
                let seg = segs.last_mut().expect("a segment");
                seg.extend_from_slice(&FRAME_MAGIC.to_le_bytes());
                seg.extend_from_slice(&(body.len() as u32).to_le_bytes());
                seg.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
                seg.extend_from_slice(body);
            }
            tag::RAW => segs.last_mut().expect("a segment").extend_from_slice(body),
            tag::SEGMENT => segs.push(Vec::new()),
            tag::STATE => {
                let (g, b) = body.split_first().map_or((0, body), |(g, b)| (*g, b));
                let mut f = b.to_vec();
                f.extend_from_slice(&crc32fast::hash(b).to_le_bytes());
                write(&dir.join("state").join(format!("state-{g:08}.bin")), &f);
                states.push(g);
            }
            t => {
                let (id, b) = body.split_first().map_or((0, body), |(i, b)| (*i, b));
                let prefix = if t == tag::HASH_RUN { "hash" } else { "key" };
                write(&dir.join("index").join(format!("{prefix}-{id:08}.run")), b);
                if t == tag::HASH_RUN { &mut hash_runs } else { &mut key_runs }.push(u64::from(id));
            }
        }
    }
    for (i, s) in segs.iter().enumerate() {
        if !(s.is_empty() && segs.len() == 1) {
            write(&dir.join("log").join(format!("{i:08}.seg")), s);
        }
    }
    std::fs::create_dir_all(dir.join("index")).expect("index dir");
    std::fs::create_dir_all(dir.join("state")).expect("state dir");
    let manifest = manifest.unwrap_or_else(|| {
        hash_runs.dedup();
        key_runs.dedup();
        let next = hash_runs.iter().chain(&key_runs).max().map_or(1, |m| m + 1);
        let state = states.iter().max().map(|g| u64::from(*g));
        format!(
            r#"{{"format":1,"generation":1,"log":{{"seg":0,"off":0}},"state":{},"hash_runs":{:?},"key_runs":{:?},"next_run":{next}}}"#,
            state.map_or("null".to_string(), |g| g.to_string()),
            hash_runs,
            key_runs,
        )
        .into_bytes()
    });
    write(&dir.join("MANIFEST"), &manifest);
    let view = ManifestView::parse(&manifest);
    exercise(&dir, &view, flags == WRITER);
}

fn compact_manifest(b: &[u8]) -> Vec<u8> {
    let mut it = b.iter().copied();
    let mut next = || it.next().unwrap_or(0);
    let generation = next();
    let seg = next();
    let off = u32::from_le_bytes([next(), next(), next(), next()]);
    let state = next();
    let hash: Vec<u8> = (0..next() % 16).map(|_| next()).collect();
    let key: Vec<u8> = (0..next() % 16).map(|_| next()).collect();
    let state = if state == 0 { "null".to_string() } else { state.to_string() };
    format!(
        r#"{{"format":1,"generation":{generation},"log":{{"seg":{seg},"off":{off}}},"state":{state},"hash_runs":{hash:?},"key_runs":{key:?},"next_run":256}}"#
    )
    .into_bytes()
}

/// What the guards need of a manifest, read leniently (the store reads it strictly).
struct ManifestView {
    /// Files it names, relative to the store.
    files: Vec<String>,
}

impl ManifestView {
    fn parse(b: &[u8]) -> Self {
        let v: Option<serde_json::Value> = serde_json::from_slice(b).ok();
        let mut files = Vec::new();
        if let Some(v) = &v {
            if let Some(g) = v.get("state").and_then(|g| g.as_u64()) {
                files.push(format!("state/state-{g:08}.bin"));
            }
            for prefix in ["hash", "key"] {
                let ids = v.get(format!("{prefix}_runs")).and_then(|r| r.as_array().cloned()).unwrap_or_default();
                files.extend(ids.iter().filter_map(|i| i.as_u64()).map(|i| format!("index/{prefix}-{i:08}.run")));
            }
        }
        ManifestView { files }
    }
}

/// Open the store in `dir` for reading and query it; with `writer`, then open it as a writer
/// (recovery), and read it again.
fn exercise(dir: &Path, view: &ManifestView, writer: bool) {
    read(dir, view);
    if !writer {
        return;
    }
    let store = match EmbeddedStore::open(dir) {
        Ok(s) => s,
        Err(e) => return verbose(&format!("open as a writer: {e}")),
    };
    query(&store, dir);
    let _ = store.close();
    let view = ManifestView::parse(&std::fs::read(dir.join("MANIFEST")).unwrap_or_default());
    read(dir, &view);
}

/// Open the store for reading and query it.
fn read(dir: &Path, view: &ManifestView) {
    // Not a gap, a cost: a reader that finds a named file missing retries for 100 ms (it may
    // have raced a writer's checkpoint), so such inputs are not opened for reading.
    if !view.files.iter().all(|f| dir.join(f).is_file()) {
        return verbose("a named file is missing: not opened for reading");
    }
    match EmbeddedStore::open_with(dir, OpenOptions { read_only: true, ..Default::default() }) {
        Ok(store) => query(&store, dir),
        Err(e) => verbose(&format!("open: {e}")),
    }
}

/// With `HART_FUZZ_VERBOSE` set, say what happened to an input (to check that a corpus
/// reaches what it should).
fn verbose(what: &str) {
    if std::env::var_os("HART_FUZZ_VERBOSE").is_some() {
        eprintln!("fuzzing: {what}");
    }
}

fn query(store: &EmbeddedStore, dir: &Path) {
    let objects = store.objects().unwrap_or_default();
    // G2: the sum of completed objects' sizes overflows in `stats`.
    if objects.iter().filter(|o| o.status == Status::Completed).try_fold(0u64, |a, o| a.checked_add(o.size)).is_some() {
        let _ = store.stats();
    }
    let roots: Vec<Hash> = objects.iter().filter_map(|o| o.root).take(16).collect();
    for r in &roots {
        if let Ok(Some(rec)) = store.get(r) {
            let _ = store.get_by_key(&rec.key);
            for c in rec.children.iter().take(8) {
                let _ = store.get(c);
            }
        }
        let _ = store.find_prefix(&r.to_hex()[..3], 8);
    }
    let _ = store.find_prefix("0", 8);
    // G1: walks that a crafted DAG makes exponential.
    let completed = objects.iter().filter(|o| o.status == Status::Completed).count() as u64;
    if walk_bound(dir).saturating_mul(completed + roots.len() as u64 + 1) > WALK_BUDGET {
        return verbose("walks skipped (G1)");
    }
    for r in &roots {
        let cat = store.cat(r, &mut std::io::sink());
        verbose(&format!("cat {}: {cat:?}", &r.to_hex()[..8]));
    }
    let fsck = store.fsck(&|_, _| {});
    verbose(&format!(
        "{} objects, fsck: {}",
        objects.len(),
        fsck.map_or_else(|e| e.to_string(), |r| format!("{} atoms, {} problems", r.atoms_checked, r.problems.len()))
    ));
}

/// An upper bound on the atoms one walk of `cat` may visit, from any offset of the log (a
/// walk starts at an offset found in a run, in the state or in a record, and a child delta
/// can point anywhere): one pass in log order, as children precede their parents.
fn walk_bound(dir: &Path) -> u64 {
    let Ok(log) = Log::open(&dir.join("log"), false) else { return 0 };
    let mut segs: Vec<Vec<u64>> = Vec::new();
    let mut worst = 1;
    loop {
        let s = segs.len();
        let Ok(meta) = std::fs::metadata(dir.join("log").join(format!("{s:08}.seg"))) else { break };
        let mut v = vec![1u64; meta.len() as usize];
        for pos in 0..v.len() {
            let o = (s as u64) << 32 | pos as u64;
            let Some(b) = log.at(o).filter(|b| b.first() == Some(&record::NODE)) else { continue };
            // The walks read children unchecked (up to a bad delta): as many as decoding, or more.
            let Some((_, _, children)) = record::node_unchecked(b, o) else { continue };
            let mut t = 1u64;
            for c in children {
                let (cs, cp) = crate::log::split(c);
                let seen = if cs == s { v.get(cp) } else { segs.get(cs).and_then(|x| x.get(cp)) };
                t = t.saturating_add(seen.copied().unwrap_or(1));
            }
            v[pos] = t.min(WALK_BUDGET + 1);
            worst = worst.max(v[pos]);
        }
        segs.push(v);
    }
    worst
}

// ---------------------------------------------------------------------------------------
// Seeds

/// Serialize the store in `dir` as a [`fuzz_store`] input (raw manifest, frames re-framed
/// by the harness, states without their CRC, runs as they are).
pub fn store_input(dir: &Path, flags: u8) -> Vec<u8> {
    let mut out = vec![flags];
    out.extend(store_sections(dir, true));
    out
}

/// The sections of [`store_input`] (with or without the manifest).
fn store_sections(dir: &Path, manifest: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut section = |t: u8, b: &[u8]| {
        out.push(t);
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    };
    if let Some(m) = std::fs::read(dir.join("MANIFEST")).ok().filter(|_| manifest) {
        section(tag::MANIFEST, &m);
    }
    let mut s = 0;
    while let Ok(seg) = std::fs::read(dir.join("log").join(format!("{s:08}.seg"))) {
        if s > 0 {
            section(tag::SEGMENT, &[]);
        }
        let mut p = 0;
        while p + FRAME_HEADER <= seg.len() {
            let len = u32::from_le_bytes(seg[p + 4..p + 8].try_into().expect("4")) as usize;
            let Some(payload) = seg.get(p + FRAME_HEADER..p + FRAME_HEADER + len) else { break };
            section(tag::FRAME, payload);
            p += FRAME_HEADER + len;
        }
        if p < seg.len() {
            section(tag::RAW, &seg[p..]);
        }
        s += 1;
    }
    for (sub, t) in [("state", tag::STATE), ("index", tag::HASH_RUN)] {
        let Ok(rd) = std::fs::read_dir(dir.join(sub)) else { continue };
        let mut names: Vec<String> = rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        for name in names {
            let Ok(b) = std::fs::read(dir.join(sub).join(&name)) else { continue };
            let num = |s: &str| s.trim_end_matches(|c: char| !c.is_ascii_digit()).parse::<u64>().ok();
            let (t, id) = match name.split_once('-') {
                Some(("state", n)) => (t, num(n)),
                Some(("hash", n)) => (tag::HASH_RUN, num(n)),
                Some(("key", n)) => (tag::KEY_RUN, num(n)),
                _ => continue,
            };
            let Some(id) = id.and_then(|i| u8::try_from(i).ok()) else { continue };
            let body = if t == tag::STATE { &b[..b.len().saturating_sub(4)] } else { &b[..] };
            let mut v = vec![id];
            v.extend_from_slice(body);
            section(t, &v);
        }
    }
    out
}

/// Seed inputs for every target, cut from the real store in `store` (made from the files in
/// `files`) and from tiny stores made here from pieces of those files: `(target, file name,
/// bytes)`.
pub fn seeds(store: &Path, files: &Path) -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out: Vec<(&'static str, String, Vec<u8>)> = Vec::new();
    let mut add = |t: &'static str, name: String, b: Vec<u8>| out.push((t, name, b));

    // Records and frames from the real log.
    let log = Log::open(&store.join("log"), false).expect("open the real store's log");
    let mut recs: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut small_frames: Vec<Vec<u8>> = Vec::new();
    log.scan(LogPos::default(), &mut |base, payload| {
        if payload.len() <= 4096 && small_frames.len() < 8 {
            let mut f = FRAME_MAGIC.to_le_bytes().to_vec();
            f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            f.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
            f.extend_from_slice(payload);
            small_frames.push(f);
        }
        let mut p = 0;
        while let Some((_, len)) = record::decode(&payload[p..], base + p as u64) {
            recs.push((base + p as u64, payload[p..p + len].to_vec()));
            p += len;
            if p >= payload.len() {
                break;
            }
        }
        Ok(())
    })
    .expect("scan the real store's log");
    let mut per_tag: HashMap<u8, usize> = HashMap::new();
    for (off, b) in &recs {
        let n = per_tag.entry(b[0]).or_default();
        let keep = if b[0] == record::NODE { 24 } else { 6 };
        if *n < keep {
            *n += 1;
            let mut v = off.to_le_bytes().to_vec();
            v.extend_from_slice(b);
            add("record", format!("tag{:02x}-{n:02}", b[0]), v);
        }
    }
    // Runs of consecutive records, as a payload.
    for (i, w) in recs.chunks(40).step_by(97).take(8).enumerate() {
        let mut v = w[0].0.to_le_bytes().to_vec();
        w.iter().for_each(|(_, b)| v.extend_from_slice(b));
        v.truncate(2048);
        add("record", format!("payload-{i:02}"), v);
    }
    // Frames: small real frames, and new frames around consecutive records (each segment
    // one to three frames, some with a torn tail).
    let frame = |payload: &[u8]| {
        let mut f = FRAME_MAGIC.to_le_bytes().to_vec();
        f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        f.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        f.extend_from_slice(payload);
        f
    };
    for (i, f) in small_frames.iter().enumerate() {
        add("frames", format!("real-{i:02}"), f.clone());
    }
    for (i, w) in recs.chunks(30).step_by(17).take(12).enumerate() {
        let mut seg = Vec::new();
        for part in w.chunks(10) {
            let payload: Vec<u8> = part.iter().flat_map(|(_, b)| b.iter().copied()).collect();
            seg.extend_from_slice(&frame(&payload[..payload.len().min(1500)]));
        }
        if i % 4 == 3 {
            let torn = seg.len() - 7;
            seg.truncate(torn);
        }
        add("frames", format!("cut-{i:02}"), seg);
    }

    // Runs: subsets of the real runs' entries, written as runs of their own.
    let scratch = fresh("seeds");
    let mut run_seeds = |prefix: &str, sizes: &[usize]| {
        let Ok(rd) = std::fs::read_dir(store.join("index")) else { return };
        let path = rd
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{prefix}-"))));
        let Some(path) = path else { return };
        let all: Vec<(Vec<u8>, u64)> = if prefix == "hash" {
            let r = Run::<16>::open(&path, 0).expect("a real hash run");
            r.stream().expect("stream").map(|(k, v)| (k.to_vec(), v)).collect()
        } else {
            let r = Run::<8>::open(&path, 0).expect("a real key run");
            r.stream().expect("stream").map(|(k, v)| (k.to_vec(), v)).collect()
        };
        for (i, &n) in sizes.iter().enumerate() {
            let step = (all.len() / n.max(1)).max(1);
            let pick: Vec<(Vec<u8>, u64)> = all.iter().step_by(step).take(n).cloned().collect();
            let id = 100 + i as u64;
            let cap = if i % 3 == 2 { 5 << 20 } else { pick.len() };
            let p = if prefix == "hash" {
                let e = pick.iter().map(|(k, v)| (<[u8; 16]>::try_from(&k[..]).expect("16"), *v));
                Run::<16>::write(&scratch, id, prefix, cap, e).expect("write a seed run").path
            } else {
                let e = pick.iter().map(|(k, v)| (<[u8; 8]>::try_from(&k[..]).expect("8"), *v));
                Run::<8>::write(&scratch, id, prefix, cap, e).expect("write a seed run").path
            };
            add("run", format!("{prefix}-{n:04}-{i}"), std::fs::read(&p).expect("read a seed run"));
        }
    };
    run_seeds("hash", &[0, 1, 2, 127, 128, 129, 200, 257]);
    run_seeds("key", &[1, 3, 128, 130, 300]);

    // State: the real checkpoint, cut down (some objects, some counts), whole and without
    // its CRC (the target appends one).
    if let Some(g) = std::fs::read(store.join("MANIFEST"))
        .ok()
        .and_then(|m| serde_json::from_slice::<serde_json::Value>(&m).ok())
        .and_then(|m| m.get("state")?.as_u64())
    {
        let mut st = State::load(&store.join("state").join(format!("state-{g:08}.bin"))).expect("the real state");
        for (i, (objs, refs)) in [(0usize, 0usize), (1, 3), (4, 40), (12, 120)].into_iter().enumerate() {
            let mut s = State { next_object: st.next_object, counters: st.counters.clone(), ..State::default() };
            s.objects = std::mem::take(&mut st.objects);
            let keep: Vec<u64> = s.objects.keys().copied().take(objs).collect();
            let objects = std::mem::take(&mut s.objects);
            s.objects = objects.iter().filter(|(k, _)| keep.contains(k)).map(|(k, v)| (*k, v.clone())).collect();
            st.objects = objects;
            let mut refs_sorted: Vec<(u64, u32)> = st.refs.iter().map(|(&o, &n)| (o, n)).collect();
            refs_sorted.sort_unstable();
            s.refs = refs_sorted.into_iter().take(refs).collect();
            let p = scratch.join(format!("state-{i}.bin"));
            s.save(&p).expect("save a seed state");
            let b = std::fs::read(&p).expect("read a seed state");
            add("state", format!("whole-{i}"), b.clone());
            add("state", format!("body-{i}"), b[..b.len() - 4].to_vec());
        }
    }

    // Manifests: the template's own, variants of it, and the real store's.
    let t = template();
    let orig = std::fs::read(t.join("MANIFEST.orig")).expect("the template's manifest");
    add("manifest", "template".into(), orig.clone());
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&orig) {
        let variant = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v = v.clone();
            f(&mut v);
            serde_json::to_vec(&v).expect("json")
        };
        add("manifest", "no-state".into(), variant(&|v| v["state"] = serde_json::Value::Null));
        add(
            "manifest",
            "no-runs".into(),
            variant(&|v| {
                v["hash_runs"] = serde_json::json!([]);
                v["key_runs"] = serde_json::json!([]);
            }),
        );
        add("manifest", "from-start".into(), variant(&|v| v["log"] = serde_json::json!({"seg": 0, "off": 0})));
        add("manifest", "compact".into(), serde_json::to_vec(&v).expect("json"));
    }
    if let Ok(m) = std::fs::read(store.join("MANIFEST")) {
        add("manifest", "real".into(), m);
    }

    // Stores: tiny real stores from pieces of the files.
    let mut texts: Vec<Vec<u8>> = Vec::new();
    if let Ok(rd) = std::fs::read_dir(files) {
        let mut paths: Vec<PathBuf> = rd.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
        paths.sort();
        for p in paths.iter().take(8) {
            let b = std::fs::read(p).unwrap_or_default();
            texts.push(b[..b.len().min(400)].to_vec());
        }
    }
    if texts.len() < 3 {
        texts = vec![b"one two\n".to_vec(), b"two three\n".to_vec(), b"four\n".to_vec()];
    }
    let refs: Vec<&[u8]> = texts.iter().map(|t| &t[..]).collect();
    let mk = |name: &str, texts: &[&[u8]], remove: bool| {
        let d = scratch.join(name);
        let _ = std::fs::remove_dir_all(&d);
        make_store(&d, texts, remove);
        d
    };
    let one = mk("one", &refs[..1], false);
    add("store", "one".into(), store_input(&one, 0));
    add("store", "one-writer".into(), store_input(&one, WRITER));
    let two = mk("two", &refs[..2], false);
    add("store", "two".into(), store_input(&two, 0));
    let gc = mk("gc", &refs[..3], true);
    add("store", "gc".into(), store_input(&gc, 0));
    add("store", "gc-writer".into(), store_input(&gc, WRITER));
    let shared = mk("shared", &[refs[0], refs[0], refs[1]], true);
    add("store", "shared".into(), store_input(&shared, WRITER));
    // An interrupted ingest (failed on reopen), and a log tail past the checkpoint: the log
    // of a later store with the manifest, state and runs of an earlier one.
    let failed = mk("failed", &refs[..1], false);
    {
        let s = EmbeddedStore::open(&failed).expect("open");
        let source = SourceInfo { uri: "mem://abandoned".into(), modality: Modality::Text, size: None };
        drop(s.begin(source).expect("begin"));
        s.close().expect("close");
    }
    add("store", "failed".into(), store_input(&failed, 0));
    let early = mk("early", &refs[..1], false);
    let tail = scratch.join("tail");
    let _ = std::fs::remove_dir_all(&tail);
    for sub in ["index", "state"] {
        std::fs::create_dir_all(tail.join(sub)).expect("dir");
        for e in std::fs::read_dir(early.join(sub)).expect("read").flatten() {
            std::fs::copy(e.path(), tail.join(sub).join(e.file_name())).expect("copy");
        }
    }
    std::fs::copy(early.join("MANIFEST"), tail.join("MANIFEST")).expect("copy");
    std::fs::create_dir_all(tail.join("log")).expect("dir");
    // The log of a store that went on after the early one's checkpoint (same first object).
    let later = mk("later", &[refs[0], refs[2]], false);
    for e in std::fs::read_dir(later.join("log")).expect("read").flatten() {
        std::fs::copy(e.path(), tail.join("log").join(e.file_name())).expect("copy");
    }
    add("store", "tail".into(), store_input(&tail, 0));
    add("store", "tail-writer".into(), store_input(&tail, WRITER));
    // Harness-built manifests: compact, and none at all.
    let mut compact = store_sections(&one, false);
    compact.splice(0..0, [0u8, tag::MANIFEST_COMPACT, 9, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
    add("store", "compact".into(), compact);
    let mut bare = vec![0u8];
    for e in std::fs::read_dir(one.join("log")).expect("read").flatten() {
        let seg = std::fs::read(e.path()).expect("read");
        bare.push(tag::RAW);
        bare.extend_from_slice(&(seg.len() as u32).to_le_bytes());
        bare.extend_from_slice(&seg);
    }
    add("store", "log-only".into(), bare);
    out
}
