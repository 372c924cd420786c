//! [`PgStore`]: the storage interface (`hart_store::Store`) over the PostgreSQL schema.
//!
//! The interface is synchronous; the store holds a tokio runtime and a connection pool and
//! blocks on each call. Writes go through the schema's SQL functions only (hart_stage,
//! hart_merge_stage, hart_register_object, hart_delete_object), so reference counts and
//! access rules are the database's, whoever writes.
//!
//! Concurrency with `gc`: every ingestion session holds a shared advisory lock on its own
//! connection from `begin` to `commit`/`abort`; `gc` takes the same lock exclusively. So gc
//! waits for ingestions in flight (whose atoms are unreferenced until their commit) and
//! ingestions wait for a gc in progress, in this process or any other.

use std::io::Write;

use deadpool_postgres::{Object, Pool};
use hart_core::atom::{leaf_hash, node_hash};
use hart_core::geom::{decode_ewkb, ewkb};
use hart_core::{AtomKind, Hash, HilbertKey, Modality, Position, LEAF_MAX, MAX_FANOUT};
use hart_store::{
    AtomRecord, Batch, BoundedMap, FsckReport, GcReport, ModalityStats, ObjectInfo, ObjectSummary, Session, SourceInfo,
    Stats, Status, Store, StoreError,
};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;

use crate::error::describe;
use crate::retry::{RetryPolicy, Transient, TransientCause};
use crate::ConnectionSettings;

/// The advisory lock key shared by ingestion sessions and taken exclusively by gc.
const GC_LOCK: i64 = 0x4841_5254_4743; // "HARTGC"

/// Rows buffered by a session before one merge: a merge has fixed costs (a transaction, a
/// statement per touched partition), so batches of a few hundred atoms (text lines) are
/// merged together.
const MERGE_ROWS: usize = 16_384;

/// Atoms resolved per query when walking a tree (cat, fsck).
const CAT_BATCH: usize = 32_768;
/// Files `ingest_files` stores at once on this backend ([`Store::parallel_sessions`]).
const PARALLEL_SESSIONS: usize = 2;

/// An error on the way to the database: the driver's, or the pool's.
#[derive(Debug)]
enum DbError {
    Pg(tokio_postgres::Error),
    Pool(deadpool_postgres::PoolError),
    Store(StoreError),
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        DbError::Pg(e)
    }
}
impl From<deadpool_postgres::PoolError> for DbError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        DbError::Pool(e)
    }
}
impl From<StoreError> for DbError {
    fn from(e: StoreError) -> Self {
        DbError::Store(e)
    }
}

impl Transient for DbError {
    fn transient_cause(&self) -> Option<TransientCause> {
        match self {
            DbError::Pg(e) => e.transient_cause(),
            DbError::Pool(e) => e.transient_cause(),
            DbError::Store(_) => None,
        }
    }
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbError::Pg(e) => f.write_str(&describe(e)),
            DbError::Pool(e) => write!(f, "connection pool: {e}"),
            DbError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl From<DbError> for StoreError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Store(e) => e,
            DbError::Pg(ref pg) => match pg.code().map(|c| c.code()) {
                Some("HT002") => StoreError::Invalid(e.to_string()),
                Some("22023") | Some("23514") => StoreError::Invalid(e.to_string()),
                _ => StoreError::Backend(format!("PostgreSQL: {e}")),
            },
            DbError::Pool(_) => StoreError::Backend(format!("PostgreSQL: {e}")),
        }
    }
}

type DbResult<T> = Result<T, DbError>;

/// The storage interface over a PostgreSQL database migrated to the latest schema.
pub struct PgStore {
    rt: tokio::runtime::Runtime,
    pool: Pool,
    retry: RetryPolicy,
    settings: ConnectionSettings,
    /// PostGIS' `geometry` type (its OID differs per database), for binary COPY.
    geometry: std::sync::OnceLock<Type>,
    /// The partitions of `atoms`, to route point lookups (migration 0010); shared with merges
    /// running on tasks of their own.
    partitions: std::sync::Arc<Partitions>,
}

/// The partitions of `atoms`: lower bounds of h_xy, ascending, and names.
#[derive(Debug, Clone, Default)]
pub struct Partitions {
    lo: Vec<i64>,
    /// Names, quoted once for SQL.
    quoted: Vec<String>,
}

impl Partitions {
    /// Read the plan with `hart_partition_bounds()`.
    pub async fn load(c: &tokio_postgres::Client) -> Result<Partitions, tokio_postgres::Error> {
        let r = c.query_one("SELECT lo, names FROM hart_partition_bounds()", &[]).await?;
        let names: Vec<String> = r.get(1);
        let quoted = names.iter().map(|n| format!("\"{}\"", n.replace('"', "\"\""))).collect();
        Ok(Partitions { lo: r.get(0), quoted })
    }

    /// The number of the partition holding keys with this h_xy (a binary search: cheap enough
    /// per key for walks over millions of atoms).
    #[inline]
    pub fn index_of(&self, h_xy: u64) -> Option<usize> {
        self.lo.partition_point(|&lo| lo <= h_xy as i64).checked_sub(1)
    }

    /// The name of partition `i`, quoted, ready for SQL.
    pub fn name(&self, i: usize) -> &str {
        &self.quoted[i]
    }

    /// The partition holding keys with this h_xy (quoted, ready for SQL).
    pub fn of(&self, h_xy: u64) -> Option<&str> {
        self.index_of(h_xy).map(|i| self.name(i))
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("database", &self.settings.to_string()).finish()
    }
}

fn backend(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("{what}: {e}"))
}

impl PgStore {
    /// Connect to a database that `hart db migrate` (or [`PgStore::migrate`]) has prepared.
    /// Fails, saying what to do, when the schema is missing or older than this build.
    pub fn connect(settings: &ConnectionSettings) -> Result<PgStore, StoreError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| backend("starting the database runtime", e))?;
        let pool = build_pool(settings)?;
        let store = PgStore {
            rt,
            pool,
            retry: RetryPolicy::default(),
            settings: settings.clone(),
            geometry: std::sync::OnceLock::new(),
            partitions: Default::default(),
        };
        let latest = crate::migrate::latest_version();
        let version: i32 = store.run("schema version", |c| async move {
            let r = c.query_opt("SELECT coalesce(max(version), 0) FROM schema_migrations", &[]).await;
            match r {
                Ok(row) => Ok(row.map_or(0, |r| r.get::<_, i32>(0))),
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(0),
                Err(e) => Err(e.into()),
            }
        })?;
        if version < latest {
            return Err(StoreError::Backend(format!(
                "the database {} has schema version {version}, this build needs {latest}: run `hart db migrate`",
                store.settings
            )));
        }
        let partitions = store.run("partition plan", |c| async move { Ok(Partitions::load(&c).await?) })?;
        Ok(PgStore { partitions: std::sync::Arc::new(partitions), ..store })
    }

    /// Apply every pending migration, then connect.
    pub fn migrate_and_connect(settings: &ConnectionSettings) -> Result<PgStore, StoreError> {
        PgStore::migrate(settings)?;
        PgStore::connect(settings)
    }

    /// Apply every pending migration to the database (`hart db migrate`).
    pub fn migrate(settings: &ConnectionSettings) -> Result<crate::MigrationReport, StoreError> {
        with_client(settings, |mut c| async move {
            crate::migrate::migrate(&mut c).await.map_err(|e| backend("migrating", e))
        })
    }

    /// Every known migration and whether the database has it (`hart db status`).
    pub fn migration_status(settings: &ConnectionSettings) -> Result<Vec<crate::migrate::MigrationStatus>, StoreError> {
        with_client(settings, |c| async move {
            crate::migrate::status(&c).await.map_err(|e| backend("reading the schema version", e))
        })
    }

    /// PostGIS' `geometry` type of this database.
    async fn geometry_type(&self, conn: &Object) -> DbResult<Type> {
        if let Some(t) = self.geometry.get() {
            return Ok(t.clone());
        }
        let row = conn
            .query_one(
                "SELECT t.oid, n.nspname::text FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                 WHERE t.oid = 'geometry'::regtype",
                &[],
            )
            .await?;
        let t = Type::new("geometry".into(), row.get(0), tokio_postgres::types::Kind::Simple, row.get(1));
        Ok(self.geometry.get_or_init(|| t).clone())
    }

    /// Run `op` on a pooled connection, retrying transient failures.
    fn run<T, F, Fut>(&self, what: &str, op: F) -> Result<T, StoreError>
    where
        F: Fn(Object) -> Fut,
        Fut: std::future::Future<Output = DbResult<T>>,
    {
        let pool = &self.pool;
        self.rt
            .block_on(self.retry.run(what, |_| async {
                let c = pool.get().await?;
                op(c).await
            }))
            .map_err(StoreError::from)
    }
}

