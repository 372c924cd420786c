//! The conformance suite: one set of expectations every backend must meet, through the
//! [`Store`] and [`Session`] traits and the ingest pipeline only.
//!
//! Every check is a public function taking a factory of fresh, empty stores and panicking
//! with a message that says what broke. A backend's test file gets one `#[test]` per check
//! from [`conformance_tests!`](crate::conformance_tests):
//!
//! ```text
//! fn fresh() -> Box<dyn hart_store::Store> {
//!     let dir = tempfile::tempdir().unwrap();
//!     let store = MyStore::open(dir.path()).unwrap();
//!     // The guard (here the directory) is dropped after the store.
//!     hart_store::conformance::with_guard(store, dir)
//! }
//! hart_store::conformance_tests!(fresh);
//! ```
//!
//! A factory may also return a [`Subject`] that knows how to close its store and open it
//! again from what it persisted (same directory, same database). The suite then reopens the
//! store at every step boundary and checks that nothing observable changed (stats, objects,
//! roots, bytes): run the suite once with a plain factory and once with a reopening one.
//!
//! At every step boundary the suite checks the store as a whole ([`check_store`]): `fsck` is
//! clean; every atom reachable from a live object reads back coherently (its hash from its
//! content, its position and Hilbert key from its content, the same record by hash and by
//! key); every reference count equals a recount through the interface; stats add up; every
//! completed object rebuilds to its size and source hash.
//!
//! Fixed inputs produce fixed roots ([`golden_roots`]): the same constants hold on every
//! backend, which is what makes "same roots on every backend" checkable.

use crate::ingest::{collect_files, ingest_bytes, ingest_files, IngestOptions, Outcome, Progress};
use crate::{AtomRecord, Batch, ObjectInfo, ObjectSummary, SourceInfo, Stats, Status, Store, StoreError};
use hart_core::atom::{leaf_hash, node_hash};
use hart_core::features::{leaf_identity, leaf_position};
use hart_core::tree::{make_node, GroupBuilder, NodeOut, TreeBuilder};
use hart_core::{AtomKind, Child, Hash, HilbertKey, Modality, Position, LEAF_MAX};
use std::collections::{BTreeMap, HashMap, HashSet};

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// Closes a store and opens it again from what it persisted.
pub type Reopen = Box<dyn FnMut(Box<dyn Store>) -> Box<dyn Store>>;

/// A store under test, with an optional way to reopen it.
pub struct Subject {
    // Field order is drop order: the store goes before the reopen closure, which may own
    // what the store lives in (a temporary directory, a throwaway database).
    store: Option<Box<dyn Store>>,
    reopen: Option<Reopen>,
    reopens: u32,
}

impl Subject {
    /// A store the suite will not reopen.
    pub fn new(store: Box<dyn Store>) -> Self {
        Subject { store: Some(store), reopen: None, reopens: 0 }
    }

    /// A store the suite reopens at every step boundary with `reopen`, which receives the
    /// open store, must close it (drop it) and return a store opened on the same data.
    pub fn reopening(store: Box<dyn Store>, reopen: impl FnMut(Box<dyn Store>) -> Box<dyn Store> + 'static) -> Self {
        Subject { store: Some(store), reopen: Some(Box::new(reopen)), reopens: 0 }
    }

    /// The store.
    pub fn store(&self) -> &dyn Store {
        self.store.as_deref().expect("store present between steps")
    }

    /// How many times the store was reopened.
    pub fn reopens(&self) -> u32 {
        self.reopens
    }

    /// A step boundary: the whole store is checked ([`check_store`]); then, if the subject
    /// can reopen, it is closed and opened again and must look exactly the same.
    pub fn step(&mut self, ctx: &str) {
        check_store(self.store(), ctx);
        if self.reopen.is_some() {
            self.reopen_now(ctx);
        }
    }

    /// Close and reopen now (if the subject can), checking that nothing observable changed.
    pub fn reopen_now(&mut self, ctx: &str) {
        let Some(reopen) = self.reopen.as_mut() else { return };
        let store = self.store.take().expect("store present");
        let before = snapshot(store.as_ref());
        let store = reopen(store);
        let after = snapshot(store.as_ref());
        self.store = Some(store);
        self.reopens += 1;
        if before != after {
            panic!("[{ctx}] reopen changed the store's observable state\n{}", describe_diff(&before, &after));
        }
        fsck_ok(self.store(), &format!("{ctx}, after reopen"));
    }
}

impl Drop for Subject {
    fn drop(&mut self) {
        // A reopening subject that was never reopened tested nothing about reopening.
        if self.reopen.is_some() && self.reopens == 0 && !std::thread::panicking() {
            panic!("a reopening Subject was dropped without ever being reopened (no step boundary reached)");
        }
    }
}

impl From<Box<dyn Store>> for Subject {
    fn from(store: Box<dyn Store>) -> Self {
        Subject::new(store)
    }
}

/// A store that owns a guard dropped after it (a temporary directory, a throwaway database).
pub struct WithGuard<S, G> {
    store: S,
    _guard: G,
}

/// Box `store` together with `guard`, which outlives it.
pub fn with_guard<S: Store + 'static, G: Send + Sync + 'static>(store: S, guard: G) -> Box<dyn Store> {
    Box::new(WithGuard { store, _guard: guard })
}

impl<S: Store, G: Send + Sync> Store for WithGuard<S, G> {
    fn backend(&self) -> &'static str {
        self.store.backend()
    }
    fn begin(&self, source: SourceInfo) -> Result<Box<dyn crate::Session + '_>, StoreError> {
        self.store.begin(source)
    }
    fn get(&self, hash: &Hash) -> Result<Option<AtomRecord>, StoreError> {
        self.store.get(hash)
    }
    fn get_by_key(&self, key: &HilbertKey) -> Result<Option<AtomRecord>, StoreError> {
        self.store.get_by_key(key)
    }
    fn find_prefix(&self, prefix: &str, limit: usize) -> Result<Vec<Hash>, StoreError> {
        self.store.find_prefix(prefix, limit)
    }
    fn cat(&self, root: &Hash, out: &mut dyn std::io::Write) -> Result<u64, StoreError> {
        self.store.cat(root, out)
    }
    fn objects(&self) -> Result<Vec<ObjectInfo>, StoreError> {
        self.store.objects()
    }
    fn delete_object(&self, id: u64) -> Result<ObjectInfo, StoreError> {
        self.store.delete_object(id)
    }
    fn gc(&self) -> Result<crate::GcReport, StoreError> {
        self.store.gc()
    }
    fn fsck(&self, progress: &dyn Fn(u64, u64)) -> Result<crate::FsckReport, StoreError> {
        self.store.fsck(progress)
    }
    fn stats(&self) -> Result<Stats, StoreError> {
        self.store.stats()
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.store.flush()
    }
}

