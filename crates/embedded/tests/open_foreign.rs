//! Opening a directory that is not a store (issue 12: `--store` pointed at a directory of
//! unrelated files was refused, but left with a stray `LOCK` file, because the lock was taken
//! before the check). Refused for writers and readers alike, and left exactly as it was.

use hart_embedded::{EmbeddedStore, OpenOptions};
use hart_store::StoreError;
use std::path::{Path, PathBuf};

/// Every path under `dir`, with its size, sorted.
fn listing(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                todo.push(e.path());
            }
            out.push((e.path().strip_prefix(dir).unwrap().to_path_buf(), if m.is_dir() { 0 } else { m.len() }));
        }
    }
    out.sort();
    out
}

#[test]
fn a_directory_of_unrelated_files_is_refused_without_a_stray_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("photos");
    std::fs::create_dir_all(d.join("2024")).unwrap();
    std::fs::write(d.join("holiday.jpg"), b"\xff\xd8\xff not a store").unwrap();
    std::fs::write(d.join("2024/list.txt"), b"not a store either\n").unwrap();
    let before = listing(&d);
    for read_only in [false, true] {
        let opts = OpenOptions { read_only, ..OpenOptions::default() };
        let e = match EmbeddedStore::open_with(&d, opts) {
            Ok(_) => panic!("read_only {read_only}: a directory of photos opened as a store"),
            Err(e) => e,
        };
        assert!(matches!(e, StoreError::NotAStore { .. }), "read_only {read_only}: {e}");
        assert_eq!(listing(&d), before, "read_only {read_only}: the directory was changed");
    }
    // The same directory emptied is a place for a new store.
    std::fs::remove_dir_all(&d).unwrap();
    std::fs::create_dir(&d).unwrap();
    EmbeddedStore::open(&d).expect("an empty directory becomes a store");
    assert!(d.join("MANIFEST").exists());
}
