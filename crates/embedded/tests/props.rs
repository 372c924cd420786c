//! Property tests of the embedded engine through the storage interface: bytes → atoms →
//! bytes; reference counts equal a recount after any sequence of ingest, delete, abort, gc
//! and reopen; and roots independent of ingestion order.

use hart_core::{Hash, Modality};
use hart_embedded::EmbeddedStore;
use hart_store::conformance::{build, check_store};
use hart_store::ingest::ingest_bytes;
use hart_store::{SourceInfo, Status, Store};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::path::Path;
use tempfile::TempDir;

fn config(cases: u32) -> Config {
    Config { cases, failure_persistence: None, ..Config::default() }
}

fn cat(store: &dyn Store, root: &Hash) -> Result<Vec<u8>, TestCaseError> {
    let mut out = Vec::new();
    store.cat(root, &mut out).map_err(|e| TestCaseError::fail(format!("cat {root}: {e}")))?;
    Ok(out)
}

/// Text made of the tokenizer's classes, with LF and CRLF line ends and non-ASCII words.
fn text() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        4 => "[a-zA-Z]{1,10}",
        2 => Just(" ".to_string()),
        1 => "[0-9]{1,6}",
        1 => Just("\n".to_string()),
        1 => Just("\r\n".to_string()),
        1 => "[!-/:-@\\[-`{-~]{1,3}",
        1 => "\\PC{1,6}",
        1 => "[a-z]{60,90}",
    ];
    vec(token, 0..400).prop_map(|t| t.concat())
}

fn modality() -> impl Strategy<Value = Modality> {
    prop_oneof![Just(Modality::Binary), Just(Modality::Text)]
}

/// (a) Random bytes and random strings, as binary and as text, come back byte for byte; on one
/// store reused across cases, so later cases deduplicate against earlier ones.
#[test]
fn bytes_atoms_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let n = std::cell::Cell::new(0u32);
    let input = prop_oneof![
        (modality(), vec(any::<u8>(), 0..20_000)),
        (modality(), any::<String>().prop_map(String::into_bytes)),
        (modality(), text().prop_map(String::into_bytes)),
    ];
    TestRunner::new(config(64))
        .run(&input, |(m, data)| {
            n.set(n.get() + 1);
            let uri = format!("mem://{}", n.get());
            let info = ingest_bytes(&store, &uri, m, &data).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(info.status, Status::Completed);
            prop_assert_eq!(info.size, data.len() as u64);
            prop_assert_eq!(cat(&store, &info.root.unwrap())?, data.clone(), "{} input", m);
            let again = ingest_bytes(&store, &uri, m, &data).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(again.status, Status::Unchanged);
            prop_assert_eq!(again.atoms_created, 0);
            prop_assert_eq!(again.root, info.root);
            Ok(())
        })
        .unwrap();
    check_store(&store, "bytes_atoms_bytes");
}

/// A few overlapping blobs: slices of one base (random bytes or text) with small edits, and the
/// concatenation of the first two, so that objects share chunks, lines and subtrees.
fn blobs() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let base = prop_oneof![vec(any::<u8>(), 1000..12_000), text().prop_map(String::into_bytes)];
    let spec = (0.0..1.0f64, 0.0..1.0f64, vec((0.0..1.0f64, any::<u8>()), 0..3));
    (base, vec(spec, 4)).prop_map(|(base, specs)| {
        let mut out: Vec<Vec<u8>> = specs
            .into_iter()
            .map(|(s, l, edits)| {
                let start = (s * base.len() as f64) as usize;
                let len = (l * (base.len() - start) as f64) as usize;
                let mut b = base[start..start + len].to_vec();
                for (p, v) in edits {
                    if !b.is_empty() {
                        let i = (p * b.len() as f64) as usize % b.len();
                        b[i] = v;
                    }
                }
                b
            })
            .collect();
        let joined = [out[0].clone(), out[1].clone()].concat();
        out.push(joined);
        out
    })
}

#[derive(Debug, Clone)]
enum Op {
    Ingest {
        blob: usize,
        uri: u8,
        m: Modality,
    },
    /// Delete the n-th deletable object (completed, unchanged or failed), if any.
    Delete(usize),
    /// Put half of a blob's atoms in a session, then abort it (or drop it without a word).
    Abort {
        blob: usize,
        m: Modality,
        drop: bool,
    },
    Gc,
    /// Close and open again.
    Reopen,
    /// Open a copy of the directory taken while the store is open (what `kill -9` leaves).
    CrashReopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..5usize, 0..3u8, modality()).prop_map(|(blob, uri, m)| Op::Ingest { blob, uri, m }),
        3 => any::<usize>().prop_map(Op::Delete),
        1 => (0..5usize, modality(), any::<bool>()).prop_map(|(blob, m, drop)| Op::Abort { blob, m, drop }),
        2 => Just(Op::Gc),
        1 => Just(Op::Reopen),
        1 => Just(Op::CrashReopen),
    ]
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// A live (completed, not deleted) object as the model sees it.
#[derive(Debug, Clone)]
struct Live {
    id: u64,
    uri: String,
    m: Modality,
    data: Vec<u8>,
}

