//! Issue 12, "verify on read, always", on PostgreSQL: `cat` checks the Merkle tree it walks.
//! Rows are damaged with plain SQL as the owner role (the immutability trigger disabled for
//! the statement); `cat` must then stop with `StoreError::Damaged` naming the damaged row,
//! having written only the object's own bytes before the damaged part — never wrong bytes
//! with `Ok` — while undamaged objects still read back exactly. `fsck` names the object.
//!
//! A fresh migrated database per test (tests/common). Without `HART_TEST_DATABASE_URL` every
//! test FAILS, saying how to start a cluster; it never skips (CI=true or not).

mod common;

use common::TestDb;
use hart_core::{AtomKind, Hash, HilbertKey, Modality};
use hart_pg::PgStore;
use hart_store::{AtomRecord, ObjectInfo, Store, StoreError};
use tokio_postgres::types::ToSql;

/// A store on a fresh migrated database, a superuser connection to it, and the runtime that
/// connection runs on.
struct Fixture {
    store: Option<PgStore>,
    rt: tokio::runtime::Runtime,
    admin: tokio_postgres::Client,
    db: Option<TestDb>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // The store's connections go before the database is dropped.
        drop(self.store.take());
        drop(self.db.take());
    }
}

fn fixture(test: &str) -> Fixture {
    let test = test.to_string();
    let db = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(TestDb::migrated(&test))
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
    let store = PgStore::connect(&db.settings).unwrap_or_else(|e| panic!("connecting to {}: {e}", db.name));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let admin = rt.block_on(db.client());
    Fixture { store: Some(store), rt, admin, db: Some(db) }
}

impl Fixture {
    fn store(&self) -> &PgStore {
        self.store.as_ref().expect("open")
    }

    fn ingest(&self, uri: &str, modality: Modality, data: &[u8]) -> ObjectInfo {
        hart_store::ingest::ingest_bytes(self.store(), uri, modality, data).expect("ingest")
    }

    fn get(&self, h: &Hash) -> AtomRecord {
        self.store().get(h).expect("get").unwrap_or_else(|| panic!("atom {h} is stored"))
    }

    /// `cat` into a buffer: what it wrote, and its result.
    fn cat(&self, root: &Hash) -> (Vec<u8>, Result<u64, StoreError>) {
        let mut out = Vec::new();
        let r = self.store().cat(root, &mut out);
        (out, r)
    }

    /// `sql` as the owner role, with the trigger that keeps content immutable disabled for it.
    fn damage(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) {
        self.rt
            .block_on(async {
                self.admin
                    .batch_execute(
                        "BEGIN; SET LOCAL ROLE hart_owner;
                         ALTER TABLE atoms DISABLE TRIGGER atoms_content_is_immutable",
                    )
                    .await?;
                let n = self.admin.execute(sql, params).await?;
                assert_eq!(n, 1, "{sql} changes one row");
                self.admin.batch_execute("ALTER TABLE atoms ENABLE TRIGGER atoms_content_is_immutable; COMMIT").await
            })
            .unwrap_or_else(|e| panic!("{sql}: {}", hart_pg::error::describe(&e)));
    }

    /// fsck's problems; checks that the objects in `damaged_objects` are exactly those its
    /// problems name as damaged.
    fn fsck_problems(&self) -> Vec<String> {
        let r = self.store().fsck(&|_, _| {}).expect("fsck");
        let listed: Vec<u64> = r.damaged_objects.iter().map(|o| o.id).collect();
        let named: Vec<u64> = r
            .problems
            .iter()
            .filter_map(|p| p.strip_prefix("object ")?.split_once(' ').and_then(|(id, _)| id.parse().ok()))
            .collect();
        assert_eq!(listed, named, "damaged_objects lists the objects the problems name: {:?}", r.problems);
        r.problems
    }
}

/// Pseudo-random bytes (xorshift): two seeds share no content, so no atoms.
fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn text() -> Vec<u8> {
    std::fs::read("/usr/share/common-licenses/GPL-3").expect("a file every Debian has")
}

