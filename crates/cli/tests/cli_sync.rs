//! `hart sync` end to end, driving the real binary: embedded → embedded, and the round trip
//! embedded → PostgreSQL → fresh embedded with roots, `ls` sets, `cat` bytes and atom counts
//! equal and `fsck` passing on every store; a second sync copies nothing; removed objects
//! are not copied; bad destinations fail with a clear message and exit code.
//!
//! PostgreSQL tests get a fresh database (migrated with `hart db migrate`) on the cluster at
//! `HART_TEST_DATABASE_URL`, dropped afterwards; without that variable they FAIL, saying how
//! to start a cluster.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const HOW_TO: &str = "run the tests with scripts/test.sh (it starts a throwaway PostgreSQL + PostGIS cluster), \
    or start one yourself: eval \"$(scripts/pg.sh start)\" && cargo test";

/// A store `hart` can be pointed at: a directory, or a database URL.
enum At {
    Dir(PathBuf),
    Pg(String),
}

/// An object as the tests compare it across stores: URI, root, size, modality.
type Row = (String, String, u64, String);

impl At {
    fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Run {
        self.run_with(args, Spawn::default())
    }

    fn run_with<S: AsRef<OsStr>>(&self, args: &[S], spawn: Spawn) -> Run {
        let mut c = Command::new(hart_bin());
        match self {
            At::Dir(d) => c.arg("--store").arg(d),
            At::Pg(url) => c.arg("--database-url").arg(url),
        };
        c.arg("--quiet").args(args).env_remove("HART_STORE").env_remove("HART_DATABASE_URL").stdin(Stdio::null());
        apply_spawn(&mut c, spawn);
        let out = c.output().unwrap_or_else(|e| panic!("cannot run {}: {e}", hart_bin().display()));
        let args: Vec<String> = args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect();
        let code = out.status.code().unwrap_or_else(|| panic!("hart {args:?} was killed: {:?}", out.status));
        Run { code, stdout: out.stdout, stderr: String::from_utf8_lossy(&out.stderr).into_owned(), args }
    }

    /// What `--to` takes to name this store.
    fn to(&self) -> String {
        match self {
            At::Dir(d) => d.to_string_lossy().into_owned(),
            At::Pg(url) => url.clone(),
        }
    }

    /// `hart --json sync --to DEST EXTRA…`, expecting exit 0; the report.
    fn sync_to(&self, dest: &At, extra: &[&str]) -> Value {
        let to = dest.to();
        let mut args = vec!["--json", "sync", "--to", &to];
        args.extend(extra);
        let r = self.run(&args);
        r.ok();
        r.json()
    }

    fn ingest(&self, paths: &[&Path]) {
        let mut args: Vec<&OsStr> = vec![OsStr::new("--json"), OsStr::new("ingest")];
        args.extend(paths.iter().map(|p| p.as_os_str()));
        self.run(&args).ok();
    }

    /// Completed objects.
    fn ls(&self) -> Vec<Obj> {
        let r = self.run(&["--json", "ls"]);
        r.ok();
        serde_json::from_value(r.json()).expect("ls --json")
    }

    fn rows(&self) -> BTreeSet<Row> {
        self.ls()
            .into_iter()
            .map(|o| (o.uri, o.root.expect("a completed object has a root"), o.size, o.modality))
            .collect()
    }

    fn cat(&self, root: &str) -> Vec<u8> {
        let r = self.run(&["cat", root]);
        r.ok();
        r.stdout
    }

    fn atoms(&self) -> u64 {
        let r = self.run(&["--json", "stats"]);
        r.ok();
        r.json()["atoms"].as_u64().expect("stats --json has atoms")
    }

    fn fsck_ok(&self, when: &str) {
        let r = self.run(&["--json", "fsck"]);
        assert!(
            r.code == exit::OK && r.json()["ok"] == Value::Bool(true),
            "fsck {when}: exit {}\nstdout:\n{}\nstderr:\n{}",
            r.code,
            r.stdout_str(),
            r.stderr
        );
    }
}

