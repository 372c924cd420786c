//! Test harness: a fresh database per test on the cluster at `HART_TEST_DATABASE_URL`, and
//! throwaway LOGIN roles, all dropped at the end (also when the test panics).
//!
//! Without `HART_TEST_DATABASE_URL`, or with a server that does not answer, a test FAILS
//! with a message saying how to start one; it never skips.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use hart_pg::ConnectionSettings;
use tokio_postgres::{Client, NoTls};

const HOW_TO: &str = "run the tests with scripts/test.sh (it starts a throwaway PostgreSQL + \
    PostGIS cluster), or start one yourself: eval \"$(scripts/pg.sh start)\" && cargo test";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The superuser connection settings of the test cluster, without a statement timeout.
///
/// The product's default `command_timeout` (30 s) guards production servers; in the tests it
/// only made slower machines fail by timing (`conformance::packs_are_built_read_and_checked`:
/// its check query was cancelled, SQLSTATE 57014). So every connection and store the tests
/// make from these settings, the verification queries included, runs without one
/// (`statement_timeout = 0`, sent explicitly so that no server default applies). A test of the
/// timeout itself sets its own (driver.rs).
pub fn cluster() -> ConnectionSettings {
    let url = std::env::var("HART_TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!("HART_TEST_DATABASE_URL is not set: these tests need PostgreSQL with PostGIS; {HOW_TO}")
    });
    let mut s: ConnectionSettings =
        url.parse().unwrap_or_else(|e| panic!("HART_TEST_DATABASE_URL={url:?} is not a valid connection string: {e}"));
    s.command_timeout = Some(std::time::Duration::ZERO);
    s
}

/// Connect, spawning the connection task; panics with the cause and what to do.
pub async fn connect(settings: &ConnectionSettings) -> Client {
    try_connect(settings)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {settings}: {}; {HOW_TO}", hart_pg::error::describe(&e)))
}

/// Connect (see [`connect`]). The tests' own queries run without JIT: an ad-hoc check over
/// all 256 partitions of `atoms` had PostgreSQL compile ~3,500 functions first (29 s of a
/// 54 s query in `conformance::packs_are_built_read_and_checked`).
pub async fn try_connect(settings: &ConnectionSettings) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = settings.to_pg_config().connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client.batch_execute("SET jit = off").await?;
    Ok(client)
}

/// A database of its own for one test, dropped with the roles it created when it goes out
/// of scope. `HART_TEST_KEEP_DB=1` keeps both for inspection.
pub struct TestDb {
    pub name: String,
    pub settings: ConnectionSettings,
    admin: ConnectionSettings,
    roles: Mutex<Vec<String>>,
}

impl TestDb {
    /// An empty database (PostGIS not even installed).
    pub async fn fresh(test: &str) -> TestDb {
        let db = TestDb::named(test);
        let c = connect(&db.admin).await;
        let name = &db.name;
        for sql in [format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"), format!("CREATE DATABASE \"{name}\"")] {
            c.batch_execute(&sql).await.unwrap_or_else(|e| panic!("{sql}: {}", hart_pg::error::describe(&e)));
        }
        db
    }

    /// A unique name for a test database (not created yet; dropped with the value).
    fn named(test: &str) -> TestDb {
        let admin = cluster();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tag: String = test
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
            .take(30)
            .collect();
        let name = format!("hart_t{}_{n}_{tag}", std::process::id());
        TestDb { settings: admin.with_database(&name), name, admin, roles: Mutex::new(Vec::new()) }
    }

    /// A fresh database with every migration applied: a copy of a template database that
    /// was migrated once (per set of migrations; tests/migrations.rs migrates from empty).
    pub async fn migrated(test: &str) -> TestDb {
        let template = template().await;
        let db = TestDb::named(test);
        let c = connect(&db.admin).await;
        let create = format!("CREATE DATABASE \"{}\" TEMPLATE \"{template}\"", db.name);
        for attempt in 0.. {
            match c.batch_execute(&create).await {
                Ok(()) => break,
                // The template's last connection may still be closing: on a loaded machine
                // that can take seconds, so wait up to 5 minutes (a connection held longer is
                // a real fault, not slowness).
                Err(e) if sqlstate(&e) == "55006" && attempt < 3000 => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await
                }
                Err(e) => panic!("{create}: {}", hart_pg::error::describe(&e)),
            }
        }
        db
    }

    /// A superuser connection to this database.
    pub async fn client(&self) -> Client {
        connect(&self.settings).await
    }

    /// Create a LOGIN role (unique to this test) granted `groups`; returns its name. The
    /// password is the name.
    pub async fn login_role(&self, short: &str, groups: &[&str]) -> String {
        let name = format!("{}_{short}", self.name.split('_').take(3).collect::<Vec<_>>().join("_"));
        let c = connect(&self.admin).await;
        c.batch_execute(&format!("DROP ROLE IF EXISTS \"{name}\"; CREATE ROLE \"{name}\" LOGIN PASSWORD '{name}'"))
            .await
            .unwrap_or_else(|e| panic!("CREATE ROLE {name}: {}", hart_pg::error::describe(&e)));
        for g in groups {
            c.batch_execute(&format!("GRANT {g} TO \"{name}\""))
                .await
                .unwrap_or_else(|e| panic!("GRANT {g} TO {name}: {}", hart_pg::error::describe(&e)));
        }
        self.roles.lock().unwrap().push(name.clone());
        name
    }

    /// A connection to this database as `role` (made by [`TestDb::login_role`]).
    pub async fn client_as(&self, role: &str) -> Client {
        connect(&self.settings.with_user(role, Some(role))).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::env::var("HART_TEST_KEEP_DB").as_deref() == Ok("1") {
            eprintln!("keeping test database {}", self.name);
            return;
        }
        let admin = self.admin.clone();
        let name = self.name.clone();
        let roles = std::mem::take(&mut *self.roles.lock().unwrap());
        // Drop may run inside the test's runtime: do the async work on a thread of its own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for dropping the test database");
            rt.block_on(async move {
                let c = try_connect(&admin).await?;
                c.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await?;
                for r in roles {
                    c.batch_execute(&format!("DROP ROLE IF EXISTS \"{r}\"")).await?;
                }
                Ok::<_, tokio_postgres::Error>(())
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("warning: could not drop test database {}: {e}", self.name);
        }
    }
}