/// Run `f` on one connection of its own, on a runtime of its own.
fn with_client<T, F, Fut>(settings: &ConnectionSettings, f: F) -> Result<T, StoreError>
where
    F: FnOnce(tokio_postgres::Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| backend("starting the database runtime", e))?;
    rt.block_on(async {
        let (client, conn) = settings
            .to_pg_config()
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| backend(&format!("connecting to {settings}"), describe(&e)))?;
        let task = tokio::spawn(conn);
        let r = f(client).await;
        let _ = task.await;
        r
    })
}

fn build_pool(settings: &ConnectionSettings) -> Result<Pool, StoreError> {
    if settings.ssl_mode.requires_tls() {
        return Err(StoreError::Backend(format!(
            "sslmode={} needs TLS, which this build does not include yet; use sslmode=disable or prefer on a trusted network",
            settings.ssl_mode.as_str()
        )));
    }
    let mut cfg = settings.to_pg_config();
    // JIT makes the merge and reconstruction plans over 256 partitions several times slower.
    // Generic plans from the first execution: a custom plan of a statement on `atoms` (a
    // lookup by content hash, which no partition plan can route) costs 12-47 ms to make over
    // 256 partitions, the generic one 0.5 ms to run; the backend's other statements run on
    // single partitions or are parameterless, where the two plans are the same.
    // No Memoize nodes: the keys of one query are distinct, so a cache of inner rows only costs.
    const OPTIONS: &str = "-c jit=off -c plan_cache_mode=force_generic_plan -c enable_memoize=off";
    let options = match cfg.get_options() {
        Some(o) => format!("{o} {OPTIONS}"),
        None => OPTIONS.to_string(),
    };
    cfg.options(options);
    let mgr = deadpool_postgres::Manager::from_config(
        cfg,
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig { recycling_method: deadpool_postgres::RecyclingMethod::Fast },
    );
    let mut timeouts = deadpool_postgres::Timeouts::new();
    timeouts.wait = Some(settings.pool.acquire_timeout);
    timeouts.create = Some(settings.connect_timeout);
    timeouts.recycle = Some(settings.connect_timeout);
    Pool::builder(mgr)
        .max_size(settings.pool.max.max(2))
        .timeouts(timeouts)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| backend("building the connection pool", e))
}

fn hash_of(bytes: &[u8]) -> Result<Hash, StoreError> {
    let a: [u8; 32] =
        bytes.try_into().map_err(|_| StoreError::Backend(format!("content hash of {} bytes", bytes.len())))?;
    Ok(Hash(a))
}

fn modality_of(m: i16) -> Result<Modality, StoreError> {
    u8::try_from(m)
        .ok()
        .and_then(|b| Modality::from_u8(b).ok())
        .ok_or_else(|| StoreError::Backend(format!("unknown modality {m} in the database")))
}

fn geom_of(bytes: &[u8]) -> Result<(Position, Vec<Position>), StoreError> {
    decode_ewkb(bytes).map_err(|e| StoreError::Backend(format!("atom geometry: {e}")))
}

const ATOM_FIELDS: &str = "a.modality, a.value, ST_AsEWKB(a.geom), a.content_hash, a.ref_count";
const ATOM_COLS: &str = "a.modality, a.value, ST_AsEWKB(a.geom), a.content_hash, a.ref_count FROM atoms a";

async fn record(c: &Object, parts: &Partitions, row: &Row) -> DbResult<AtomRecord> {
    let modality = modality_of(row.get(0))?;
    let value: Option<Vec<u8>> = row.get(1);
    let g: Vec<u8> = row.get(2);
    let (pos, kid_pos) = geom_of(&g)?;
    let hash = hash_of(row.get(3))?;
    let ref_count: i64 = row.get(4);
    let mut children = Vec::with_capacity(kid_pos.len());
    if !kid_pos.is_empty() {
        let keys: Vec<HilbertKey> = kid_pos.iter().map(|p| HilbertKey::new(modality, p)).collect();
        let found = rows_at(&[c], parts, &keys, "a.content_hash").await?;
        for (i, key) in keys.iter().enumerate() {
            let r = found.row(i).ok_or_else(|| {
                StoreError::Backend(format!("atom {hash}: child {i} at key {key} is missing; run fsck"))
            })?;
            children.push(hash_of(r.get(FOUND_COLS))?);
        }
    }
    Ok(AtomRecord {
        hash,
        modality,
        kind: if value.is_some() { AtomKind::Leaf } else { AtomKind::Node },
        value,
        children,
        position: pos,
        key: HilbertKey::new(modality, &pos),
        ref_count: ref_count.max(0) as u64,
    })
}

/// One entry of a tree walk: bytes ready to write, or an atom still to fetch.
enum Item {
    Bytes(Vec<u8>),
    Pending(HilbertKey),
}

/// Rows found by [`rows_at`], each once, and which of them holds each key asked for.
struct Found {
    rows: Vec<Row>,
    at: Vec<Option<u32>>,
}

impl Found {
    /// The row of the atom at `keys[i]`; the caller's columns start at [`FOUND_COLS`].
    fn row(&self, i: usize) -> Option<&Row> {
        self.at[i].map(|j| &self.rows[j as usize])
    }
}

/// Index of the first of the caller's columns in a [`Found`] row (after the three key parts).
const FOUND_COLS: usize = 3;

/// The rows of the atoms at `keys` (columns `cols` of partition alias `a`); None where no atom
/// the caller can see is. One query per partition, all in flight at once on the connection,
/// each prepared once per connection and run on the partition itself (decision 0011): the read
/// policy of `atoms` holds there too.
///
/// Each query asks for the partition's keys by `h_xy = ANY($1)`: one index scan walking the
/// sorted values, half the server time of joining an `unnest` of the three key parts to the
/// primary key (1.0–1.1 against 2.2–2.5 µs per key, `EXPLAIN ANALYZE` of 20 K keys). Atoms
/// sharing an `h_xy` with a key but not its other parts come back too and are ignored here.
///
/// With several connections (sharing one snapshot), the partitions' queries are spread over
/// them, largest first, so that the server works on both cores.
async fn rows_at(conns: &[&Object], parts: &Partitions, keys: &[HilbertKey], cols: &str) -> DbResult<Found> {
    // Where each key is asked for: its first index in `keys`, then a chain through the
    // repeats (a composite may name one child several times).
    let mut first: rustc_hash::FxHashMap<HilbertKey, u32> = Default::default();
    first.reserve(keys.len());
    let mut next = vec![u32::MAX; keys.len()];
    let mut groups: rustc_hash::FxHashMap<usize, Vec<i64>> = Default::default();
    for (i, k) in keys.iter().enumerate() {
        match first.entry(*k) {
            std::collections::hash_map::Entry::Occupied(e) => {
                // Link the repeat in after the first occurrence.
                let f = *e.get() as usize;
                next[i] = next[f];
                next[f] = i as u32;
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(i as u32);
                let Some(part) = parts.index_of(k.h_xy) else { continue };
                groups.entry(part).or_default().push(k.h_xy as i64);
            }
        }
    }
    // Largest groups first, each to the connection with the fewest keys so far.
    let mut order: Vec<_> = groups.into_iter().collect();
    order.sort_by_key(|(part, g)| (std::cmp::Reverse(g.len()), *part));
    let mut load = vec![0usize; conns.len().max(1)];
    let mut assigned = Vec::with_capacity(order.len());
    for (part, mut xs) in order {
        let j = (0..load.len()).min_by_key(|&j| load[j]).unwrap_or(0);
        load[j] += xs.len();
        xs.sort_unstable();
        xs.dedup();
        assigned.push((conns[j], parts.name(part), xs));
    }
    let queries = assigned.into_iter().map(|(c, part, xs)| async move {
        let stmt = c
            .prepare_cached(&format!(
                "SELECT a.h_xy, a.h_yz, a.h_zm, {cols} FROM {part} a WHERE a.h_xy = ANY($1::bigint[])"
            ))
            .await?;
        c.query(&stmt, &[&xs]).await
    });
    let mut found = Found { rows: Vec::new(), at: vec![None; keys.len()] };
    for rows in futures_util::future::try_join_all(queries).await? {
        for r in rows {
            let k = HilbertKey {
                h_xy: r.get::<_, i64>(0) as u64,
                h_yz: r.get::<_, i64>(1) as u64,
                h_zm: r.get::<_, i64>(2) as u64,
            };
            let Some(&f) = first.get(&k) else { continue };
            let j = found.rows.len() as u32;
            let mut i = f;
            while i != u32::MAX {
                found.at[i as usize] = Some(j);
                i = next[i as usize];
            }
            found.rows.push(r);
        }
    }
    Ok(found)
}

