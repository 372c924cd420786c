//! Replays the kept fuzzing corpus (`crates/embedded/fuzz/corpus/<target>/`) through the
//! matching `hart_embedded::fuzzing` entry point, so that every test run checks every input
//! the fuzzers kept, with no fuzzer installed (docs/decisions/0016-fuzzing.md).

use hart_embedded::fuzzing;
use std::path::{Path, PathBuf};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join("corpus")
}

fn files(target: &str) -> Vec<PathBuf> {
    let dir = corpus_dir().join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(target: &str) {
    let run = fuzzing::TARGETS.iter().find(|(n, _)| *n == target).expect("a target of that name").1;
    let files = files(target);
    for f in &files {
        let data = std::fs::read(f).expect("read a corpus file");
        // A panic names the file, to be replayed with `cargo fuzz run <target> <file>`.
        eprintln!("replaying {}", f.display());
        run(&data);
    }
    assert!(!files.is_empty(), "the {target} corpus is empty: nothing was replayed");
    println!("{target}: replayed {} corpus files", files.len());
}

#[test]
fn every_target_has_a_corpus() {
    for (name, _) in fuzzing::TARGETS {
        assert!(!files(name).is_empty(), "no corpus for target {name}");
    }
    // And no corpus without a target.
    for e in std::fs::read_dir(corpus_dir()).expect("corpus directory") {
        let name = e.expect("entry").file_name().to_string_lossy().into_owned();
        assert!(fuzzing::TARGETS.iter().any(|(n, _)| *n == name), "corpus {name} has no target");
    }
}

#[test]
fn replay_record() {
    replay("record");
}

#[test]
fn replay_frames() {
    replay("frames");
}

#[test]
fn replay_run() {
    replay("run");
}

#[test]
fn replay_state() {
    replay("state");
}

#[test]
fn replay_manifest() {
    replay("manifest");
}

#[test]
fn replay_store() {
    replay("store");
}

/// Regenerate the seed corpus from a real store and the files it was made from:
///
/// ```text
/// cargo run --release -- --store /tmp/x ingest /usr/share/common-licenses
/// HART_FUZZ_SEED_STORE=/tmp/x HART_FUZZ_SEED_FILES=/usr/share/common-licenses \
///     cargo test -p hart-embedded --test fuzz_corpus -- --ignored seed_corpus
/// ```
///
/// Seeds are written to `crates/embedded/fuzz/seeds/<target>/` (not kept: `scripts/fuzz.sh`
/// minimizes them with the corpus into `corpus/`).
#[test]
#[ignore = "writes seeds from a real store: run by hand, see the doc comment"]
fn seed_corpus() {
    let store = std::env::var_os("HART_FUZZ_SEED_STORE").expect("HART_FUZZ_SEED_STORE: a real store");
    let files = std::env::var_os("HART_FUZZ_SEED_FILES").expect("HART_FUZZ_SEED_FILES: the files it holds");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join("seeds");
    let seeds = fuzzing::seeds(Path::new(&store), Path::new(&files));
    let mut n = 0;
    for (target, name, bytes) in seeds {
        let dir = out.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
        n += 1;
    }
    println!("wrote {n} seeds under {}", out.display());
}

// Known gaps in lib.rs (`fuzzing::KNOWN_GAPS`), each shown by a crafted store, are ignored
// until the fix each names lands; then drop the `ignore` (and the harness's guard).

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A `fuzz_store` section.
fn section(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
}

/// G2: replaying an object begin whose id is 2^64 − 1 computes `id + 1` (lib.rs
/// `Derived::obj_begin`; fix: `id.saturating_add(1)`).
#[test]
fn gap_object_id_max() {
    let json = br#"{"uri":"x","modality":"text","size":null,"started_at":0}"#;
    let mut rec = vec![0x10];
    varint(u64::MAX, &mut rec);
    varint(json.len() as u64, &mut rec);
    rec.extend_from_slice(json);
    let mut input = vec![0u8];
    section(&mut input, fuzzing::tag::FRAME, &rec);
    fuzzing::fuzz_store(&input);
}

/// G2: a gc record replayed over a checkpoint whose counters do not count the atom it removes
/// subtracts below zero (lib.rs `Derived::kill`; fix: `checked_sub`, a corrupt-store error).
#[test]
fn gap_gc_counter_underflow() {
    let mut input = vec![0u8];
    section(&mut input, fuzzing::tag::FRAME, &[0x01, 1, 3, b'a', b'b', b'c']);
    let leaf_off = 12u64;
    let mut gc = vec![0x20];
    varint(1, &mut gc);
    varint(leaf_off, &mut gc);
    section(&mut input, fuzzing::tag::FRAME, &gc);
    let json = br#"{"objects":[],"next_object":1,"counters":{"per_modality":[],"dead_atoms":0,"dead_bytes":0}}"#;
    let mut st = vec![1u8];
    st.extend_from_slice(b"HARTSTA1");
    st.extend_from_slice(&(json.len() as u64).to_le_bytes());
    st.extend_from_slice(json);
    st.extend_from_slice(&1u64.to_le_bytes());
    st.extend_from_slice(&leaf_off.to_le_bytes());
    st.extend_from_slice(&0u32.to_le_bytes());
    section(&mut input, fuzzing::tag::STATE, &st);
    let m =
        br#"{"format":1,"generation":1,"log":{"seg":0,"off":18},"state":1,"hash_runs":[],"key_runs":[],"next_run":1}"#;
    section(&mut input, fuzzing::tag::MANIFEST, m);
    fuzzing::fuzz_store(&input);
}

/// A checkpoint position past the end of the log (the last segment's, or one of a segment
/// that does not exist; near 2^64 it overflowed the old scan's `p + FRAME_HEADER`): readers
/// open without a panic, writers refuse the store, and the log is left as it was (a writer
/// once cut or extended the last segment to the position).
#[test]
fn checkpoint_past_the_log_is_refused_by_writers() {
    let dir = tempfile::tempdir().unwrap();
    fuzzing::make_store(dir.path(), &[b"one two\n"], false);
    let manifest = std::fs::read_to_string(dir.path().join("MANIFEST")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    let seg_len = std::fs::metadata(dir.path().join("log/00000000.seg")).unwrap().len();
    for (seg, off) in [(0, u64::MAX - 3), (0, seg_len + 4096), (3, 100), (u32::MAX, u64::MAX)] {
        let mut m = v.clone();
        m["log"] = serde_json::json!({"seg": seg, "off": off});
        std::fs::write(dir.path().join("MANIFEST"), serde_json::to_vec(&m).unwrap()).unwrap();
        let ro = hart_embedded::OpenOptions { read_only: true, ..Default::default() };
        let _ = hart_embedded::EmbeddedStore::open_with(dir.path(), ro);
        assert!(hart_embedded::EmbeddedStore::open(dir.path()).is_err(), "written at {seg}:{off}");
        assert_eq!(std::fs::metadata(dir.path().join("log/00000000.seg")).unwrap().len(), seg_len);
        assert!(!dir.path().join("log/00000001.seg").exists());
    }
}