/// The template database holding every migration: `hart_tpl_<hash of the migrations>`,
/// made once per cluster and set of migrations (under an advisory lock, so that concurrent
/// test binaries make it once); templates of other migration sets are dropped.
async fn template() -> String {
    let mut h = blake3::Hasher::new();
    for m in hart_pg::MIGRATIONS {
        h.update(&m.version.to_le_bytes());
        h.update(m.sql.as_bytes());
    }
    let name = format!("hart_tpl_{}", &h.finalize().to_hex()[..16]);
    let admin = cluster();
    let c = connect(&admin).await;
    c.batch_execute("SELECT pg_advisory_lock(4847252)").await.unwrap_or_else(|e| template_failed(&name, e));
    let ready: bool = c
        .query_one("SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1 AND datistemplate)", &[&name])
        .await
        .unwrap_or_else(|e| template_failed(&name, e))
        .get(0);
    if !ready {
        // One statement per call: DROP/CREATE DATABASE cannot run in a (multi-statement) transaction.
        for sql in [format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"), format!("CREATE DATABASE \"{name}\"")] {
            c.batch_execute(&sql).await.unwrap_or_else(|e| template_failed(&name, e));
        }
        {
            let mut t = connect(&admin.with_database(&name)).await;
            hart_pg::migrate(&mut t).await.unwrap_or_else(|e| panic!("migrating the template {name}: {e}"));
        }
        c.batch_execute(&format!("ALTER DATABASE \"{name}\" IS_TEMPLATE true"))
            .await
            .unwrap_or_else(|e| template_failed(&name, e));
        let stale = c
            .query(
                "SELECT datname::text FROM pg_database WHERE datname LIKE 'hart\\_tpl\\_%' AND datname <> $1",
                &[&name],
            )
            .await
            .unwrap_or_else(|e| template_failed(&name, e));
        for r in stale {
            let old: String = r.get(0);
            let _ = c.batch_execute(&format!("ALTER DATABASE \"{old}\" IS_TEMPLATE false")).await;
            let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS \"{old}\" WITH (FORCE)")).await;
        }
    }
    c.batch_execute("SELECT pg_advisory_unlock(4847252)").await.unwrap_or_else(|e| template_failed(&name, e));
    name
}

fn template_failed<T>(name: &str, e: tokio_postgres::Error) -> T {
    panic!("preparing the template database {name}: {}", hart_pg::error::describe(&e))
}

/// The SQLSTATE of a failed statement, for asserting on refusals.
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

/// An atom built by hart-core exactly as ingest builds it, ready to insert with SQL.
#[derive(Clone, Debug)]
pub struct Atom {
    pub modality: hart_core::Modality,
    pub hash: hart_core::Hash,
    pub pos: hart_core::Position,
    pub key: hart_core::HilbertKey,
    pub value: Option<Vec<u8>>,
    pub children: Vec<hart_core::Position>,
    /// A composite's pack (migration 0012), as the backend stages it; None for leaves.
    pub leaves: Option<Vec<u8>>,
}