/// What a walk needs of one atom.
#[derive(Clone)]
enum Fetched {
    /// A leaf's value.
    Leaf(Vec<u8>),
    /// A composite's pack (migration 0012) and content hash, to check it by.
    Packed(Vec<u8>, Hash),
    /// A composite's EWKB: its children are read next.
    Node(Vec<u8>),
}

/// What a walk needs of the atoms at `keys`: a leaf's value, a composite's pack when it has
/// one, else its EWKB.
async fn walk_fetch(conns: &[&Object], parts: &Partitions, keys: &[HilbertKey]) -> DbResult<Vec<Option<Fetched>>> {
    let found = rows_at(
        conns,
        parts,
        keys,
        "a.value, CASE WHEN a.value IS NULL AND a.leaves IS NULL THEN ST_AsEWKB(a.geom) END, a.leaves,
         CASE WHEN a.leaves IS NOT NULL THEN a.content_hash END",
    )
    .await?;
    let mut out = Vec::with_capacity(keys.len());
    for i in 0..keys.len() {
        let Some(r) = found.row(i) else {
            out.push(None);
            continue;
        };
        let f = if let Some(v) = r.get::<_, Option<Vec<u8>>>(FOUND_COLS) {
            Fetched::Leaf(v)
        } else if let Some(pack) = r.get::<_, Option<Vec<u8>>>(FOUND_COLS + 2) {
            Fetched::Packed(pack, hash_of(r.get(FOUND_COLS + 3))?)
        } else {
            Fetched::Node(r.get::<_, Option<Vec<u8>>>(FOUND_COLS + 1).unwrap_or_default())
        };
        out.push(Some(f));
    }
    Ok(out)
}

/// The EWKB of the composite at `key`, for a pack that did not check out.
async fn node_geometry(conns: &[&Object], parts: &Partitions, key: HilbertKey) -> DbResult<Vec<u8>> {
    let found = rows_at(conns, parts, &[key], "ST_AsEWKB(a.geom)").await?;
    found.row(0).map(|r| r.get(FOUND_COLS)).ok_or_else(|| missing_atom(key))
}

/// A walk reached a key no atom is stored at.
fn missing_atom(key: HilbertKey) -> DbError {
    StoreError::Backend(format!("atom at key {key} is missing from the database; run `hart fsck`")).into()
}

/// Write the leaves under the atom at `root` in order, resolving up to [`CAT_BATCH`] atoms
/// per query from the front of the walk: memory stays bounded by depth × fan-out × batch.
async fn walk(conns: &[&Object], parts: &Partitions, root: HilbertKey, out: &mut dyn Write) -> DbResult<u64> {
    let mut queue: std::collections::VecDeque<Item> = std::collections::VecDeque::new();
    queue.push_back(Item::Pending(root));
    let mut written = 0u64;
    let mut depth_guard = 0u64;
    loop {
        while let Some(Item::Bytes(_)) = queue.front() {
            if let Some(Item::Bytes(b)) = queue.pop_front() {
                out.write_all(&b).map_err(|e| StoreError::io("write", "output", e))?;
                written += b.len() as u64;
            }
        }
        if queue.is_empty() {
            return Ok(written);
        }
        depth_guard += 1;
        if depth_guard > 1 << 40 {
            return Err(StoreError::Backend("tree walk does not terminate (a cycle?)".into()).into());
        }
        // Resolve the pending atoms among the first CAT_BATCH entries.
        let n = queue.len().min(CAT_BATCH);
        // Each distinct key once (leaves repeat a lot): slot of each pending entry in `keys`.
        let mut slot_of: rustc_hash::FxHashMap<HilbertKey, usize> = Default::default();
        let mut slots = Vec::new();
        let mut keys = Vec::new();
        for it in queue.iter().take(n) {
            if let Item::Pending(k) = it {
                let next = keys.len();
                let s = *slot_of.entry(*k).or_insert(next);
                if s == next {
                    keys.push(*k);
                }
                slots.push(s);
            }
        }
        let mut got = walk_fetch(conns, parts, &keys).await?;
        // How many pending entries each fetched atom fills: the last one takes it, the others
        // (an atom repeated within the batch) copy it.
        let mut uses = vec![0u32; keys.len()];
        for &s in &slots {
            uses[s] += 1;
        }
        // Rebuild the front of the queue with leaves as bytes and composites expanded.
        let rest = queue.split_off(n);
        let front = std::mem::take(&mut queue);
        let mut j = 0;
        for it in front {
            match it {
                Item::Bytes(b) => queue.push_back(Item::Bytes(b)),
                Item::Pending(k) => {
                    let s = slots[j];
                    uses[s] -= 1;
                    let fetched = if uses[s] == 0 { got[s].take() } else { got[s].clone() };
                    let Some(fetched) = fetched else { return Err(missing_atom(k)) };
                    j += 1;
                    // A child has its parent's modality (the high byte of h_xy).
                    let modality = modality_of((k.h_xy >> 56) as i16)?;
                    let g = match fetched {
                        Fetched::Leaf(v) => {
                            queue.push_back(Item::Bytes(v));
                            continue;
                        }
                        Fetched::Packed(pack, hash) => match unpack(modality, &hash, &pack) {
                            Some(bytes) => {
                                queue.push_back(Item::Bytes(bytes));
                                continue;
                            }
                            None => {
                                tracing::warn!(key = %k, "a composite's pack does not match its hash (run `hart fsck`); reading its children instead");
                                node_geometry(conns, parts, k).await?
                            }
                        },
                        Fetched::Node(g) => g,
                    };
                    let (_, kids) = geom_of(&g)?;
                    for p in kids {
                        queue.push_back(Item::Pending(HilbertKey::new(modality, &p)));
                    }
                }
            }
        }
        queue.extend(rest);
    }
}

async fn key_of_hash(c: &Object, hash: &Hash) -> DbResult<Option<HilbertKey>> {
    let stmt = c.prepare_cached("SELECT a.h_xy, a.h_yz, a.h_zm FROM atoms a WHERE a.content_hash = $1 LIMIT 1").await?;
    let row = c.query_opt(&stmt, &[&hash.0.as_slice()]).await?;
    Ok(row.map(|r| HilbertKey {
        h_xy: r.get::<_, i64>(0) as u64,
        h_yz: r.get::<_, i64>(1) as u64,
        h_zm: r.get::<_, i64>(2) as u64,
    }))
}

fn ms(t: Option<f64>) -> Option<u64> {
    t.map(|v| v.max(0.0) as u64)
}

const OBJECTS: &str = "SELECT l.id, l.source_uri, l.modality, l.status, l.root_hash, l.source_hash, l.bytes,
        l.atoms_created, l.atoms_referenced, l.atoms_skipped,
        floor(extract(epoch FROM l.started_at) * 1000)::float8,
        floor(extract(epoch FROM l.completed_at) * 1000)::float8,
        l.error, o.id, r.ingestion_id IS NOT NULL
    FROM ingestion_log l
    LEFT JOIN objects o ON o.ingestion_id = l.id
    LEFT JOIN ingestion_removed r ON r.ingestion_id = l.id";

