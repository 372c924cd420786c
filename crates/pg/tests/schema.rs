//! The schema as PostgreSQL sees it: 256 partitions covering the key space, their indexes,
//! partition pruning of point lookups, constraints and triggers, geometry round trips,
//! the ingestion log lifecycle, the spatial summary and pg_stat_statements.

mod common;

use common::{insert_atoms, sqlstate, Atom, TestDb};
use hart_core::Modality;

#[tokio::test]
async fn atoms_has_256_partitions_covering_every_key() {
    let db = TestDb::migrated("partitions").await;
    let c = db.client().await;
    let n: i64 =
        c.query_one("SELECT count(*) FROM pg_inherits WHERE inhparent = 'atoms'::regclass", &[]).await.unwrap().get(0);
    assert_eq!(n, 256);

    // The plan is contiguous from 0 to MAXVALUE and matches the real partition bounds.
    let rows = c
        .query(
            "SELECT p.partition_name, p.lo, p.hi, pg_get_expr(c.relpartbound, c.oid)
             FROM atom_partition_plan p JOIN pg_class c ON c.relname = p.partition_name
             ORDER BY p.lo",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 256);
    let mut expect_lo = 0i64;
    for r in &rows {
        let (name, lo, hi, bound): (String, i64, Option<i64>, String) = (r.get(0), r.get(1), r.get(2), r.get(3));
        assert_eq!(lo, expect_lo, "{name} starts where the previous ends");
        let hi_sql = hi.map_or("MAXVALUE".to_string(), |h| format!("'{h}'"));
        assert_eq!(bound, format!("FOR VALUES FROM ('{lo}') TO ({hi_sql})"), "{name}");
        if let Some(h) = hi {
            assert!(h > lo);
            expect_lo = h;
        }
    }
    // 32 per modality.
    let per: Vec<(i16, i64)> = c
        .query("SELECT modality, count(*) FROM atom_partition_plan WHERE modality < 7 GROUP BY 1 ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(per, (0..7).map(|m| (m, 32)).collect::<Vec<_>>());

    // Every partition has the six indexes of the parent.
    let bad: Vec<(String, i64)> = c
        .query(
            "SELECT c.relname, count(i.indexrelid)
             FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid
             LEFT JOIN pg_index i ON i.indrelid = c.oid
             WHERE h.inhparent = 'atoms'::regclass
             GROUP BY c.relname HAVING count(i.indexrelid) <> 6",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(bad.is_empty(), "partitions without the 6 indexes: {bad:?}");
    let gist: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE tablename LIKE 'atoms\\_%'
               AND indexdef LIKE '%USING gist (geom gist_geometry_ops_nd)'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(gist, 256, "a 4-D GiST on geom in every partition");
}

/// Names of the relations scanned by a plan, from EXPLAIN (FORMAT JSON).
fn scanned(plan: &serde_json::Value, out: &mut Vec<String>) {
    if let Some(obj) = plan.as_object() {
        if let Some(rel) = obj.get("Relation Name").and_then(|v| v.as_str()) {
            out.push(rel.to_string());
        }
        for v in obj.values() {
            scanned(v, out);
        }
    } else if let Some(arr) = plan.as_array() {
        for v in arr {
            scanned(v, out);
        }
    }
}

#[tokio::test]
async fn point_lookup_prunes_to_one_partition() {
    let db = TestDb::migrated("pruning").await;
    let c = db.client().await;
    let a = Atom::leaf(Modality::Text, b"pruned");
    insert_atoms(&c, &[&a], false).await.unwrap();
    let (x, y, z) = a.k();
    let expected: String = c
        .query_one(
            "SELECT tableoid::regclass::text FROM atoms WHERE h_xy = $1 AND h_yz = $2 AND h_zm = $3",
            &[&x, &y, &z],
        )
        .await
        .unwrap()
        .get(0);

    // Literal key: pruned at plan time.
    let plan: serde_json::Value = c
        .query_one(
            &format!("EXPLAIN (FORMAT JSON) SELECT * FROM atoms WHERE h_xy = {x} AND h_yz = {y} AND h_zm = {z}"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let mut rels = Vec::new();
    scanned(&plan, &mut rels);
    assert_eq!(rels, vec![expected.clone()], "plan: {plan}");

    // Parameters with a generic plan (what a pooled prepared statement gets): pruned at
    // executor start-up, 255 subplans removed.
    c.batch_execute("SET plan_cache_mode = force_generic_plan; PREPARE get(bigint, bigint, bigint) AS SELECT * FROM atoms WHERE h_xy = $1 AND h_yz = $2 AND h_zm = $3")
        .await
        .unwrap();
    let plan: serde_json::Value = c
        .query_one(&format!("EXPLAIN (ANALYZE, FORMAT JSON, COSTS OFF, TIMING OFF) EXECUTE get({x}, {y}, {z})"), &[])
        .await
        .unwrap()
        .get(0);
    let text = plan.to_string();
    assert!(text.contains("\"Subplans Removed\":255"), "plan: {text}");
    let mut rels = Vec::new();
    scanned(&plan, &mut rels);
    assert_eq!(rels, vec![expected], "plan: {text}");
}

#[tokio::test]
async fn geometry_reads_back_as_the_core_writes_it() {
    let db = TestDb::migrated("geometry").await;
    let c = db.client().await;
    let a = Atom::leaf(Modality::Binary, b"\x00\x01\x02");
    let b = Atom::leaf(Modality::Binary, b"\xff\xfe");
    let n = Atom::node(Modality::Binary, &[&a, &b, &a]);
    let degenerate = Atom::node(Modality::Binary, &[&b, &b]);
    insert_atoms(&c, &[&a, &b, &n, &degenerate], false).await.unwrap();
    for atom in [&a, &b, &n, &degenerate] {
        let (x, y, z) = atom.k();
        let r = c
            .query_one(
                "SELECT ST_AsText(geom), ST_AsEWKB(geom), ST_NPoints(ST_GeometryN(geom, 2)),
                        ST_IsValid(geom), ST_AsText(pt)
                 FROM atoms WHERE h_xy = $1 AND h_yz = $2 AND h_zm = $3",
                &[&x, &y, &z],
            )
            .await
            .unwrap();
        assert_eq!(r.get::<_, String>(0), atom.wkt());
        assert_eq!(r.get::<_, Vec<u8>>(1), atom.ewkb(), "EWKB byte for byte");
        let npoints: Option<i32> = r.get(2);
        assert_eq!(npoints.unwrap_or(0) as usize, atom.children.len(), "one vertex per child");
        let p = atom.pos;
        assert_eq!(r.get::<_, String>(4), format!("POINT ZM ({} {} {} {})", p.x, p.y, p.z, p.m));
        // A line whose vertices are all one point is PostGIS-invalid: the only such atoms are
        // composites whose children are all the same atom.
        let all_same = atom.children.windows(2).all(|w| w[0] == w[1]) && atom.children.len() > 1;
        assert_eq!(r.get::<_, bool>(3), !all_same, "{}", atom.wkt());
    }
}

#[tokio::test]
async fn constraints_refuse_malformed_atoms() {
    let db = TestDb::migrated("constraints").await;
    let c = db.client().await;
    let ok = Atom::leaf(Modality::Text, b"fine");
    insert_atoms(&c, &[&ok], false).await.unwrap();

    let mut too_long = Atom::leaf(Modality::Binary, &[7u8; 64]);
    too_long.value = Some(vec![7u8; 65]);
    let e = insert_atoms(&c, &[&too_long], false).await.unwrap_err();
    assert_eq!(sqlstate(&e), "23514", "{e:?}");
    assert!(format!("{e:?}").contains("atoms_value_size"));

    // A key that is not the key of the atom's own point.
    let mut wrong_key = Atom::leaf(Modality::Binary, b"misplaced");
    wrong_key.key.h_zm ^= 1;
    let e = insert_atoms(&c, &[&wrong_key], false).await.unwrap_err();
    assert!(format!("{e:?}").contains("atoms_key_matches_point"), "{e:?}");

    // Modality byte of h_xy disagreeing with the modality column.
    let mut wrong_modality = Atom::leaf(Modality::Binary, b"m");
    wrong_modality.modality = Modality::Text;
    let e = insert_atoms(&c, &[&wrong_modality], false).await.unwrap_err();
    let msg = format!("{e:?}");
    assert!(msg.contains("atoms_modality_in_key") || msg.contains("atoms_key_matches_point"), "{msg}");

    // A composite with a value, a leaf with a line.
    let mut node_with_value = Atom::node(Modality::Text, &[&ok, &ok]);
    node_with_value.value = Some(b"x".to_vec());
    let e = insert_atoms(&c, &[&node_with_value], false).await.unwrap_err();
    assert!(format!("{e:?}").contains("atoms_shape"), "{e:?}");

    // Short content hash.
    let e = c
        .execute(
            "INSERT INTO atoms (h_xy, h_yz, h_zm, geom, value, modality, content_hash)
             SELECT h_xy, h_yz, h_zm + 0, geom, value, modality, '\\x00' FROM atoms LIMIT 1",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "23514");

    // The same key twice.
    let e = insert_atoms(&c, &[&ok], false).await.unwrap_err();
    assert_eq!(sqlstate(&e), "23505");

    // Content is immutable; metadata changes bump the version.
    let (x, y, z) = ok.k();
    let e = c
        .execute("UPDATE atoms SET value = 'other' WHERE h_xy = $1 AND h_yz = $2 AND h_zm = $3", &[&x, &y, &z])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "23000", "{e:?}");
    let r = c
        .query_one(
            "UPDATE atoms SET meta = '{\"lang\": \"en\"}' WHERE h_xy = $1 AND h_yz = $2 AND h_zm = $3
             RETURNING version, updated_at >= created_at",
            &[&x, &y, &z],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, i32>(0), 2);
    assert!(r.get::<_, bool>(1));
    let v: i32 = c
        .query_one(
            "UPDATE atoms SET ref_count = ref_count + 1 WHERE h_xy = $1 AND h_yz = $2 AND h_zm = $3 RETURNING version",
            &[&x, &y, &z],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 2, "a reference is not a metadata change");
    let e = c
        .execute("UPDATE atoms SET ref_count = -1 WHERE h_xy = $1 AND h_yz = $2 AND h_zm = $3", &[&x, &y, &z])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "23514");
}

#[tokio::test]
async fn ingestion_log_status_moves_forward_only() {
    let db = TestDb::migrated("ingestion_log").await;
    let c = db.client().await;
    let id: i64 = c
        .query_one("INSERT INTO ingestion_log (source_uri) VALUES ('file:///a') RETURNING id", &[])
        .await
        .unwrap()
        .get(0);
    let set = |status: &'static str| {
        let c = &c;
        async move {
            c.execute(
                "UPDATE ingestion_log SET status = $2,
                        completed_at = CASE WHEN $2 IN ('completed', 'failed') THEN now() END,
                        error = CASE WHEN $2 = 'failed' THEN 'boom' END
                 WHERE id = $1",
                &[&id, &status],
            )
            .await
        }
    };
    let e = c.execute("INSERT INTO ingestion_log (source_uri, status) VALUES ('x', 'done')", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "23514", "unknown status");
    assert_eq!(sqlstate(&set("completed").await.unwrap_err()), "23514", "pending -> completed skips running");
    set("running").await.unwrap();
    assert_eq!(sqlstate(&set("completed").await.unwrap_err()), "23514", "completed needs a root");
    set("failed").await.unwrap();
    assert_eq!(sqlstate(&set("running").await.unwrap_err()), "23514", "failed is final");
}

#[tokio::test]
async fn spatial_summary_refreshes_concurrently() {
    let db = TestDb::migrated("summary").await;
    let c = db.client().await;
    let a = Atom::leaf(Modality::Text, b"alpha");
    let b = Atom::leaf(Modality::Text, b"beta");
    let n = Atom::node(Modality::Text, &[&a, &b]);
    insert_atoms(&c, &[&a, &b, &n], false).await.unwrap();
    let unique: bool = c
        .query_one("SELECT indisunique FROM pg_index WHERE indexrelid = 'atom_spatial_summary_key'::regclass", &[])
        .await
        .unwrap()
        .get(0);
    assert!(unique);
    c.execute("SELECT hart_refresh_spatial_summary()", &[]).await.unwrap();
    let rows = c
        .query(
            "SELECT is_composite, sum(atoms)::bigint, sum(value_bytes)::bigint FROM atom_spatial_summary
             WHERE modality = 1 GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(bool, i64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(got, vec![(false, 2, 9), (true, 1, 0)]);
    // And again after more data, now with a public atom for the readers' view.
    let d = Atom::leaf(Modality::Text, b"gamma");
    insert_atoms(&c, &[&d], true).await.unwrap();
    c.execute("SELECT hart_refresh_spatial_summary()", &[]).await.unwrap();
    let public: i64 = c
        .query_one("SELECT coalesce(sum(atoms), 0)::bigint FROM atom_spatial_summary_public", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(public, 1);
}

#[tokio::test]
async fn pg_stat_statements_is_enabled_where_available() {
    let db = TestDb::migrated("pg_stat_statements").await;
    let c = db.client().await;
    let available: bool = c
        .query_one("SELECT EXISTS (SELECT FROM pg_available_extensions WHERE name = 'pg_stat_statements')", &[])
        .await
        .unwrap()
        .get(0);
    let installed: bool = c
        .query_one("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_stat_statements')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(installed, available);
    // scripts/pg.sh preloads it, so on the test cluster it also records statements.
    let n: i64 = c.query_one("SELECT count(*) FROM pg_stat_statements", &[]).await.unwrap().get(0);
    assert!(n > 0);
}

async fn summarised_atoms(c: &tokio_postgres::Client) -> i64 {
    c.query_one("SELECT coalesce(sum(atoms), 0)::bigint FROM atom_spatial_summary", &[]).await.unwrap().get(0)
}

async fn refresh_due(c: &tokio_postgres::Client, every: &str) -> bool {
    c.query_one(&format!("SELECT hart_refresh_spatial_summary_due('{every}')"), &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn spatial_summary_is_refreshed_by_the_application_when_due() {
    let db = TestDb::migrated("summary_due").await;
    let c = db.client().await;
    let cron: bool =
        c.query_one("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_cron')", &[]).await.unwrap().get(0);
    assert!(!cron, "this test is for clusters without pg_cron (its scheduled job replaces the application's)");
    let x = Atom::leaf(Modality::Text, b"summarised");
    common::merge_atoms(&c, &[&x], true).await.unwrap();
    assert_eq!(summarised_atoms(&c).await, 0, "not refreshed yet");
    assert!(refresh_due(&c, "5 minutes").await, "the first call refreshes");
    assert_eq!(summarised_atoms(&c).await, 1);
    let y = Atom::leaf(Modality::Text, b"later");
    common::merge_atoms(&c, &[&y], true).await.unwrap();
    assert!(!refresh_due(&c, "5 minutes").await, "not due again within the interval");
    assert_eq!(summarised_atoms(&c).await, 1);
    assert!(refresh_due(&c, "0 seconds").await, "due once the interval has passed");
    assert_eq!(summarised_atoms(&c).await, 2);
}