impl Atom {
    pub fn leaf(modality: hart_core::Modality, value: &[u8]) -> Atom {
        let (hash, pos) = hart_core::features::leaf_identity(modality, value);
        Atom {
            modality,
            hash,
            pos,
            key: hart_core::HilbertKey::new(modality, &pos),
            value: Some(value.to_vec()),
            children: Vec::new(),
            leaves: None,
        }
    }

    /// A composite over `children` (two or more, repeats allowed), as the tree builder makes it,
    /// with a pack when they are all leaves.
    pub fn node(modality: hart_core::Modality, children: &[&Atom]) -> Atom {
        let kids: Vec<hart_core::Child> =
            children.iter().map(|a| hart_core::Child { hash: a.hash, pos: a.pos }).collect();
        let made = hart_core::tree::make_node(modality, &kids, &mut |_| {});
        Atom {
            modality,
            hash: made.hash,
            pos: made.pos,
            key: hart_core::HilbertKey::new(modality, &made.pos),
            value: None,
            children: children.iter().map(|a| a.pos).collect(),
            leaves: children.iter().try_fold(Vec::new(), |mut pack, a| {
                let v = a.value.as_ref()?;
                pack.push(v.len() as u8);
                pack.extend_from_slice(v);
                Some(pack)
            }),
        }
    }

    pub fn ewkb(&self) -> Vec<u8> {
        hart_core::geom::ewkb(&self.pos, &self.children)
    }

    pub fn wkt(&self) -> String {
        hart_core::geom::wkt(&self.pos, &self.children)
    }

    /// The key as SQL parameters.
    pub fn k(&self) -> (i64, i64, i64) {
        (self.key.h_xy as i64, self.key.h_yz as i64, self.key.h_zm as i64)
    }
}

/// Insert atoms with plain SQL (only the columns a writer may set), `is_public` for all.
pub async fn insert_atoms(c: &Client, atoms: &[&Atom], is_public: bool) -> Result<u64, tokio_postgres::Error> {
    let xy: Vec<i64> = atoms.iter().map(|a| a.k().0).collect();
    let yz: Vec<i64> = atoms.iter().map(|a| a.k().1).collect();
    let zm: Vec<i64> = atoms.iter().map(|a| a.k().2).collect();
    let geom: Vec<Vec<u8>> = atoms.iter().map(|a| a.ewkb()).collect();
    let value: Vec<Option<Vec<u8>>> = atoms.iter().map(|a| a.value.clone()).collect();
    let modality: Vec<i16> = atoms.iter().map(|a| i16::from(a.modality.as_u8())).collect();
    let hash: Vec<Vec<u8>> = atoms.iter().map(|a| a.hash.0.to_vec()).collect();
    c.execute(
        "INSERT INTO atoms (h_xy, h_yz, h_zm, geom, value, modality, content_hash, is_public)
         SELECT x, y, z, ST_GeomFromEWKB(g), v, m, h, $8
         FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bytea[], $5::bytea[],
                     $6::smallint[], $7::bytea[]) AS u(x, y, z, g, v, m, h)",
        &[&xy, &yz, &zm, &geom, &value, &modality, &hash, &is_public],
    )
    .await
}

/// Every atom of a byte string: decoded leaves under one content-defined tree (no line
/// groups), deduplicated, children before parents; and the root.
pub fn build_tree(modality: hart_core::Modality, data: &[u8]) -> (Vec<Atom>, Atom) {
    use std::collections::{HashMap, HashSet};
    let decoded = hart_decode::decode_all(modality, data);
    let mut leaves: HashMap<hart_core::Hash, Atom> = HashMap::new();
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    let mut tree = hart_core::TreeBuilder::new(modality);
    let mut nodes: Vec<Atom> = Vec::new();
    for v in &decoded.leaves {
        let a = Atom::leaf(modality, v);
        if seen.insert(a.hash) {
            order.push(a.hash);
            leaves.insert(a.hash, a.clone());
        }
        tree.push(hart_core::Child { hash: a.hash, pos: a.pos }, &mut |n| {
            nodes.push(Atom {
                modality,
                hash: n.hash,
                pos: n.pos,
                key: hart_core::HilbertKey::new(modality, &n.pos),
                value: None,
                children: n.children.iter().map(|c| c.pos).collect(),
                leaves: None,
            })
        });
    }
    let root_child = tree
        .finish(&mut |n| {
            nodes.push(Atom {
                modality,
                hash: n.hash,
                pos: n.pos,
                key: hart_core::HilbertKey::new(modality, &n.pos),
                value: None,
                children: n.children.iter().map(|c| c.pos).collect(),
                leaves: None,
            })
        })
        .expect("a non-empty input has a root");
    let mut all: Vec<Atom> = order.iter().map(|h| leaves[h].clone()).collect();
    for n in nodes {
        if seen.insert(n.hash) {
            all.push(n);
        }
    }
    let root = all.iter().find(|a| a.hash == root_child.hash).expect("the root is among the atoms").clone();
    (all, root)
}

