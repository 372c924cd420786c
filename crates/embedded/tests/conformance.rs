//! The backend conformance suite (`hart_store::conformance`) on the embedded engine, three
//! ways: on fresh stores; on stores closed and reopened at every step boundary; and on stores
//! reopened from a crash image (the directory copied while the store is open, which is what
//! `kill -9` leaves: no final checkpoint, so the log is replayed). After every reopen the
//! suite checks that stats, objects, roots and bytes are exactly what they were.

use hart_embedded::EmbeddedStore;
use hart_store::conformance::{with_guard, Subject};
use hart_store::Store;
use std::path::Path;
use tempfile::TempDir;

/// A fresh store in a temporary directory that lives as long as the store.
fn fresh() -> Box<dyn Store> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("open");
    with_guard(store, dir)
}

/// A fresh store that the suite closes (checkpoint, unlock) and reopens at every step.
fn reopening() -> Subject {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Box::new(EmbeddedStore::open(dir.path()).expect("open"));
    Subject::reopening(store, move |old| {
        drop(old);
        Box::new(EmbeddedStore::open(dir.path()).expect("reopen"))
    })
}

/// A fresh store that the suite replaces at every step by a store opened on a copy of its
/// directory taken while it was open (a crash image).
fn crash_reopening() -> Subject {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Box::new(EmbeddedStore::open(dir.path()).expect("open"));
    let mut current: TempDir = dir;
    Subject::reopening(store, move |old| {
        let image = tempfile::tempdir().expect("tempdir");
        copy_dir(current.path(), image.path());
        drop(old);
        current = image;
        Box::new(EmbeddedStore::open(current.path()).expect("open the crash image"))
    })
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            std::fs::create_dir_all(&target).expect("mkdir");
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

mod fresh {
    hart_store::conformance_tests!(super::fresh);
}

mod reopened {
    hart_store::conformance_tests!(super::reopening);
}

mod crash_reopened {
    hart_store::conformance_tests!(super::crash_reopening);
}
