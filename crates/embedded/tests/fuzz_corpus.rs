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