/// Stage atoms and merge them with `hart_merge_stage()` in one transaction, as the backend
/// does. Returns (created, existing, claimed). On error the transaction is rolled back.
pub async fn merge_atoms(
    c: &Client,
    atoms: &[&Atom],
    is_public: bool,
) -> Result<(i64, i64, i64), tokio_postgres::Error> {
    c.batch_execute("BEGIN").await?;
    let result = async {
        let out = stage_and_merge(c, atoms, is_public).await?;
        c.batch_execute("COMMIT").await?;
        Ok(out)
    }
    .await;
    if result.is_err() {
        // The connection may be gone (that is one of the errors being reported).
        let _ = c.batch_execute("ROLLBACK").await;
    }
    result
}

/// Stage and merge inside the caller's open transaction.
pub async fn stage_and_merge(
    c: &Client,
    atoms: &[&Atom],
    is_public: bool,
) -> Result<(i64, i64, i64), tokio_postgres::Error> {
    c.execute("SELECT hart_stage()", &[]).await?;
    let xy: Vec<i64> = atoms.iter().map(|a| a.k().0).collect();
    let yz: Vec<i64> = atoms.iter().map(|a| a.k().1).collect();
    let zm: Vec<i64> = atoms.iter().map(|a| a.k().2).collect();
    let geom: Vec<Vec<u8>> = atoms.iter().map(|a| a.ewkb()).collect();
    let value: Vec<Option<Vec<u8>>> = atoms.iter().map(|a| a.value.clone()).collect();
    let modality: Vec<i16> = atoms.iter().map(|a| i16::from(a.modality.as_u8())).collect();
    let hash: Vec<Vec<u8>> = atoms.iter().map(|a| a.hash.0.to_vec()).collect();
    let packs: Vec<Option<Vec<u8>>> = atoms.iter().map(|a| a.leaves.clone()).collect();
    c.execute(
        "INSERT INTO hart_stage (h_xy, h_yz, h_zm, geom, value, modality, content_hash, is_public, leaves)
         SELECT x, y, z, ST_GeomFromEWKB(g), v, m, h, $8, l
         FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bytea[], $5::bytea[],
                     $6::smallint[], $7::bytea[], $9::bytea[]) AS u(x, y, z, g, v, m, h, l)",
        &[&xy, &yz, &zm, &geom, &value, &modality, &hash, &is_public, &packs],
    )
    .await?;
    let r = c.query_one("SELECT * FROM hart_merge_stage()", &[]).await?;
    Ok((r.get(0), r.get(1), r.get(2)))
}

/// The content hashes (hex) among `atoms` that the connection's role can read.
pub async fn visible(c: &Client, atoms: &[&Atom]) -> Vec<String> {
    let xy: Vec<i64> = atoms.iter().map(|a| a.k().0).collect();
    let yz: Vec<i64> = atoms.iter().map(|a| a.k().1).collect();
    let zm: Vec<i64> = atoms.iter().map(|a| a.k().2).collect();
    c.query(
        "SELECT encode(a.content_hash, 'hex') FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS u(x, y, z)
         JOIN atoms a ON a.h_xy = u.x AND a.h_yz = u.y AND a.h_zm = u.z ORDER BY 1",
        &[&xy, &yz, &zm],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Hex hashes of `atoms`, sorted, to compare with [`visible`].
pub fn hexes(atoms: &[&Atom]) -> Vec<String> {
    let mut v: Vec<String> = atoms.iter().map(|a| a.hash.to_hex()).collect();
    v.sort();
    v
}

/// Atoms whose stored `ref_count` differs from a recount from scratch: the number of distinct
/// stored composites having the atom among their vertices, plus the live objects rooted at it.
/// Needs a role that sees every atom (the superuser).
pub async fn refcount_mismatches(c: &Client) -> i64 {
    c.query_one("SELECT count(*) FROM hart_refcount_mismatches(NULL)", &[]).await.unwrap().get(0)
}
