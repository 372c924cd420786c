//! The corruption suite of issue 12: on copies of a real store (text and binary objects that
//! share atoms), damage one class of stored bytes at a time — a frame header, a leaf's value,
//! a composite's child list, a composite's hash, an object record, an index run, the manifest,
//! the state checkpoint — by flipping bits and by cutting files, then check the promise:
//! - `cat` of every object returns its exact bytes or fails with an error, never other bytes
//!   with success;
//! - `fsck` names the damage (a damaged stretch or object) whenever an object cannot be read;
//! - a writer never appends after damage it has not been told about (open is refused);
//! - `fsck --repair` (`OpenOptions::rebuild`) brings back a store whose derived files were
//!   deleted or damaged, with every object intact.
//!
//! The log is parsed here from its documented layout (docs/FORMAT.md, "Embedded log") to find
//! the bytes of each class; the engine's own parser is not used to aim at itself.

use hart_core::Modality;
use hart_embedded::{EmbeddedStore, OpenOptions};
use hart_store::ingest::{ingest_reader, Progress};
use hart_store::{SourceInfo, Status, Store, StoreError};
use std::path::{Path, PathBuf};

fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

fn text(seed: u64, len: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "store", "atom", "the", "of", "hash", "tree", "geometry", "point", "line", "copy", "license", "software",
        "and", "or", "to", "any", "file", "bytes", "merkle", "dedup",
    ];
    let mut r = rng(seed);
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        out.extend_from_slice(WORDS[(r() % WORDS.len() as u64) as usize].as_bytes());
        out.push(if r() % 9 == 0 { b'\n' } else { b' ' });
    }
    out
}

fn binary(seed: u64, len: usize) -> Vec<u8> {
    let mut r = rng(seed);
    (0..len).map(|_| r() as u8).collect()
}

/// A store with a few objects that share atoms; returns it and each object's (id, bytes).
fn build(dir: &Path) -> Vec<(u64, Vec<u8>)> {
    let store = EmbeddedStore::open(dir).unwrap();
    let t1 = text(1, 60_000);
    let mut t2 = t1.clone();
    t2.extend_from_slice(&text(2, 20_000));
    let b1 = binary(3, 200_000);
    let mut b2 = b1[..100_000].to_vec();
    b2.extend_from_slice(&binary(4, 50_000));
    let mut out = Vec::new();
    for (i, (data, m)) in [(t1, Modality::Text), (b1, Modality::Binary), (t2, Modality::Text), (b2, Modality::Binary)]
        .into_iter()
        .enumerate()
    {
        let info = ingest_reader(
            &store,
            SourceInfo { uri: format!("test://{i}"), modality: m, size: Some(data.len() as u64) },
            &data[..],
            &Progress::default(),
        )
        .unwrap();
        out.push((info.id, data));
    }
    store.close().unwrap();
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), &t).unwrap();
        }
    }
}

/// Byte ranges of each class in segment 0.
#[derive(Default, Debug)]
struct Layout {
    frame_headers: Vec<usize>,
    leaf_values: Vec<(usize, usize)>,
    child_lists: Vec<(usize, usize)>,
    node_hashes: Vec<usize>,
    object_records: Vec<(usize, usize)>,
}

fn varint(b: &[u8], p: &mut usize) -> u64 {
    let mut v = 0u64;
    for i in 0..10 {
        let byte = b[*p];
        *p += 1;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            break;
        }
    }
    v
}

fn layout(seg: &[u8]) -> Layout {
    let mut l = Layout::default();
    let mut f = 0;
    while f + 12 <= seg.len() {
        assert_eq!(&seg[f..f + 4], b"HRT1", "frame at {f}");
        let len = u32::from_le_bytes(seg[f + 4..f + 8].try_into().unwrap()) as usize;
        l.frame_headers.push(f);
        let (body, end) = (f + 12, f + 12 + len);
        let mut p = body;
        while p < end {
            let start = p;
            match seg[p] {
                0x01 => {
                    let n = seg[p + 2] as usize;
                    if n > 0 {
                        l.leaf_values.push((p + 3, n));
                    }
                    p += 3 + n;
                }
                0x02 => {
                    l.node_hashes.push(p + 2);
                    p += 50;
                    let n = varint(seg, &mut p);
                    let kids = p;
                    for _ in 0..n {
                        varint(seg, &mut p);
                    }
                    l.child_lists.push((kids, p - kids));
                }
                0x10 | 0x12 => {
                    p += 1;
                    varint(seg, &mut p);
                    let n = varint(seg, &mut p) as usize;
                    p += n;
                    l.object_records.push((start, p - start));
                }
                0x11 => {
                    p += 1;
                    varint(seg, &mut p);
                    varint(seg, &mut p);
                    let n = varint(seg, &mut p) as usize;
                    p += n;
                    l.object_records.push((start, p - start));
                }
                0x13 => {
                    p += 1;
                    varint(seg, &mut p);
                }
                0x20 => {
                    p += 1;
                    let n = varint(seg, &mut p);
                    for _ in 0..n {
                        varint(seg, &mut p);
                    }
                }
                t => panic!("unknown record tag {t:#x} at {p}"),
            }
        }
        f = end;
    }
    l
}