/// An ingestion as the interface shows it, and its object id in `objects` if it has one.
fn object_info(r: &Row) -> Result<(ObjectInfo, Option<i64>), StoreError> {
    let log_status: &str = r.get(3);
    let object: Option<i64> = r.get(13);
    let removed: bool = r.get(14);
    let status = match (removed, log_status) {
        (true, _) => Status::Deleted,
        (false, "completed") if object.is_some() => Status::Completed,
        (false, "completed") => Status::Unchanged,
        (false, "failed") => Status::Failed,
        (false, "pending") => Status::Pending,
        _ => Status::Running,
    };
    let opt_hash =
        |i: usize| -> Result<Option<Hash>, StoreError> { r.get::<_, Option<&[u8]>>(i).map(hash_of).transpose() };
    let m: Option<i16> = r.get(2);
    Ok((
        ObjectInfo {
            id: r.get::<_, i64>(0) as u64,
            uri: r.get(1),
            modality: modality_of(m.unwrap_or(0))?,
            status,
            root: opt_hash(4)?,
            source_hash: opt_hash(5)?,
            size: r.get::<_, i64>(6) as u64,
            atoms_created: r.get::<_, i64>(7) as u64,
            atoms_referenced: r.get::<_, i64>(8) as u64,
            atoms_skipped: r.get::<_, i64>(9) as u64,
            started_at: ms(r.get(10)).unwrap_or(0),
            completed_at: ms(r.get(11)),
            error: r.get(12),
        },
        object,
    ))
}

async fn load_object(c: &Object, id: i64) -> DbResult<Option<(ObjectInfo, Option<i64>)>> {
    let row = c.query_opt(&format!("{OBJECTS} WHERE l.id = $1"), &[&id]).await?;
    Ok(row.map(|r| object_info(&r)).transpose()?)
}

impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    /// Two: each session merges on server backends of its own (two at once, see
    /// `PgSession::flush`). Measured with two ingests at once, before a session used two:
    /// 1.43× the atoms per second of one (decision 0011); more would crowd two cores.
    fn parallel_sessions(&self) -> usize {
        PARALLEL_SESSIONS.min(self.settings.pool.max.max(1))
    }

    fn begin(&self, source: SourceInfo) -> Result<Box<dyn Session + '_>, StoreError> {
        let conn = self.rt.block_on(self.pool.get()).map_err(|e| StoreError::from(DbError::from(e)))?;
        let source2 = source.clone();
        let (id, start) = self
            .rt
            .block_on(async {
                // Held until commit or abort: gc waits for this ingestion (module docs).
                conn.execute("SELECT pg_advisory_lock_shared($1)", &[&GC_LOCK]).await?;
                let size = source2.size.unwrap_or(0) as i64;
                let row = conn
                    .query_one(
                        "INSERT INTO ingestion_log (source_uri, modality, bytes, status)
                         VALUES ($1, $2, $3, 'running') RETURNING id, started_at",
                        &[&source2.uri, &i16::from(source2.modality.as_u8()), &size],
                    )
                    .await?;
                Ok::<_, DbError>((row.get::<_, i64>(0), row.get::<_, std::time::SystemTime>(1)))
            })
            .map_err(StoreError::from)?;
        Ok(Box::new(PgSession {
            store: self,
            conn: Some(conn),
            id,
            start,
            uri: source.uri,
            positions: BoundedMap::new(1 << 20),
            leaves: BoundedMap::new(PACK_CACHE),
            pending: Vec::new(),
            extra: None,
            asked_extra: false,
            inflight: Default::default(),
            created: 0,
            referenced: 0,
        }))
    }

    fn get(&self, hash: &Hash) -> Result<Option<AtomRecord>, StoreError> {
        let h = hash.0.to_vec();
        let parts = &self.partitions;
        self.run("get", |c| {
            let h = h.clone();
            async move {
                // Prepared once per connection: planning over 256 partitions costs milliseconds.
                let stmt = c.prepare_cached(&format!("SELECT {ATOM_COLS} WHERE a.content_hash = $1 LIMIT 1")).await?;
                let row = c.query_opt(&stmt, &[&h]).await?;
                match row {
                    Some(r) => Ok(Some(record(&c, parts, &r).await?)),
                    None => Ok(None),
                }
            }
        })
    }

    fn get_by_key(&self, key: &HilbertKey) -> Result<Option<AtomRecord>, StoreError> {
        let (x, y, z) = (key.h_xy as i64, key.h_yz as i64, key.h_zm as i64);
        // Routed to the partition: a lookup on `atoms` would lock and prune all of them.
        let Some(part) = self.partitions.of(key.h_xy) else { return Ok(None) };
        let sql = format!("SELECT {ATOM_FIELDS} FROM {part} a WHERE a.h_xy = $1 AND a.h_yz = $2 AND a.h_zm = $3");
        let parts = &self.partitions;
        self.run("get_by_key", |c| {
            let sql = sql.clone();
            async move {
                let stmt = c.prepare_cached(&sql).await?;
                let row = c.query_opt(&stmt, &[&x, &y, &z]).await?;
                match row {
                    Some(r) => Ok(Some(record(&c, parts, &r).await?)),
                    None => Ok(None),
                }
            }
        })
    }

    fn find_prefix(&self, prefix: &str, limit: usize) -> Result<Vec<Hash>, StoreError> {
        let prefix = prefix.to_ascii_lowercase();
        if prefix.is_empty() || prefix.len() > 64 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::Invalid(format!("{prefix:?} is not a hexadecimal hash prefix")));
        }
        // The byte range holding every hash with this prefix: the B-tree on content_hash.
        let bound = |fill: char| -> Vec<u8> {
            let mut s = prefix.clone();
            while s.len() < 64 {
                s.push(fill);
            }
            (0..32).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex")).collect()
        };
        let (lo, hi) = (bound('0'), bound('f'));
        let lim = limit as i64;
        let rows = self.run("find_prefix", |c| {
            let (lo, hi) = (lo.clone(), hi.clone());
            async move {
                Ok(c.query(
                    "SELECT DISTINCT a.content_hash FROM atoms a WHERE a.content_hash BETWEEN $1 AND $2
                     ORDER BY 1 LIMIT $3",
                    &[&lo, &hi, &lim],
                )
                .await?)
            }
        })?;
        rows.iter().map(|r| hash_of(r.get(0))).collect()
    }

    fn cat(&self, root: &Hash, out: &mut dyn Write) -> Result<u64, StoreError> {
        let conn = self.rt.block_on(self.pool.get()).map_err(|e| StoreError::from(DbError::from(e)))?;
        // A second connection, if the pool has one to spare, lets the server read on two cores.
        let second = self.rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_millis(100), self.pool.get()).await.ok()?.ok()
        });
        self.rt
            .block_on(async {
                let key = key_of_hash(&conn, root)
                    .await?
                    .ok_or_else(|| StoreError::NotFound { what: "atom", id: root.to_hex() })?;
                // One snapshot for the whole walk, shared by both connections: a concurrent gc
                // cannot pull atoms from under it.
                conn.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
                let mut conns = vec![&conn];
                if let Some(c2) = &second {
                    let snapshot: String = conn.query_one("SELECT pg_export_snapshot()", &[]).await?.get(0);
                    let shared = async {
                        c2.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
                        c2.batch_execute(&format!("SET TRANSACTION SNAPSHOT '{snapshot}'")).await
                    };
                    match shared.await {
                        Ok(()) => conns.push(c2),
                        Err(e) => {
                            tracing::debug!(error = %e, "cat on one connection: the snapshot could not be shared");
                            let _ = c2.batch_execute("ROLLBACK").await;
                        }
                    }
                }
                let mut w = std::io::BufWriter::with_capacity(1 << 20, &mut *out);
                let r = walk(&conns, &self.partitions, key, &mut w).await;
                for c in &conns {
                    let _ = c.batch_execute("COMMIT").await;
                }
                let n = r?;
                w.flush().map_err(|e| StoreError::io("write", "output", e))?;
                Ok::<_, DbError>(n)
            })
            .map_err(StoreError::from)
    }

    fn objects(&self) -> Result<Vec<ObjectInfo>, StoreError> {
        let rows =
            self.run("objects", |c| async move { Ok(c.query(&format!("{OBJECTS} ORDER BY l.id"), &[]).await?) })?;
        rows.iter().map(|r| object_info(r).map(|(o, _)| o)).collect()
    }

    fn delete_object(&self, id: u64) -> Result<ObjectInfo, StoreError> {
        let Ok(id) = i64::try_from(id) else {
            return Err(StoreError::NotFound { what: "object", id: id.to_string() });
        };
        self.run("delete_object", |c| async move {
            let Some((info, object)) = load_object(&c, id).await? else {
                return Err(StoreError::NotFound { what: "object", id: id.to_string() }.into());
            };
            match info.status {
                Status::Deleted => {
                    return Err(StoreError::NotFound {
                        what: "live object",
                        id: format!("#{id} (it was already removed)"),
                    }
                    .into())
                }
                Status::Completed | Status::Unchanged | Status::Failed => {}
                s => {
                    return Err(StoreError::Invalid(format!(
                        "object {id} is {s:?}; only completed, unchanged or failed objects can be removed"
                    ))
                    .into())
                }
            }
            c.batch_execute("BEGIN").await?;
            let r = async {
                if let (Status::Completed, Some(o)) = (info.status, object) {
                    c.execute("SELECT hart_delete_object($1)", &[&o]).await?;
                }
                c.execute("INSERT INTO ingestion_removed (ingestion_id) VALUES ($1)", &[&id]).await?;
                c.batch_execute("COMMIT").await?;
                Ok::<_, DbError>(())
            }
            .await;
            if r.is_err() {
                let _ = c.batch_execute("ROLLBACK").await;
            }
            r?;
            Ok(load_object(&c, id).await?.expect("just removed").0)
        })
    }

    fn gc(&self) -> Result<GcReport, StoreError> {
        self.run("gc", |c| async move {
            // Wait (at most a minute) for ingestions in flight, and keep new ones out.
            c.batch_execute("SET lock_timeout = '60s'").await?;
            let locked = c.execute("SELECT pg_advisory_lock($1)", &[&GC_LOCK]).await;
            let _ = c.batch_execute("RESET lock_timeout").await;
            if let Err(e) = locked {
                if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) {
                    return Err(StoreError::Backend(
                        "gc waited a minute for ingestions in progress to finish; run it again when they are done"
                            .into(),
                    )
                    .into());
                }
                return Err(e.into());
            }
            let r = gc_rounds(&c).await;
            let _ = c.execute("SELECT pg_advisory_unlock($1)", &[&GC_LOCK]).await;
            r
        })
    }

    fn fsck(&self, progress: &dyn Fn(u64, u64)) -> Result<FsckReport, StoreError> {
        let conn = self.rt.block_on(self.pool.get()).map_err(|e| StoreError::from(DbError::from(e)))?;
        self.rt.block_on(fsck(&conn, &self.partitions, progress)).map_err(StoreError::from)
    }

    fn stats(&self) -> Result<Stats, StoreError> {
        let (per, objs, other) = self.run("stats", |c| async move {
            let per = c
                .query(
                    "SELECT modality, count(*) FILTER (WHERE value IS NOT NULL), count(*) FILTER (WHERE value IS NULL),
                            coalesce(sum(octet_length(value)), 0)::bigint
                     FROM atoms GROUP BY modality ORDER BY modality",
                    &[],
                )
                .await?;
            let objs = c
                .query_one(
                    "SELECT count(*), coalesce(sum(l.bytes), 0)::bigint FROM objects o
                     JOIN ingestion_log l ON l.id = o.ingestion_id
                     WHERE o.deleted_at IS NULL
                       AND NOT EXISTS (SELECT FROM ingestion_removed r WHERE r.ingestion_id = l.id)",
                    &[],
                )
                .await?;
            let other = c
                .query_one(
                    "SELECT (SELECT count(*) FROM atoms WHERE ref_count = 0), pg_database_size(current_database())",
                    &[],
                )
                .await?;
            Ok((per, objs, other))
        })?;
        let mut s = Stats { backend: "postgres".into(), ..Stats::default() };
        for r in per {
            let m = modality_of(r.get(0))?;
            let ms = ModalityStats {
                leaves: r.get::<_, i64>(1) as u64,
                composites: r.get::<_, i64>(2) as u64,
                leaf_bytes: r.get::<_, i64>(3) as u64,
            };
            s.atoms += ms.leaves + ms.composites;
            s.unique_bytes += ms.leaf_bytes;
            s.per_modality.insert(m.name().to_string(), ms);
        }
        s.objects = objs.get::<_, i64>(0) as u64;
        s.logical_bytes = objs.get::<_, i64>(1) as u64;
        s.dedup_ratio = if s.unique_bytes == 0 { 1.0 } else { s.logical_bytes as f64 / s.unique_bytes as f64 };
        s.garbage_atoms = other.get::<_, i64>(0) as u64;
        s.stored_bytes = other.get::<_, i64>(1) as u64;
        Ok(s)
    }

    fn flush(&self) -> Result<(), StoreError> {
        // Every call commits its own transaction: what returned is durable. What is left is
        // the application's share of maintenance: the spatial summary, when it is due and
        // pg_cron does not schedule it (migration 0011). A failure there loses nothing.
        let r = self.run("refreshing atom_spatial_summary", |c| async move {
            c.batch_execute("BEGIN; SET LOCAL statement_timeout = 0").await?;
            let r = c.query_one("SELECT hart_refresh_spatial_summary_due()", &[]).await;
            let _ = c.batch_execute(if r.is_ok() { "COMMIT" } else { "ROLLBACK" }).await;
            Ok(r?.get::<_, bool>(0))
        });
        if let Err(e) = r {
            tracing::warn!(error = %e, "atom_spatial_summary was not refreshed");
        }
        Ok(())
    }
}

