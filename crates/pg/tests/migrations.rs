//! The migration runner on a real PostgreSQL: from empty, step by step from every previous
//! version, idempotent re-runs, refusal of edited or unknown migrations, atomic failure and
//! concurrent runners.

mod common;

use common::TestDb;
use hart_pg::migrate::{self, MigrateError, Migration, MigrationState, MIGRATIONS};

async fn applied_versions(c: &tokio_postgres::Client) -> Vec<i32> {
    c.query("SELECT version FROM schema_migrations ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn from_empty_applies_every_migration_in_order() {
    let db = TestDb::fresh("from_empty").await;
    let mut c = db.client().await;
    let before = migrate::status(&c).await.unwrap();
    assert!(before.iter().all(|s| s.state == MigrationState::Pending));

    let report = hart_pg::migrate(&mut c).await.unwrap();
    let all: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(report.applied, all);
    assert_eq!(report.version, migrate::latest_version());
    assert_eq!(applied_versions(&c).await, all);

    let rows = c.query("SELECT version, name, checksum FROM schema_migrations ORDER BY version", &[]).await.unwrap();
    for (row, m) in rows.iter().zip(MIGRATIONS) {
        assert_eq!(row.get::<_, String>(1), m.name);
        assert_eq!(row.get::<_, String>(2), m.checksum());
    }
    let after = migrate::status(&c).await.unwrap();
    assert!(after.iter().all(|s| s.state == MigrationState::Applied && s.applied_at.is_some()));
}

#[tokio::test]
async fn each_migration_applies_on_top_of_the_previous_version() {
    let db = TestDb::fresh("step_by_step").await;
    let mut c = db.client().await;
    for m in MIGRATIONS {
        let report = migrate::migrate_to(&mut c, m.version).await.unwrap();
        assert_eq!(report.applied, vec![m.version], "step to {} ({})", m.version, m.name);
        assert_eq!(applied_versions(&c).await.last(), Some(&m.version));
    }
    // Objects are owned by hart_owner, never by the superuser that ran the migrations.
    let foreign: Vec<String> = c
        .query(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'i', 'I')
               AND pg_get_userbyid(c.relowner) <> 'hart_owner'
               AND c.relname NOT LIKE 'schema_migrations%' AND c.relname <> 'spatial_ref_sys'
               AND c.relname NOT LIKE 'pg_stat_statements%' AND c.relname NOT IN
                   ('geography_columns', 'geometry_columns', 'spatial_ref_sys_pkey')",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(foreign.is_empty(), "not owned by hart_owner: {foreign:?}");
}

#[tokio::test]
async fn rerunning_is_a_no_op() {
    let db = TestDb::migrated("rerun").await;
    let mut c = db.client().await;
    let again = hart_pg::migrate(&mut c).await.unwrap();
    assert!(again.applied.is_empty(), "{again:?}");
    assert_eq!(again.version, migrate::latest_version());
    assert_eq!(applied_versions(&c).await.len(), MIGRATIONS.len());
}

#[tokio::test]
async fn an_edited_migration_is_refused_and_nothing_runs() {
    let db = TestDb::fresh("checksum").await;
    let mut c = db.client().await;
    migrate::migrate_to(&mut c, 2).await.unwrap();
    c.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 2", &[]).await.unwrap();
    let err = hart_pg::migrate(&mut c).await.unwrap_err();
    match &err {
        MigrateError::ChecksumMismatch { version, applied, current, .. } => {
            assert_eq!(*version, 2);
            assert_eq!(applied, "edited");
            assert_eq!(current, &MIGRATIONS[1].checksum());
        }
        other => panic!("expected a checksum mismatch, got {other}"),
    }
    assert!(err.to_string().contains("forward-only"), "{err}");
    assert_eq!(applied_versions(&c).await, vec![1, 2], "nothing applied after the refusal");
    let status = migrate::status(&c).await.unwrap();
    assert_eq!(status[1].state, MigrationState::Modified);
}

#[tokio::test]
async fn a_database_newer_than_the_build_is_refused() {
    let db = TestDb::migrated("newer").await;
    let mut c = db.client().await;
    c.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, 'from_the_future', 'x')", &[])
        .await
        .unwrap();
    let err = hart_pg::migrate(&mut c).await.unwrap_err();
    assert!(matches!(&err, MigrateError::UnknownVersion { version: 9999, .. }), "{err}");
    assert!(migrate::status(&c).await.is_err());
}

#[tokio::test]
async fn a_failing_migration_leaves_the_previous_version_intact() {
    let db = TestDb::fresh("atomic").await;
    let mut c = db.client().await;
    let list = [
        Migration { version: 1, name: "good", sql: "-- good\nCREATE TABLE good (x int);" },
        Migration {
            version: 2,
            name: "bad",
            sql: "-- bad\nCREATE TABLE half_done (x int);\nSELECT no_such_function();",
        },
    ];
    let err = migrate::run(&mut c, &list, 2).await.unwrap_err();
    match &err {
        MigrateError::Failed { version, previous, detail, .. } => {
            assert_eq!((*version, *previous), (2, 1));
            assert!(detail.contains("no_such_function"), "{detail}");
            assert!(detail.contains("42883"), "SQLSTATE in the message: {detail}");
        }
        other => panic!("expected Failed, got {other}"),
    }
    assert_eq!(applied_versions(&c).await, vec![1]);
    let half: bool = c.query_one("SELECT to_regclass('half_done') IS NOT NULL", &[]).await.unwrap().get(0);
    assert!(!half, "the failed migration's statements were rolled back");
    assert!(matches!(migrate::run(&mut c, &list, 3).await, Err(MigrateError::NoSuchTarget(3))));
}

#[tokio::test]
async fn concurrent_runners_apply_each_migration_once() {
    let db = TestDb::fresh("concurrent").await;
    let mut a = db.client().await;
    let mut b = db.client().await;
    let (ra, rb) = tokio::join!(hart_pg::migrate(&mut a), hart_pg::migrate(&mut b));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let mut both: Vec<i32> = ra.applied.iter().chain(&rb.applied).copied().collect();
    both.sort();
    let all: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(both, all, "every migration applied exactly once between the two runners");
    assert_eq!(applied_versions(&a).await, all);
}