/// A database of its own on the test cluster, dropped at the end (also on panic).
struct TestDb {
    admin: String,
    name: String,
    url: String,
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime").block_on(f)
}

/// Run statements one by one (CREATE DATABASE cannot share a transaction) as the cluster's
/// superuser; the error says what the server said.
async fn admin_sql(admin: &str, statements: &[String]) -> Result<(), String> {
    let (client, conn) =
        tokio_postgres::connect(admin, tokio_postgres::NoTls).await.map_err(|e| hart_pg::error::describe(&e))?;
    let task = tokio::spawn(conn);
    let mut r = Ok(());
    for sql in statements {
        if let Err(e) = client.batch_execute(sql).await {
            r = Err(format!("{sql}: {}", hart_pg::error::describe(&e)));
            break;
        }
    }
    drop(client);
    let _ = task.await;
    r
}

impl TestDb {
    /// A fresh empty database; `migrate` also applies the schema with `hart db migrate`.
    fn new(test: &str, migrate: bool) -> TestDb {
        let admin = std::env::var("HART_TEST_DATABASE_URL").unwrap_or_else(|_| {
            panic!("HART_TEST_DATABASE_URL is not set: this test needs PostgreSQL with PostGIS; {HOW_TO}")
        });
        let name = format!("hart_sync_{}_{test}", std::process::id());
        let (base, _) = admin.rsplit_once('/').unwrap_or_else(|| panic!("HART_TEST_DATABASE_URL={admin:?} has no /db"));
        if base.contains('?') || !admin.starts_with("postgres") {
            panic!("HART_TEST_DATABASE_URL={admin:?}: these tests need a postgres://user:pass@host:port/db URL");
        }
        let db = TestDb { url: format!("{base}/{name}"), admin, name };
        let sql = [
            format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", db.name),
            format!("CREATE DATABASE \"{}\"", db.name),
        ];
        block_on(admin_sql(&db.admin, &sql))
            .unwrap_or_else(|e| panic!("cannot create database {}: {e}; {HOW_TO}", db.name));
        if migrate {
            At::Pg(db.url.clone()).run(&["db", "migrate"]).ok();
        }
        db
    }

    fn at(&self) -> At {
        At::Pg(self.url.clone())
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::env::var("HART_TEST_KEEP_DB").as_deref() == Ok("1") {
            return eprintln!("keeping test database {}", self.name);
        }
        if let Err(e) =
            block_on(admin_sql(&self.admin, &[format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name)]))
        {
            eprintln!("warning: could not drop test database {}: {e}", self.name);
        }
    }
}

/// The test's store, holding inputs with every shape `sync` must carry: text and binary,
/// repeats across files, an empty file, and (with `big`) a file large enough for the
/// pipeline's threaded node stage.
fn source_with_corpus(t: &Store, big: bool) -> At {
    let dir = t.scratch("in");
    let mut v = vec![
        licenses_dir(),
        write(&dir.join("text.txt"), rand_text(7, 300_000).as_bytes()),
        write(&dir.join("random.bin"), &rand_bytes(8, 700_001)),
        write(&dir.join("empty"), b""),
        write(&dir.join("copy-of-gpl3"), &std::fs::read(license("GPL-3")).expect("read GPL-3")),
    ];
    if big {
        v.push(write(&dir.join("big.bin"), &rand_bytes(9, 9 << 20)));
    }
    let a = At::Dir(t.dir.clone());
    a.ingest(&v.iter().map(|p| p.as_path()).collect::<Vec<_>>());
    a
}