fn flip(path: &Path, at: usize, bit: u8) {
    let mut b = std::fs::read(path).unwrap();
    b[at] ^= 1 << (bit % 8);
    std::fs::write(path, b).unwrap();
}

fn cut(path: &Path, bytes: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len.saturating_sub(bytes)).unwrap();
}

/// Every object either reads back exactly or fails; returns how many failed. Read-only, as a
/// reader would (and a writer's open must not paper over anything).
fn check_reads(dir: &Path, objects: &[(u64, Vec<u8>)], case: &str) -> usize {
    let store = match EmbeddedStore::open_with(dir, OpenOptions { read_only: true, ..OpenOptions::default() }) {
        Ok(s) => s,
        Err(_) => return objects.len(), // refusing to open is loud, never wrong
    };
    let infos = match store.objects() {
        Ok(i) => i,
        Err(_) => return objects.len(),
    };
    let mut failed = 0;
    for (id, data) in objects {
        let Some(info) = infos.iter().find(|o| o.id == *id && o.status == Status::Completed) else {
            failed += 1;
            continue;
        };
        let mut out = Vec::new();
        match store.cat(&info.root.unwrap(), &mut out) {
            Ok(n) => {
                assert_eq!(n as usize, out.len(), "{case}: object {id}: cat counted {n} bytes, wrote {}", out.len());
                assert!(out == *data, "{case}: object {id}: cat returned other bytes with success");
            }
            Err(e) => {
                assert!(
                    matches!(e, StoreError::Damaged { .. } | StoreError::Corrupt { .. } | StoreError::NotFound { .. }),
                    "{case}: object {id}: unexpected error {e}"
                );
                failed += 1;
            }
        }
    }
    failed
}

fn fsck(dir: &Path) -> Option<hart_store::FsckReport> {
    let store = EmbeddedStore::open_with(dir, OpenOptions { read_only: true, ..OpenOptions::default() }).ok()?;
    store.fsck(&|_, _| {}).ok()
}

struct Fixture {
    _tmp: tempfile::TempDir,
    good: PathBuf,
    objects: Vec<(u64, Vec<u8>)>,
    layout: Layout,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    let objects = build(&good);
    let seg = std::fs::read(good.join("log/00000000.seg")).unwrap();
    let layout = layout(&seg);
    assert!(layout.frame_headers.len() >= 2, "the store should have several frames: {layout:?}");
    assert!(!layout.leaf_values.is_empty() && !layout.child_lists.is_empty() && !layout.object_records.is_empty());
    Fixture { _tmp: tmp, good, objects, layout }
}

impl Fixture {
    fn copy(&self, name: &str) -> PathBuf {
        let d = self.good.parent().unwrap().join(name);
        let _ = std::fs::remove_dir_all(&d);
        copy_dir(&self.good, &d);
        d
    }
}

/// Pick `n` spread-out items of a list.
fn spread<T: Copy>(items: &[T], n: usize) -> Vec<T> {
    if items.is_empty() {
        return Vec::new();
    }
    (0..n).map(|i| items[i * items.len() / n]).collect()
}