/// Delete atoms at reference count zero and release what they referenced, round after round,
/// in one transaction (under the gc advisory lock, so no ingestion is in flight).
async fn gc_rounds(c: &Object) -> DbResult<GcReport> {
    // Collecting scans the whole store: no statement timeout inside it.
    c.batch_execute("BEGIN; SET LOCAL statement_timeout = 0").await?;
    let r = async {
        let mut report = GcReport::default();
        loop {
            let row = c
                .query_one(
                    "WITH dead AS (
                         DELETE FROM atoms a WHERE a.ref_count = 0
                         RETURNING a.modality, a.geom, a.value),
                     kids AS (
                         -- A parent holds one reference per distinct child (hart_merge_stage).
                         SELECT DISTINCT d.modality, ST_AsEWKB(ST_GeometryN(d.geom, 1)) AS parent, v.geom AS pt
                         FROM dead d CROSS JOIN LATERAL ST_DumpPoints(ST_GeometryN(d.geom, 2)) v
                         WHERE d.value IS NULL),
                     counts AS (
                         SELECT hart_xy_of_point(modality, pt) AS h_xy, pt, count(*) AS n
                         FROM kids GROUP BY modality, pt),
                     upd AS (
                         UPDATE atoms a SET ref_count = a.ref_count - c.n
                         FROM counts c WHERE a.h_xy = c.h_xy AND a.pt = c.pt
                         RETURNING 1)
                     SELECT (SELECT count(*) FROM dead),
                            (SELECT coalesce(sum(coalesce(octet_length(value), 0) + ST_MemSize(geom)), 0)::bigint FROM dead),
                            (SELECT count(*) FROM upd)",
                    &[],
                )
                .await?;
            let removed: i64 = row.get(0);
            if removed == 0 {
                break;
            }
            report.atoms_removed += removed as u64;
            report.bytes_removed += row.get::<_, i64>(1) as u64;
        }
        c.batch_execute("COMMIT").await?;
        Ok::<_, DbError>(report)
    }
    .await;
    if r.is_err() {
        let _ = c.batch_execute("ROLLBACK").await;
    }
    r
}