/// `b` holds exactly `a`'s live objects (same URIs, roots, sizes, modalities), and each `cat`s
/// to the same bytes in both — the bytes of the file it was ingested from.
fn assert_same(a: &At, b: &At, when: &str) {
    let (ra, rb) = (a.rows(), b.rows());
    assert_eq!(ra, rb, "{when}: ls differs");
    assert!(!ra.is_empty(), "{when}: nothing to compare");
    for (uri, root, size, _) in &ra {
        let want = std::fs::read(uri_path(uri)).unwrap_or_else(|e| panic!("{when}: read {uri}: {e}"));
        assert_eq!(want.len() as u64, *size, "{when}: size of {uri}");
        assert_bytes_eq(&a.cat(root), &want, &format!("{when}: cat {uri} from the source"));
        assert_bytes_eq(&b.cat(root), &want, &format!("{when}: cat {uri} from the destination"));
    }
}

/// The report says every listed object of `src` was copied (verified) with its root.
fn assert_copied_all(report: &Value, src: &At, when: &str) {
    let rows = src.rows();
    let t = &report["totals"];
    assert_eq!(t["copied"], rows.len(), "{when}: copied\n{report:#}");
    assert_eq!(t["skipped"], 0, "{when}: skipped\n{report:#}");
    assert_eq!(t["failed"], 0, "{when}: failed\n{report:#}");
    assert_eq!(t["verified"], rows.len(), "{when}: verified\n{report:#}");
    assert_eq!(t["bytes"], rows.iter().map(|r| r.2).sum::<u64>(), "{when}: bytes\n{report:#}");
    let reported: BTreeSet<(String, String)> = report["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .map(|o| {
            assert_eq!(o["action"], "copied", "{when}: {o}");
            (o["uri"].as_str().expect("uri").to_string(), o["root"].as_str().expect("root").to_string())
        })
        .collect();
    let want: BTreeSet<(String, String)> = rows.into_iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(reported, want, "{when}: objects in the report");
}

/// A second sync finds everything present: nothing copied, nothing new in the destination.
fn assert_nothing_to_copy(src: &At, dest: &At, when: &str) {
    let atoms = dest.atoms();
    let objects = dest.ls().len();
    let r = src.sync_to(dest, &[]);
    let t = &r["totals"];
    assert_eq!(t["copied"], 0, "{when}: a second sync copied\n{r:#}");
    assert_eq!(t["skipped"], src.rows().len(), "{when}: skipped\n{r:#}");
    assert_eq!(t["atoms_created"], 0, "{when}\n{r:#}");
    assert_eq!(dest.atoms(), atoms, "{when}: atoms changed");
    assert_eq!(dest.ls().len(), objects, "{when}: objects changed");
}

#[test]
fn sync_embedded_to_embedded_copies_every_object_equal() {
    let t = Store::new();
    let (a, b) = (source_with_corpus(&t, true), At::Dir(t.tmp.path().join("copy")));

    let report = a.sync_to(&b, &[]);
    assert_copied_all(&report, &a, "embedded → embedded");
    assert_same(&a, &b, "embedded → embedded");
    assert_eq!(a.atoms(), b.atoms(), "atom counts");
    a.fsck_ok("source");
    b.fsck_ok("destination");
    assert_nothing_to_copy(&a, &b, "embedded → embedded, again");

    // Without read-back the copy is still checked by root and hash, and said unverified.
    let c = At::Dir(t.tmp.path().join("unverified"));
    let r = a.sync_to(&c, &["--no-verify"]);
    assert_eq!(r["totals"]["copied"], a.rows().len(), "{r:#}");
    assert_eq!(r["totals"]["verified"], 0, "{r:#}");
    assert_eq!(a.rows(), c.rows());
    c.fsck_ok("unverified copy");
}

