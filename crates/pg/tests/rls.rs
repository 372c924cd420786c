//! Row-level security with real LOGIN roles, directly in SQL: a role cannot read or change
//! another role's private atoms, objects or ingestions; public atoms are readable by all;
//! deduplication never opens private content to a role that does not hold it
//! (docs/SECURITY.md).

mod common;

use common::{hexes, insert_atoms, merge_atoms, sqlstate, visible, Atom, TestDb};
use hart_core::Modality;

#[tokio::test]
async fn roles_cannot_read_or_change_each_others_private_atoms() {
    let db = TestDb::migrated("rls_atoms").await;
    let alice = db.login_role("alice", &["hart_writer"]).await;
    let bob = db.login_role("bob", &["hart_writer"]).await;
    let carol = db.login_role("carol", &["hart_reader"]).await;
    let (a, b, c) = (db.client_as(&alice).await, db.client_as(&bob).await, db.client_as(&carol).await);

    let a_private = Atom::leaf(Modality::Text, b"alice's secret");
    let a_public = Atom::leaf(Modality::Text, b"alice's announcement");
    let b_private = Atom::leaf(Modality::Text, b"bob's secret");
    insert_atoms(&a, &[&a_private], false).await.unwrap();
    insert_atoms(&a, &[&a_public], true).await.unwrap();
    insert_atoms(&b, &[&b_private], false).await.unwrap();
    let all = [&a_private, &a_public, &b_private];

    assert_eq!(visible(&a, &all).await, hexes(&[&a_private, &a_public]));
    assert_eq!(visible(&b, &all).await, hexes(&[&a_public, &b_private]));
    assert_eq!(visible(&c, &all).await, hexes(&[&a_public]), "a reader sees public atoms only");
    // Not even a count leaks.
    let n: i64 = b.query_one("SELECT count(*) FROM atoms", &[]).await.unwrap().get(0);
    assert_eq!(n, 2);

    // Bob cannot change or delete Alice's atoms: the rows are simply not there for him.
    let (x, y, z) = a_private.k();
    let key = "h_xy = $1 AND h_yz = $2 AND h_zm = $3";
    for sql in [
        format!("UPDATE atoms SET meta = '{{\"owned\": \"bob\"}}' WHERE {key}"),
        format!("UPDATE atoms SET is_public = true WHERE {key}"),
        format!("DELETE FROM atoms WHERE {key}"),
    ] {
        assert_eq!(b.execute(&sql, &[&x, &y, &z]).await.unwrap(), 0, "{sql}");
    }
    // Alice's public atom: readable, still not Bob's to change.
    let (px, py, pz) = a_public.k();
    assert_eq!(b.execute(&format!("UPDATE atoms SET meta = '{{}}' WHERE {key}"), &[&px, &py, &pz]).await.unwrap(), 0);
    let meta_unchanged: bool = a
        .query_one(&format!("SELECT meta IS NULL AND version = 1 FROM atoms WHERE {key}"), &[&x, &y, &z])
        .await
        .unwrap()
        .get(0);
    assert!(meta_unchanged);

    // Holders, reference counts and content are not writable directly, not even on one's own
    // atoms; partitions cannot be reached around the policies; readers cannot write.
    let (bx, by, bz) = b_private.k();
    for sql in [
        format!("UPDATE atoms SET owners = ARRAY['{bob}', '{alice}']::name[] WHERE {key}"),
        format!("UPDATE atoms SET ref_count = 99 WHERE {key}"),
        format!("UPDATE atoms SET value = 'x' WHERE {key}"),
    ] {
        let e = b.execute(&sql, &[&bx, &by, &bz]).await.unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{sql}");
    }
    let partition: String = a
        .query_one(
            "SELECT tableoid::regclass::text FROM atoms WHERE h_xy = $1 AND h_yz = $2 AND h_zm = $3",
            &[&x, &y, &z],
        )
        .await
        .unwrap()
        .get(0);
    // A partition is readable under the read policy of `atoms` (point lookups are routed to
    // it), and never writable directly.
    let seen: Vec<String> = b
        .query(&format!("SELECT encode(content_hash, 'hex') FROM {partition} ORDER BY 1"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!seen.contains(&hexes(&[&a_private])[0]), "bob reads alice's private atom through its partition");
    for sql in [
        format!("UPDATE {partition} SET meta = '{{}}'"),
        format!("DELETE FROM {partition}"),
        format!("INSERT INTO {partition} (h_xy, h_yz, h_zm, geom, value, modality, content_hash) SELECT h_xy, h_yz, h_zm, geom, value, modality, content_hash FROM {partition} WHERE false"),
    ] {
        let e = b.execute(&sql, &[]).await.unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{sql}");
    }
    // Keyed reads through the backend's functions obey the same policy.
    for f in ["hart_atoms_at", "hart_walk_at"] {
        let sql = format!("SELECT count(*) FROM {f}($1, $2, $3)");
        let (xs, ys, zs) = (vec![x, bx], vec![y, by], vec![z, bz]);
        for (who, client, expect) in [("alice", &a, 1i64), ("bob", &b, 1), ("carol", &c, 0)] {
            let n: i64 = client.query_one(&sql, &[&xs, &ys, &zs]).await.unwrap().get(0);
            assert_eq!(n, expect, "{f}: {who} reads only what the read policy allows");
        }
    }
    let e = insert_atoms(&c, &[&Atom::leaf(Modality::Text, b"carol")], true).await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "readers do not write");
    let e = b
        .execute(
            "INSERT INTO atoms (h_xy, h_yz, h_zm, geom, value, modality, content_hash, owners)
             SELECT h_xy, h_yz, h_zm, geom, value, modality, content_hash, ARRAY['x']::name[]
             FROM atoms WHERE false",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "owners cannot be chosen");

    // Owners can annotate their own atoms; publishing is final.
    assert_eq!(
        a.execute(&format!("UPDATE atoms SET meta = '{{\"k\": 1}}' WHERE {key}"), &[&x, &y, &z]).await.unwrap(),
        1
    );
    let e = a.execute(&format!("UPDATE atoms SET is_public = false WHERE {key}"), &[&px, &py, &pz]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "23000");

    // Reconstruction in SQL obeys the same policies.
    let bytes: Vec<u8> = a.query_one("SELECT hart_reconstruct($1, $2, $3)", &[&x, &y, &z]).await.unwrap().get(0);
    assert_eq!(bytes, b"alice's secret");
    let e = b.query_one("SELECT hart_reconstruct($1, $2, $3)", &[&x, &y, &z]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "P0002", "{e:?}");

    // Alice may delete her unreferenced atom; Bob could not have.
    assert_eq!(a.execute(&format!("DELETE FROM atoms WHERE {key}"), &[&x, &y, &z]).await.unwrap(), 1);
}

#[tokio::test]
async fn dedup_does_not_open_private_content() {
    let db = TestDb::migrated("rls_dedup").await;
    let alice = db.login_role("alice", &["hart_writer"]).await;
    let bob = db.login_role("bob", &["hart_writer"]).await;
    let carol = db.login_role("carol", &["hart_writer"]).await;
    let (a, b, c) = (db.client_as(&alice).await, db.client_as(&bob).await, db.client_as(&carol).await);

    let l1 = Atom::leaf(Modality::Text, b"salary:");
    let l2 = Atom::leaf(Modality::Text, b" 120000");
    let root = Atom::node(Modality::Text, &[&l1, &l2, &l1]);
    let tree = [&l1, &l2, &root];
    assert_eq!(merge_atoms(&a, &tree, false).await.unwrap(), (3, 0, 0));
    assert!(visible(&b, &tree).await.is_empty(), "private to alice");

    // Bob knows l2's key and hash (say, from a leak) but not its bytes: a forged copy
    // collides and reveals nothing.
    let mut forged = l2.clone();
    forged.value = Some(b" 999999".to_vec());
    let e = merge_atoms(&b, &[&forged], false).await.unwrap_err();
    assert_eq!(sqlstate(&e), "HT001", "{e:?}");
    assert!(!format!("{e:?}").contains("120000"));
    assert!(visible(&b, &tree).await.is_empty());

    // Bob cannot hang his own composite on Alice's private atoms either.
    let b_leaf = Atom::leaf(Modality::Text, b"bob");
    let parasite = Atom::node(Modality::Text, &[&b_leaf, &l2]);
    let e = merge_atoms(&b, &[&b_leaf, &parasite], false).await.unwrap_err();
    assert_eq!(sqlstate(&e), "HT002", "{e:?}");
    assert!(visible(&b, &[&b_leaf, &parasite]).await.is_empty(), "the whole batch rolled back");

    // Nor register an object over Alice's root.
    let log: i64 = b
        .query_one("INSERT INTO ingestion_log (source_uri) VALUES ('file:///stolen') RETURNING id", &[])
        .await
        .unwrap()
        .get(0);
    let (rx, ry, rz) = root.k();
    let e = b
        .query_one("SELECT hart_register_object($1, 'stolen', $2, $3, $4, 14)", &[&log, &rx, &ry, &rz])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "HT002");
    let e = b
        .execute(
            "INSERT INTO objects (ingestion_id, name, root_h_xy, root_h_yz, root_h_zm, root_hash, modality, bytes)
             VALUES ($1, 'stolen', $2, $3, $4, $5, 1, 14)",
            &[&log, &rx, &ry, &rz, &root.hash.0.to_vec()],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "policy: the root must be readable: {e:?}");

    // Bob ingests the same content himself: it deduplicates (nothing new is stored) and he
    // becomes a holder, because he proved he has it. Carol, who has not, still sees nothing.
    assert_eq!(merge_atoms(&b, &tree, false).await.unwrap(), (0, 3, 3));
    assert_eq!(visible(&b, &tree).await, hexes(&tree));
    assert_eq!(visible(&a, &tree).await, hexes(&tree));
    assert!(visible(&c, &tree).await.is_empty());
    let bytes: Vec<u8> = b.query_one("SELECT hart_reconstruct($1, $2, $3)", &[&rx, &ry, &rz]).await.unwrap().get(0);
    assert_eq!(bytes, b"salary: 120000salary:");

    // References counted once per distinct child of each new composite, not per holder.
    let admin = db.client().await;
    let counts: Vec<(String, i64)> = admin
        .query("SELECT encode(content_hash, 'hex'), ref_count FROM atoms ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut expect = vec![(l1.hash.to_hex(), 1), (l2.hash.to_hex(), 1), (root.hash.to_hex(), 0)];
    expect.sort();
    assert_eq!(counts, expect);

    // Objects: Bob's registration holds a reference on the root; Alice does not see Bob's
    // object or ingestion; deleting releases the reference.
    let obj: i64 = b
        .query_one("SELECT hart_register_object($1, 'bob.txt', $2, $3, $4, 21)", &[&log, &rx, &ry, &rz])
        .await
        .unwrap()
        .get(0);
    let root_refs = || {
        let admin = &admin;
        async move {
            admin
                .query_one("SELECT ref_count FROM atoms WHERE h_xy = $1 AND h_yz = $2 AND h_zm = $3", &[&rx, &ry, &rz])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    assert_eq!(root_refs().await, 1);
    let seen: i64 = a.query_one("SELECT count(*) FROM objects", &[]).await.unwrap().get(0);
    assert_eq!(seen, 0);
    let seen: i64 = a.query_one("SELECT count(*) FROM ingestion_log", &[]).await.unwrap().get(0);
    assert_eq!(seen, 0);
    assert_eq!(a.execute("UPDATE ingestion_log SET status = 'running' WHERE id = $1", &[&log]).await.unwrap(), 0);
    let e = a.execute("SELECT hart_delete_object($1)", &[&obj]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "P0002", "not Alice's object");
    b.execute("SELECT hart_delete_object($1)", &[&obj]).await.unwrap();
    assert_eq!(root_refs().await, 0);

    // Publishing (by any holder) opens the atoms to everyone.
    assert_eq!(merge_atoms(&a, &[&l1], true).await.unwrap(), (0, 1, 1));
    assert_eq!(visible(&c, &tree).await, hexes(&[&l1]));
}

#[tokio::test]
async fn merge_is_only_for_writers_and_only_as_oneself() {
    let db = TestDb::migrated("rls_merge_roles").await;
    let carol = db.login_role("carol", &["hart_reader"]).await;
    let dave = db.login_role("dave", &["hart_writer"]).await;
    let c = db.client_as(&carol).await;
    let e = merge_atoms(&c, &[&Atom::leaf(Modality::Binary, b"r")], false).await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    // SET ROLE is how a service acts for a principal: the merge records the principal.
    let admin = db.client().await;
    admin.batch_execute(&format!("GRANT \"{dave}\" TO \"{carol}\"")).await.unwrap();
    c.batch_execute(&format!("SET ROLE \"{dave}\"")).await.unwrap();
    let atom = Atom::leaf(Modality::Binary, b"as dave");
    merge_atoms(&c, &[&atom], false).await.unwrap();
    let (x, y, z) = atom.k();
    let row = admin
        .query_one(
            "SELECT owners::text[], created_by::text FROM atoms WHERE h_xy = $1 AND h_yz = $2 AND h_zm = $3",
            &[&x, &y, &z],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Vec<String>>(0), vec![dave.clone()]);
    assert_eq!(row.get::<_, String>(1), dave);
    // The summary aggregates private atoms: not for writers or readers.
    let e = c.query("SELECT * FROM atom_spatial_summary", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    c.query("SELECT * FROM atom_spatial_summary_public", &[]).await.unwrap();
}

/// A pack shows its leaves' bytes (migration 0012), so holding a packed composite takes
/// proof of those bytes: the same pack, or read access to every child (docs/SECURITY.md).
#[tokio::test]
async fn packs_open_leaves_only_to_who_has_them() {
    let db = TestDb::migrated("rls_packs").await;
    let alice = db.login_role("alice", &["hart_writer"]).await;
    let bob = db.login_role("bob", &["hart_writer"]).await;
    let carol = db.login_role("carol", &["hart_writer"]).await;
    let (a, b, c) = (db.client_as(&alice).await, db.client_as(&bob).await, db.client_as(&carol).await);

    let l1 = Atom::leaf(Modality::Text, b"pin:");
    let l2 = Atom::leaf(Modality::Text, b" 4711");
    let root = Atom::node(Modality::Text, &[&l1, &l2, &l1]);
    assert_eq!(root.leaves.as_deref(), Some(&b"\x04pin:\x05 4711\x04pin:"[..]));
    let tree = [&l1, &l2, &root];
    assert_eq!(merge_atoms(&a, &tree, false).await.unwrap(), (3, 0, 0));
    assert_eq!(pack_seen(&a, &root).await, root.leaves);

    // Bob has the composite's row (its children's positions) but not the leaves' bytes:
    // without a pack, or with a forged one, he cannot hold it. Before packs, the row alone was
    // proof enough (it held nothing else).
    let mut bare = root.clone();
    bare.leaves = None;
    let e = merge_atoms(&b, &[&bare], false).await.unwrap_err();
    assert_eq!(sqlstate(&e), "HT002", "{e:?}");
    let mut forged = root.clone();
    forged.leaves = Some(b"\x04pin:\x05 0000\x04pin:".to_vec());
    let e = merge_atoms(&b, &[&forged], false).await.unwrap_err();
    assert_eq!(sqlstate(&e), "HT002", "{e:?}");
    assert!(!format!("{e:?}").contains("4711"));
    assert_eq!(pack_seen(&b, &root).await, None);
    assert!(visible(&b, &tree).await.is_empty());

    // The same pack is proof: Bob holds the composite (not the leaves' rows).
    assert_eq!(merge_atoms(&b, &[&root], false).await.unwrap(), (0, 1, 1));
    assert_eq!(pack_seen(&b, &root).await, root.leaves);
    assert_eq!(visible(&b, &tree).await, hexes(&[&root]));

    // So is staging the children: Carol's copy of the composite has no pack (a backend may
    // leave it out), but the leaves she stages with it are hers once merged.
    assert_eq!(merge_atoms(&c, &[&l1, &l2, &bare], false).await.unwrap(), (0, 3, 3));
    assert_eq!(pack_seen(&c, &root).await, root.leaves);
    assert_eq!(visible(&c, &tree).await, hexes(&tree));
    // The stored pack never changes, whoever stages what.
    assert_eq!(pack_seen(&a, &root).await, root.leaves);
    assert_eq!(common::refcount_mismatches(&db.client().await).await, 0);
    let bad: i64 =
        db.client().await.query_one("SELECT count(*) FROM hart_pack_mismatches(NULL)", &[]).await.unwrap().get(0);
    assert_eq!(bad, 0);
}

/// The pack of `atom` as the connection's role sees it (None: the row is not visible).
async fn pack_seen(c: &tokio_postgres::Client, atom: &Atom) -> Option<Vec<u8>> {
    let (x, y, z) = atom.k();
    c.query_opt("SELECT leaves FROM atoms WHERE h_xy = $1 AND h_yz = $2 AND h_zm = $3", &[&x, &y, &z])
        .await
        .unwrap()
        .map(|r| r.get::<_, Vec<u8>>(0))
}