/// A writer that hashes what goes through it.
struct HashingWriter(blake3::Hasher, u64);

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        self.1 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn fsck(c: &Object, parts: &Partitions, progress: &dyn Fn(u64, u64)) -> DbResult<FsckReport> {
    let mut report = FsckReport::default();
    // A whole-store check runs as long as the store is big: no statement timeout inside it.
    c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL statement_timeout = 0").await?;
    let r = async {
        // References recounted from scratch: one per distinct child of each composite, one per
        // live object on its root.
        let rows = c.query("SELECT content_hash, stored, recount FROM hart_refcount_mismatches(100)", &[]).await?;
        for r in rows {
            if r.get::<_, Option<String>>(0).is_none() {
                report.problems.push(format!("{} reference(s) to an atom that is not stored", r.get::<_, i64>(2)));
            } else {
                report.problems.push(format!(
                    "atom {} has reference count {}, recount {}",
                    r.get::<_, String>(0),
                    r.get::<_, i64>(1),
                    r.get::<_, i64>(2)
                ));
            }
        }
        // Packs compared with the values of their children (migration 0012).
        for r in c.query("SELECT content_hash FROM hart_pack_mismatches(100)", &[]).await? {
            report.problems.push(format!(
                "composite {}: its pack differs from its children's values (reads fall back to the children)",
                r.get::<_, String>(0)
            ));
        }
        let totals = c
            .query_one(
                "SELECT (SELECT count(*) FROM atoms), (SELECT coalesce(sum(ref_count), 0)::bigint FROM atoms)",
                &[],
            )
            .await?;
        report.atoms_checked = totals.get::<_, i64>(0) as u64;
        report.references_counted = totals.get::<_, i64>(1) as u64;
        // Leaves re-hashed from their values.
        let leaves = c
            .query("SELECT a.modality, a.value, a.content_hash FROM atoms a WHERE a.value IS NOT NULL", &[])
            .await?;
        for r in leaves {
            let m = modality_of(r.get(0))?;
            let v: &[u8] = r.get(1);
            let h = hash_of(r.get(2))?;
            if v.len() > LEAF_MAX || leaf_hash(m, v) != h {
                report.problems.push(format!("leaf {h}: its value does not hash to it"));
            }
        }
        // Every completed object rebuilt from geometry and compared with its source hash.
        let objs = c
            .query(
                &format!(
                    "{OBJECTS} WHERE l.status = 'completed' AND o.id IS NOT NULL AND r.ingestion_id IS NULL ORDER BY l.id"
                ),
                &[],
            )
            .await?;
        let n = objs.len() as u64;
        for (i, row) in objs.iter().enumerate() {
            progress(i as u64, n);
            let (info, _) = object_info(row)?;
            let root = info.root.expect("completed object has a root");
            let Some(key) = key_of_hash(c, &root).await? else {
                report.problems.push(format!("object {} ({}): root {root} is not stored", info.id, info.uri));
                continue;
            };
            let mut w = HashingWriter(blake3::Hasher::new(), 0);
            match walk(&[c], parts, key, &mut w).await {
                Ok(_) => {
                    let got = Hash(*w.0.finalize().as_bytes());
                    if Some(got) != info.source_hash || w.1 != info.size {
                        report.problems.push(format!(
                            "object {} ({}): rebuilt {} bytes hashing to {got}, expected {} bytes hashing to {:?}",
                            info.id, info.uri, w.1, info.size, info.source_hash
                        ));
                    }
                }
                Err(e) => report.problems.push(format!("object {} ({}): {e}", info.id, info.uri)),
            }
            report.objects_checked += 1;
            report.bytes_reconstructed += w.1;
        }
        progress(n, n);
        Ok::<_, DbError>(())
    }
    .await;
    let _ = c.batch_execute("COMMIT").await;
    r?;
    Ok(report)
}

/// One ingestion: a connection held from `begin` to `commit`/`abort` (with the shared gc lock).
struct PgSession<'a> {
    store: &'a PgStore,
    conn: Option<Object>,
    id: i64,
    /// When the ingestion began: atoms created earlier existed before it.
    start: std::time::SystemTime,
    uri: String,
    /// Positions of atoms this session has put or looked up, and whether they existed before it.
    positions: BoundedMap<Hash, Position>,
    /// Recent leaf values, for packs.
    leaves: BoundedMap<Hash, LeafValue>,
    /// Rows put but not merged yet (at most [`MERGE_ROWS`] and a batch, plus rows held back
    /// until the merge in flight commits).
    pending: Vec<StageRow>,
    /// A second connection, so that one batch merges while the next is sent (None until
    /// needed, or when the pool had none to spare).
    extra: Option<Object>,
    /// Whether a second connection was asked for already.
    asked_extra: bool,
    /// Merges running on the server while the session goes on, oldest first (at most two:
    /// each holds one of the session's connections).
    inflight: std::collections::VecDeque<InFlight>,
    created: u64,
    referenced: u64,
}

/// What a merge gives back: its connection, and the atoms it created and referenced.
type Merged = (Object, Result<(u64, u64), DbError>);

/// A merge in flight on one of the session's connections.
struct InFlight {
    task: tokio::task::JoinHandle<Merged>,
    /// Whether it runs on the session's first connection (which holds the gc lock).
    primary: bool,
    /// `h_xy` of every row it stores: a composite naming one of them as a child waits for
    /// the next merge (its child is not visible before this one commits).
    keys: rustc_hash::FxHashSet<i64>,
}

/// One row of `hart_stage`, ready for binary COPY.
struct StageRow {
    key: HilbertKey,
    geom: Vec<u8>,
    value: Option<Vec<u8>>,
    modality: i16,
    hash: Hash,
    /// h_xy of each child, in the order of the composite's vertices; None for a leaf.
    kids: Option<Vec<i64>>,
    /// A composite's pack (migration 0012): each child leaf's value after its length.
    leaves: Option<Vec<u8>>,
}

/// A leaf's value, kept by a session to build the packs of the composites above it.
#[derive(Clone, Copy)]
struct LeafValue {
    len: u8,
    bytes: [u8; LEAF_MAX],
}

impl LeafValue {
    fn new(v: &[u8]) -> Option<LeafValue> {
        let mut bytes = [0; LEAF_MAX];
        bytes.get_mut(..v.len())?.copy_from_slice(v);
        Some(LeafValue { len: v.len() as u8, bytes })
    }
}

/// Leaf values a session keeps for packs: two generations of this many (~13 MB each). A
/// composite with a child no longer here (or that is not a leaf) is staged without a pack.
const PACK_CACHE: usize = 1 << 17;

/// The pack of a composite whose children are all in `leaves` (migration 0012), else None.
fn pack_of<'a>(
    children: impl ExactSizeIterator<Item = &'a Hash>,
    leaves: &mut BoundedMap<Hash, LeafValue>,
) -> Option<Vec<u8>> {
    let mut pack = Vec::with_capacity(children.len() * 33);
    for h in children {
        let v = leaves.get_promote(h)?;
        pack.push(v.len);
        pack.extend_from_slice(&v.bytes[..v.len as usize]);
    }
    Some(pack)
}

/// The leaf values of a composite's pack, checked against its content hash: None if the pack
/// is malformed or its leaves do not hash to `hash` (then the children are read instead).
fn unpack(modality: Modality, hash: &Hash, pack: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(pack.len());
    let mut kids = Vec::with_capacity(MAX_FANOUT);
    let mut rest = pack;
    while let Some((&n, tail)) = rest.split_first() {
        let (v, tail) = tail.split_at_checked(n as usize)?;
        if v.len() > LEAF_MAX || kids.len() == MAX_FANOUT {
            return None;
        }
        kids.push(leaf_hash(modality, v));
        out.extend_from_slice(v);
        rest = tail;
    }
    (kids.len() >= 2 && node_hash(modality, &kids) == *hash).then_some(out)
}