/// hart sync round trip equal: embedded → PostgreSQL → a fresh embedded store.
#[test]
fn sync_round_trip_equal_embedded_postgres_embedded() {
    let t = Store::new();
    let db = TestDb::new("round_trip", true);
    let (a, pg, c) = (source_with_corpus(&t, false), db.at(), At::Dir(t.tmp.path().join("back")));

    let there = a.sync_to(&pg, &[]);
    assert_copied_all(&there, &a, "embedded → PostgreSQL");
    let back = pg.sync_to(&c, &[]);
    assert_copied_all(&back, &pg, "PostgreSQL → embedded");

    assert_same(&a, &pg, "embedded vs PostgreSQL");
    assert_same(&pg, &c, "PostgreSQL vs round trip");
    assert_eq!(a.rows(), c.rows(), "round trip ls");
    assert_eq!(a.atoms(), pg.atoms(), "atoms: embedded vs PostgreSQL");
    assert_eq!(a.atoms(), c.atoms(), "atoms: round trip");
    for (s, when) in [(&a, "source"), (&pg, "PostgreSQL"), (&c, "round trip")] {
        s.fsck_ok(when);
    }
    assert_nothing_to_copy(&a, &pg, "embedded → PostgreSQL, again");
    assert_nothing_to_copy(&pg, &c, "PostgreSQL → embedded, again");
}

#[test]
fn sync_skips_removed_objects_and_copies_only_what_is_new() {
    let t = Store::new();
    let dir = t.scratch("in");
    let (a, b) = (At::Dir(t.dir.clone()), At::Dir(t.tmp.path().join("copy")));
    let keep = write(&dir.join("keep.txt"), rand_text(1, 20_000).as_bytes());
    let gone = write(&dir.join("gone.bin"), &rand_bytes(2, 50_000));
    let edited = write(&dir.join("edited.txt"), rand_text(3, 20_000).as_bytes());
    a.ingest(&[&keep, &gone, &edited]);
    let gone = a.ls().into_iter().find(|o| o.path() == canon(&gone)).expect("gone.bin ingested");
    a.run(&["rm", &format!("#{}", gone.id)]).ok();

    let r = a.sync_to(&b, &[]);
    assert_eq!(r["totals"]["copied"], 2, "{r:#}");
    assert!(b.ls().iter().all(|o| o.uri != gone.uri), "a removed object was copied: {:?}", b.ls());
    assert_eq!(a.rows(), b.rows());

    // A new file and a new version of an old one: only those two are copied.
    let new = write(&dir.join("new.txt"), rand_text(4, 10_000).as_bytes());
    write(&edited, rand_text(5, 20_000).as_bytes());
    a.ingest(&[&new, &edited]);
    let r = a.sync_to(&b, &[]);
    let t2 = &r["totals"];
    assert_eq!((t2["copied"].as_u64(), t2["skipped"].as_u64()), (Some(2), Some(2)), "{r:#}");
    assert_eq!(a.rows(), b.rows(), "both versions of edited.txt are live in both");
    b.fsck_ok("after an incremental sync");
}

/// The destination fills up half-way: the sync stops with the disk-full message, what it
/// copied before is intact and passes fsck, and the next sync copies the rest.
#[test]
fn sync_stops_cleanly_when_the_destination_fills_up() {
    let t = Store::new();
    let (a, b) = (source_with_corpus(&t, true), At::Dir(t.tmp.path().join("copy")));
    let all = a.rows();

    let to = b.to();
    let r = a.run_with(&["sync", "--to", &to], Spawn { fsize_limit: Some(4 << 20), ..Spawn::default() });
    r.expect_code(exit::ERROR);
    for says in ["sync stopped", "full"] {
        assert!(r.stderr.contains(says), "stderr lacks {says:?}:\n{}", r.stderr);
    }
    b.fsck_ok("after the destination filled up");
    let part = b.rows();
    assert!(!part.is_empty() && part.len() < all.len(), "expected a partial copy, got {part:?}");
    assert!(part.is_subset(&all), "the destination holds objects the source does not: {part:?}");
    for (uri, root, _, _) in &part {
        let want = std::fs::read(uri_path(uri)).expect("read input");
        assert_bytes_eq(&b.cat(root), &want, &format!("cat {uri} from the partial copy"));
    }

    let r = a.sync_to(&b, &[]);
    assert_eq!(r["totals"]["copied"], all.len() - part.len(), "{r:#}");
    assert_eq!(r["totals"]["skipped"], part.len(), "{r:#}");
    assert_same(&a, &b, "after the second sync");
    b.fsck_ok("after the second sync");
}

