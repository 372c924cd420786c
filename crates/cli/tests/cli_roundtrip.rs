//! Round trip and determinism through the real `hart` binary: real files on the machine and
//! edge-case files go in, `hart cat` gives every one back byte for byte, and two fresh stores
//! give every file the same root.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Edge-case files: empty, one byte, invalid UTF-8 in the middle, CRLF lines, a line longer
/// than 64 KiB, tokens longer than a leaf, multi-byte characters across the 1 MiB read block.
/// Returns (path, expected modality).
fn edge_files(dir: &Path) -> Vec<(PathBuf, &'static str)> {
    let mut v = vec![
        (write(&dir.join("empty"), b""), "binary"),
        (write(&dir.join("one-byte"), b"x"), "text"),
        (write(&dir.join("one-byte-binary"), &[0xff]), "binary"),
        (write(&dir.join("newline"), b"\n"), "text"),
    ];

    // Valid text, then bytes that are not UTF-8, then text again: falls back to binary.
    let mut bad = rand_text(1, 40_000).into_bytes();
    let mid = bad.len() / 2;
    bad.splice(mid..mid, [0xC3, 0x28, 0xFF, 0xFE, 0xED, 0xA0, 0x80]);
    v.push((write(&dir.join("invalid-utf8-middle.txt"), &bad), "binary"));
    // Truncated multi-byte character at the very end.
    let mut trunc = rand_text(2, 3000).into_bytes();
    trunc.extend_from_slice(&[0xE6, 0x97]);
    v.push((write(&dir.join("truncated-utf8-end.txt"), &trunc), "binary"));

    let crlf = rand_text(3, 30_000).replace('\n', "\r\n");
    v.push((write(&dir.join("crlf.txt"), crlf.as_bytes()), "text"));
    let mut mixed = String::new();
    for i in 0..500 {
        mixed.push_str(&format!("line {i}{}", ["\n", "\r\n", "\r", "\n\n"][i % 4]));
    }
    v.push((write(&dir.join("mixed-eol.txt"), mixed.as_bytes()), "text"));

    // One line of 200 KiB of words (no newline at all).
    let long_line = rand_text(4, 200 << 10).replace('\n', " ");
    v.push((write(&dir.join("long-line.txt"), long_line.trim_end().as_bytes()), "text"));
    // One 100 KiB word, one 70 KiB whitespace run, one 64 KiB run of a 2-byte character.
    let mut tokens = "a".repeat(100 << 10);
    tokens.push_str(&" ".repeat(70 << 10));
    tokens.push_str(&"é".repeat(32 << 10));
    tokens.push_str(&"9".repeat(65 << 10));
    tokens.push_str("\t\t\n");
    v.push((write(&dir.join("long-tokens.txt"), tokens.as_bytes()), "text"));

    // Multi-byte characters straddling the 1 MiB read block: 3- and 4-byte ones.
    for (name, ch) in [("straddle-3.txt", "語"), ("straddle-4.txt", "🦀")] {
        let mut s = rand_text(5, (1 << 20) - 1).into_bytes();
        s.truncate((1 << 20) - 1);
        // Make the prefix end on a character boundary made of ASCII.
        for b in s.iter_mut() {
            if *b >= 0x80 {
                *b = b'x';
            }
        }
        s.extend_from_slice(ch.as_bytes());
        s.extend_from_slice(rand_text(6, 4000).as_bytes());
        v.push((write(&dir.join(name), &s), "text"));
    }
    // NUL bytes in otherwise textual data.
    let mut nul = b"hello\0world\n".repeat(100);
    nul.extend_from_slice(rand_text(7, 5000).as_bytes());
    v.push((write(&dir.join("nul.dat"), &nul), "binary"));
    // Random binary, not a multiple of any chunk size.
    v.push((write(&dir.join("random.bin"), &rand_bytes(8, 300_001)), "binary"));
    v
}

