//! hart_reconstruct: bytes rebuilt in SQL from a root's geometry alone (vertex -> Hilbert key
//! -> primary key, level by level), on hand-built trees, damaged and forged trees, and a real
//! file built into atoms by hart-core.

mod common;

use common::{insert_atoms, merge_atoms, sqlstate, Atom, TestDb};
use hart_core::Modality;

async fn reconstruct(c: &tokio_postgres::Client, a: &Atom) -> Result<Vec<u8>, tokio_postgres::Error> {
    let (x, y, z) = a.k();
    Ok(c.query_one("SELECT hart_reconstruct($1, $2, $3)", &[&x, &y, &z]).await?.get(0))
}

#[tokio::test]
async fn hand_built_trees() {
    let db = TestDb::migrated("reconstruct_small").await;
    let c = db.client().await;
    let hello = Atom::leaf(Modality::Text, b"Hello");
    let comma = Atom::leaf(Modality::Text, b", ");
    let world = Atom::leaf(Modality::Text, b"world");
    let bang = Atom::leaf(Modality::Text, b"!");
    let line = Atom::node(Modality::Text, &[&hello, &comma, &world]);
    // Repeats, at two levels.
    let top = Atom::node(Modality::Text, &[&line, &bang, &line, &bang, &bang]);
    let twice = Atom::node(Modality::Text, &[&bang, &bang]);
    insert_atoms(&c, &[&hello, &comma, &world, &bang, &line, &top, &twice], false).await.unwrap();

    assert_eq!(reconstruct(&c, &hello).await.unwrap(), b"Hello", "a leaf is its value");
    assert_eq!(reconstruct(&c, &line).await.unwrap(), b"Hello, world");
    assert_eq!(reconstruct(&c, &top).await.unwrap(), b"Hello, world!Hello, world!!");
    assert_eq!(reconstruct(&c, &twice).await.unwrap(), b"!!", "degenerate line: one atom twice");

    let by_hash: Vec<u8> =
        c.query_one("SELECT hart_reconstruct($1::bytea)", &[&top.hash.0.to_vec()]).await.unwrap().get(0);
    assert_eq!(by_hash, b"Hello, world!Hello, world!!");

    // Through the object catalogue.
    let log: i64 = c
        .query_one("INSERT INTO ingestion_log (source_uri) VALUES ('mem:top') RETURNING id", &[])
        .await
        .unwrap()
        .get(0);
    let (x, y, z) = top.k();
    let obj: i64 = c
        .query_one("SELECT hart_register_object($1, 'top', $2, $3, $4, 27)", &[&log, &x, &y, &z])
        .await
        .unwrap()
        .get(0);
    let bytes: Vec<u8> = c.query_one("SELECT hart_object_bytes($1)", &[&obj]).await.unwrap().get(0);
    assert_eq!(bytes, b"Hello, world!Hello, world!!");
}

#[tokio::test]
async fn missing_children_and_cycles_are_errors() {
    let db = TestDb::migrated("reconstruct_damaged").await;
    let c = db.client().await;
    let a = Atom::leaf(Modality::Binary, b"present");
    let gone = Atom::leaf(Modality::Binary, b"never stored");
    let n = Atom::node(Modality::Binary, &[&a, &gone]);
    insert_atoms(&c, &[&a, &n], false).await.unwrap();
    let e = reconstruct(&c, &n).await.unwrap_err();
    assert_eq!(sqlstate(&e), "P0002");
    let p = gone.pos;
    let at = format!("POINT ZM ({} {} {} {})", p.x, p.y, p.z, p.m);
    assert!(format!("{e:?}").contains(&at), "names where the missing child is: {e:?}");
    assert_eq!(sqlstate(&reconstruct(&c, &gone).await.unwrap_err()), "P0002");

    // A forged composite whose line passes through its own point: content addressing makes
    // this impossible for honest data, positions alone do not.
    let mut cyclic = Atom::node(Modality::Binary, &[&a, &a]);
    cyclic.children = vec![cyclic.pos, a.pos];
    insert_atoms(&c, &[&cyclic], false).await.unwrap();
    let e = reconstruct(&c, &cyclic).await.unwrap_err();
    assert_eq!(sqlstate(&e), "XX001", "{e:?}");
}

#[tokio::test]
async fn a_real_file_reconstructs_byte_for_byte() {
    let db = TestDb::migrated("reconstruct_file").await;
    let writer = db.login_role("writer", &["hart_writer"]).await;
    let c = db.client_as(&writer).await;
    for (modality, path) in [
        (Modality::Text, "/usr/share/common-licenses/GPL-3"),
        (Modality::Binary, "/usr/share/common-licenses/Apache-2.0"),
    ] {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e} (a file every Debian has)"));
        let (atoms, root) = common::build_tree(modality, &data);
        let refs: Vec<&Atom> = atoms.iter().collect();
        let (created, existing, _) = merge_atoms(&c, &refs, false).await.unwrap();
        assert_eq!((created, existing), (atoms.len() as i64, 0));
        let t = std::time::Instant::now();
        let bytes = reconstruct(&c, &root).await.unwrap();
        let secs = t.elapsed().as_secs_f64();
        assert!(bytes == data, "{path}: SQL reconstruction differs from the file");
        eprintln!(
            "{path}: {} bytes, {} atoms, hart_reconstruct {:.0} ms ({:.2} MB/s)",
            data.len(),
            atoms.len(),
            secs * 1e3,
            data.len() as f64 / secs / 1e6
        );
        // Ingesting it again adds nothing.
        let (created, existing, claimed) = merge_atoms(&c, &refs, false).await.unwrap();
        assert_eq!((created, existing, claimed), (0, atoms.len() as i64, 0));
    }
    // Reference counts equal a recount from the geometry.
    assert_eq!(common::refcount_mismatches(&db.client().await).await, 0);
}