/// An object the source cannot read back (its root atom deleted behind the store's back) is
/// reported and not copied; the others are, and the exit code says some inputs failed.
#[test]
fn sync_reports_unreadable_source_objects_and_copies_the_rest() {
    let t = Store::new();
    let db = TestDb::new("unreadable", true);
    let (pg, c) = (db.at(), At::Dir(t.tmp.path().join("copy")));
    let dir = t.scratch("in");
    let damaged = write(&dir.join("damaged.bin"), &rand_bytes(21, 30_000));
    let fine = write(&dir.join("fine.txt"), rand_text(22, 30_000).as_bytes());
    pg.ingest(&[&damaged, &fine]);
    let root = pg.ls().into_iter().find(|o| o.path() == canon(&damaged)).and_then(|o| o.root).expect("damaged.bin");
    block_on(admin_sql(&db.url, &[format!("DELETE FROM atoms WHERE content_hash = '\\x{root}'")]))
        .unwrap_or_else(|e| panic!("deleting the root atom: {e}"));

    let r = pg.run(&["--json", "sync", "--to", &c.to()]);
    r.expect_code(exit::PARTIAL);
    let v = r.json();
    assert_eq!((v["totals"]["copied"].as_u64(), v["totals"]["failed"].as_u64()), (Some(1), Some(1)), "{v:#}");
    let failed = v["objects"].as_array().expect("objects").iter().find(|o| o["action"] == "failed").expect("failed");
    assert!(failed["uri"].as_str().is_some_and(|u| u.ends_with("damaged.bin")), "{failed}");
    assert!(failed["error"].as_str().is_some_and(|e| e.contains("cannot read it from the source")), "{failed}");
    let rows = c.rows();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows.iter().all(|r| r.0.ends_with("fine.txt")), "{rows:?}");
    c.fsck_ok("after a partial sync");
}

#[test]
fn sync_bad_destinations_fail_clearly() {
    let t = Store::new();
    let a = At::Dir(t.dir.clone());
    a.ingest(&[&license("GPL-3")]);
    let fail = |to: &str, code: i32, says: &[&str]| {
        let r = a.run(&["sync", "--to", to]);
        r.expect_code(code);
        for s in says {
            assert!(r.stderr.contains(s), "sync --to {to}: stderr lacks {s:?}:\n{}", r.stderr);
        }
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    };
    // Nothing listens on port 1.
    fail(
        "postgres://hart:hart@127.0.0.1:1/nowhere",
        exit::ERROR,
        &["cannot open the destination database", "127.0.0.1:1"],
    );
    fail("postgres://hart@127.0.0.1:notaport/db", exit::USAGE, &["--to"]);
    fail(&t.dir.to_string_lossy(), exit::USAGE, &["the source itself"]);
    let file = write(&t.scratch("in").join("a-file"), b"not a store");
    fail(&file.to_string_lossy(), exit::ERROR, &["cannot open the destination store", "a-file"]);

    // A database without the schema: the message says what to run.
    let db = TestDb::new("unmigrated", false);
    fail(&db.url, exit::ERROR, &["cannot open the destination database", "db migrate"]);

    // --json errors are JSON with the exit code.
    let r = a.run(&["--json", "sync", "--to", "postgres://hart:hart@127.0.0.1:1/nowhere"]);
    r.expect_code(exit::ERROR);
    assert_eq!(r.json()["exit_code"], exit::ERROR);

    // No source store: not found.
    let missing = At::Dir(t.tmp.path().join("no-such-store"));
    let r = missing.run(&["sync", "--to", &t.tmp.path().join("x").to_string_lossy()]);
    r.expect_code(exit::NOT_FOUND);
}
