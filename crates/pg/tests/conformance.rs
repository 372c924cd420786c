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