/// The staging rows of `ops`: each composite's geometry runs through its children's
/// positions, known from this session (`positions`) or looked up by content hash.
async fn stage_rows(
    conn: &Object,
    batch: &Batch,
    ops: &[&hart_store::Op],
    positions: &mut BoundedMap<Hash, Position>,
    leaves: &mut BoundedMap<Hash, LeafValue>,
) -> DbResult<Vec<StageRow>> {
    let mut rows = Vec::with_capacity(ops.len());
    let mut kid_pos = Vec::new();
    for op in ops {
        let key = HilbertKey::new(op.modality, &op.pos);
        kid_pos.clear();
        let (value, kids, pack) = match op.kind {
            AtomKind::Leaf => (Some(batch.value(op).to_vec()), None, None),
            AtomKind::Node => {
                for h in batch.children(op) {
                    let p = match positions.get_promote(h) {
                        Some(p) => p,
                        None => {
                            let stmt = conn
                                .prepare_cached(
                                    "SELECT ST_X(a.pt)::bigint, ST_Y(a.pt)::bigint, ST_Z(a.pt)::bigint, ST_M(a.pt)::bigint
                                     FROM atoms a WHERE a.content_hash = $1 LIMIT 1",
                                )
                                .await?;
                            let row = conn.query_opt(&stmt, &[&h.0.as_slice()]).await?;
                            let Some(r) = row else {
                                return Err(StoreError::Invalid(format!(
                                    "composite {} names child {h} that was never stored",
                                    op.hash
                                ))
                                .into());
                            };
                            let c = |j: usize| r.get::<_, i64>(j) as u32;
                            let p = Position::new(c(0), c(1), c(2), c(3));
                            positions.insert(*h, p);
                            p
                        }
                    };
                    kid_pos.push(p);
                }
                let kids = kid_pos.iter().map(|p| HilbertKey::new(op.modality, p).h_xy as i64).collect();
                (None, Some(kids), pack_of(batch.children(op).iter(), leaves))
            }
        };
        rows.push(StageRow {
            key,
            geom: ewkb(&op.pos, &kid_pos),
            value,
            modality: i16::from(op.modality.as_u8()),
            hash: op.hash,
            kids,
            leaves: pack,
        });
    }
    Ok(rows)
}

/// A geometry value already in EWKB, PostGIS' binary input format.
#[derive(Debug)]
struct Ewkb<'a>(&'a [u8]);

impl ToSql for Ewkb<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(self.0);
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        ty.name() == "geometry"
    }

    tokio_postgres::types::to_sql_checked!();
}

/// Fill `hart_stage` with `rows` by binary COPY.
async fn copy_stage(conn: &Object, geometry: &Type, rows: &[StageRow]) -> DbResult<()> {
    let sink = conn
        .copy_in(
            "COPY hart_stage (h_xy, h_yz, h_zm, geom, value, modality, content_hash, kids, leaves) FROM STDIN (FORMAT binary)",
        )
        .await?;
    let types = [
        Type::INT8,
        Type::INT8,
        Type::INT8,
        geometry.clone(),
        Type::BYTEA,
        Type::INT2,
        Type::BYTEA,
        Type::INT8_ARRAY,
        Type::BYTEA,
    ];
    let writer = BinaryCopyInWriter::new(sink, &types);
    let mut writer = std::pin::pin!(writer);
    for r in rows {
        let (x, y, z) = (r.key.h_xy as i64, r.key.h_yz as i64, r.key.h_zm as i64);
        let hash: &[u8] = &r.hash.0;
        writer.as_mut().write(&[&x, &y, &z, &Ewkb(&r.geom), &r.value, &r.modality, &hash, &r.kids, &r.leaves]).await?;
    }
    writer.finish().await?;
    Ok(())
}

/// The error for a batch the merge refused as a collision (HT001): names the stored atom and
/// the newcomer when the caller can read the stored one.
async fn collision(conn: &Object, parts: &Partitions, rows: &[StageRow], cause: &str) -> StoreError {
    let keys: Vec<HilbertKey> = rows.iter().map(|r| r.key).collect();
    if let Ok(found) = rows_at(&[conn], parts, &keys, "a.content_hash").await {
        for i in 0..keys.len() {
            let Some(r) = found.row(i) else { continue };
            if let Ok(h) = hash_of(r.get(FOUND_COLS)) {
                if h != rows[i].hash {
                    return StoreError::Collision {
                        key: keys[i].to_string(),
                        existing: h.to_hex(),
                        new: rows[i].hash.to_hex(),
                    };
                }
            }
        }
    }
    StoreError::Collision { key: "(in this batch)".into(), existing: "(a stored atom)".into(), new: cause.to_string() }
}

impl PgSession<'_> {
    async fn finish(conn: &Object, id: i64, error: &str) -> DbResult<()> {
        conn.execute(
            "UPDATE ingestion_log SET status = 'failed', error = $2, completed_at = greatest(now(), started_at)
             WHERE id = $1 AND status IN ('pending', 'running')",
            &[&id, &error],
        )
        .await?;
        conn.execute("SELECT pg_advisory_unlock_shared($1)", &[&GC_LOCK]).await?;
        Ok(())
    }
}

/// Merge `rows` on `conn`: one transaction of binary COPY into the staging table and
/// `hart_merge_stage`, retried on transient errors. Gives the connection back with the result
/// (created and referenced atoms), so that it can run on its own task.
async fn merge_rows(
    conn: Object,
    geometry: Type,
    retry: RetryPolicy,
    parts: std::sync::Arc<Partitions>,
    start: std::time::SystemTime,
    rows: Vec<StageRow>,
) -> Merged {
    let r = retry
        .run("put", |_| async {
            conn.batch_execute("BEGIN").await?;
            let r = async {
                conn.execute("SELECT hart_stage()", &[]).await?;
                copy_stage(&conn, &geometry, &rows).await?;
                let row = conn.query_one("SELECT created, referenced FROM hart_merge_stage($1)", &[&start]).await?;
                conn.batch_execute("COMMIT").await?;
                Ok::<(i64, i64), DbError>((row.get(0), row.get(1)))
            }
            .await;
            if r.is_err() {
                let _ = conn.batch_execute("ROLLBACK").await;
            }
            r
        })
        .await;
    let r = match r {
        Err(DbError::Pg(ref pg)) if pg.code().map(|c| c.code()) == Some("HT001") => {
            Err(collision(&conn, &parts, &rows, &pg.to_string()).await.into())
        }
        Err(e) => Err(e),
        Ok((c, r)) => Ok((c as u64, r as u64)),
    };
    (conn, r)
}

impl PgSession<'_> {
    /// Send the buffered rows to be merged, on a connection of their own while the session
    /// goes on: the server merges one batch while the client prepares the next, and two
    /// batches merge at once on two server backends (decision 0011, follow-up 2).
    ///
    /// A batch must not name a child that only the merge in flight stores (the child is not
    /// visible before that merge commits): such composites, and composites above them, wait in
    /// `pending` for the next batch. Children are recognised by `h_xy`; a false match only
    /// delays a row.
    fn flush(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.any_idle()?;
        let rows = std::mem::take(&mut self.pending);
        let (now, later) = match self.inflight.back() {
            None => (rows, Vec::new()),
            Some(f) => {
                let mut held: rustc_hash::FxHashSet<i64> = Default::default();
                let (mut now, mut later) = (Vec::with_capacity(rows.len()), Vec::new());
                for r in rows {
                    let waits =
                        r.kids.as_ref().is_some_and(|k| k.iter().any(|x| f.keys.contains(x) || held.contains(x)));
                    if waits {
                        held.insert(r.key.h_xy as i64);
                        later.push(r);
                    } else {
                        now.push(r);
                    }
                }
                (now, later)
            }
        };
        self.pending = later;
        if now.is_empty() {
            return Ok(());
        }
        self.launch(now)
    }

    /// Whether the session has an idle connection: the first, or a second one from the pool
    /// when the first is busy and the pool has one to spare.
    fn idle(&mut self) -> bool {
        if self.conn.is_some() || self.extra.is_some() {
            return true;
        }
        if !self.asked_extra {
            self.asked_extra = true;
            let mut t = deadpool_postgres::Timeouts::new();
            t.wait = Some(std::time::Duration::ZERO);
            t.create = Some(self.store.settings.connect_timeout);
            t.recycle = Some(self.store.settings.connect_timeout);
            if let Ok(c) = self.store.rt.block_on(self.store.pool.timeout_get(&t)) {
                self.extra = Some(c);
                return true;
            }
        }
        false
    }

    /// Put a connection back among the idle ones, in the slot it came from.
    fn give_back(&mut self, conn: Object, primary: bool) {
        if primary {
            self.conn = Some(conn);
        } else {
            self.extra = Some(conn);
        }
    }

    /// Start merging `rows` on an idle connection.
    fn launch(&mut self, rows: Vec<StageRow>) -> Result<(), StoreError> {
        let store = self.store;
        let (conn, primary) = match self.conn.take() {
            Some(c) => (c, true),
            None => (self.extra.take().expect("an idle connection"), false),
        };
        let geometry = match store.rt.block_on(store.geometry_type(&conn)) {
            Ok(g) => g,
            Err(e) => {
                self.give_back(conn, primary);
                return Err(e.into());
            }
        };
        let keys = rows.iter().map(|r| r.key.h_xy as i64).collect();
        let task =
            store.rt.spawn(merge_rows(conn, geometry, store.retry.clone(), store.partitions.clone(), self.start, rows));
        self.inflight.push_back(InFlight { task, primary, keys });
        Ok(())
    }

    /// Wait for the oldest merge in flight and take back its connection.
    fn join(&mut self) -> Result<(), StoreError> {
        let Some(f) = self.inflight.pop_front() else { return Ok(()) };
        let (conn, r) = match self.store.rt.block_on(f.task) {
            Ok(x) => x,
            Err(e) => {
                self.positions.clear();
                self.pending.clear();
                return Err(StoreError::Backend(format!("a merge task failed: {e}")));
            }
        };
        self.give_back(conn, f.primary);
        match r {
            Ok((created, referenced)) => {
                self.created += created;
                self.referenced += referenced;
                Ok(())
            }
            Err(e) => {
                // The rows of that merge were not stored: forget the positions the session
                // learnt (atoms of earlier merges are looked up again when needed), and drop
                // what depended on them.
                self.positions.clear();
                self.pending.clear();
                Err(e.into())
            }
        }
    }

    /// Merge everything buffered and wait for it. After an error, the other merge in flight
    /// is still waited for, so that both connections come back.
    fn drain(&mut self) -> Result<(), StoreError> {
        loop {
            while !self.inflight.is_empty() {
                if let Err(e) = self.join() {
                    self.settle();
                    return Err(e);
                }
            }
            if self.pending.is_empty() {
                return Ok(());
            }
            self.flush()?;
        }
    }

    /// Make sure a connection is idle (waiting for the oldest merge if both are busy).
    fn any_idle(&mut self) -> Result<(), StoreError> {
        if !self.idle() {
            self.join()?;
        }
        Ok(())
    }

    /// Wait for every merge in flight, ignoring their results (the session is being given up).
    fn settle(&mut self) {
        while !self.inflight.is_empty() {
            let _ = self.join();
        }
    }
}