/// Flip a bit in each class of log bytes: reads are exact or loud, fsck names the damage, a
/// writer refuses the store, and `fsck --repair` leaves a store that a writer accepts and
/// whose undamaged objects still read back exactly.
#[test]
fn issue_12_bit_flips_in_the_log_never_return_wrong_bytes() {
    let fx = fixture();
    let l = &fx.layout;
    let mut cases: Vec<(String, usize)> = Vec::new();
    for f in spread(&l.frame_headers, 3) {
        for (i, what) in [(0, "magic"), (5, "length"), (9, "checksum")] {
            cases.push((format!("frame header {what} at {f}"), f + i));
        }
    }
    for (p, n) in spread(&l.leaf_values, 6) {
        cases.push((format!("leaf value at {p}"), p + n / 2));
    }
    for (p, n) in spread(&l.child_lists, 6) {
        cases.push((format!("child list at {p}"), p + n / 2));
    }
    for p in spread(&l.node_hashes, 4) {
        cases.push((format!("composite hash at {p}"), p + 7));
    }
    for (p, n) in spread(&l.object_records, 4) {
        cases.push((format!("object record at {p}"), p + n / 2));
    }
    let mut loud = 0;
    for (i, (case, at)) in cases.iter().enumerate() {
        let d = fx.copy("flip");
        flip(&d.join("log/00000000.seg"), *at, i as u8);
        let failed = check_reads(&d, &fx.objects, case);
        loud += failed;
        let report = fsck(&d).unwrap_or_else(|| panic!("{case}: fsck could not run"));
        assert!(!report.ok(), "{case}: fsck found nothing");
        assert!(!report.damaged_regions.is_empty(), "{case}: fsck named no damaged stretch: {:?}", report.problems);
        for o in &report.damaged_objects {
            assert!(
                report.damaged_regions.iter().any(|r| r.objects.contains(&o.id)),
                "{case}: object {} is damaged but no stretch names it",
                o.id
            );
        }
        assert!(
            report.damaged_objects.len() >= failed.min(1),
            "{case}: {failed} objects failed to read, fsck named none"
        );
        // A writer is told, not allowed to build on it — unless the damage is the log's tail
        // (no good frame after it), which is cut like a torn write.
        let tail = l.frame_headers.last().is_some_and(|&f| *at >= f);
        if !tail {
            match EmbeddedStore::open(&d) {
                Err(StoreError::StoreDamaged { .. }) => {}
                Ok(_) => {} // damage in the checkpointed part: found by reads and fsck, not by open
                Err(e) => panic!("{case}: a writer's open failed unexpectedly: {e}"),
            }
        }
        // Repair: rebuild around the damage; the store opens for writing and what reads, reads.
        let s = EmbeddedStore::open_with(&d, OpenOptions { rebuild: true, ..OpenOptions::default() })
            .unwrap_or_else(|e| panic!("{case}: repair failed: {e}"));
        s.close().unwrap();
        EmbeddedStore::open(&d)
            .unwrap_or_else(|e| panic!("{case}: after repair a writer cannot open: {e}"))
            .close()
            .unwrap();
        let after = check_reads(&d, &fx.objects, &format!("{case}, after repair"));
        assert!(after <= fx.objects.len());
    }
    eprintln!("{} flips, {loud} object reads failed loudly, none returned wrong bytes", cases.len());
    assert!(loud > 0, "no flip made any read fail: the cases hit nothing");
}

/// Cut the log's end by a few bytes, a hundred, five thousand: a writer refuses the store (it
/// would leave a gap), reads are exact or loud, fsck names what is missing, and repair keeps
/// every object whose records survive.
#[test]
fn issue_12_a_truncated_log_is_reported_not_extended() {
    let fx = fixture();
    for n in [3u64, 100, 5000] {
        let d = fx.copy("cut");
        let seg = d.join("log/00000000.seg");
        let len = std::fs::metadata(&seg).unwrap().len();
        cut(&seg, n);
        match EmbeddedStore::open(&d) {
            Err(StoreError::StoreDamaged { detail, .. }) => assert!(detail.contains("shorter"), "{detail}"),
            Err(e) => panic!("cut {n}: unexpected error {e}"),
            Ok(_) => panic!("cut {n}: a writer opened a store whose log lost its end"),
        }
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), len - n, "cut {n}: the refused open changed the log");
        check_reads(&d, &fx.objects, &format!("cut {n}"));
        let r = fsck(&d).unwrap();
        assert!(r.damaged_regions.iter().any(|g| g.cause.contains("missing")), "cut {n}: {:?}", r.problems);
        EmbeddedStore::open_with(&d, OpenOptions { rebuild: true, ..OpenOptions::default() }).unwrap().close().unwrap();
        let s = EmbeddedStore::open(&d).unwrap();
        // Still a store one can write to, with no gap: a new object lands and reads back.
        let data = text(99, 5000);
        let info = ingest_reader(
            &s,
            SourceInfo { uri: "test://after".into(), modality: Modality::Text, size: Some(5000) },
            &data[..],
            &Progress::default(),
        )
        .unwrap();
        let mut out = Vec::new();
        s.cat(&info.root.unwrap(), &mut out).unwrap();
        assert_eq!(out, data);
        s.close().unwrap();
        let r = fsck(&d).unwrap();
        assert!(r.damaged_objects.is_empty(), "cut {n}: after repair: {:?}", r.problems);
    }
}

