//! The backend conformance suite (`hart_store::conformance`) on PostgreSQL, on fresh stores:
//! each store gets a fresh migrated database of its own (tests/common), dropped after the
//! store. (A reopening run, reconnecting at every step boundary, also passes; it is not run
//! here because it doubles the suite's time, ~10 minutes on 2 cores, for a store whose
//! "reopen" is only a new connection.)
//!
//! Without `HART_TEST_DATABASE_URL` every test FAILS, saying how to start a cluster.

mod common;

use common::TestDb;
use hart_pg::PgStore;
use hart_store::conformance::with_guard;
use hart_store::Store;

/// A migrated fresh database; made on a thread of its own (the harness is async).
fn database() -> TestDb {
    std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(TestDb::migrated("conformance"))
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

fn fresh() -> Box<dyn Store> {
    let db = database();
    let store = PgStore::connect(&db.settings).unwrap_or_else(|e| panic!("connecting to {}: {e}", db.name));
    with_guard(store, db)
}

mod fresh {
    hart_store::conformance_tests!(super::fresh);
}

/// The same suite with the key functions and the merge in their PL/pgSQL forms (migrations
/// 0014, 0015), as on a server without the hart_native extension: same roots, bytes, counts.
fn fresh_plpgsql() -> Box<dyn Store> {
    let db = std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let db = TestDb::migrated("conformance_plpgsql").await;
            let native: bool =
                db.client().await.query_one("SELECT hart_adopt_native(false)", &[]).await.expect("adopt").get(0);
            assert!(!native, "hart_adopt_native(false) leaves the PL/pgSQL functions in place");
            db
        })
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
    let store = PgStore::connect(&db.settings).unwrap_or_else(|e| panic!("connecting to {}: {e}", db.name));
    with_guard(store, db)
}

mod plpgsql {
    hart_store::conformance_tests!(super::fresh_plpgsql);
}

/// The backend stores packs (migration 0012) for composites over leaves, each equal to its
/// children's values; `cat` reads through them, and a pack that does not match its hash is
/// read around (the children are read instead) and reported by `fsck`.
#[test]
fn packs_are_built_read_and_checked() {
    let db = database();
    let store = PgStore::connect(&db.settings).unwrap_or_else(|e| panic!("connecting to {}: {e}", db.name));
    let text = std::fs::read("/usr/share/common-licenses/GPL-3").expect("a file every Debian has");
    let mut binary = vec![0u8; 300_000];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for b in binary.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut roots = Vec::new();
    for (modality, data) in [(hart_core::Modality::Text, &text), (hart_core::Modality::Binary, &binary)] {
        let info = hart_store::ingest::ingest_bytes(&store, "mem:packs", modality, data).expect("ingest");
        roots.push((info.root.expect("a non-empty object has a root"), data.clone()));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let admin = rt.block_on(db.client());
    let count = |sql: &str| rt.block_on(admin.query_one(sql, &[])).expect(sql).get::<_, i64>(0);
    let packed = count("SELECT count(*) FROM atoms WHERE leaves IS NOT NULL");
    // Composites whose every vertex is a leaf's point: one hash join of vertices and leaf
    // points (a probe per vertex through the partitioned parent took 27 s here).
    let over_leaves = count(
        "SELECT count(*) FROM (
             SELECT bool_and(l.b IS NOT NULL) AS over_leaves
             FROM (SELECT p.h_xy, p.h_yz, p.h_zm, p.modality, (ST_DumpPoints(ST_GeometryN(p.geom, 2))).geom AS g
                   FROM atoms p WHERE p.value IS NULL) k
             LEFT JOIN (SELECT DISTINCT ST_AsEWKB(pt) AS b, modality FROM atoms WHERE value IS NOT NULL) l
                    ON l.b = ST_AsEWKB(k.g) AND l.modality = k.modality
             GROUP BY k.h_xy, k.h_yz, k.h_zm) t
         WHERE over_leaves",
    );
    assert!(packed > 100, "{packed} packs");
    assert_eq!(packed, over_leaves, "every composite over leaves has its pack (the session's cache is large enough)");
    assert_eq!(count("SELECT count(*) FROM hart_pack_mismatches(NULL)"), 0);
    let cat = |root| {
        let mut out = Vec::new();
        store.cat(root, &mut out).expect("cat");
        out
    };
    for (root, data) in &roots {
        assert!(cat(root) == **data, "cat equals the input");
    }
    // Break two packs (as a superuser that bypasses the immutability trigger): reads still
    // return the input, and fsck names both composites.
    rt.block_on(admin.batch_execute(
        "SET session_replication_role = replica;
         UPDATE atoms SET leaves = set_byte(leaves, 1, get_byte(leaves, 1) # 1)
         WHERE (h_xy, h_yz, h_zm) IN (SELECT h_xy, h_yz, h_zm FROM atoms WHERE leaves IS NOT NULL
                                      ORDER BY content_hash LIMIT 2);
         RESET session_replication_role;",
    ))
    .expect("corrupting two packs");
    for (root, data) in &roots {
        assert!(cat(root) == **data, "cat reads around a pack that does not match its hash");
    }
    let report = store.fsck(&|_, _| {}).expect("fsck");
    let bad: Vec<_> = report.problems.iter().filter(|p| p.contains("its pack differs")).collect();
    assert_eq!(bad.len(), 2, "{:?}", report.problems);
    drop(store);
    drop(db);
}