/// The path from `root` down the middle child at each level to a leaf: the atoms on it, and
/// where each one's subtree starts in the object (measured with `cat` of the left siblings).
fn middle_path(f: &Fixture, root: &Hash) -> Vec<(AtomRecord, u64)> {
    let mut path = vec![(f.get(root), 0u64)];
    loop {
        let (top, start) = path.last().expect("non-empty");
        if top.kind == AtomKind::Leaf {
            return path;
        }
        let i = top.children.len() / 2;
        let mut at = *start;
        for left in &top.children[..i] {
            at += f.cat(left).1.expect("cat of a subtree");
        }
        let child = f.get(&top.children[i]);
        path.push((child, at));
    }
}

/// How a row is named in a `Damaged` location.
fn row(key: &HilbertKey) -> String {
    format!("h_xy={}, h_yz={}, h_zm={}", key.h_xy as i64, key.h_yz as i64, key.h_zm as i64)
}

/// `cat` of `root` fails with damage at `byte`, naming `key`'s row, having written exactly the
/// object's first `byte` bytes; returns the error's fields.
#[track_caller]
fn assert_damaged(f: &Fixture, root: &Hash, data: &[u8], key: &HilbertKey, byte: u64) -> (String, String, String) {
    let (out, r) = f.cat(root);
    match r {
        Err(StoreError::Damaged { expected, found, location, what, byte: Some(b) }) => {
            assert!(location.contains(&row(key)), "names the damaged row {}: {location} ({what})", row(key));
            assert_eq!(b, byte, "the damaged part starts at byte {byte} ({location}: {what})");
            assert_eq!(out.len() as u64, b, "everything before the damaged part was written, nothing after");
            assert!(out == data[..out.len()], "every byte written is the object's own");
            (expected, found, what)
        }
        Err(e) => panic!("expected StoreError::Damaged, got {e}"),
        Ok(n) => panic!("cat returned Ok({n}) over damaged data (output equal to the input: {})", out == data),
    }
}

#[track_caller]
fn assert_exact(f: &Fixture, root: &Hash, data: &[u8]) {
    let (out, r) = f.cat(root);
    assert_eq!(r.expect("cat of an undamaged object"), data.len() as u64);
    assert!(out == data, "cat returns the input byte for byte");
}

/// The fsck problems naming object `id` (and only its own).
fn problems_of(problems: &[String], id: u64) -> Vec<&String> {
    problems.iter().filter(|p| p.starts_with(&format!("object {id} "))).collect()
}

