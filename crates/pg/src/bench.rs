//! Measurements for `hart bench --database-url`: the database side of the PostgreSQL
//! benchmark (issue 3 "Speed"). Each figure has a baseline measured on the same server in the
//! same run: a raw binary COPY of the same rows, `pgbench -S` (run by the CLI), the
//! in-database `hart_reconstruct`.
//!
//! Everything happens in throwaway databases created here and dropped on [`BenchDb`]'s drop.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use hart_core::{Hash, HilbertKey};
use hart_store::StoreError;

use crate::ConnectionSettings;

fn backend(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("{what}: {e}"))
}

fn pg(what: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |e| backend(what, crate::error::describe(&e))
}

fn runtime() -> Result<tokio::runtime::Runtime, StoreError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| backend("starting the benchmark runtime", e))
}

async fn connect(s: &ConnectionSettings) -> Result<tokio_postgres::Client, StoreError> {
    let (c, conn) = s
        .to_pg_config()
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| backend(&format!("connecting to {s}"), crate::error::describe(&e)))?;
    tokio::spawn(conn);
    // Measurements run as long as they take: no statement timeout from the connection settings.
    c.batch_execute("SET jit = off; SET statement_timeout = 0").await.map_err(pg("SET jit"))?;
    Ok(c)
}

/// A fresh, migrated database for one measurement, dropped (with its connections) on drop.
pub struct BenchDb {
    admin: ConnectionSettings,
    name: String,
    pub settings: ConnectionSettings,
    /// Whether the database's key functions run in C (migration 0014, `hart_native`).
    pub native_hilbert: bool,
}

impl BenchDb {
    /// `CREATE DATABASE hart_bench_<pid>_<tag>` on the server of `admin` (whose role needs
    /// CREATEDB), then apply every migration.
    pub fn create(admin: &ConnectionSettings, tag: &str) -> Result<BenchDb, StoreError> {
        let name = format!("hart_bench_{}_{tag}", std::process::id());
        let rt = runtime()?;
        rt.block_on(async {
            let c = connect(admin).await?;
            c.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .await
                .map_err(pg("dropping an old benchmark database"))?;
            c.batch_execute(&format!("CREATE DATABASE \"{name}\"")).await.map_err(|e| {
                backend(
                    &format!("creating the benchmark database {name} (the role needs CREATEDB)"),
                    crate::error::describe(&e),
                )
            })
        })?;
        let mut db =
            BenchDb { admin: admin.clone(), settings: admin.with_database(&name), name, native_hilbert: false };
        db.native_hilbert = crate::PgStore::migrate(&db.settings)?.native_hilbert == Some(true);
        Ok(db)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for BenchDb {
    fn drop(&mut self) {
        if let Ok(rt) = runtime() {
            let _ = rt.block_on(async {
                let c = connect(&self.admin).await?;
                c.batch_execute(&format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name))
                    .await
                    .map_err(pg("dropping the benchmark database"))
            });
        }
    }
}

/// The columns of `atoms` a raw copy writes (everything but the generated `pt`).
const ATOM_COLUMNS: &str = "h_xy, h_yz, h_zm, geom, value, modality, content_hash, ref_count, meta, is_public, \
                            owners, created_at, created_by, updated_at, updated_by, version, leaves";

/// Baseline for bulk loading: binary COPY of every row of `from`'s `atoms` (of one modality,
/// when given) into the (empty, migrated) `atoms` of `to`, as is: same rows, same table,
/// indexes and triggers. The rows go through a scratch file first, so only the load into `to`
/// is timed. Returns (rows, time).
pub fn raw_copy_atoms(
    from: &ConnectionSettings,
    to: &ConnectionSettings,
    modality: Option<hart_core::Modality>,
    scratch: &Path,
) -> Result<(u64, Duration), StoreError> {
    let filter = match modality {
        Some(m) => format!("WHERE modality = {}", m.as_u8()),
        None => String::new(),
    };
    use futures_util::{SinkExt, StreamExt};
    let rt = runtime()?;
    rt.block_on(async {
        let src = connect(from).await?;
        let file =
            std::fs::File::create(scratch).map_err(|e| StoreError::io("create", scratch.display().to_string(), e))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let stream = src
            .copy_out(&format!("COPY (SELECT {ATOM_COLUMNS} FROM atoms {filter}) TO STDOUT (FORMAT binary)"))
            .await
            .map_err(pg("COPY atoms TO STDOUT"))?;
        let mut stream = std::pin::pin!(stream);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(pg("COPY atoms TO STDOUT"))?;
            w.write_all(&chunk).map_err(|e| StoreError::io("write", scratch.display().to_string(), e))?;
        }
        w.flush().map_err(|e| StoreError::io("write", scratch.display().to_string(), e))?;
        drop(w);
        let rows: i64 = src
            .query_one(&format!("SELECT count(*) FROM atoms {filter}"), &[])
            .await
            .map_err(pg("counting atoms"))?
            .get(0);

        let dst = connect(to).await?;
        let file =
            std::fs::File::open(scratch).map_err(|e| StoreError::io("open", scratch.display().to_string(), e))?;
        let mut r = BufReader::with_capacity(1 << 20, file);
        let start = Instant::now();
        let sink = dst
            .copy_in(&format!("COPY atoms ({ATOM_COLUMNS}) FROM STDIN (FORMAT binary)"))
            .await
            .map_err(pg("COPY atoms FROM STDIN"))?;
        let mut sink = std::pin::pin!(sink);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = r.read(&mut buf).map_err(|e| StoreError::io("read", scratch.display().to_string(), e))?;
            if n == 0 {
                break;
            }
            sink.send(bytes::Bytes::copy_from_slice(&buf[..n])).await.map_err(pg("COPY atoms FROM STDIN"))?;
        }
        let copied = sink.as_mut().finish().await.map_err(pg("COPY atoms FROM STDIN"))?;
        let took = start.elapsed();
        let _ = std::fs::remove_file(scratch);
        if copied != rows as u64 {
            return Err(StoreError::Backend(format!("raw COPY loaded {copied} rows of {rows}")));
        }
        Ok((copied, took))
    })
}