#[test]
fn round_trip_real_files_and_edge_cases() {
    let store = Store::new();
    let edge = store.scratch("edge");
    let edges = edge_files(&edge);
    let real = real_corpus(300, 20 << 20);
    let lic = licenses_dir();
    let mut paths: Vec<&Path> = vec![&lic, &edge];
    paths.extend(real.iter().map(|p| p.as_path()));
    let rep = store.ingest(&paths);
    assert!(rep.failed.is_empty(), "failed: {:?}", rep.failed);
    assert_eq!(rep.totals.failed, 0);
    // Every input file became one object (duplicates included: each path is an object).
    let licenses: Vec<PathBuf> =
        std::fs::read_dir(&lic).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    assert_eq!(rep.objects.len(), licenses.len() + edges.len() + real.len(), "one object per input file");

    let by_path = rep.by_path();
    for (p, modality) in &edges {
        let o = by_path.get(&canon(p)).unwrap_or_else(|| panic!("no object for {}", p.display()));
        assert_eq!(&o.modality, modality, "modality of {}", p.display());
        assert_eq!(o.status, "completed");
        assert_eq!(o.size, std::fs::metadata(p).unwrap().len());
    }

    // Symlinks in common-licenses (GPL -> GPL-3, …) name the same canonical file: the second
    // time it is `unchanged`, and `ls` lists each completed object once.
    let completed = rep.objects.iter().filter(|o| o.status == "completed").count();
    let unchanged = rep.objects.iter().filter(|o| o.status == "unchanged").count();
    assert_eq!(completed + unchanged, rep.objects.len(), "statuses: {:?}", rep.objects);
    assert_eq!(completed, by_path.len(), "one completed object per distinct file");
    let ls = store.ls(false);
    assert_eq!(ls.len(), completed, "ls lists every completed object");
    let (n, bytes) = store.assert_all_intact("after ingest");
    assert_eq!(n, completed);
    eprintln!("round trip: {n} objects, {bytes} bytes, every one byte-exact ({} real files)", real.len());

    // `cat -o FILE` gives the same bytes as stdout, and `--json` says how many.
    let big = by_path.get(&canon(&edge.join("straddle-4.txt"))).unwrap();
    let out = store.tmp.path().join("copy");
    let r = store.run(&["--json", "cat", big.root.as_deref().unwrap(), "-o", out.to_str().unwrap()]);
    r.ok();
    assert_eq!(r.json()["bytes"], big.size);
    assert_bytes_eq(&std::fs::read(&out).unwrap(), &std::fs::read(edge.join("straddle-4.txt")).unwrap(), "cat -o");

    // The empty file's object: cat gives nothing, successfully.
    let empty = by_path.get(&canon(&edge.join("empty"))).unwrap();
    assert_eq!(empty.size, 0);
    assert!(store.cat(empty.root.as_deref().unwrap()).is_empty());

    store.fsck_ok("after round trip");
}

/// Roots by canonical path from an ingest report.
fn roots(rep: &IngestReport) -> BTreeMap<PathBuf, String> {
    rep.objects.iter().map(|o| (o.path(), o.root.clone().expect("root"))).collect()
}

#[test]
fn same_corpus_in_two_fresh_stores_gives_identical_roots() {
    let a = Store::new();
    let b = Store::new();
    let edge = a.scratch("edge");
    let edges = edge_files(&edge);
    let real = real_corpus(120, 6 << 20);
    let lic = licenses_dir();
    let mut paths: Vec<&Path> = vec![&lic, &edge];
    paths.extend(real.iter().map(|p| p.as_path()));
    // Different worker counts and input orders must not change any root.
    let (ra, _) = a.ingest_args(&paths, &["--workers", "1"]);
    let reversed: Vec<&Path> = paths.iter().rev().copied().collect();
    let (rb, _) = b.ingest_args(&reversed, &["--workers", "3"]);
    let (ma, mb) = (roots(&ra), roots(&rb));
    assert_eq!(ra.objects.len(), rb.objects.len());
    assert!(ma.len() >= edges.len() + real.len(), "{} distinct files", ma.len());
    assert_eq!(ma.keys().collect::<Vec<_>>(), mb.keys().collect::<Vec<_>>(), "same files in both stores");
    for (p, root) in &ma {
        assert_eq!(Some(root), mb.get(p), "root of {} differs between the two stores", p.display());
    }
    // Same atoms in total, too.
    assert_eq!(a.stats().atoms, b.stats().atoms, "both stores hold the same number of atoms");
    // And a third store over the same files, ingested one at a time, agrees for a sample.
    let c = Store::new();
    for p in [edge.join("long-tokens.txt"), edge.join("random.bin"), license("GPL-3")] {
        let r = c.ingest(&[&p]);
        assert_eq!(r.objects.len(), 1);
        assert_eq!(Some(r.objects[0].root.as_ref().unwrap()), ma.get(&canon(&p)), "root of {} alone", p.display());
    }
    eprintln!("determinism: {} roots identical across stores", ma.len());
}