/// Every file but the log is derived: delete or damage any of them and the store comes back,
/// whole, from the log (a writer rebuilds by itself; a reader rebuilds in memory).
#[test]
fn issue_12_derived_files_are_rebuilt_from_the_log() {
    let fx = fixture();
    let derived: Vec<PathBuf> = ["index", "state"]
        .iter()
        .flat_map(|sub| std::fs::read_dir(fx.good.join(sub)).unwrap().map(|e| e.unwrap().path()))
        .chain([fx.good.join("MANIFEST")])
        .collect();
    assert!(derived.len() >= 3, "{derived:?}");
    for (i, file) in derived.iter().enumerate() {
        let rel = file.strip_prefix(&fx.good).unwrap().to_path_buf();
        for how in ["deleted", "flipped", "cut"] {
            let case = format!("{} {how}", rel.display());
            let d = fx.copy("derived");
            let f = d.join(&rel);
            match how {
                "deleted" => std::fs::remove_file(&f).unwrap(),
                "flipped" => {
                    let len = std::fs::metadata(&f).unwrap().len() as usize;
                    flip(&f, (len / 2 + i) % len.max(1), i as u8);
                }
                _ => cut(&f, 7),
            }
            // A reader: exact bytes or loud errors (reads verify whatever the index says).
            check_reads(&d, &fx.objects, &format!("{case}, reader"));
            // A writer rebuilds what it cannot open. Damage inside an index run that opens
            // (its checksum is read whole only by fsck) is named by fsck and fixed by repair.
            EmbeddedStore::open(&d).unwrap_or_else(|e| panic!("{case}: writer: {e}")).close().unwrap();
            let r = fsck(&d).unwrap();
            if !r.ok() {
                let name = rel.file_name().unwrap().to_string_lossy().into_owned();
                assert!(
                    r.problems.iter().any(|p| p.contains(&name)),
                    "{case}: fsck's problems do not name {name}: {:?}",
                    r.problems
                );
                EmbeddedStore::open_with(&d, OpenOptions { rebuild: true, ..OpenOptions::default() })
                    .unwrap()
                    .close()
                    .unwrap();
                let r = fsck(&d).unwrap();
                assert!(r.ok(), "{case}: after repair: {:?}", r.problems);
            }
            assert_eq!(check_reads(&d, &fx.objects, &case), 0, "{case}: objects lost");
        }
    }
    // `fsck --repair` with every derived file gone.
    let d = fx.copy("bare");
    for sub in ["index", "state"] {
        std::fs::remove_dir_all(d.join(sub)).unwrap();
    }
    std::fs::remove_file(d.join("MANIFEST")).unwrap();
    EmbeddedStore::open_with(&d, OpenOptions { rebuild: true, ..OpenOptions::default() }).unwrap().close().unwrap();
    assert!(fsck(&d).unwrap().ok());
    assert_eq!(check_reads(&d, &fx.objects, "bare log"), 0);
}

fn ingest(store: &EmbeddedStore, uri: &str, data: &[u8]) -> Result<hart_store::ObjectInfo, StoreError> {
    let m = if uri.contains("text") || data.iter().all(|b| b.is_ascii()) { Modality::Text } else { Modality::Binary };
    ingest_reader(
        store,
        SourceInfo { uri: uri.into(), modality: m, size: Some(data.len() as u64) },
        data,
        &Progress::default(),
    )
}

