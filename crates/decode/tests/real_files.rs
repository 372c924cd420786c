//! Decoding real files found on the machine gives them back byte for byte.
//!
//! Covers this crate's own sources (always present), the licence texts under
//! `/usr/share/common-licenses` and a sample of `/usr/share/doc` (Debian and derivatives:
//! copyright texts, changelogs, gzip files), and this test's own executable as a real binary.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use hart_core::Modality;
use hart_decode::{choose_modality, decoder_for, BinaryChunker, TextTokenizer};

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if p.is_dir() {
            files_under(&p, out);
        } else if p.is_file() {
            out.push(p);
        }
    }
}

fn check(path: &Path) -> Modality {
    let data = std::fs::read(path).unwrap();
    let m = choose_modality(path).unwrap();
    let once = run_once(&mut *decoder_for(m), &data);
    assert_lossless(&once, &data);
    assert_eq!(run_blocks(&mut *decoder_for(m), &data, 4093), once, "{path:?}");
    if m == Modality::Text {
        for l in &once.leaves {
            assert!(std::str::from_utf8(l).is_ok(), "{path:?}: token {l:?}");
        }
        assert_eq!(
            once.group_ends.len(),
            data.split_inclusive(|&b| b == b'\n').count(),
            "{path:?}: one group per line"
        );
    }
    // Every file also chunks as binary.
    let bin = run_blocks(&mut BinaryChunker::new(), &data, 1 << 16);
    assert_lossless(&bin, &data);
    m
}

#[test]
fn real_files_round_trip() {
    let mut files = Vec::new();
    // Only this crate's files: other crates may be mid-edit while the tests run.
    files_under(Path::new(env!("CARGO_MANIFEST_DIR")), &mut files);
    files_under(Path::new("/usr/share/common-licenses"), &mut files);
    let mut docs = Vec::new();
    files_under(Path::new("/usr/share/doc"), &mut docs);
    docs.sort();
    // A deterministic sample of at most 400 files under 1 MB: keeps the debug test fast.
    let step = docs.len() / 400 + 1;
    files.extend(docs.into_iter().step_by(step).filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() < 1 << 20)));
    let (mut text, mut binary, mut bytes) = (0, 0, 0);
    for f in &files {
        bytes += std::fs::metadata(f).unwrap().len();
        match check(f) {
            Modality::Text => text += 1,
            _ => binary += 1,
        }
    }
    let exe = std::env::current_exe().unwrap();
    assert_eq!(check(&exe), Modality::Binary, "the test executable");
    println!(
        "{} files ({text} text, {binary} binary, {:.1} MB) and {exe:?} decoded losslessly",
        files.len(),
        bytes as f64 / 1e6
    );
    assert!(text >= 20, "only {text} text files found");
}

#[test]
fn licence_texts_tokenize_to_lines() {
    // The GPL text as the tokenizer sees it: a spot check of real prose, when present.
    let gpl = Path::new("/usr/share/common-licenses/GPL-3");
    let data = match std::fs::read(gpl) {
        Ok(d) => d,
        // Not a Debian-like system: the sources in `real_files_round_trip` still cover text.
        Err(_) => include_bytes!("../src/text.rs").to_vec(),
    };
    let out = run_once(&mut TextTokenizer::new(), &data);
    assert_lossless(&out, &data);
    let mean = data.len() as f64 / out.leaves.len() as f64;
    println!(
        "{} bytes, {} tokens ({mean:.2} bytes each), {} lines",
        data.len(),
        out.leaves.len(),
        out.group_ends.len()
    );
    assert!((2.0..8.0).contains(&mean));
}