/// The one list of checks. `CHECKS`, [`run_all`] and [`conformance_tests!`](crate::conformance_tests)
/// are all generated from it, so a new check is added here and nowhere else.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_checks {
    ($callback:ident ! ($($args:tt)*)) => {
        $crate::$callback!($($args)* ;
            round_trip_binary,
            round_trip_text,
            round_trip_every_modality,
            round_trip_property,
            dedup,
            small_edit_shares_most_atoms,
            lookups_agree,
            shared_leaf_ref_counts,
            golden_roots,
            delete_and_gc,
            reingest_before_gc_revives,
            object_statuses,
            aborted_session_is_collectable,
            dropped_session_is_collectable,
            collision_reported,
            stats_add_up,
            bad_requests_rejected,
            ingest_files_round_trip,
            large_sessions_round_trip
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_defs {
    (; $($check:ident),*) => {
        /// Every check, by name, in the order [`run_all`] runs them.
        pub const CHECKS: &[&str] = &[$(stringify!($check)),*];

        /// Run every check, each on stores from `factory`.
        pub fn run_all<S: Into<Subject>>(factory: &dyn Fn() -> S) {
            $( $check(factory); )*
        }
    };
}

crate::__conformance_checks!(__conformance_defs!());

/// One `#[test]` per conformance check, each calling the check with `$factory` (a function or
/// closure returning a fresh `Box<dyn Store>` or [`Subject`](crate::conformance::Subject)).
/// Put it in its own module to run the suite more than once (e.g. plain and reopening):
///
/// ```text
/// mod fresh { hart_store::conformance_tests!(super::fresh_store); }
/// mod reopened { hart_store::conformance_tests!(super::reopening_store); }
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::__conformance_checks!(__conformance_tests_each!($factory));
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests_each {
    ($factory:expr ; $($check:ident),*) => {
        $(
            #[test]
            fn $check() {
                $crate::conformance::$check(&$factory);
            }
        )*
    };
}

fn subject<S: Into<Subject>>(factory: &dyn Fn() -> S, ctx: &str) -> Subject {
    let s: Subject = factory().into();
    let stats = s.store().stats().unwrap_or_else(|e| panic!("[{ctx}] stats of a fresh store: {e}"));
    assert_eq!(stats.atoms, 0, "[{ctx}] the factory must return an empty store");
    let objects = s.store().objects().unwrap_or_else(|e| panic!("[{ctx}] objects of a fresh store: {e}"));
    assert!(objects.is_empty(), "[{ctx}] the factory must return a store without objects");
    s
}

// ---------------------------------------------------------------------------------------
// Whole-store checks
// ---------------------------------------------------------------------------------------

/// `fsck` must succeed and find nothing wrong.
pub fn fsck_ok(store: &dyn Store, ctx: &str) -> crate::FsckReport {
    let r = store.fsck(&|_, _| {}).unwrap_or_else(|e| panic!("[{ctx}] fsck failed to run: {e}"));
    assert!(r.ok(), "[{ctx}] fsck found problems: {:#?}", &r.problems[..r.problems.len().min(10)]);
    r
}

/// What a walk from every live object's root found, through `get` only.
#[derive(Debug, Default)]
pub struct Reachable {
    pub atoms: HashMap<Hash, AtomRecord>,
    /// References recounted: distinct live parents, plus completed objects rooted there.
    pub refs: HashMap<Hash, u64>,
}

/// Walk every atom reachable from completed objects, checking each record's coherence.
pub fn reachable(store: &dyn Store, ctx: &str) -> Reachable {
    let objects = store.objects().unwrap_or_else(|e| panic!("[{ctx}] objects: {e}"));
    let mut r = Reachable::default();
    let mut stack: Vec<Hash> = Vec::new();
    for o in objects.iter().filter(|o| o.status == Status::Completed) {
        let root = o.root.unwrap_or_else(|| panic!("[{ctx}] completed object {} has no root", o.id));
        *r.refs.entry(root).or_default() += 1;
        stack.push(root);
    }
    while let Some(h) = stack.pop() {
        if r.atoms.contains_key(&h) {
            continue;
        }
        let rec = store
            .get(&h)
            .unwrap_or_else(|e| panic!("[{ctx}] get {h}: {e}"))
            .unwrap_or_else(|| panic!("[{ctx}] atom {h}, reachable from a live object, is not found by hash"));
        check_record(store, &rec, ctx);
        let mut distinct: Vec<Hash> = rec.children.clone();
        distinct.sort();
        distinct.dedup();
        for c in distinct {
            *r.refs.entry(c).or_default() += 1;
            stack.push(c);
        }
        r.atoms.insert(h, rec);
    }
    // Composites' positions follow from their children's.
    for rec in r.atoms.values().filter(|a| a.kind == AtomKind::Node) {
        let kids: Vec<Child> = rec.children.iter().map(|c| Child { hash: *c, pos: r.atoms[c].position }).collect();
        let made = make_node(rec.modality, &kids, &mut |_: &NodeOut<'_>| {});
        assert_eq!(
            made.pos, rec.position,
            "[{ctx}] composite {}: stored position differs from the one its children give",
            rec.hash
        );
    }
    r
}

/// One record read back: identity from content, key from position, same record by key.
fn check_record(store: &dyn Store, rec: &AtomRecord, ctx: &str) {
    let h = rec.hash;
    match rec.kind {
        AtomKind::Leaf => {
            let v = rec.value.as_deref().unwrap_or_else(|| panic!("[{ctx}] leaf {h} has no value"));
            assert!(v.len() <= LEAF_MAX, "[{ctx}] leaf {h} holds {} bytes", v.len());
            assert!(rec.children.is_empty(), "[{ctx}] leaf {h} has children");
            assert_eq!(leaf_hash(rec.modality, v), h, "[{ctx}] leaf {h}: value does not hash to it");
            assert_eq!(leaf_position(rec.modality, v, &h), rec.position, "[{ctx}] leaf {h}: wrong position");
        }
        AtomKind::Node => {
            assert!(rec.value.is_none(), "[{ctx}] composite {h} has a value");
            assert!(rec.children.len() >= 2, "[{ctx}] composite {h} has {} children", rec.children.len());
            assert_eq!(node_hash(rec.modality, &rec.children), h, "[{ctx}] composite {h}: children do not hash to it");
        }
    }
    assert_eq!(rec.key, HilbertKey::new(rec.modality, &rec.position), "[{ctx}] atom {h}: key is not its position's");
    assert_eq!(rec.key.decode(), Some((rec.modality, rec.position)), "[{ctx}] atom {h}: key does not decode");
    let by_key = store
        .get_by_key(&rec.key)
        .unwrap_or_else(|e| panic!("[{ctx}] get_by_key {}: {e}", rec.key))
        .unwrap_or_else(|| panic!("[{ctx}] atom {h} is not found by its key {}", rec.key));
    assert_eq!(&by_key, rec, "[{ctx}] get and get_by_key disagree on atom {h}");
}

/// The whole store, checked through the interface (see the module docs).
pub fn check_store(store: &dyn Store, ctx: &str) {
    let fsck = fsck_ok(store, ctx);
    let objects = store.objects().unwrap_or_else(|e| panic!("[{ctx}] objects: {e}"));
    let stats = store.stats().unwrap_or_else(|e| panic!("[{ctx}] stats: {e}"));

    // Objects: oldest first, unique ids, statuses coherent.
    for w in objects.windows(2) {
        assert!(
            w[0].id < w[1].id,
            "[{ctx}] objects not oldest first / ids not increasing: {} then {}",
            w[0].id,
            w[1].id
        );
    }
    let completed: Vec<&ObjectInfo> = objects.iter().filter(|o| o.status == Status::Completed).collect();
    for o in &objects {
        match o.status {
            Status::Completed | Status::Unchanged => {
                assert!(o.root.is_some() && o.source_hash.is_some(), "[{ctx}] object {} lacks root/source hash", o.id);
                assert!(o.completed_at.is_some(), "[{ctx}] object {} has no completion time", o.id);
            }
            Status::Failed => {
                assert!(o.error.is_some(), "[{ctx}] failed object {} has no error", o.id);
            }
            Status::Pending | Status::Running => {
                panic!("[{ctx}] object {} is still {:?} between steps", o.id, o.status)
            }
            Status::Deleted => {}
        }
    }
    assert_eq!(fsck.objects_checked, completed.len() as u64, "[{ctx}] fsck checked a different number of objects");

    // Completed objects rebuild to their size and source hash.
    for o in &completed {
        let root = o.root.expect("checked");
        let mut hasher = HashSink(blake3::Hasher::new(), 0);
        let n = store.cat(&root, &mut hasher).unwrap_or_else(|e| panic!("[{ctx}] cat of object {}: {e}", o.id));
        assert_eq!(n, o.size, "[{ctx}] object {} ({}) cats {n} bytes, size says {}", o.id, o.uri, o.size);
        assert_eq!(hasher.1, n, "[{ctx}] cat of object {} returned a count unlike what it wrote", o.id);
        assert_eq!(
            Some(Hash(*hasher.0.finalize().as_bytes())),
            o.source_hash,
            "[{ctx}] object {} ({}) does not rebuild to its source hash",
            o.id,
            o.uri
        );
    }

    // Stats add up.
    let sum_atoms: u64 = stats.per_modality.values().map(|m| m.leaves + m.composites).sum();
    let sum_bytes: u64 = stats.per_modality.values().map(|m| m.leaf_bytes).sum();
    assert_eq!(stats.atoms, sum_atoms, "[{ctx}] stats.atoms differs from the per-modality sum: {stats:#?}");
    assert_eq!(stats.unique_bytes, sum_bytes, "[{ctx}] unique_bytes differs from the sum of leaf bytes");
    assert_eq!(stats.objects, completed.len() as u64, "[{ctx}] stats.objects is not the number of completed objects");
    assert_eq!(
        stats.logical_bytes,
        completed.iter().map(|o| o.size).sum::<u64>(),
        "[{ctx}] logical_bytes is not the sum of completed sizes"
    );
    if stats.unique_bytes > 0 {
        let want = stats.logical_bytes as f64 / stats.unique_bytes as f64;
        assert!((stats.dedup_ratio - want).abs() < 1e-9, "[{ctx}] dedup_ratio {} != {want}", stats.dedup_ratio);
    }
    assert_eq!(
        fsck.atoms_checked, stats.atoms,
        "[{ctx}] fsck checked {} atoms, stats count {}",
        fsck.atoms_checked, stats.atoms
    );

    // Reference counts equal a recount through the interface.
    let r = reachable(store, ctx);
    for (h, rec) in &r.atoms {
        let want = r.refs[h];
        if stats.garbage_atoms == 0 {
            assert_eq!(rec.ref_count, want, "[{ctx}] atom {h}: stored ref_count {}, recount {want}", rec.ref_count);
        } else {
            // Garbage composites still hold references to their children until gc.
            assert!(rec.ref_count >= want, "[{ctx}] atom {h}: ref_count {} below live recount {want}", rec.ref_count);
        }
    }
    if stats.garbage_atoms == 0 {
        assert_eq!(
            stats.atoms,
            r.atoms.len() as u64,
            "[{ctx}] no garbage, yet {} atoms stored and {} reachable from live objects",
            stats.atoms,
            r.atoms.len()
        );
        let mut per: BTreeMap<String, crate::ModalityStats> = BTreeMap::new();
        for a in r.atoms.values() {
            let m = per.entry(a.modality.name().to_string()).or_default();
            match a.kind {
                AtomKind::Leaf => {
                    m.leaves += 1;
                    m.leaf_bytes += a.value.as_ref().map_or(0, |v| v.len() as u64);
                }
                AtomKind::Node => m.composites += 1,
            }
        }
        let stored: BTreeMap<String, crate::ModalityStats> = stats
            .per_modality
            .iter()
            .filter(|(_, m)| m.leaves + m.composites > 0)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(stored, per, "[{ctx}] per-modality stats differ from what is reachable");
    } else {
        assert!(
            stats.atoms >= r.atoms.len() as u64 + stats.garbage_atoms,
            "[{ctx}] {} atoms stored, but {} reachable and {} garbage",
            stats.atoms,
            r.atoms.len(),
            stats.garbage_atoms
        );
    }
}

struct HashSink(blake3::Hasher, u64);

impl std::io::Write for HashSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.update(b);
        self.1 += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What must survive a reopen unchanged.
#[derive(Debug, PartialEq)]
struct Snapshot {
    stats: Stats,
    objects: Vec<ObjectInfo>,
    roots: Vec<(Hash, Option<AtomRecord>)>,
    /// (object id, BLAKE3 of its bytes) for completed objects.
    bytes: Vec<(u64, Hash)>,
}

fn snapshot(store: &dyn Store) -> Snapshot {
    let mut stats = store.stats().expect("stats");
    stats.stored_bytes = 0; // layout on disk may change (checkpoints, compaction)
    let objects = store.objects().expect("objects");
    let mut roots = Vec::new();
    let mut bytes = Vec::new();
    for o in &objects {
        if let Some(r) = o.root {
            roots.push((r, store.get(&r).expect("get root")));
        }
        if o.status == Status::Completed {
            let mut h = HashSink(blake3::Hasher::new(), 0);
            store.cat(&o.root.expect("root"), &mut h).expect("cat");
            bytes.push((o.id, Hash(*h.0.finalize().as_bytes())));
        }
    }
    Snapshot { stats, objects, roots, bytes }
}

fn describe_diff(a: &Snapshot, b: &Snapshot) -> String {
    let mut out = String::new();
    if a.stats != b.stats {
        out += &format!("stats before: {:#?}\nstats after: {:#?}\n", a.stats, b.stats);
    }
    if a.objects != b.objects {
        for (x, y) in a.objects.iter().zip(&b.objects) {
            if x != y {
                out += &format!("object before: {x:?}\nobject after:  {y:?}\n");
            }
        }
        if a.objects.len() != b.objects.len() {
            out += &format!("{} objects before, {} after\n", a.objects.len(), b.objects.len());
        }
    }
    if a.roots != b.roots {
        out += &format!("roots before: {:#?}\nroots after: {:#?}\n", a.roots, b.roots);
    }
    if a.bytes != b.bytes {
        out += &format!("bytes before: {:?}\nbytes after: {:?}\n", a.bytes, b.bytes);
    }
    out
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Deterministic pseudo-random bytes (xorshift64), the same on every machine.
pub fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn ingest(store: &dyn Store, uri: &str, m: Modality, data: &[u8], ctx: &str) -> ObjectInfo {
    let info = ingest_bytes(store, uri, m, data)
        .unwrap_or_else(|e| panic!("[{ctx}] ingest of {uri} ({m}, {} bytes) failed: {e}", data.len()));
    assert!(
        matches!(info.status, Status::Completed | Status::Unchanged),
        "[{ctx}] ingest of {uri} returned status {:?}",
        info.status
    );
    assert_eq!(info.uri, uri, "[{ctx}] object uri");
    assert_eq!(info.modality, m, "[{ctx}] object modality");
    assert_eq!(info.size, data.len() as u64, "[{ctx}] object size");
    assert_eq!(info.source_hash, Some(Hash(*blake3::hash(data).as_bytes())), "[{ctx}] object source hash");
    info
}

fn cat(store: &dyn Store, root: &Hash, ctx: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let n = store.cat(root, &mut out).unwrap_or_else(|e| panic!("[{ctx}] cat {root}: {e}"));
    assert_eq!(n, out.len() as u64, "[{ctx}] cat {root}: returned count differs from bytes written");
    out
}

fn assert_cats(store: &dyn Store, info: &ObjectInfo, data: &[u8], ctx: &str) {
    let root = info.root.unwrap_or_else(|| panic!("[{ctx}] object {} has no root", info.id));
    let got = cat(store, &root, ctx);
    if got != data {
        let first = got.iter().zip(data).position(|(a, b)| a != b).unwrap_or(got.len().min(data.len()));
        panic!(
            "[{ctx}] object {} ({}): cat returned {} bytes, input had {}; first difference at offset {first}",
            info.id,
            info.uri,
            got.len(),
            data.len()
        );
    }
}

fn get(store: &dyn Store, h: &Hash, ctx: &str) -> AtomRecord {
    store
        .get(h)
        .unwrap_or_else(|e| panic!("[{ctx}] get {h}: {e}"))
        .unwrap_or_else(|| panic!("[{ctx}] atom {h} not found"))
}

fn stats(store: &dyn Store, ctx: &str) -> Stats {
    store.stats().unwrap_or_else(|e| panic!("[{ctx}] stats: {e}"))
}

fn gc(store: &dyn Store, ctx: &str) -> crate::GcReport {
    store.gc().unwrap_or_else(|e| panic!("[{ctx}] gc: {e}"))
}

fn delete(store: &dyn Store, id: u64, ctx: &str) -> ObjectInfo {
    let info = store.delete_object(id).unwrap_or_else(|e| panic!("[{ctx}] delete object {id}: {e}"));
    assert_eq!(info.status, Status::Deleted, "[{ctx}] deleted object {id} has status {:?}", info.status);
    info
}

/// An object's atoms built the way the ingest pipeline builds them (binary: chunks under a
/// content-defined tree; text: tokens grouped into lines, lines under a tree), as batches of
/// at most `batch_ops` ops, children before parents, each atom once.
pub struct Built {
    pub batches: Vec<Batch>,
    pub root: Hash,
    pub summary: ObjectSummary,
    pub atoms: usize,
}

/// Build `data`'s atoms for `modality` (binary or text) without a store.
pub fn build(modality: Modality, data: &[u8], batch_ops: usize) -> Built {
    assert!(matches!(modality, Modality::Binary | Modality::Text), "build supports binary and text");
    let decoded = hart_decode::decode_all(modality, data);
    let mut seen: HashSet<Hash> = HashSet::new();
    let mut batch = Batch::default();
    let mut batches = Vec::new();
    let mut occurrences = 0u64;
    let mut nodes: Vec<(Hash, Position, Vec<Hash>)> = Vec::new();
    let mut tree = TreeBuilder::new(modality);
    let mut group = GroupBuilder::new(modality);
    let mut ends = decoded.group_ends.iter().peekable();
    let flush_nodes =
        |nodes: &mut Vec<(Hash, Position, Vec<Hash>)>, batch: &mut Batch, seen: &mut HashSet<Hash>, occ: &mut u64| {
            for (h, p, kids) in nodes.drain(..) {
                *occ += 1;
                if seen.insert(h) {
                    batch.push_node(modality, h, p, kids);
                }
            }
        };
    fn collect(nodes: &mut Vec<(Hash, Position, Vec<Hash>)>) -> impl FnMut(&NodeOut<'_>) + '_ {
        move |n: &NodeOut<'_>| nodes.push((n.hash, n.pos, n.children.iter().map(|c| c.hash).collect()))
    }
    for (i, value) in decoded.leaves.iter().enumerate() {
        let (hash, pos) = leaf_identity(modality, value);
        occurrences += 1;
        if seen.insert(hash) {
            batch.push_leaf(modality, hash, pos, value);
        }
        let child = Child { hash, pos };
        if modality == Modality::Text {
            group.push(child, &mut collect(&mut nodes));
        } else {
            tree.push(child, &mut collect(&mut nodes));
        }
        flush_nodes(&mut nodes, &mut batch, &mut seen, &mut occurrences);
        while ends.peek() == Some(&&(i + 1)) {
            ends.next();
            let line = group.finish(&mut collect(&mut nodes));
            if let Some(c) = line {
                tree.push(c, &mut collect(&mut nodes));
            }
            flush_nodes(&mut nodes, &mut batch, &mut seen, &mut occurrences);
        }
        if batch.len() >= batch_ops {
            batches.push(std::mem::take(&mut batch));
        }
    }
    let root = tree.finish(&mut collect(&mut nodes));
    flush_nodes(&mut nodes, &mut batch, &mut seen, &mut occurrences);
    let root = match root {
        Some(c) => c.hash,
        None => {
            let (hash, pos) = leaf_identity(modality, b"");
            occurrences += 1;
            if seen.insert(hash) {
                batch.push_leaf(modality, hash, pos, b"");
            }
            hash
        }
    };
    if !batch.is_empty() {
        batches.push(batch);
    }
    Built {
        batches,
        root,
        summary: ObjectSummary {
            source_hash: Hash(*blake3::hash(data).as_bytes()),
            size: data.len() as u64,
            occurrences,
        },
        atoms: seen.len(),
    }
}

fn source(uri: &str, m: Modality, size: usize) -> SourceInfo {
    SourceInfo { uri: uri.into(), modality: m, size: Some(size as u64) }
}

/// Text samples: ASCII, non-ASCII, CRLF, empty, one byte, 64 and 65 bytes, a single line
/// over 64 KiB, and invalid UTF-8 forced through the text decoder.
fn text_samples() -> Vec<(&'static str, Vec<u8>)> {
    let mut long_line = String::new();
    let mut i = 0u32;
    while long_line.len() <= 70 * 1024 {
        long_line += &format!("word{} {} ", i % 97, i % 13);
        i += 1;
    }
    let mut invalid = vec![0xff, 0xfe, b'a', 0xc3, b'\n', 0xe2, 0x82, b' ', 0x80, 0x80, 0x80];
    invalid.extend(pseudo_random(700, 9));
    invalid.extend_from_slice(&[0xf0, 0x9f, 0xa6]); // truncated 4-byte character at the end
    vec![
        ("empty", Vec::new()),
        ("one byte", b"a".to_vec()),
        ("one newline", b"\n".to_vec()),
        ("64 bytes", vec![b'x'; 64]),
        ("65 bytes", vec![b'y'; 65]),
        ("ascii lines", b"The quick brown fox\njumps over 13 lazy dogs...\n\n  indented\tline == yes\n".to_vec()),
        ("crlf", b"line one\r\nline two\r\n\r\nlast\rline without lf".to_vec()),
        ("non-ascii", "Grüße, 世界! Ünïcödé — emoji 🦀🦀🦀\nЁжик в тумане\u{a0}nbsp\n\u{feff}bom".as_bytes().to_vec()),
        ("long non-ascii run", "é".repeat(40_000).into_bytes()),
        ("long line", long_line.into_bytes()),
        ("invalid utf-8", invalid),
        ("nul and controls", b"a\0b\x01\x02\x7f\x1b[0m\n".to_vec()),
    ]
}

fn text_sample(name: &str) -> Vec<u8> {
    text_samples().into_iter().find(|(n, _)| *n == name).expect("a text sample").1
}

fn binary_samples() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("empty", Vec::new()),
        ("one byte", vec![0x42]),
        ("64 bytes", pseudo_random(64, 1)),
        ("65 bytes", pseudo_random(65, 2)),
        ("zeros", vec![0; 4096]),
        ("pattern", b"abcdefg".iter().copied().cycle().take(100_000).collect()),
        ("random", pseudo_random(100_000, 3)),
        ("all byte values", (0..=255u8).cycle().take(2048).collect()),
    ]
}

// ---------------------------------------------------------------------------------------
// The checks
// ---------------------------------------------------------------------------------------

/// Binary inputs of every awkward size come back byte for byte.
pub fn round_trip_binary<S: Into<Subject>>(factory: &dyn Fn() -> S) {
    let ctx = "round_trip_binary";
    let mut s = subject(factory, ctx);
    let mut stored = Vec::new();
    for (name, data) in binary_samples() {
        let info = ingest(s.store(), &format!("mem://bin/{name}"), Modality::Binary, &data, ctx);
        assert_cats(s.store(), &info, &data, &format!("{ctx}: {name}"));
        stored.push((info, data));
    }
    s.step(ctx);
    for (info, data) in &stored {
        assert_cats(s.store(), info, data, &format!("{ctx}, after step: {}", info.uri));
    }
}

/// Text inputs come back byte for byte, including invalid UTF-8 forced through the text
/// decoder (the contract: stored losslessly, never rejected).
pub fn round_trip_text<S: Into<Subject>>(factory: &dyn Fn() -> S) {
    let ctx = "round_trip_text";
    let mut s = subject(factory, ctx);
    let mut stored = Vec::new();
    for (name, data) in text_samples() {
        let info = ingest(s.store(), &format!("mem://text/{name}"), Modality::Text, &data, ctx);
        assert_cats(s.store(), &info, &data, &format!("{ctx}: {name}"));
        stored.push((info, data));
    }
    s.step(ctx);
    for (info, data) in &stored {
        assert_cats(s.store(), info, data, &format!("{ctx}, after step: {}", info.uri));
    }
}

/// Every modality, even those whose decoders do not exist yet (they are chunked as binary),
/// round-trips.
pub fn round_trip_every_modality<S: Into<Subject>>(factory: &dyn Fn() -> S) {
    let ctx = "round_trip_every_modality";
    let mut s = subject(factory, ctx);
    let mut stored = Vec::new();
    for (i, m) in Modality::ALL.iter().enumerate() {
        for (j, data) in
            [pseudo_random(10_000, 40 + i as u64), pseudo_random(100, 50 + i as u64), vec![7]].into_iter().enumerate()
        {
            let info = ingest(s.store(), &format!("mem://{m}/{j}"), *m, &data, ctx);
            assert_cats(s.store(), &info, &data, &format!("{ctx}: {m}, {} bytes", data.len()));
            stored.push((info, data));
        }
    }
    s.step(ctx);
    for (info, data) in &stored {
        assert_cats(s.store(), info, data, &format!("{ctx}, after step: {}", info.uri));
    }
}

/// Random bytes and random text, as binary and as text, come back byte for byte (proptest,
/// a handful of cases on one store).
pub fn round_trip_property<S: Into<Subject>>(factory: &dyn Fn() -> S) {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let ctx = "round_trip_property";
    let mut s = subject(factory, ctx);
    let token = prop_oneof![
        "[a-zA-Z]{1,12}",
        "[0-9]{1,5}",
        "[ \t]{1,3}",
        Just("\n".to_string()),
        Just("\r\n".to_string()),
        "[!-/:-@]{1,3}",
        "\\PC{1,4}",
    ];
    let text = proptest::collection::vec(token, 0..300).prop_map(|t| t.concat().into_bytes());
    let bytes = proptest::collection::vec(any::<u8>(), 0..5000);
    let input = prop_oneof![
        bytes.clone().prop_map(|b| (Modality::Binary, b)),
        bytes.prop_map(|b| (Modality::Text, b)),
        text.clone().prop_map(|b| (Modality::Text, b)),
        text.prop_map(|b| (Modality::Binary, b)),
    ];
    let mut runner = TestRunner::new(Config { cases: 24, failure_persistence: None, ..Config::default() });
    let counter = std::cell::Cell::new(0u32);
    let store = s.store();
    runner
        .run(&input, |(m, data)| {
            let n = counter.get();
            counter.set(n + 1);
            let info = ingest_bytes(store, &format!("mem://prop/{n}"), m, &data)
                .map_err(|e| TestCaseError::fail(format!("ingest: {e}")))?;
            let mut out = Vec::new();
            store.cat(&info.root.expect("root"), &mut out).map_err(|e| TestCaseError::fail(format!("cat: {e}")))?;
            prop_assert_eq!(out, data, "{} input did not round-trip", m);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("[{ctx}] {e}"));
    s.step(ctx);
}

/// The same bytes twice: nothing new is written; under the same URI the object is
/// `Unchanged`, under another it is a new object that only adds a reference to the root.
pub fn dedup<S: Into<Subject>>(factory: &dyn Fn() -> S) {
    let ctx = "dedup";
    let mut s = subject(factory, ctx);
    for (m, data) in
        [(Modality::Binary, pseudo_random(64_000, 11)), (Modality::Text, text_sample("ascii lines").repeat(40))]
    {
        let st = s.store();
        let a = ingest(st, &format!("mem://{m}/a"), m, &data, ctx);
        assert_eq!(a.status, Status::Completed, "[{ctx}] first ingest");
        assert!(a.atoms_created > 0, "[{ctx}] first ingest created no atoms");
        assert_eq!(a.atoms_referenced, 0, "[{ctx}] first {m} ingest referenced pre-existing atoms");
        let before = stats(st, ctx);
        let root = a.root.expect("root");
        assert_eq!(get(st, &root, ctx).ref_count, 1, "[{ctx}] a root held by one object");

        let again = ingest(st, &format!("mem://{m}/a"), m, &data, ctx);
        assert_eq!(again.status, Status::Unchanged, "[{ctx}] same bytes, same uri must be Unchanged");
        assert_eq!(again.root, a.root, "[{ctx}] same bytes gave another root");
        assert_eq!(again.atoms_created, 0, "[{ctx}] unchanged ingest created atoms");
        assert_eq!(again.atoms_referenced, 0, "[{ctx}] unchanged ingest added references");
        assert_eq!(
            again.atoms_skipped,
            a.atoms_created + a.atoms_skipped,
            "[{ctx}] unchanged ingest must skip every occurrence the first one saw"
        );
        assert_ne!(again.id, a.id, "[{ctx}] every ingestion gets its own log row");
        let after = stats(st, ctx);
        assert_eq!(after.atoms, before.atoms, "[{ctx}] unchanged ingest changed the atom count");
        assert_eq!(after.objects, before.objects, "[{ctx}] Unchanged counted as an object");
        assert_eq!(after.logical_bytes, before.logical_bytes, "[{ctx}] Unchanged counted in logical bytes");
        assert_eq!(get(st, &root, ctx).ref_count, 1, "[{ctx}] Unchanged must not reference the root");

        let other = ingest(st, &format!("mem://{m}/b"), m, &data, ctx);
        assert_eq!(other.status, Status::Completed, "[{ctx}] same bytes under another uri is a new object");
        assert_eq!(other.root, a.root, "[{ctx}] same bytes gave another root");
        assert_eq!(other.atoms_created, 0, "[{ctx}] duplicate content created atoms");
        assert_eq!(other.atoms_referenced, 1, "[{ctx}] the only new reference is the object's to its root");
        assert_eq!(stats(st, ctx).atoms, before.atoms, "[{ctx}] duplicate content changed the atom count");
        assert_eq!(get(st, &root, ctx).ref_count, 2, "[{ctx}] a root held by two objects");
        assert_cats(st, &other, &data, ctx);
        s.step(ctx);
    }
    // Repeats inside one object are stored once.
    let chunk = pseudo_random(10_000, 12);
    let data: Vec<u8> = chunk.iter().chain(&chunk).chain(&chunk).copied().collect();
    let info = ingest(s.store(), "mem://repeats", Modality::Binary, &data, ctx);
    assert!(info.atoms_skipped > 0, "[{ctx}] an object repeating itself skipped nothing: {info:?}");
    assert_cats(s.store(), &info, &data, ctx);
    s.step(ctx);
}

/// A one-byte edit in the middle of 128 KiB writes only the changed chunks and the
/// composites on their path to the root.
pub fn small_edit_shares_most_atoms<S: Into<Subject>>(factory: &dyn Fn() -> S) {
    let ctx = "small_edit_shares_most_atoms";
    let mut s = subject(factory, ctx);
    let data = pseudo_random(128 * 1024, 21);
    let a = ingest(s.store(), "mem://v1", Modality::Binary, &data, ctx);
    let mut edited = data.clone();
    edited[data.len() / 2] ^= 0x5a;
    let b = ingest(s.store(), "mem://v2", Modality::Binary, &edited, ctx);
    assert_ne!(a.root, b.root, "[{ctx}] an edit must change the root");
    assert!(
        (2..=24).contains(&b.atoms_created),
        "[{ctx}] a one-byte edit created {} atoms (of {}); expected a handful",
        b.atoms_created,
        a.atoms_created
    );
    assert!(b.atoms_referenced > 0, "[{ctx}] the edited version must reference the unchanged atoms");
    assert_cats(s.store(), &b, &edited, ctx);
    s.step(ctx);
}

/// get, get_by_key and find_prefix agree on the root, its children and some leaves.
pub fn lookups_agree<S: Into<Subject>>(factory: &dyn Fn() -> S) {
    let ctx = "lookups_agree";
    let mut s = subject(factory, ctx);
    let data = pseudo_random(50_000, 31);
    let info = ingest(s.store(), "mem://lookups", Modality::Binary, &data, ctx);
    let text = b"alpha beta gamma\ndelta alpha\n".to_vec();
    let tinfo = ingest(s.store(), "mem://lookups.txt", Modality::Text, &text, ctx);
    s.step(ctx);
    let st = s.store();
    for root in [info.root.expect("root"), tinfo.root.expect("root")] {
        let rec = get(st, &root, ctx);
        assert_eq!(rec.kind, AtomKind::Node, "[{ctx}] a multi-chunk object's root is a composite");
        assert_eq!(rec.ref_count, 1, "[{ctx}] root of one object");
        let mut sample = vec![rec.clone()];
        // Walk down the first and last children to leaves.
        for pick_last in [false, true] {
            let mut cur = rec.clone();
            while cur.kind == AtomKind::Node {
                let c = if pick_last { *cur.children.last().expect("kids") } else { cur.children[0] };
                cur = get(st, &c, ctx);
                sample.push(cur.clone());
            }
        }
        for a in &sample {
            check_record(st, a, ctx);
            let hex = a.hash.to_hex();
            let found = st.find_prefix(&hex[..10], 8).unwrap_or_else(|e| panic!("[{ctx}] find_prefix: {e}"));
            assert!(found.contains(&a.hash), "[{ctx}] find_prefix({}) misses {}", &hex[..10], a.hash);
            assert!(
                found.iter().all(|h| h.to_hex().starts_with(&hex[..10])),
                "[{ctx}] find_prefix returned non-matches"
            );
            let exact = st.find_prefix(&hex, 8).unwrap_or_else(|e| panic!("[{ctx}] find_prefix: {e}"));
            assert_eq!(exact, vec![a.hash], "[{ctx}] find_prefix of a full hash");
            for c in &a.children {
                assert!(st.get(c).expect("get").is_some(), "[{ctx}] child {c} of {} does not resolve", a.hash);
            }
        }
    }
    // A short prefix respects the limit and only returns matches.
    let some = st.find_prefix("a", 3).unwrap_or_else(|e| panic!("[{ctx}] find_prefix: {e}"));
    assert!(some.len() <= 3, "[{ctx}] find_prefix ignored its limit");
    assert!(some.iter().all(|h| h.to_hex().starts_with('a')), "[{ctx}] find_prefix returned non-matches");
    // Unknown identities are absent, not errors.
    let unknown = Hash(*blake3::hash(b"never stored").as_bytes());
    assert!(st.get(&unknown).expect("get").is_none(), "[{ctx}] get of an unknown hash");
    let (_, p) = leaf_identity(Modality::Video, b"never stored");
    assert!(st.get_by_key(&HilbertKey::new(Modality::Video, &p)).expect("get_by_key").is_none(), "[{ctx}] unknown key");
}

/// A leaf's reference count is the number of distinct composites containing it, plus the
/// objects rooted at it.
pub fn shared_leaf_ref_counts<S: Into<Subject>>(factory: &dyn Fn() -> S) {
    let ctx = "shared_leaf_ref_counts";
    let mut s = subject(factory, ctx);
    let st = s.store();
    // "the" twice in line 1 (one parent) and once in line 2 (another parent).
    let a = ingest(st, "mem://a.txt", Modality::Text, b"the cat the\nthe dog\n", ctx);
    let the = leaf_hash(Modality::Text, b"the");
    assert_eq!(get(st, &the, ctx).ref_count, 2, "[{ctx}] 'the' sits in two distinct lines");
    let nl = leaf_hash(Modality::Text, b"\n");
    assert_eq!(get(st, &nl, ctx).ref_count, 2, "[{ctx}] newline sits in two distinct lines");
    // A one-token object's root is the leaf itself, referenced by the object.
    let hello = ingest(st, "mem://hello.txt", Modality::Text, b"hello", ctx);
    let h = leaf_hash(Modality::Text, b"hello");
    assert_eq!(hello.root, Some(h), "[{ctx}] a one-token text's root is its leaf");
    assert_eq!(get(st, &h, ctx).ref_count, 1, "[{ctx}] a leaf root held by one object");
    let b = ingest(st, "mem://b.txt", Modality::Text, b"hello the world\n", ctx);
    assert_eq!(get(st, &h, ctx).ref_count, 2, "[{ctx}] a leaf held by an object and a composite");
    assert_eq!(get(st, &the, ctx).ref_count, 3, "[{ctx}] 'the' in a third line");
    s.step(ctx);
    delete(s.store(), b.id, ctx);
    gc(s.store(), ctx);
    assert_eq!(get(s.store(), &h, ctx).ref_count, 1, "[{ctx}] after removing the composite");
    assert_eq!(get(s.store(), &the, ctx).ref_count, 2, "[{ctx}] after removing the third line");
    s.step(ctx);
    delete(s.store(), a.id, ctx);
    delete(s.store(), hello.id, ctx);
    gc(s.store(), ctx);
    assert_eq!(stats(s.store(), ctx).atoms, 0, "[{ctx}] everything released");
    s.step(ctx);
}

/// Fixed inputs and the roots every backend must give them (format version 1). Changing
/// these is a format change: see docs/FORMAT.md.
pub const GOLDEN: &[(&str, &str)] = &[
    ("binary:empty", "1ad48f49627079d806b802c74f40c39d55fe1d78b3faf0f8017aec62cec42122"),
    ("binary:one byte", "91525ff00a3755a8df93c626b59f6e36cf021d85ebccecdedc38f3f1890a15fc"),
    ("binary:random 100000", "6094b4a284013fb96c76c0b4ee883d2213c91f906e44c392b1c36a7d14d08ae2"),
    ("text:empty", "7b7015bb92cf0b318037702a6cdd81dee41224f734684c2c122cd6359cb1ee63"),
    ("text:hello", "4cd53554997d91ea2943bc2af811418846641fbb3c1cf917bf9771e206923670"),
    ("text:lines", "dfdfdbd1bb09546d694b390e47e85aeba16d81e187a6faa0a8e780c1a1a7f76c"),
    ("text:long line", "d7c44e27db42526b6ff65077bf7eec6bb56e83cfa483825d5afbb3d32262d454"),
];

/// The Hilbert key of the golden `binary:random 100000` root, and the atom count of the whole
/// golden corpus in one store.
pub const GOLDEN_RANDOM_KEY: &str = "36029343136144304:60049026114359072:31895854409895877";
pub const GOLDEN_ATOMS: u64 = 2405;

/// The inputs named in [`GOLDEN`].
pub fn golden_input(name: &str) -> (Modality, Vec<u8>) {
    match name {
        "binary:empty" => (Modality::Binary, Vec::new()),
        "binary:one byte" => (Modality::Binary, vec![0x00]),
        "binary:random 100000" => (Modality::Binary, pseudo_random(100_000, 42)),
        "text:empty" => (Modality::Text, Vec::new()),
        "text:hello" => (Modality::Text, b"hello".to_vec()),
        "text:lines" => (Modality::Text, "Hello, world!\r\nGrüße 世界 42\n\n\tend".as_bytes().to_vec()),
        "text:long line" => (Modality::Text, "lorem ipsum dolor ".repeat(4000).into_bytes()),
        other => panic!("no golden input {other}"),
    }
}

/// Fixed inputs give fixed roots, positions and atom counts on every backend.
pub fn golden_roots<S: Into<Subject>>(factory: &dyn Fn() -> S) {
    let ctx = "golden_roots";
    let mut s = subject(factory, ctx);
    let mut got = Vec::new();
    for (name, _) in GOLDEN {
        let (m, data) = golden_input(name);
        let info = ingest(s.store(), &format!("mem://golden/{name}"), m, &data, ctx);
        got.push((*name, info.root.expect("root").to_hex()));
    }
    let (m, data) = golden_input("binary:random 100000");
    let key = get(s.store(), &build(m, &data, usize::MAX).root, ctx).key.to_string();
    let atoms = stats(s.store(), ctx).atoms;
    let want: Vec<(&str, String)> = GOLDEN.iter().map(|(n, h)| (*n, h.to_string())).collect();
    if got != want || key != GOLDEN_RANDOM_KEY || atoms != GOLDEN_ATOMS {
        let mut msg = format!("[{ctx}] roots differ from the golden values (a format change?). Got:\n");
        for (n, h) in &got {
            msg += &format!("    (\"{n}\", \"{h}\"),\n");
        }
        msg += &format!("GOLDEN_RANDOM_KEY = \"{key}\"\nGOLDEN_ATOMS = {atoms}\n");
        panic!("{msg}");
    }
    s.step(ctx);
}

/// Deleting one of two objects that share atoms removes only the unshared ones; deleting
/// both and collecting leaves nothing; collecting again removes nothing.
pub fn delete_and_gc<S: Into<Subject>>(factory: &dyn Fn() -> S) {
    let ctx = "delete_and_gc";
    let mut s = subject(factory, ctx);
    assert_eq!(gc(s.store(), ctx).atoms_removed, 0, "[{ctx}] gc of an empty store");
    let a_data = pseudo_random(60_000, 51);
    let mut b_data = a_data[..40_000].to_vec();
    b_data.extend(pseudo_random(20_000, 52));
    let a = ingest(s.store(), "mem://a", Modality::Binary, &a_data, ctx);
    let b = ingest(s.store(), "mem://b", Modality::Binary, &b_data, ctx);
    assert!(b.atoms_referenced > 0, "[{ctx}] b shares a prefix with a");
    s.step(ctx);
    assert_eq!(gc(s.store(), ctx).atoms_removed, 0, "[{ctx}] gc with nothing to collect");
    let both = stats(s.store(), ctx);
    // What only b holds.
    let only_b = {
        let r = reachable(s.store(), ctx);
        let mut in_a = HashSet::new();
        let mut stack = vec![a.root.expect("root")];
        while let Some(h) = stack.pop() {
            if in_a.insert(h) {
                stack.extend(r.atoms[&h].children.iter().copied());
            }
        }
        r.atoms.keys().filter(|h| !in_a.contains(*h)).copied().collect::<Vec<_>>()
    };
    assert!(!only_b.is_empty() && (only_b.len() as u64) < both.atoms, "[{ctx}] the objects share some atoms");

    let del = delete(s.store(), b.id, ctx);
    assert_eq!(del.id, b.id, "[{ctx}] delete returned another object");
    let st = stats(s.store(), ctx);
    assert_eq!(st.garbage_atoms, 1, "[{ctx}] deleting b leaves its root at zero, awaiting gc");
    assert_eq!(st.atoms, both.atoms, "[{ctx}] delete alone removes no atom");
    s.step(ctx);
    let g = gc(s.store(), ctx);
    assert_eq!(g.atoms_removed, only_b.len() as u64, "[{ctx}] gc must remove exactly what only b held");
    assert!(g.bytes_removed > 0, "[{ctx}] gc removed atoms but no bytes");
    assert_eq!(stats(s.store(), ctx).atoms, both.atoms - only_b.len() as u64, "[{ctx}] atoms after gc");
    for h in &only_b {
        assert!(s.store().get(h).expect("get").is_none(), "[{ctx}] collected atom {h} still found by hash");
    }
    let gone = b.root.expect("root");
    let gone_hex = gone.to_hex();
    assert!(
        !s.store().find_prefix(&gone_hex, 4).expect("find_prefix").contains(&gone),
        "[{ctx}] collected root still found by prefix"
    );
    assert!(s.store().cat(&gone, &mut Vec::new()).is_err(), "[{ctx}] cat of a collected root must fail");
    assert_cats(s.store(), &a, &a_data, ctx);
    s.step(ctx);
    assert_eq!(gc(s.store(), ctx).atoms_removed, 0, "[{ctx}] second gc");

    delete(s.store(), a.id, ctx);
    s.step(ctx);
    gc(s.store(), ctx);
    let end = stats(s.store(), ctx);
    assert_eq!(
        (end.atoms, end.garbage_atoms, end.objects, end.unique_bytes),
        (0, 0, 0, 0),
        "[{ctx}] all gone: {end:#?}"
    );
    assert_eq!(gc(s.store(), ctx).atoms_removed, 0, "[{ctx}] gc of an emptied store");
    s.step(ctx);
    // Collected atoms are gone for good: the same content is written again, not resolved
    // to what was removed (no stale cache entry may survive gc).
    let again = ingest(s.store(), "mem://a", Modality::Binary, &a_data, ctx);
    assert_eq!(again.status, Status::Completed, "[{ctx}] re-ingest after gc");
    assert_eq!(again.root, a.root, "[{ctx}] same bytes, same root");
    assert_eq!(again.atoms_created, a.atoms_created, "[{ctx}] re-ingest after gc must write every atom again");
    assert_cats(s.store(), &again, &a_data, ctx);
    s.step(ctx);
}

/// Ingesting again what was deleted but not yet collected revives the atoms in place.
pub fn reingest_before_gc_revives<S: Into<Subject>>(factory: &dyn Fn() -> S) {
    let ctx = "reingest_before_gc_revives";
    let mut s = subject(factory, ctx);
    let data = pseudo_random(60_000, 61);
    let a = ingest(s.store(), "mem://x", Modality::Binary, &data, ctx);
    let atoms = stats(s.store(), ctx).atoms;
    delete(s.store(), a.id, ctx);
    s.step(ctx);
    let b = ingest(s.store(), "mem://x", Modality::Binary, &data, ctx);
    assert_eq!(b.status, Status::Completed, "[{ctx}] re-ingest after delete is a new object, not Unchanged");
    assert_eq!(b.atoms_created, 0, "[{ctx}] uncollected atoms must be reused");
    assert_eq!(get(s.store(), &b.root.expect("root"), ctx).ref_count, 1, "[{ctx}] revived root");
    s.step(ctx);
    assert_eq!(gc(s.store(), ctx).atoms_removed, 0, "[{ctx}] revived atoms must not be collected");
    assert_eq!(stats(s.store(), ctx).atoms, atoms, "[{ctx}] atom count");
    assert_cats(s.store(), &b, &data, ctx);
    s.step(ctx);
}

/// objects() lists every ingestion with the right status: Completed, Unchanged, Failed
/// (aborted), Deleted; deleting Unchanged or Failed objects releases nothing.
pub fn object_statuses<S: Into<Subject>>(factory: &dyn Fn() -> S) {
    let ctx = "object_statuses";
    let mut s = subject(factory, ctx);
    let data = b"status line one\nstatus line two\n".to_vec();
    let done = ingest(s.store(), "mem://s", Modality::Text, &data, ctx);
    let same = ingest(s.store(), "mem://s", Modality::Text, &data, ctx);
    let failed_id = {
        let built = build(Modality::Binary, &pseudo_random(5000, 71), 64);
        let mut sess = s.store().begin(source("mem://f", Modality::Binary, 5000)).expect("begin");
        sess.put(&built.batches[0]).expect("put");
        let running: Vec<ObjectInfo> =
            s.store().objects().expect("objects").into_iter().filter(|o| o.uri == "mem://f").collect();
        assert_eq!(running.len(), 1, "[{ctx}] a session's object is listed while it runs");
        assert!(
            matches!(running[0].status, Status::Pending | Status::Running),
            "[{ctx}] an open session's object is {:?}",
            running[0].status
        );
        sess.abort("the test gave up").expect("abort");
        running[0].id
    };
    let gone = ingest(s.store(), "mem://d", Modality::Binary, &[1, 2, 3], ctx);
    delete(s.store(), gone.id, ctx);
    s.step(ctx);
    let objs = s.store().objects().expect("objects");
    let by_id: HashMap<u64, &ObjectInfo> = objs.iter().map(|o| (o.id, o)).collect();
    assert_eq!(objs.len(), 4, "[{ctx}] every ingestion is listed: {objs:#?}");
    assert_eq!(by_id[&done.id].status, Status::Completed, "[{ctx}] first ingest");
    assert_eq!(by_id[&same.id].status, Status::Unchanged, "[{ctx}] identical re-ingest");
    assert_eq!(by_id[&failed_id].status, Status::Failed, "[{ctx}] aborted session");
    assert!(
        by_id[&failed_id].error.as_deref().is_some_and(|e| e.contains("the test gave up")),
        "[{ctx}] a failed object keeps its error: {:?}",
        by_id[&failed_id].error
    );
    assert_eq!(by_id[&gone.id].status, Status::Deleted, "[{ctx}] deleted object");
    assert_eq!(by_id[&done.id], &done, "[{ctx}] objects() and the commit's answer differ");
    for o in &objs {
        if let (Some(c), true) = (o.completed_at, o.status != Status::Deleted) {
            assert!(c >= o.started_at, "[{ctx}] object {} completed before it started", o.id);
        }
    }
    // Removing an Unchanged or Failed entry releases nothing.
    let root = done.root.expect("root");
    delete(s.store(), same.id, ctx);
    delete(s.store(), failed_id, ctx);
    assert_eq!(get(s.store(), &root, ctx).ref_count, 1, "[{ctx}] deleting an Unchanged entry released the root");
    assert_cats(s.store(), &done, &data, ctx);
    s.step(ctx);
    assert!(s.store().delete_object(same.id).is_err(), "[{ctx}] deleting a deleted object must fail");
    assert_eq!(get(s.store(), &root, ctx).ref_count, 1, "[{ctx}] a failed delete changed a reference count");
    s.step(ctx);
}

/// A session aborted half-way leaves a consistent store; what it wrote is garbage that gc
/// collects, and atoms it shared with live objects survive.
pub fn aborted_session_is_collectable<S: Into<Subject>>(factory: &dyn Fn() -> S) {
    let ctx = "aborted_session_is_collectable";
    let mut s = subject(factory, ctx);
    let base = pseudo_random(40_000, 81);
    let kept = ingest(s.store(), "mem://kept", Modality::Binary, &base, ctx);
    let before = stats(s.store(), ctx);
    let mut data = base[..20_000].to_vec();
    data.extend(pseudo_random(60_000, 82));
    let built = build(Modality::Binary, &data, 256);
    assert!(built.batches.len() >= 4, "[{ctx}] want several batches");
    {
        let mut sess = s.store().begin(source("mem://aborted", Modality::Binary, data.len())).expect("begin");
        for b in &built.batches[..built.batches.len() / 2] {
            sess.put(b).unwrap_or_else(|e| panic!("[{ctx}] put: {e}"));
        }
        sess.sync().unwrap_or_else(|e| panic!("[{ctx}] sync: {e}"));
        sess.abort("interrupted on purpose").unwrap_or_else(|e| panic!("[{ctx}] abort: {e}"));
    }
    let mid = stats(s.store(), ctx);
    assert!(mid.atoms > before.atoms, "[{ctx}] the aborted session wrote atoms");
    assert!(mid.garbage_atoms > 0, "[{ctx}] an aborted session's new atoms are garbage");
    assert_eq!(mid.objects, before.objects, "[{ctx}] an aborted session is no object");
    s.step(ctx);
    let g = gc(s.store(), ctx);
    assert_eq!(g.atoms_removed, mid.atoms - before.atoms, "[{ctx}] gc must remove exactly what the session wrote");
    assert_eq!(stats(s.store(), ctx).atoms, before.atoms, "[{ctx}] back to the atoms before the session");
    assert_cats(s.store(), &kept, &base, ctx);
    s.step(ctx);
    // The same object ingested for real gives the root the helper built.
    let info = ingest(s.store(), "mem://aborted", Modality::Binary, &data, ctx);
    assert_eq!(info.root, Some(built.root), "[{ctx}] the pipeline and the suite's builder disagree on the root");
    s.step(ctx);
}

/// A session dropped without commit or abort leaves no object behind and its atoms collectable.
pub fn dropped_session_is_collectable<S: Into<Subject>>(factory: &dyn Fn() -> S) {
    let ctx = "dropped_session_is_collectable";
    let mut s = subject(factory, ctx);
    let data = pseudo_random(30_000, 91);
    let built = build(Modality::Binary, &data, 128);
    {
        let mut sess = s.store().begin(source("mem://dropped", Modality::Binary, data.len())).expect("begin");
        sess.put(&built.batches[0]).expect("put");
        sess.put(&built.batches[1]).expect("put");
        sess.sync().expect("sync");
    }
    let objs = s.store().objects().expect("objects");
    assert!(
        objs.iter().all(|o| !matches!(o.status, Status::Completed | Status::Unchanged | Status::Running)),
        "[{ctx}] a dropped session's object: {objs:?}"
    );
    s.step(ctx);
    gc(s.store(), ctx);
    assert_eq!(stats(s.store(), ctx).atoms, 0, "[{ctx}] gc leaves nothing of a dropped session");
    s.step(ctx);
}

/// A write whose key is held by a different atom is reported as a collision, never merged;
/// the store is unharmed. Checked on fresh writes and after flush (when writes have moved
/// out of any in-memory table).
pub fn collision_reported<S: Into<Subject>>(factory: &dyn Fn() -> S) {
    let ctx = "collision_reported";
    let mut s = subject(factory, ctx);
    let leaf = ingest(s.store(), "mem://leaf", Modality::Binary, &[0x42], ctx);
    let node = ingest(s.store(), "mem://node", Modality::Binary, &pseudo_random(5000, 101), ctx);
    for round in ["fresh", "after flush"] {
        if round == "after flush" {
            s.store().flush().unwrap_or_else(|e| panic!("[{ctx}] flush: {e}"));
            s.step(ctx);
        }
        let before = snapshot(s.store());
        let leaf_rec = get(s.store(), &leaf.root.expect("root"), ctx);
        let node_rec = get(s.store(), &node.root.expect("root"), ctx);
        // (a) a real-looking collision: the first 8 hash bytes (the position's hash bits)
        // agree, the rest differs; (b) an unrelated hash claiming the same position.
        let mut near = leaf_rec.hash;
        near.0[31] ^= 1;
        let far = Hash(*blake3::hash(b"made up").as_bytes());
        let mut near_node = node_rec.hash;
        near_node.0[20] ^= 0x80;
        let cases: Vec<(&str, Batch, Hash, Hash)> = vec![
            (
                "leaf, near hash",
                {
                    let mut b = Batch::default();
                    b.push_leaf(Modality::Binary, near, leaf_rec.position, &[0x43]);
                    b
                },
                near,
                leaf_rec.hash,
            ),
            (
                "leaf, unrelated hash",
                {
                    let mut b = Batch::default();
                    b.push_leaf(Modality::Binary, far, leaf_rec.position, &[0x44]);
                    b
                },
                far,
                leaf_rec.hash,
            ),
            (
                "composite, near hash",
                {
                    let mut b = Batch::default();
                    let mut kids = node_rec.children.clone();
                    kids.swap(0, 1);
                    b.push_node(Modality::Binary, near_node, node_rec.position, kids);
                    b
                },
                near_node,
                node_rec.hash,
            ),
        ];
        for (what, batch, new, existing) in cases {
            let mut sess = s.store().begin(source("mem://collide", Modality::Binary, 1)).expect("begin");
            match sess.put(&batch).and_then(|()| sess.sync()) {
                // A position whose hash bits are not the hash's may also be refused as invalid.
                Err(StoreError::Invalid(_)) if new == far => {}
                Err(StoreError::Collision { existing: e, new: n, .. }) => {
                    assert_eq!(e, existing.to_hex(), "[{ctx}] {round}, {what}: collision names the wrong holder");
                    assert_eq!(n, new.to_hex(), "[{ctx}] {round}, {what}: collision names the wrong newcomer");
                }
                Err(other) => panic!("[{ctx}] {round}, {what}: expected StoreError::Collision, got {other:?}"),
                Ok(()) => panic!(
                    "[{ctx}] {round}, {what}: atom {new} was accepted on key {} already held by {existing}",
                    HilbertKey::new(Modality::Binary, &leaf_rec.position)
                ),
            }
            sess.abort("collision").expect("abort");
            assert_eq!(
                get(s.store(), &existing, ctx),
                if existing == leaf_rec.hash { leaf_rec.clone() } else { node_rec.clone() }
            );
            assert!(
                s.store().get(&new).expect("get").is_none(),
                "[{ctx}] {round}, {what}: the colliding atom was stored"
            );
        }
        let mut after = snapshot(s.store());
        // Only the failed log rows differ.
        after.objects.retain(|o| o.uri != "mem://collide");
        let mut before = before;
        before.objects.retain(|o| o.uri != "mem://collide");
        assert_eq!(before, after, "[{ctx}] {round}: a rejected collision changed the store");
        s.step(ctx);
    }
}

/// Text whose vocabulary keeps growing: about one line in four brings a new word, so that
/// lines keep naming tokens first put a few hundred atoms earlier (in the previous batch of a
/// backend that merges batches while it writes the next).
fn growing_text(bytes: usize, seed: u64) -> Vec<u8> {
    let r = pseudo_random(bytes / 2, seed);
    let mut out = String::with_capacity(bytes + 64);
    let mut vocab = 50usize;
    let mut i = 0;
    while out.len() < bytes {
        let words = 3 + (r[i % r.len()] % 12) as usize;
        for w in 0..words {
            let x = u16::from_le_bytes([r[(i + 2 * w + 1) % r.len()], r[(i + 2 * w + 2) % r.len()]]) as usize;
            out += &format!("w{} ", x % vocab);
        }
        out += "\n";
        if r[(i + 3) % r.len()] < 64 {
            vocab += 1;
        }
        i += 2 * words + 3;
    }
    out.into_bytes()
}

/// Objects of tens of thousands of atoms: each session merges (or writes) many batches, which
/// a backend may overlap with the batches after them. Every object comes back byte for byte,
/// reference counts recount exactly, a file sharing half of a stored one adds about half, and a
/// session that fails in the middle (a collision after many batches), or is dropped there,
/// leaves a store that passes `fsck` and collects what the session wrote. (Checked with `fsck` and `cat`
/// rather than step boundaries: a full interface walk of 150 K atoms is slow over a network.)
pub fn large_sessions_round_trip<S: Into<Subject>>(factory: &dyn Fn() -> S) {
    let ctx = "large_sessions_round_trip";
    let mut s = subject(factory, ctx);
    let bin = pseudo_random(2_500_000, 201);
    let text = growing_text(1_500_000, 202);
    let a = ingest(s.store(), "mem://large/bin", Modality::Binary, &bin, ctx);
    let t = ingest(s.store(), "mem://large/text", Modality::Text, &text, ctx);
    assert!(a.atoms_created > 40_000, "[{ctx}] the binary object should span many batches: {a:?}");
    assert_cats(s.store(), &a, &bin, ctx);
    assert_cats(s.store(), &t, &text, ctx);
    fsck_ok(s.store(), ctx);

    // Half shared with the first file, half new: the shared half adds (almost) nothing.
    let mut half = bin[..1_250_000].to_vec();
    half.extend(pseudo_random(1_250_000, 203));
    let h = ingest(s.store(), "mem://large/half", Modality::Binary, &half, ctx);
    assert!(
        h.atoms_created < a.atoms_created * 3 / 5,
        "[{ctx}] a file sharing half its bytes created {} atoms (the whole file: {})",
        h.atoms_created,
        a.atoms_created
    );
    assert_cats(s.store(), &h, &half, ctx);
    assert_cats(s.store(), &a, &bin, ctx);
    fsck_ok(s.store(), ctx);

    // A session that fails after many batches: its first batches may have been merged, but
    // nothing stored before is harmed, fsck passes, and gc collects what it left.
    let before = stats(s.store(), ctx);
    let built = build(Modality::Binary, &pseudo_random(2_000_000, 204), 512);
    let first_leaf = build(Modality::Binary, &bin[..4096], usize::MAX).batches[0].ops[0].hash;
    let leaf_rec = get(s.store(), &first_leaf, ctx);
    let mut bad = Batch::default();
    let mut near = leaf_rec.hash;
    near.0[31] ^= 1;
    bad.push_leaf(leaf_rec.modality, near, leaf_rec.position, b"not the stored value");
    let mut sess = s.store().begin(source("mem://large/fails", Modality::Binary, 2_000_000)).expect("begin");
    let half_way = built.batches.len() / 2;
    let mut r = Ok(());
    for b in built.batches[..half_way].iter().chain(std::iter::once(&bad)).chain(&built.batches[half_way..]) {
        r = sess.put(b);
        if r.is_err() {
            break;
        }
    }
    let r = r.and_then(|()| sess.sync());
    match r {
        Err(StoreError::Collision { .. }) => {}
        other => {
            panic!("[{ctx}] a colliding leaf in the middle of a large session: expected a collision, got {other:?}")
        }
    }
    sess.abort("collision").expect("abort");
    // A session dropped half way (its caller gone), with writes or merges still in flight.
    let mut sess = s.store().begin(source("mem://large/dropped", Modality::Binary, 2_000_000)).expect("begin");
    for b in &built.batches[..half_way] {
        sess.put(b).unwrap_or_else(|e| panic!("[{ctx}] put into the session to drop: {e}"));
    }
    drop(sess);
    assert_cats(s.store(), &a, &bin, ctx);
    assert_cats(s.store(), &t, &text, ctx);
    assert_cats(s.store(), &h, &half, ctx);
    fsck_ok(s.store(), ctx);
    gc(s.store(), ctx);
    let after = stats(s.store(), ctx);
    assert_eq!(before.atoms, after.atoms, "[{ctx}] gc should leave exactly the atoms of the stored objects");
    fsck_ok(s.store(), ctx);
    s.reopen_now(ctx);
}

/// Per-modality counts add up to the total and to what is reachable; logical bytes are the
/// completed objects' sizes, through ingest, delete and gc.
pub fn stats_add_up<S: Into<Subject>>(factory: &dyn Fn() -> S) {
    let ctx = "stats_add_up";
    let mut s = subject(factory, ctx);
    let st = stats(s.store(), ctx);
    assert_eq!((st.atoms, st.objects, st.logical_bytes, st.garbage_atoms), (0, 0, 0, 0), "[{ctx}] empty store");
    let bin = pseudo_random(30_000, 111);
    let txt = text_sample("non-ascii");
    let a = ingest(s.store(), "mem://a", Modality::Binary, &bin, ctx);
    let b = ingest(s.store(), "mem://b", Modality::Text, &txt, ctx);
    ingest(s.store(), "mem://c", Modality::Text, &txt, ctx);
    let st = stats(s.store(), ctx);
    assert_eq!(st.objects, 3, "[{ctx}] objects");
    assert_eq!(st.logical_bytes, (bin.len() + 2 * txt.len()) as u64, "[{ctx}] logical bytes");
    assert!(st.per_modality.contains_key("binary") && st.per_modality.contains_key("text"), "[{ctx}] {st:#?}");
    assert!(st.dedup_ratio > 1.0, "[{ctx}] a duplicated text must show in dedup_ratio");
    s.step(ctx);
    delete(s.store(), a.id, ctx);
    delete(s.store(), b.id, ctx);
    let st = stats(s.store(), ctx);
    assert_eq!((st.objects, st.logical_bytes), (1, txt.len() as u64), "[{ctx}] after delete");
    s.step(ctx);
    gc(s.store(), ctx);
    let st = stats(s.store(), ctx);
    assert!(st.per_modality.get("binary").is_none_or(|m| m.leaves + m.composites == 0), "[{ctx}] binary gone: {st:#?}");
    s.step(ctx);
}

/// Bad requests are errors of the right kind and change nothing.
pub fn bad_requests_rejected<S: Into<Subject>>(factory: &dyn Fn() -> S) {
    let ctx = "bad_requests_rejected";
    let mut s = subject(factory, ctx);
    let data = pseudo_random(8000, 121);
    let kept = ingest(s.store(), "mem://kept", Modality::Binary, &data, ctx);
    let before = snapshot(s.store());
    let st = s.store();
    let unknown = Hash(*blake3::hash(b"unknown").as_bytes());
    assert!(
        matches!(st.cat(&unknown, &mut Vec::new()), Err(StoreError::NotFound { .. })),
        "[{ctx}] cat of an unknown root must be NotFound"
    );
    assert!(
        matches!(st.delete_object(u64::MAX / 2), Err(StoreError::NotFound { .. })),
        "[{ctx}] delete of an unknown object must be NotFound"
    );
    assert!(matches!(st.find_prefix("xyz", 5), Err(StoreError::Invalid(_))), "[{ctx}] non-hex prefix must be Invalid");
    {
        // A leaf over 64 bytes.
        let big = vec![9u8; LEAF_MAX + 1];
        let h = Hash(*blake3::hash(&big).as_bytes());
        let mut b = Batch::default();
        b.push_leaf(Modality::Binary, h, Position::from_features([1, 2, 3, 4], &h), &big);
        let mut sess = st.begin(source("mem://big-leaf", Modality::Binary, big.len())).expect("begin");
        assert!(matches!(sess.put(&b), Err(StoreError::Invalid(_))), "[{ctx}] a 65-byte leaf must be Invalid");
        sess.abort("bad leaf").expect("abort");
    }
    {
        // A composite naming a child that was never stored.
        let kids = [unknown, leaf_hash(Modality::Binary, b"nope")];
        let h = node_hash(Modality::Binary, &kids);
        let mut b = Batch::default();
        b.push_node(Modality::Binary, h, Position::from_features([5, 6, 7, 8], &h), kids);
        let mut sess = st.begin(source("mem://orphan-node", Modality::Binary, 0)).expect("begin");
        assert!(sess.put(&b).is_err(), "[{ctx}] a composite with unknown children must be rejected");
        sess.abort("bad node").expect("abort");
    }
    {
        // A commit naming a root that was never put.
        let sess = st.begin(source("mem://no-root", Modality::Binary, 0)).expect("begin");
        let summary = ObjectSummary { source_hash: unknown, size: 0, occurrences: 0 };
        assert!(sess.commit(&unknown, &summary).is_err(), "[{ctx}] commit of a root never stored must fail");
    }
    {
        // An object being ingested cannot be deleted.
        let sess = st.begin(source("mem://running", Modality::Binary, 0)).expect("begin");
        let running = st.objects().expect("objects").into_iter().find(|o| o.uri == "mem://running").expect("listed");
        assert!(st.delete_object(running.id).is_err(), "[{ctx}] deleting a running object must fail");
        sess.abort("done").expect("abort");
    }
    let mut after = snapshot(st);
    after.objects.retain(|o| o.uri == "mem://kept");
    let mut before = before;
    before.objects.retain(|o| o.uri == "mem://kept");
    assert_eq!(before, after, "[{ctx}] rejected requests changed the store");
    for o in st.objects().expect("objects") {
        if o.uri != "mem://kept" {
            assert_eq!(o.status, Status::Failed, "[{ctx}] {} must be Failed, is {:?}", o.uri, o.status);
        }
    }
    s.step(ctx);
    gc(s.store(), ctx);
    assert_cats(s.store(), &kept, &data, ctx);
    s.step(ctx);
}

/// Real files through `ingest_files` (directories recursively, two workers): every file
/// round-trips, a duplicate file adds no atom, and ingesting the tree again changes nothing.
pub fn ingest_files_round_trip<S: Into<Subject>>(factory: &dyn Fn() -> S) {
    let ctx = "ingest_files_round_trip";
    let mut s = subject(factory, ctx);
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("tree");
    std::fs::create_dir_all(root.join("sub/deeper")).expect("mkdir");
    let text = text_sample("ascii lines").repeat(50);
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("a.txt", text.clone()),
        ("b.txt", text),
        ("empty", Vec::new()),
        ("sub/data.bin", pseudo_random(70_000, 131)),
        ("sub/deeper/utf8.txt", text_sample("non-ascii")),
    ];
    for (p, d) in &files {
        std::fs::write(root.join(p), d).expect("write");
    }
    let (list, errors) = collect_files(std::slice::from_ref(&root));
    assert!(errors.is_empty(), "[{ctx}] {errors:?}");
    assert_eq!(list.len(), files.len(), "[{ctx}] files found");
    // `sessions`: 1 stores the files one after another (which file creates a shared atom is
    // then fixed); 0 lets the backend store several at once (Store::parallel_sessions).
    let run = |store: &dyn Store, sessions: usize| -> Vec<(std::path::PathBuf, ObjectInfo)> {
        let mut out = Vec::new();
        let opts = IngestOptions { modality: None, workers: 2, sessions };
        ingest_files(store, &list, &opts, &Progress::default(), &mut |o| match o {
            Outcome::Stored { path, info } => out.push((path, info)),
            Outcome::Failed { path, error } => panic!("[{ctx}] {} failed: {error}", path.display()),
        })
        .unwrap_or_else(|e| panic!("[{ctx}] ingest_files: {e}"));
        out
    };
    let first = run(s.store(), 1);
    assert_eq!(first.len(), files.len(), "[{ctx}] one outcome per file");
    for (path, info) in &first {
        let data = std::fs::read(path).expect("read");
        assert_eq!(info.status, Status::Completed, "[{ctx}] {}", path.display());
        assert!(info.uri.starts_with("file://"), "[{ctx}] uri {}", info.uri);
        assert_cats(s.store(), info, &data, ctx);
    }
    let b = first.iter().find(|(p, _)| p.ends_with("b.txt")).expect("b.txt");
    assert_eq!(b.1.atoms_created, 0, "[{ctx}] a duplicate file adds no atom");
    s.step(ctx);
    let atoms = stats(s.store(), ctx).atoms;
    let second = run(s.store(), 0);
    assert!(second.iter().all(|(_, i)| i.status == Status::Unchanged), "[{ctx}] re-ingest: {second:?}");
    assert_eq!(stats(s.store(), ctx).atoms, atoms, "[{ctx}] re-ingest added atoms");
    s.step(ctx);

    // Files the size of stored objects: a copy is recognised by its bytes (no atom written),
    // a same-size file with one byte changed is not.
    let copy = dir.path().join("copy-of-data.bin");
    std::fs::copy(root.join("sub/data.bin"), &copy).expect("copy");
    let mut edited = std::fs::read(root.join("a.txt")).expect("read");
    let mid = edited.len() / 2;
    edited[mid] = if edited[mid] == b'x' { b'y' } else { b'x' };
    let edited_path = dir.path().join("edited.txt");
    std::fs::write(&edited_path, &edited).expect("write");
    let (more, errors) = collect_files(&[copy.clone(), edited_path.clone()]);
    assert!(errors.is_empty(), "[{ctx}] {errors:?}");
    let mut got = Vec::new();
    let opts = IngestOptions { modality: None, workers: 2, sessions: 0 };
    ingest_files(s.store(), &more, &opts, &Progress::default(), &mut |o| match o {
        Outcome::Stored { path, info } => got.push((path, info)),
        Outcome::Failed { path, error } => panic!("[{ctx}] {} failed: {error}", path.display()),
    })
    .unwrap_or_else(|e| panic!("[{ctx}] ingest_files: {e}"));
    let (copied, changed) = (&got[0].1, &got[1].1);
    assert_eq!((copied.status, copied.atoms_created), (Status::Completed, 0), "[{ctx}] a copy: {copied:?}");
    assert!(changed.atoms_created > 0, "[{ctx}] a same-size edited file: {changed:?}");
    assert_cats(s.store(), copied, &std::fs::read(&copy).expect("read"), ctx);
    assert_cats(s.store(), changed, &edited, ctx);
    s.step(ctx);

    // The same files into a fresh store, as many at once as the backend takes: outcomes come
    // in the order given, objects are numbered in that order, every object reads back, and
    // the store holds exactly the atoms of the one-at-a-time store.
    let ctx = "ingest_files_round_trip (parallel sessions)";
    let mut p = subject(factory, ctx);
    let third = run(p.store(), 0);
    let paths = |v: &[(std::path::PathBuf, ObjectInfo)]| v.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
    assert_eq!(paths(&third), paths(&first), "[{ctx}] outcomes in the order given");
    let ids: Vec<u64> = third.iter().map(|(_, i)| i.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "[{ctx}] objects numbered in the order given: {ids:?}");
    for (path, info) in &third {
        assert_eq!(info.status, Status::Completed, "[{ctx}] {}", path.display());
        assert_cats(p.store(), info, &std::fs::read(path).expect("read"), ctx);
    }
    let created: u64 = third.iter().map(|(_, i)| i.atoms_created).sum();
    assert_eq!(stats(p.store(), ctx).atoms, atoms, "[{ctx}] the same atoms as one file at a time");
    assert_eq!(created, atoms, "[{ctx}] every atom created by exactly one file");
    p.step(ctx);
}