#[test]
fn issue_12_pg_cat_stops_at_a_leaf_whose_value_was_changed() {
    let f = fixture("issue12_leaf");
    let (a_data, b_data, t_data) =
        (random(300_000, 0x1234_5678_9abc_def1), random(200_000, 0x0fed_cba9_8765_4321), text());
    let a = f.ingest("mem:a", Modality::Binary, &a_data);
    let b = f.ingest("mem:b", Modality::Binary, &b_data);
    let t = f.ingest("mem:t", Modality::Text, &t_data);
    let tiny = f.ingest("mem:tiny", Modality::Binary, b"a leaf alone");
    let (a_root, tiny_root) = (a.root.expect("root"), tiny.root.expect("root"));
    let path = middle_path(&f, &a_root);
    let (leaf, _) = path.last().expect("a leaf");
    let (parent, parent_at) = &path[path.len() - 2];
    let k = parent.children.iter().position(|c| *c == leaf.hash).expect("a child of its parent");

    // The leaf's value changed: its parent's pack (checked against the parent's trusted hash)
    // is read instead of it, so cat still returns the input; fsck names the leaf.
    f.damage(
        "UPDATE atoms SET value = set_byte(value, 0, get_byte(value, 0) # 1) WHERE content_hash = $1",
        &[&leaf.hash.0.as_slice()],
    );
    assert_exact(&f, &a_root, &a_data);
    let problems = f.fsck_problems();
    assert!(problems.iter().any(|p| p.contains(&format!("leaf {}", leaf.hash))), "fsck names the leaf: {problems:?}");

    // The same byte changed in the pack: the pack no longer hashes to the parent, the leaves
    // are read, and the changed one does not hash to what the parent names.
    let offset = {
        let values: Vec<Vec<u8>> = parent.children[..k].iter().map(|c| f.get(c).value.expect("a leaf")).collect();
        values.iter().map(|v| 1 + v.len() as i32).sum::<i32>() + 1
    };
    f.damage(
        "UPDATE atoms SET leaves = set_byte(leaves, $2, get_byte(leaves, $2) # 1) WHERE content_hash = $1",
        &[&parent.hash.0.as_slice(), &offset],
    );
    let (expected, found, what) = assert_damaged(&f, &a_root, &a_data, &leaf.key, *parent_at);
    assert_eq!(expected, leaf.hash.to_hex(), "the hash its parent names for it");
    assert_ne!(found, expected);
    assert!(what.contains("leaf") && what.contains(&parent.hash.to_hex()), "{what}");

    // A leaf that is the root: its value must hash to the root asked for.
    f.damage(
        "UPDATE atoms SET value = set_byte(value, 0, get_byte(value, 0) # 1) WHERE content_hash = $1",
        &[&tiny_root.0.as_slice()],
    );
    let tiny_key = f.get(&tiny_root).key;
    let (expected, _, _) = assert_damaged(&f, &tiny_root, b"a leaf alone", &tiny_key, 0);
    assert_eq!(expected, tiny_root.to_hex());

    // Undamaged objects read back exactly; fsck names the damaged objects and no other.
    assert_exact(&f, &b.root.expect("root"), &b_data);
    assert_exact(&f, &t.root.expect("root"), &t_data);
    let problems = f.fsck_problems();
    for id in [a.id, tiny.id] {
        let mine = problems_of(&problems, id);
        assert_eq!(mine.len(), 1, "one problem names object {id}: {problems:?}");
        assert!(mine[0].contains("damaged at") && mine[0].contains("h_xy="), "{}", mine[0]);
    }
    assert!(problems_of(&problems, b.id).is_empty() && problems_of(&problems, t.id).is_empty(), "{problems:?}");
}

#[test]
fn issue_12_pg_cat_stops_at_a_composite_whose_hash_was_changed() {
    let f = fixture("issue12_hash");
    let (a_data, t_data) = (random(300_000, 0x5555_0000_aaaa_1111), text());
    let a = f.ingest("mem:a", Modality::Binary, &a_data);
    let t = f.ingest("mem:t", Modality::Text, &t_data);
    let a_root = a.root.expect("root");
    let path = middle_path(&f, &a_root);
    assert!(path.len() >= 3, "a tree of at least three levels");

    // A composite carrying a pack (its children are leaves), then one above it whose children
    // are composites: each time the parent's check fails, and the row whose recorded hash is
    // not its children's is named.
    for level in [path.len() - 2, 1] {
        let (x, _) = &path[level];
        let (parent, parent_at) = &path[level - 1];
        f.damage(
            "UPDATE atoms SET content_hash = set_byte(content_hash, 31, get_byte(content_hash, 31) # 128)
             WHERE content_hash = $1",
            &[&x.hash.0.as_slice()],
        );
        let (expected, found, what) = assert_damaged(&f, &a_root, &a_data, &x.key, *parent_at);
        assert_eq!(expected, x.hash.to_hex(), "the hash of its children");
        let mut changed = x.hash;
        changed.0[31] ^= 128;
        assert_eq!(found, changed.to_hex(), "the hash its row records");
        assert!(what.contains("composite") && what.contains(&parent.hash.to_hex()), "{what}");
        let problems = f.fsck_problems();
        assert_eq!(problems_of(&problems, a.id).len(), 1, "{problems:?}");
        // Put right again: the object reads back exactly.
        f.damage(
            "UPDATE atoms SET content_hash = $1 WHERE content_hash = $2",
            &[&x.hash.0.as_slice(), &changed.0.as_slice()],
        );
        assert_exact(&f, &a_root, &a_data);
    }

    // The root's own row: no row has the hash asked for any more, and an object names it.
    f.damage(
        "UPDATE atoms SET content_hash = set_byte(content_hash, 0, get_byte(content_hash, 0) # 1) WHERE content_hash = $1",
        &[&a_root.0.as_slice()],
    );
    let mut changed = a_root;
    changed.0[0] ^= 1;
    match f.cat(&a_root) {
        (out, Err(StoreError::Damaged { expected, found, location, byte: Some(0), .. })) => {
            assert!(out.is_empty());
            assert_eq!((expected, found), (a_root.to_hex(), changed.to_hex()));
            assert!(location.contains(&row(&path[0].0.key)), "names the root's row: {location}");
            assert!(location.contains(&format!("object {}", a.id)), "{location}");
        }
        (_, r) => panic!("expected damage at the root, got {r:?}"),
    }
    let problems = f.fsck_problems();
    assert_eq!(problems_of(&problems, a.id).len(), 1, "{problems:?}");
    assert_exact(&f, &t.root.expect("root"), &t_data);
}

