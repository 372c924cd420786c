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
use hart_core::geom::decode_ewkb;
use hart_core::{AtomKind, Hash, HilbertKey, Modality, Position};
use hart_store::{
    AtomRecord, FsckReport, GcReport, ModalityStats, ObjectInfo, Session, SourceInfo, Stats, Status, Store, StoreError,
};
use tokio_postgres::types::Type;
use tokio_postgres::Row;

use crate::error::describe;
use crate::retry::{RetryPolicy, Transient, TransientCause};
use crate::ConnectionSettings;

mod fsck;
mod read;
mod session;

use read::{key_of_hash, root_not_stored, rows_at, walk, FOUND_COLS};
use session::PgSession;

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
        Ok(Box::new(PgSession::new(self, conn, id, start, source.uri)))
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
                let Some(key) = key_of_hash(&conn, root).await? else {
                    return Err(root_not_stored(&conn, &self.partitions, root).await?.into());
                };
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
                let r = walk(&conns, &self.partitions, key, root, &mut w).await;
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
        self.rt.block_on(fsck::fsck(&conn, &self.partitions, progress)).map_err(StoreError::from)
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