fn run_ops(blobs: &[Vec<u8>], ops: &[Op]) -> Result<(), TestCaseError> {
    let fail = |what: &str, e: hart_store::StoreError| TestCaseError::fail(format!("{what}: {e}"));
    let mut dir: TempDir = tempfile::tempdir().unwrap();
    let mut store = EmbeddedStore::open(dir.path()).map_err(|e| fail("open", e))?;
    let mut live: Vec<Live> = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Ingest { blob, uri, m } => {
                let data = &blobs[*blob];
                let uri = format!("mem://u{uri}");
                let info = ingest_bytes(&store, &uri, *m, data).map_err(|e| fail("ingest", e))?;
                let unchanged = live.iter().any(|l| l.uri == uri && l.m == *m && &l.data == data);
                let want = if unchanged { Status::Unchanged } else { Status::Completed };
                prop_assert_eq!(info.status, want, "step {}: {:?}", step, op);
                if !unchanged {
                    live.push(Live { id: info.id, uri, m: *m, data: data.clone() });
                }
            }
            Op::Delete(n) => {
                let deletable: Vec<u64> = store
                    .objects()
                    .map_err(|e| fail("objects", e))?
                    .into_iter()
                    .filter(|o| matches!(o.status, Status::Completed | Status::Unchanged | Status::Failed))
                    .map(|o| o.id)
                    .collect();
                if !deletable.is_empty() {
                    let id = deletable[n % deletable.len()];
                    store.delete_object(id).map_err(|e| fail("delete", e))?;
                    live.retain(|l| l.id != id);
                }
            }
            Op::Abort { blob, m, drop } => {
                let data = &blobs[*blob];
                let built = build(*m, data, 64);
                let src = SourceInfo { uri: "mem://aborted".into(), modality: *m, size: Some(data.len() as u64) };
                let mut s = store.begin(src).map_err(|e| fail("begin", e))?;
                for b in &built.batches[..built.batches.len().div_ceil(2)] {
                    s.put(b).map_err(|e| fail("put", e))?;
                }
                if !*drop {
                    s.abort("aborted by the test").map_err(|e| fail("abort", e))?;
                }
            }
            Op::Gc => {
                store.gc().map_err(|e| fail("gc", e))?;
            }
            Op::Reopen => {
                drop(store);
                store = EmbeddedStore::open(dir.path()).map_err(|e| fail("reopen", e))?;
            }
            Op::CrashReopen => {
                let image = tempfile::tempdir().unwrap();
                copy_dir(dir.path(), image.path());
                drop(store);
                dir = image;
                store = EmbeddedStore::open(dir.path()).map_err(|e| fail("open crash image", e))?;
            }
        }
        let f = store.fsck(&|_, _| {}).map_err(|e| fail("fsck", e))?;
        prop_assert!(f.ok(), "step {}: {:?}: {:?}", step, op, f.problems);
    }
    // The whole store through the interface: recount, stats, coherence of every record.
    check_store(&store, "refcounts_equal_recount");
    for l in &live {
        let o = store.objects().map_err(|e| fail("objects", e))?.into_iter().find(|o| o.id == l.id).unwrap();
        prop_assert_eq!(o.status, Status::Completed);
        prop_assert_eq!(&cat(&store, &o.root.unwrap())?, &l.data, "object {} ({})", l.id, l.uri);
    }
    let completed = store.objects().map_err(|e| fail("objects", e))?;
    let completed = completed.iter().filter(|o| o.status == Status::Completed).count();
    prop_assert_eq!(completed, live.len(), "completed objects vs the model");
    // Collecting everything leaves nothing.
    for l in &live {
        store.delete_object(l.id).map_err(|e| fail("delete", e))?;
    }
    store.gc().map_err(|e| fail("gc", e))?;
    let s = store.stats().map_err(|e| fail("stats", e))?;
    prop_assert_eq!((s.atoms, s.garbage_atoms, s.unique_bytes), (0, 0, 0));
    Ok(())
}

/// (b) After any sequence of ingest, delete, aborted or dropped sessions, gc and (crash)
/// reopen: fsck is clean after every step, the stored reference counts equal a recount,
/// and every live object cats to its blob.
#[test]
fn refcounts_equal_recount() {
    TestRunner::new(config(64)).run(&(blobs(), vec(op(), 1..32)), |(blobs, ops)| run_ops(&blobs, &ops)).unwrap();
}

/// (c) The same blobs ingested into two fresh stores in different orders give identical roots
/// and identical stores.
#[test]
fn roots_independent_of_order() {
    let input = vec((modality(), prop_oneof![vec(any::<u8>(), 0..8000), text().prop_map(String::into_bytes)]), 1..6)
        .prop_flat_map(|items| {
            let n = items.len();
            (Just(items), Just((0..n).collect::<Vec<_>>()).prop_shuffle())
        });
    TestRunner::new(config(32))
        .run(&input, |(items, order)| {
            let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let a = EmbeddedStore::open(da.path()).unwrap();
            let b = EmbeddedStore::open(db.path()).unwrap();
            let mut roots_a = Vec::new();
            for (i, (m, data)) in items.iter().enumerate() {
                roots_a.push(ingest_bytes(&a, &format!("mem://{i}"), *m, data).unwrap().root);
            }
            let mut roots_b = vec![None; items.len()];
            for &i in &order {
                let (m, data) = &items[i];
                roots_b[i] = ingest_bytes(&b, &format!("mem://{i}"), *m, data).unwrap().root;
            }
            prop_assert_eq!(&roots_a, &roots_b);
            for (i, (m, data)) in items.iter().enumerate() {
                prop_assert_eq!(roots_a[i], Some(build(*m, data, usize::MAX).root), "pipeline vs builder");
            }
            let (sa, sb) = (a.stats().unwrap(), b.stats().unwrap());
            prop_assert_eq!(sa.atoms, sb.atoms);
            prop_assert_eq!(&sa.per_modality, &sb.per_modality);
            prop_assert_eq!(sa.logical_bytes, sb.logical_bytes);
            for r in roots_a.iter().flatten() {
                let (ra, rb) = (a.get(r).unwrap().unwrap(), b.get(r).unwrap().unwrap());
                prop_assert_eq!(ra, rb);
            }
            Ok(())
        })
        .unwrap();
}