#[test]
fn issue_12_pg_cat_stops_at_a_composite_whose_geometry_was_changed() {
    let f = fixture("issue12_geometry");
    let (a_data, b_data) = (random(300_000, 0x7777_3333_1111_9999), random(100_000, 0x2222_4444_8888_1010));
    let a = f.ingest("mem:a", Modality::Binary, &a_data);
    let b = f.ingest("mem:b", Modality::Binary, &b_data);
    let a_root = a.root.expect("root");
    let path = middle_path(&f, &a_root);
    // A composite whose children are composites: its children are found from its geometry
    // (a composite over leaves is read through its pack, which does not need it).
    let (g, g_at) = path
        .iter()
        .rev()
        .find(|(r, _)| r.kind == AtomKind::Node && f.get(&r.children[0]).kind == AtomKind::Node)
        .expect("an upper composite");
    let before: Vec<u8> =
        f.rt.block_on(
            f.admin.query_one("SELECT ST_AsEWKB(geom) FROM atoms WHERE content_hash = $1", &[&g.hash.0.as_slice()]),
        )
        .expect("geometry")
        .get(0);
    let set_vertex = |to: &str| {
        f.damage(
            &format!(
                "UPDATE atoms SET geom = ST_ForceCollection(ST_Collect(ST_GeometryN(geom, 1),
                     ST_SetPoint(ST_GeometryN(geom, 2), 1, {to})))
                 WHERE content_hash = $1"
            ),
            &[&g.hash.0.as_slice()],
        )
    };

    // Vertex 1 leads to another child (vertex 2's): every child is sound, their hashes are
    // not the composite's.
    set_vertex("ST_PointN(ST_GeometryN(geom, 2), 3)");
    let (expected, _, what) = assert_damaged(&f, &a_root, &a_data, &g.key, *g_at);
    assert_eq!(expected, g.hash.to_hex());
    assert!(what.contains("geometry"), "{what}");
    let problems = f.fsck_problems();
    assert_eq!(problems_of(&problems, a.id).len(), 1, "{problems:?}");

    // Vertex 1 leads nowhere: no atom is stored at its key.
    set_vertex(
        "ST_MakePoint(ST_X(ST_PointN(ST_GeometryN(geom, 2), 2)) + 1, ST_Y(ST_PointN(ST_GeometryN(geom, 2), 2)),
                      ST_Z(ST_PointN(ST_GeometryN(geom, 2), 2)), ST_M(ST_PointN(ST_GeometryN(geom, 2), 2)))",
    );
    let (expected, found, what) = assert_damaged(&f, &a_root, &a_data, &g.key, *g_at);
    assert_eq!(expected, g.hash.to_hex());
    assert!(found.starts_with("nothing") && what.contains("not stored"), "{found}; {what}");

    // Put right again: the object reads back exactly; the other one never stopped doing so.
    f.damage("UPDATE atoms SET geom = ST_GeomFromEWKB($1) WHERE content_hash = $2", &[&before, &g.hash.0.as_slice()]);
    assert_exact(&f, &a_root, &a_data);
    assert_exact(&f, &b.root.expect("root"), &b_data);
    assert!(f.fsck_problems().is_empty());
}
