//! Concurrent merges of overlapping trees by several roles: every atom stored once, reference
//! counts exact (equal to a recount), every object reconstructs, deadlocks retried.

mod common;

use common::{merge_atoms, stage_and_merge, Atom, TestDb};
use hart_core::Modality;
use hart_pg::retry::{RetryPolicy, Transient};
use std::collections::HashSet;

/// Texts that share most of their tokens, lines and subtrees.
fn corpus() -> Vec<Vec<u8>> {
    let base = std::fs::read("/usr/share/common-licenses/GPL-3").expect("GPL-3 (every Debian has it)");
    let mut out = vec![base.clone()];
    for (i, at) in [0.25f64, 0.5, 0.75].iter().enumerate() {
        let mut v = base.clone();
        let pos = (v.len() as f64 * at) as usize;
        v.splice(pos..pos, format!(" edit number {i} ").into_bytes());
        out.push(v);
    }
    out.push(base[..base.len() / 2].to_vec());
    out.push([&base[base.len() / 3..], &base[..base.len() / 3]].concat());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn concurrent_overlapping_merges_keep_counts_exact() {
    let db = TestDb::migrated("concurrency").await;
    let roles = [
        db.login_role("w1", &["hart_writer"]).await,
        db.login_role("w2", &["hart_writer"]).await,
        db.login_role("w3", &["hart_writer"]).await,
    ];
    let trees: Vec<(Vec<Atom>, Atom, Vec<u8>)> = corpus()
        .into_iter()
        .map(|data| {
            let (atoms, root) = common::build_tree(Modality::Text, &data);
            (atoms, root, data)
        })
        .collect();
    let distinct: HashSet<_> = trees.iter().flat_map(|t| t.0.iter().map(|a| a.hash)).collect();

    // Every role ingests every text, all at once, in batches of 500 (children before parents),
    // registering an object per text.
    let policy =
        RetryPolicy { max_retries: 10, initial_backoff: std::time::Duration::from_millis(5), ..RetryPolicy::default() };
    let mut tasks = Vec::new();
    for (r, role) in roles.iter().enumerate() {
        let c = db.client_as(role).await;
        let trees = trees.clone();
        let policy = policy.clone();
        tasks.push(tokio::spawn(async move {
            let mut order: Vec<usize> = (0..trees.len()).collect();
            order.rotate_left(r * 2);
            let mut retries = 0;
            for i in order {
                let (atoms, root, data) = &trees[i];
                for batch in atoms.chunks(500) {
                    let refs: Vec<&Atom> = batch.iter().collect();
                    policy
                        .run("merge", |attempt| {
                            retries += u32::from(attempt > 0);
                            let (c, refs) = (&c, &refs);
                            async move { merge_atoms(c, refs, false).await }
                        })
                        .await
                        .unwrap_or_else(|e| {
                            panic!("merge: {} ({:?})", hart_pg::error::describe(&e), e.transient_cause())
                        });
                }
                let log: i64 = c
                    .query_one(
                        "INSERT INTO ingestion_log (source_uri) VALUES ($1) RETURNING id",
                        &[&format!("mem:{i}")],
                    )
                    .await
                    .unwrap()
                    .get(0);
                let (x, y, z) = root.k();
                policy
                    .run("register", |_| {
                        let c = &c;
                        async move {
                            c.query_one(
                                "SELECT hart_register_object($1, $2, $3, $4, $5, $6)",
                                &[&log, &format!("text-{i}"), &x, &y, &z, &(data.len() as i64)],
                            )
                            .await
                        }
                    })
                    .await
                    .unwrap();
            }
            retries
        }));
    }
    let mut retries = 0;
    for t in tasks {
        retries += t.await.unwrap();
    }
    eprintln!("{retries} merge(s) retried after transient errors");

    let admin = db.client().await;
    let stored: i64 = admin.query_one("SELECT count(*) FROM atoms", &[]).await.unwrap().get(0);
    assert_eq!(stored as usize, distinct.len(), "every atom stored exactly once");
    assert_eq!(common::refcount_mismatches(&admin).await, 0, "reference counts equal the recount");
    let objects: i64 = admin.query_one("SELECT count(*) FROM objects", &[]).await.unwrap().get(0);
    assert_eq!(objects as usize, roles.len() * trees.len());

    // Each role holds every atom (it wrote them all) and can read back every text.
    for role in &roles {
        let c = db.client_as(role).await;
        for (_, root, data) in &trees {
            let (x, y, z) = root.k();
            let bytes: Vec<u8> =
                c.query_one("SELECT hart_reconstruct($1, $2, $3)", &[&x, &y, &z]).await.unwrap().get(0);
            assert!(&bytes == data, "{role} reads its text back");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_race_for_a_new_atom_waits_then_claims_it() {
    let db = TestDb::migrated("race").await;
    let w1 = db.login_role("w1", &["hart_writer"]).await;
    let w2 = db.login_role("w2", &["hart_writer"]).await;
    let (a, b) = (db.client_as(&w1).await, db.client_as(&w2).await);
    let x = Atom::leaf(Modality::Text, b"contested");
    let y = Atom::leaf(Modality::Text, b" prize");
    let parent = Atom::node(Modality::Text, &[&x, &y]);

    // A stores x and y but has not committed when B, who also has them, merges them with a
    // parent: B's insert waits for A's outcome on the contested keys.
    a.batch_execute("BEGIN").await.unwrap();
    assert_eq!(stage_and_merge(&a, &[&x, &y], false).await.unwrap(), (2, 0, 0));
    let (x2, y2, p2) = (x.clone(), y.clone(), parent.clone());
    let b_merge = tokio::spawn(async move {
        let r = merge_atoms(&b, &[&x2, &y2, &p2], false).await;
        (b, r)
    });
    // B waits for A's uncommitted atoms: seen in the server (B's backend waiting on a lock),
    // not assumed after a delay, which a slow machine could outrun.
    let admin = db.client().await;
    loop {
        assert!(!b_merge.is_finished(), "B finished without waiting for A's uncommitted atoms");
        let waiting: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND usename = $1 AND wait_event_type = 'Lock'",
                &[&w2],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(!b_merge.is_finished(), "B waits for A's uncommitted atoms");
    a.batch_execute("COMMIT").await.unwrap();
    let (b, r) = b_merge.await.unwrap();
    // A won x and y; B created the parent, holds x and y too (it had their bytes) and
    // referenced each exactly once.
    assert_eq!(r.unwrap(), (1, 2, 2));
    assert_eq!(common::refcount_mismatches(&db.client().await).await, 0);

    // A composite whose child the writer cannot read is refused (HT002), race or not.
    let w3 = db.login_role("w3", &["hart_writer"]).await;
    let c = db.client_as(&w3).await;
    let z = Atom::leaf(Modality::Text, b"mine");
    let other = Atom::node(Modality::Text, &[&y, &z]);
    let e = merge_atoms(&c, &[&z, &other], false).await.unwrap_err();
    assert_eq!(common::sqlstate(&e), "HT002", "w3 does not hold \" prize\": {e:?}");
    assert_eq!(merge_atoms(&c, &[&y, &z, &other], false).await.unwrap(), (2, 1, 1));
    assert_eq!(common::refcount_mismatches(&db.client().await).await, 0);
    drop(b);
}