impl Session for PgSession<'_> {
    fn put(&mut self, batch: &Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        // Check what can be checked without the database.
        for op in &batch.ops {
            if Position::from_features(op.pos.features(), &op.hash) != op.pos || !op.pos.is_valid() {
                return Err(StoreError::Invalid(format!(
                    "atom {} has position {:?}, which does not carry its hash bits",
                    op.hash, op.pos
                )));
            }
            if op.kind == AtomKind::Leaf && batch.value(op).len() > LEAF_MAX {
                return Err(StoreError::Invalid(format!(
                    "leaf {} has {} bytes (at most {})",
                    op.hash,
                    batch.value(op).len(),
                    LEAF_MAX
                )));
            }
        }
        // Every leaf's value, for the packs of composites in this batch and later ones.
        for op in batch.ops.iter().filter(|op| op.kind == AtomKind::Leaf) {
            if let Some(v) = LeafValue::new(batch.value(op)) {
                self.leaves.insert(op.hash, v);
            }
        }
        // Atoms this session already put are not staged again.
        let ops: Vec<_> = batch.ops.iter().filter(|op| self.positions.get(&op.hash).is_none()).collect();
        if ops.is_empty() {
            return Ok(());
        }
        // Positions first: children put in this batch are found there.
        for op in &ops {
            self.positions.insert(op.hash, op.pos);
        }
        let store = self.store;
        if let Err(e) = self.any_idle() {
            self.settle();
            return Err(e);
        }
        let conn = self.conn.as_ref().or(self.extra.as_ref()).expect("a connection is idle");
        let rows = match store.rt.block_on(stage_rows(conn, batch, &ops, &mut self.positions, &mut self.leaves)) {
            Ok(rows) => rows,
            Err(e) => {
                self.positions.clear();
                self.pending.clear();
                return Err(e.into());
            }
        };
        self.pending.extend(rows);
        if self.pending.len() >= MERGE_ROWS {
            if let Err(e) = self.flush() {
                self.settle();
                return Err(e);
            }
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.drain()
    }

    fn commit(mut self: Box<Self>, root: &Hash, summary: &ObjectSummary) -> Result<ObjectInfo, StoreError> {
        self.drain()?;
        let conn = self.conn.take().expect("connection held");
        let (id, start, uri) = (self.id, self.start, self.uri.clone());
        let (created, referenced) = (self.created, self.referenced);
        let store = self.store;
        let r = store.rt.block_on(async {
            let r = async {
                let Some(row) = conn
                    .query_opt(
                        "SELECT a.h_xy, a.h_yz, a.h_zm, a.created_at < $2 FROM atoms a WHERE a.content_hash = $1 LIMIT 1",
                        &[&root.0.as_slice(), &start],
                    )
                    .await?
                else {
                    return Err(StoreError::Invalid(format!("root {root} was never stored")).into());
                };
                let (x, y, z): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
                let root_before: bool = row.get(3);
                conn.batch_execute("BEGIN").await?;
                let r = async {
                    let unchanged: bool = conn
                        .query_one(
                            "SELECT EXISTS (SELECT FROM objects o JOIN ingestion_log l ON l.id = o.ingestion_id
                                            WHERE l.source_uri = $1 AND o.root_hash = $2 AND o.deleted_at IS NULL
                                              AND NOT EXISTS (SELECT FROM ingestion_removed r WHERE r.ingestion_id = l.id))",
                            &[&uri, &root.0.as_slice()],
                        )
                        .await?
                        .get(0);
                    let referenced = referenced + u64::from(!unchanged && root_before);
                    let skipped = summary.occurrences.saturating_sub(created);
                    conn.execute(
                        "UPDATE ingestion_log SET status = 'completed', root_h_xy = $2, root_h_yz = $3, root_h_zm = $4,
                             root_hash = $5, source_hash = $6, bytes = $7, atoms_created = $8,
                             atoms_referenced = $9, atoms_skipped = $10, completed_at = greatest(clock_timestamp(), started_at)
                         WHERE id = $1",
                        &[
                            &id,
                            &x,
                            &y,
                            &z,
                            &root.0.as_slice(),
                            &summary.source_hash.0.as_slice(),
                            &(summary.size as i64),
                            &(created as i64),
                            &(referenced as i64),
                            &(skipped as i64),
                        ],
                    )
                    .await?;
                    if !unchanged {
                        conn.execute(
                            "SELECT hart_register_object($1, $2, $3, $4, $5, $6)",
                            &[&id, &uri, &x, &y, &z, &(summary.size as i64)],
                        )
                        .await?;
                    }
                    conn.batch_execute("COMMIT").await?;
                    Ok::<_, DbError>(())
                }
                .await;
                if r.is_err() {
                    let _ = conn.batch_execute("ROLLBACK").await;
                }
                r
            }
            .await;
            match &r {
                Ok(()) => {
                    conn.execute("SELECT pg_advisory_unlock_shared($1)", &[&GC_LOCK]).await?;
                }
                Err(e) => {
                    let _ = PgSession::finish(&conn, id, &e.to_string()).await;
                }
            }
            r?;
            Ok::<_, DbError>(load_object(&conn, id).await?.expect("just committed").0)
        });
        r.map_err(StoreError::from)
    }

    fn abort(mut self: Box<Self>, error: &str) -> Result<(), StoreError> {
        self.settle();
        let Some(conn) = self.conn.take() else {
            // Only a merge task that panicked keeps it.
            return Err(StoreError::Backend(format!("ingestion {}: its connection was lost", self.id)));
        };
        self.store.rt.block_on(PgSession::finish(&conn, self.id, error)).map_err(StoreError::from)
    }
}

impl Drop for PgSession<'_> {
    fn drop(&mut self) {
        self.settle();
        if let Some(conn) = self.conn.take() {
            let id = self.id;
            let r = self.store.rt.block_on(PgSession::finish(&conn, id, "abandoned before commit"));
            if let Err(e) = r {
                tracing::warn!(ingestion = id, error = %e, "could not mark an abandoned ingestion failed");
                // The connection may still hold the shared gc lock: do not return it to the pool.
                let _ = Object::take(conn);
            }
        }
    }
}
