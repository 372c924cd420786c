//! Connection settings, pool upkeep and error classification against a real server: the
//! errors the retry policy calls transient are the ones PostgreSQL really raises.

mod common;

use std::time::Duration;

use common::{connect, TestDb};
use hart_pg::retry::{RetryPolicy, Transient, TransientCause};

#[tokio::test]
async fn settings_reach_the_server() {
    let db = TestDb::fresh("settings").await;
    let mut s = db.settings.clone();
    s.application_name = "hart-settings-test".into();
    s.command_timeout = Some(Duration::from_millis(150));
    let c = connect(&s).await;
    let row = c
        .query_one(
            "SELECT current_database(), current_user::text, current_setting('application_name'),
                    current_setting('statement_timeout')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), db.name);
    assert_eq!(row.get::<_, String>(1), s.user);
    assert_eq!(row.get::<_, String>(2), "hart-settings-test");
    assert_eq!(row.get::<_, String>(3), "150ms");
    // The command timeout cancels a long statement, and that is not worth retrying.
    let e = c.query_one("SELECT pg_sleep(2)", &[]).await.unwrap_err();
    assert_eq!(common::sqlstate(&e), "57014");
    assert_eq!(e.transient_cause(), None);
}

/// The tests' own connections and stores run without a statement timeout (issue 12: a check
/// query hit the 30 s default on a slower machine, SQLSTATE 57014), whatever the server's
/// default.
#[tokio::test]
async fn test_connections_have_no_statement_timeout() {
    let db = TestDb::fresh("no_timeout").await;
    let c = db.client().await;
    let t: String = c.query_one("SELECT current_setting('statement_timeout')", &[]).await.unwrap().get(0);
    assert_eq!(t, "0");
    assert_eq!(db.settings.command_timeout, Some(Duration::ZERO));
}

#[tokio::test]
async fn pool_warms_up_to_min_and_reaps_idle_connections() {
    let db = TestDb::fresh("pool").await;
    let mut s = db.settings.clone();
    s.pool.min = 3;
    s.pool.max = 5;
    let pool = s.pool().unwrap();
    assert_eq!(pool.status().size, 0, "lazy until warmed up");
    hart_pg::pool::warm_up(&pool, s.pool.min).await.unwrap();
    assert_eq!(pool.status().size, 3);
    assert_eq!(pool.status().available, 3);
    // Connections used just now are kept; idle ones beyond `min` go.
    assert_eq!(hart_pg::pool::reap_idle(&pool, Duration::from_secs(60), 1), 0);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(hart_pg::pool::reap_idle(&pool, Duration::from_millis(10), 1), 2);
    assert_eq!(pool.status().size, 1);
    let held = pool.get().await.unwrap();
    let one: i32 = held.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test]
async fn real_serialization_failures_and_deadlocks_are_transient() {
    let db = TestDb::fresh("transient").await;
    let setup = db.client().await;
    setup
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 0), (2, 0)")
        .await
        .unwrap();

    // Serialization failure: two SERIALIZABLE transactions read each other's writes.
    let (a, b) = (db.client().await, db.client().await);
    a.batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT sum(v) FROM t; UPDATE t SET v = v + 1 WHERE id = 1")
        .await
        .unwrap();
    b.batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT sum(v) FROM t; UPDATE t SET v = v + 1 WHERE id = 2")
        .await
        .unwrap();
    a.batch_execute("COMMIT").await.unwrap();
    let e = b.batch_execute("COMMIT").await.unwrap_err();
    assert_eq!(e.transient_cause(), Some(TransientCause::SerializationFailure), "{e:?}");

    // Deadlock: each holds the row the other wants.
    let (a, b) = (db.client().await, db.client().await);
    a.batch_execute("BEGIN; UPDATE t SET v = 10 WHERE id = 1").await.unwrap();
    b.batch_execute("BEGIN; UPDATE t SET v = 20 WHERE id = 2").await.unwrap();
    let (ra, rb) = tokio::join!(
        a.batch_execute("UPDATE t SET v = 11 WHERE id = 2"),
        b.batch_execute("UPDATE t SET v = 21 WHERE id = 1"),
    );
    let e = ra.err().or(rb.err()).expect("one side is chosen as the deadlock victim");
    assert_eq!(e.transient_cause(), Some(TransientCause::Deadlock), "{e:?}");
    a.batch_execute("ROLLBACK").await.unwrap();
    b.batch_execute("ROLLBACK").await.unwrap();

    // Administrator shutdown of the backend: transient (the pool reconnects).
    let victim = db.client().await;
    let pid: i32 = victim.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    setup.execute("SELECT pg_terminate_backend($1)", &[&pid]).await.unwrap();
    let e = victim.query_one("SELECT 1", &[]).await.unwrap_err();
    assert!(e.transient_cause().is_some(), "{e:?}");

    // A constraint violation is not.
    let e = setup.execute("INSERT INTO t VALUES (1, 0)", &[]).await.unwrap_err();
    assert_eq!(common::sqlstate(&e), "23505");
    assert_eq!(e.transient_cause(), None);
}

#[tokio::test]
async fn retry_policy_retries_a_real_serialization_failure_until_it_commits() {
    let db = TestDb::fresh("retry").await;
    let setup = db.client().await;
    setup.batch_execute("CREATE TABLE counter (n int); INSERT INTO counter VALUES (0)").await.unwrap();
    let c = db.client().await;
    let meddler = db.client().await;
    let policy = RetryPolicy { initial_backoff: Duration::from_millis(5), ..RetryPolicy::default() };
    let mut attempts = 0;
    let (c, meddler) = (&c, &meddler);
    policy
        .run("increment", |attempt| {
            attempts += 1;
            async move {
                c.batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE").await?;
                let result = async {
                    let n: i32 = c.query_one("SELECT n FROM counter", &[]).await?.get(0);
                    if attempt == 0 {
                        // Someone else commits a change in between: ours must fail.
                        meddler.execute("UPDATE counter SET n = n + 100", &[]).await?;
                    }
                    c.execute("UPDATE counter SET n = $1", &[&(n + 1)]).await?;
                    c.batch_execute("COMMIT").await
                }
                .await;
                if result.is_err() {
                    c.batch_execute("ROLLBACK").await?;
                }
                result
            }
        })
        .await
        .unwrap();
    assert_eq!(attempts, 2, "one serialization failure, one retry");
    let n: i32 = setup.query_one("SELECT n FROM counter", &[]).await.unwrap().get(0);
    assert_eq!(n, 101);
}
