//! Engine-level tests with hand-built batches (no decoders): write, read back, reopen,
//! delete, collect, recount.

use hart_core::features::leaf_identity;
use hart_core::tree::{NodeOut, TreeBuilder};
use hart_core::{Child, Hash, Modality};
use hart_embedded::EmbeddedStore;
use hart_store::{Batch, ObjectSummary, SourceInfo, Status, Store};

/// Fixed 48-byte leaves under a content-defined tree: enough to exercise the engine.
fn object(data: &[u8]) -> (Batch, Hash, ObjectSummary) {
    let mut batch = Batch::default();
    let mut seen = std::collections::HashSet::new();
    let mut occ = 0u64;
    let mut tree = TreeBuilder::new(Modality::Binary);
    let mut nodes: Vec<(Hash, hart_core::Position, Vec<Hash>)> = Vec::new();
    let push_nodes = |batch: &mut Batch,
                      nodes: &mut Vec<(Hash, hart_core::Position, Vec<Hash>)>,
                      seen: &mut std::collections::HashSet<Hash>| {
        for (h, p, kids) in nodes.drain(..) {
            if seen.insert(h) {
                batch.push_node(Modality::Binary, h, p, kids);
            }
        }
    };
    for chunk in data.chunks(48) {
        let (hash, pos) = leaf_identity(Modality::Binary, chunk);
        occ += 1;
        if seen.insert(hash) {
            batch.push_leaf(Modality::Binary, hash, pos, chunk);
        }
        tree.push(Child { hash, pos }, &mut |n: &NodeOut<'_>| {
            nodes.push((n.hash, n.pos, n.children.iter().map(|c| c.hash).collect()))
        });
        occ += nodes.len() as u64;
        push_nodes(&mut batch, &mut nodes, &mut seen);
    }
    let root =
        tree.finish(&mut |n: &NodeOut<'_>| nodes.push((n.hash, n.pos, n.children.iter().map(|c| c.hash).collect())));
    occ += nodes.len() as u64;
    push_nodes(&mut batch, &mut nodes, &mut seen);
    let root = root.expect("non-empty").hash;
    (
        batch,
        root,
        ObjectSummary { source_hash: Hash(*blake3::hash(data).as_bytes()), size: data.len() as u64, occurrences: occ },
    )
}

fn put(store: &EmbeddedStore, uri: &str, data: &[u8]) -> hart_store::ObjectInfo {
    let (batch, root, summary) = object(data);
    let mut s =
        store.begin(SourceInfo { uri: uri.into(), modality: Modality::Binary, size: Some(data.len() as u64) }).unwrap();
    s.put(&batch).unwrap();
    s.commit(&root, &summary).unwrap()
}

fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn cat(store: &dyn Store, root: &Hash) -> Vec<u8> {
    let mut out = Vec::new();
    store.cat(root, &mut out).unwrap();
    out
}

#[test]
fn write_reopen_read() {
    let dir = tempfile::tempdir().unwrap();
    let data = bytes(200_000, 1);
    let info = {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let info = put(&store, "a", &data);
        assert_eq!(info.status, Status::Completed);
        assert_eq!(cat(&store, &info.root.unwrap()), data);
        let again = put(&store, "a", &data);
        assert_eq!(again.status, Status::Unchanged);
        assert_eq!(again.atoms_created, 0);
        store.close().unwrap();
        info
    };
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(cat(&store, &info.root.unwrap()), data);
    let rec = store.get(&info.root.unwrap()).unwrap().unwrap();
    assert_eq!(rec.ref_count, 1);
    assert!(store.get_by_key(&rec.key).unwrap().is_some());
    let f = store.fsck(&|_, _| {}).unwrap();
    assert!(f.ok(), "{:?}", f.problems);
    assert_eq!(f.objects_checked, 1);
}

#[test]
fn delete_then_gc_removes_only_unshared() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let a = bytes(100_000, 2);
    let mut b = a.clone();
    b.extend_from_slice(&bytes(50_000, 3));
    let ia = put(&store, "a", &a);
    let ib = put(&store, "b", &b);
    let before = store.stats().unwrap().atoms;
    store.delete_object(ib.id).unwrap();
    let g = store.gc().unwrap();
    assert!(g.atoms_removed > 0);
    assert!(g.atoms_removed < before);
    assert_eq!(cat(&store, &ia.root.unwrap()), a);
    assert!(store.get(&ib.root.unwrap()).unwrap().is_none());
    let f = store.fsck(&|_, _| {}).unwrap();
    assert!(f.ok(), "{:?}", f.problems);
    store.delete_object(ia.id).unwrap();
    store.gc().unwrap();
    assert_eq!(store.stats().unwrap().atoms, 0);
    drop(store);
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.stats().unwrap().atoms, 0);
    let f = store.fsck(&|_, _| {}).unwrap();
    assert!(f.ok(), "{:?}", f.problems);
}