/// Damage that no open notices (in the checkpointed part of the log): ingesting the same
/// content again must not build on it — it fails loudly, or builds a new object that reads
/// back exactly; never an object that reads back wrong.
#[test]
fn issue_12_ingest_never_builds_on_damaged_atoms() {
    let fx = fixture();
    let l = &fx.layout;
    let mut cases: Vec<(String, usize)> = Vec::new();
    for (p, n) in spread(&l.child_lists, 5) {
        cases.push((format!("child list at {p}"), p + n / 2));
    }
    for (p, n) in spread(&l.leaf_values, 5) {
        cases.push((format!("leaf value at {p}"), p + n / 2));
    }
    for p in spread(&l.node_hashes, 3) {
        cases.push((format!("composite hash at {p}"), p + 3));
    }
    for (i, (case, at)) in cases.iter().enumerate() {
        let d = fx.copy("build-on");
        flip(&d.join("log/00000000.seg"), *at, i as u8 + 1);
        let Ok(store) = EmbeddedStore::open(&d) else { continue }; // refused: nothing built on it
        for (id, data) in &fx.objects {
            match ingest(&store, &format!("test://again/{id}"), data) {
                Err(e) => assert!(
                    matches!(
                        e,
                        StoreError::StoreDamaged { .. } | StoreError::Damaged { .. } | StoreError::Corrupt { .. }
                    ),
                    "{case}: object {id}: unexpected error {e}"
                ),
                Ok(info) => {
                    let mut out = Vec::new();
                    match store.cat(&info.root.unwrap(), &mut out) {
                        Ok(_) => assert!(out == *data, "{case}: object {id} ingested again reads back other bytes"),
                        Err(e) => panic!("{case}: object {id} was ingested again on top of damage: {e}"),
                    }
                }
            }
        }
    }
}

/// Damage, `fsck --repair`, then ingesting good copies of the files: every object reads back
/// exactly, fsck finds no problem (reference counts included), and gc keeps what is needed.
#[test]
fn issue_12_repair_then_good_copies_heal_the_store() {
    let fx = fixture();
    let l = &fx.layout;
    let mut cases: Vec<(String, usize)> = Vec::new();
    for (p, n) in spread(&l.leaf_values, 4) {
        cases.push((format!("leaf value at {p}"), p + n / 2));
    }
    for (p, n) in spread(&l.child_lists, 4) {
        cases.push((format!("child list at {p}"), p + n / 2));
    }
    for f in spread(&l.frame_headers, 2) {
        cases.push((format!("frame checksum at {f}"), f + 9));
    }
    let mut healed = 0;
    for (i, (case, at)) in cases.iter().enumerate() {
        let d = fx.copy("heal");
        flip(&d.join("log/00000000.seg"), *at, i as u8 + 2);
        EmbeddedStore::open_with(&d, OpenOptions { rebuild: true, ..OpenOptions::default() })
            .unwrap_or_else(|e| panic!("{case}: repair: {e}"))
            .close()
            .unwrap();
        let store = EmbeddedStore::open(&d).unwrap_or_else(|e| panic!("{case}: open after repair: {e}"));
        for (id, data) in &fx.objects {
            let info = ingest(&store, &format!("test://good/{id}"), data)
                .unwrap_or_else(|e| panic!("{case}: ingesting a good copy of object {id} after repair: {e}"));
            let mut out = Vec::new();
            store.cat(&info.root.unwrap(), &mut out).unwrap_or_else(|e| panic!("{case}: object {id}: {e}"));
            assert!(out == *data, "{case}: object {id} reads back other bytes after healing");
        }
        let r = store.fsck(&|_, _| {}).unwrap();
        assert!(r.ok(), "{case}: after healing: {:?}", r.problems);
        healed += r.notes.iter().filter(|n| n.contains("healed")).count();
        store.gc().unwrap();
        store.flush().unwrap();
        let r = store.fsck(&|_, _| {}).unwrap();
        assert!(r.ok(), "{case}: after healing and gc: {:?}", r.problems);
        drop(store);
        // Every original object is back: a completed object with its bytes.
        let s = EmbeddedStore::open_with(&d, OpenOptions { read_only: true, ..OpenOptions::default() }).unwrap();
        for (id, data) in &fx.objects {
            let o = s.objects().unwrap().into_iter().find(|o| o.uri == format!("test://good/{id}")).unwrap();
            let mut out = Vec::new();
            s.cat(&o.root.unwrap(), &mut out).unwrap();
            assert!(out == *data, "{case}: object {id} after reopening");
        }
    }
    eprintln!("{} cases, {healed} healed ghosts reported by fsck", cases.len());
    assert!(healed > 0, "no case healed anything: the damage hit nothing a good copy replaces");
}