/// Up to `n` keys of atoms in `atoms`, in random order.
pub fn sample_keys(settings: &ConnectionSettings, n: usize) -> Result<Vec<HilbertKey>, StoreError> {
    let rt = runtime()?;
    rt.block_on(async {
        let c = connect(settings).await?;
        let rows = c
            .query("SELECT h_xy, h_yz, h_zm FROM atoms ORDER BY random() LIMIT $1", &[&(n as i64)])
            .await
            .map_err(pg("sampling keys"))?;
        Ok(rows
            .iter()
            .map(|r| HilbertKey {
                h_xy: r.get::<_, i64>(0) as u64,
                h_yz: r.get::<_, i64>(1) as u64,
                h_zm: r.get::<_, i64>(2) as u64,
            })
            .collect())
    })
}

/// What a run of point lookups measured.
#[derive(Debug, Clone, Copy)]
pub struct LookupStats {
    pub ops: u64,
    pub per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// The point lookup: one atom by primary key, what `hart show` needs of it, on the partition
/// that holds the key (as `PgStore::get_by_key` does; `{}` is the partition).
pub const POINT_LOOKUP: &str = "SELECT value, ST_AsEWKB(geom), content_hash, modality, ref_count FROM {}
                                WHERE h_xy = $1 AND h_yz = $2 AND h_zm = $3";

/// What one connection of [`point_lookups`] measured: each lookup's latency (ns), the lookups
/// done, and how long it ran.
type ConnectionRun = (Vec<u64>, u64, Duration);

/// Point lookups by key on `connections` connections for `duration` (prepared statements,
/// one per partition, keys taken round-robin from `keys`); latency of every lookup recorded.
pub fn point_lookups(
    settings: &ConnectionSettings,
    keys: &[HilbertKey],
    connections: usize,
    duration: Duration,
) -> Result<LookupStats, StoreError> {
    if keys.is_empty() {
        return Err(StoreError::Invalid("no keys to look up".into()));
    }
    let keys: Vec<(i64, i64, i64)> = keys.iter().map(|k| (k.h_xy as i64, k.h_yz as i64, k.h_zm as i64)).collect();
    // A thread and a single-threaded runtime per connection, as a client process would have
    // (pgbench -j: a thread per client).
    let results: Vec<Result<ConnectionRun, StoreError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..connections.max(1))
            .map(|t| {
                let keys = &keys;
                scope.spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| backend("starting a lookup runtime", e))?;
                    rt.block_on(async {
                        let c = connect(settings).await?;
                        let parts =
                            crate::store::Partitions::load(&c).await.map_err(pg("reading the partition plan"))?;
                        let mut stmts = std::collections::HashMap::new();
                        let mut lat = Vec::with_capacity(1 << 18);
                        let mut found = 0u64;
                        let start = Instant::now();
                        let mut i = t * 7919;
                        while start.elapsed() < duration {
                            let (x, y, z) = keys[i % keys.len()];
                            i += 1;
                            let part = parts
                                .index_of(x as u64)
                                .ok_or_else(|| StoreError::Invalid(format!("no partition for h_xy {x}")))?;
                            let stmt = match stmts.get(&part) {
                                Some(s) => s,
                                None => {
                                    let s = c
                                        .prepare(&POINT_LOOKUP.replace("{}", parts.name(part)))
                                        .await
                                        .map_err(pg("preparing the point lookup"))?;
                                    stmts.entry(part).or_insert(s)
                                }
                            };
                            let t0 = Instant::now();
                            let row = c.query_opt(stmt, &[&x, &y, &z]).await.map_err(pg("point lookup"))?;
                            lat.push(t0.elapsed().as_nanos() as u64);
                            found += u64::from(row.is_some());
                        }
                        Ok((lat, found, start.elapsed()))
                    })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(backend("lookup thread", "panicked")))).collect()
    });
    let mut all = Vec::new();
    let mut found = 0;
    let mut wall = Duration::ZERO;
    for r in results {
        let (lat, f, d) = r?;
        all.extend(lat);
        found += f;
        wall = wall.max(d);
    }
    if found != all.len() as u64 {
        return Err(StoreError::Backend(format!(
            "{} of {} looked-up keys were not found",
            all.len() as u64 - found,
            all.len()
        )));
    }
    all.sort_unstable();
    let q = |p: f64| all[((all.len() - 1) as f64 * p) as usize] as f64 / 1e3;
    Ok(LookupStats {
        ops: all.len() as u64,
        per_s: all.len() as f64 / wall.as_secs_f64(),
        p50_us: q(0.50),
        p99_us: q(0.99),
    })
}