#[test]
fn many_objects_cross_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let mut roots = Vec::new();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        for i in 0..40 {
            let d = bytes(400_000, 100 + i);
            roots.push((put(&store, &format!("f{i}"), &d).root.unwrap(), d));
        }
    }
    let store =
        EmbeddedStore::open_with(dir.path(), hart_embedded::OpenOptions { read_only: true, ..Default::default() })
            .unwrap();
    for (r, d) in &roots {
        assert_eq!(&cat(&store, r), d);
    }
    let f = store.fsck(&|_, _| {}).unwrap();
    assert!(f.ok(), "{:?}", &f.problems[..f.problems.len().min(5)]);
    let pre = &roots[0].0.to_hex()[..10];
    assert_eq!(store.find_prefix(pre, 5).unwrap(), vec![roots[0].0]);
}

/// Two leaves whose hashes agree in their low 20 bits of the first eight bytes: they share a
/// slot of the writer's direct-mapped cache (whatever its size up to 2^20).
fn colliding_leaves() -> [(Vec<u8>, Child); 2] {
    let mut seen = std::collections::HashMap::new();
    for i in 0u32.. {
        let v = format!("leaf {i}").into_bytes();
        let (hash, pos) = leaf_identity(Modality::Binary, &v);
        let slot = u64::from_le_bytes(hash.0[..8].try_into().unwrap()) & 0xf_ffff;
        if let Some((w, c)) = seen.insert(slot, (v.clone(), Child { hash, pos })) {
            return [(w, c), (v, Child { hash, pos })];
        }
    }
    unreachable!()
}

fn node(batch: &mut Batch, kids: &[Child]) -> Child {
    let made = hart_core::tree::make_node(Modality::Binary, kids, &mut |_| {});
    batch.push_node(Modality::Binary, made.hash, made.pos, kids.iter().map(|c| c.hash));
    made
}

/// References gathered in the writer's cache during a put: a child repeated in one composite
/// counts once, also when it shares a cache slot with another child of that composite, and
/// counts are exact after each put, across puts, after reopening, and after rm + gc.
#[test]
fn repeated_and_colliding_children_count_once_per_parent() {
    let dir = tempfile::tempdir().unwrap();
    let [(va, a), (vb, b)] = colliding_leaves();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let mut s = store.begin(SourceInfo { uri: "x".into(), modality: Modality::Binary, size: None }).unwrap();
    let mut first = Batch::default();
    first.push_leaf(Modality::Binary, a.hash, a.pos, &va);
    first.push_leaf(Modality::Binary, b.hash, b.pos, &vb);
    let x = node(&mut first, &[a, b, a, b, a]);
    s.put(&first).unwrap();
    let mut second = Batch::default();
    let y = node(&mut second, &[b, a, b]);
    let root = node(&mut second, &[x, y, x, a]);
    s.put(&second).unwrap();
    let (xs, ys) = ([&va[..], &vb, &va, &vb, &va].concat(), [&vb[..], &va, &vb].concat());
    let data = [&xs[..], &ys, &xs, &va].concat();
    let summary =
        ObjectSummary { source_hash: Hash(*blake3::hash(&data).as_bytes()), size: data.len() as u64, occurrences: 16 };
    let info = s.commit(&root.hash, &summary).unwrap();
    assert_eq!(info.atoms_created, 5);
    let refs = |store: &EmbeddedStore, c: &Child| store.get(&c.hash).unwrap().unwrap().ref_count;
    let expect = [(a, 3), (b, 2), (x, 1), (y, 1), (root, 1)];
    for (c, n) in expect {
        assert_eq!(refs(&store, &c), n, "{:?}", c.hash);
    }
    assert_eq!(cat(&store, &root.hash), data);
    let f = store.fsck(&|_, _| {}).unwrap();
    assert!(f.ok(), "{:?}", f.problems);
    drop(store);
    let store = EmbeddedStore::open(dir.path()).unwrap();
    for (c, n) in expect {
        assert_eq!(refs(&store, &c), n, "{:?} after reopening", c.hash);
    }
    store.delete_object(info.id).unwrap();
    assert_eq!(store.gc().unwrap().atoms_removed, 5);
    let f = store.fsck(&|_, _| {}).unwrap();
    assert!(f.ok(), "{:?}", f.problems);
}