/// `hart_reconstruct(root)` in the database: (bytes, time).
pub fn sql_reconstruct(settings: &ConnectionSettings, root: &Hash) -> Result<(u64, Duration), StoreError> {
    let rt = runtime()?;
    rt.block_on(async {
        let c = connect(settings).await?;
        let start = Instant::now();
        let r = c
            .query_one("SELECT octet_length(hart_reconstruct($1::bytea))::bigint", &[&root.0.as_slice()])
            .await
            .map_err(pg("hart_reconstruct"))?;
        Ok((r.get::<_, i64>(0) as u64, start.elapsed()))
    })
}

/// How one modality's atoms spread over its partitions.
#[derive(Debug, Clone)]
pub struct Spread {
    pub modality: String,
    pub atoms: u64,
    pub partitions: u64,
    pub partitions_used: u64,
    /// Atoms in the fullest partition ÷ the modality's atoms.
    pub largest_share: f64,
}

/// Rows per partition of `atoms`, summarised per modality (only modalities with atoms).
pub fn partition_spread(settings: &ConnectionSettings) -> Result<Vec<Spread>, StoreError> {
    let rt = runtime()?;
    rt.block_on(async {
        let c = connect(settings).await?;
        let rows = c
            .query(
                "WITH per AS (
                    SELECT a.tableoid::regclass::text AS partition_name, count(*) AS n FROM atoms a GROUP BY 1
                 ), counts AS (
                    SELECT p.modality, p.partition_name, coalesce(per.n, 0) AS n
                    FROM atom_partition_plan p LEFT JOIN per USING (partition_name)
                    WHERE p.modality IS NOT NULL)
                 SELECT m.modality, sum(n)::bigint, count(*)::bigint, count(*) FILTER (WHERE n > 0)::bigint,
                        max(n)::float8 / nullif(sum(n), 0)::float8
                 FROM counts m GROUP BY 1 HAVING sum(n) > 0 ORDER BY 1",
                &[],
            )
            .await
            .map_err(pg("counting atoms per partition"))?;
        Ok(rows
            .iter()
            .map(|r| {
                let m: i16 = r.get(0);
                Spread {
                    modality: u8::try_from(m)
                        .ok()
                        .and_then(|b| hart_core::Modality::from_u8(b).ok())
                        .map_or_else(|| format!("modality {m}"), |m| m.to_string()),
                    atoms: r.get::<_, i64>(1) as u64,
                    partitions: r.get::<_, i64>(2) as u64,
                    partitions_used: r.get::<_, i64>(3) as u64,
                    largest_share: r.get::<_, Option<f64>>(4).unwrap_or(0.0),
                }
            })
            .collect())
    })
}

/// Run `psql`-style tools against `settings`: the environment libpq reads.
pub fn libpq_env(settings: &ConnectionSettings) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("PGHOST", settings.host.clone()),
        ("PGPORT", settings.port.to_string()),
        ("PGUSER", settings.user.clone()),
        ("PGDATABASE", settings.database.clone()),
        ("PGSSLMODE", settings.ssl_mode.as_str().to_string()),
    ];
    if let Some(p) = &settings.password {
        env.push(("PGPASSWORD", p.expose().to_string()));
    }
    env
}
