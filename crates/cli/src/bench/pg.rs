//! `hart bench --database-url URL`: the PostgreSQL backend's figures (issue 3 "Speed"), each
//! beside a baseline measured on the same server in the same run:
//!
//! - bulk load: `hart ingest` of the unique-binary data set into a fresh database (atoms/s),
//!   beside a raw binary COPY of the very rows it wrote into another fresh database's `atoms`
//!   (same table, indexes and triggers);
//! - point lookups by key: p50/p99 on one connection, throughput on two, beside `pgbench -S`
//!   (prepared, same number of clients) on the same server;
//! - reconstruction: `cat` of a 1 MiB object (ms) and of the large object (MB/s), beside the
//!   in-database `hart_reconstruct`;
//! - partition spread of a mixed corpus (binary, text, licence texts).
//!
//! The databases are `hart_bench_<pid>_*`, created on the server of --database-url (its role
//! needs CREATEDB) and dropped at the end.

use super::{ingest_paths, write_random, Ctx, Data, Report, Section, Target, MB};
use anyhow::{bail, Context, Result};
use hart_core::Hash;
use hart_pg::bench::{self as pgb, BenchDb};
use hart_pg::{ConnectionSettings, PgStore};
use hart_store::{ObjectInfo, Store};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The PostgreSQL benchmark's state across sections.
pub(super) struct PgCtx {
    admin: ConnectionSettings,
    loaded: Option<Loaded>,
}

/// The database holding the loaded data sets.
struct Loaded {
    store: PgStore,
    /// The unique-binary object.
    bin: ObjectInfo,
    /// Set once the spread section added the rest of the mixed corpus.
    mixed: bool,
    /// Dropped last (after the store's connections).
    db: BenchDb,
}

impl PgCtx {
    pub(super) fn new(admin: ConnectionSettings) -> PgCtx {
        PgCtx { admin, loaded: None }
    }
}

fn pg(ctx: &mut Ctx) -> &mut PgCtx {
    ctx.pg.as_mut().expect("PostgreSQL sections run with --database-url")
}

/// Load the unique-binary data set into a fresh database (once); returns the load's time.
fn ensure_loaded(ctx: &mut Ctx) -> Result<Option<Duration>> {
    if pg(ctx).loaded.is_some() {
        return Ok(None);
    }
    let path = ctx.file(Data::Binary)?;
    let admin = pg(ctx).admin.clone();
    ctx.say("creating a fresh database for the load");
    let db = BenchDb::create(&admin, "load")?;
    let store = PgStore::connect(&db.settings)?;
    ctx.say(format!("ingesting the {} MiB unique-binary file into PostgreSQL", ctx.set.data_bytes >> 20));
    let (mut infos, took) = ingest_paths(&store, &[path])?;
    let bin = infos.pop().context("the ingest produced no object")?;
    pg(ctx).loaded = Some(Loaded { store, bin, mixed: false, db });
    Ok(Some(took))
}

fn loaded(ctx: &mut Ctx) -> &Loaded {
    pg(ctx).loaded.as_ref().expect("loaded")
}

/// Bulk loading: atoms/s through `hart ingest` beside a raw binary COPY of the same rows.
pub(super) fn load(ctx: &mut Ctx) -> Result<Report> {
    let mut r = Report::new(Section::PgLoad);
    // Measure a load of our own even if an earlier section loaded already.
    pg(ctx).loaded = None;
    let took = ensure_loaded(ctx)?.expect("just loaded");
    let (atoms, bytes, settings, native) = {
        let l = loaded(ctx);
        (l.bin.atoms_created, l.bin.size, l.db.settings.clone(), l.db.native_hilbert)
    };
    ctx.say("raw binary COPY of the same rows into another fresh database");
    let admin = pg(ctx).admin.clone();
    let raw_db = BenchDb::create(&admin, "raw")?;
    let scratch = ctx.dir.join("atoms.copy");
    let (rows, raw) = pgb::raw_copy_atoms(&settings, &raw_db.settings, None, &scratch)?;
    drop(raw_db);
    if rows != atoms {
        bail!("the load wrote {atoms} atoms but the database holds {rows}");
    }
    let mib = bytes >> 20;
    r.row(format!("bulk load, ingest {mib} MiB unique binary"), atoms as f64 / took.as_secs_f64(), "atoms/s")
        .vs("raw binary COPY of the same rows", Some(rows as f64 / raw.as_secs_f64()))
        .target(Target::AtLeast(50_000.0));
    r.row(format!("bulk load, ingest {mib} MiB unique binary"), bytes as f64 / MB / took.as_secs_f64(), "MB/s");
    r.note(format!(
        "{atoms} atoms in {:.1} s (decode, hash, binary COPY into a staging table, one merge per batch, commit); raw COPY {:.1} s",
        took.as_secs_f64(),
        raw.as_secs_f64()
    ));
    r.note("raw COPY: the same rows straight into `atoms` (all indexes and the validation trigger), no dedup, no reference counting");
    r.note(if native {
        "key check and child keys in C (the hart_native extension, decision 0014)"
    } else {
        "key check and child keys in PL/pgSQL: hart_native is not installed on this server (decision 0014; \
         scripts/pg.sh installs it), so bulk loads are slower"
    });

    // The same bytes as four files: `ingest` stores them on parallel sessions, one server
    // backend each (PgStore::parallel_sessions).
    let path = ctx.file(Data::Binary)?;
    let data = std::fs::read(&path)?;
    let parts: Vec<PathBuf> = (0..4).map(|i| ctx.dir.join(format!("binary-part-{i}.bin"))).collect();
    let quarter = data.len().div_ceil(4);
    for (p, chunk) in parts.iter().zip(data.chunks(quarter)) {
        std::fs::write(p, chunk)?;
    }
    drop(data);
    let split_db = BenchDb::create(&admin, "split")?;
    let split_store = PgStore::connect(&split_db.settings)?;
    let sessions = split_store.parallel_sessions();
    ctx.say(format!("ingesting the same bytes as 4 files, {sessions} sessions at once"));
    let (infos, split_took) = ingest_paths(&split_store, &parts)?;
    let split_atoms: u64 = infos.iter().map(|i| i.atoms_created).sum();
    drop(split_store);
    drop(split_db);
    for p in &parts {
        let _ = std::fs::remove_file(p);
    }
    r.row(
        format!("bulk load, ingest the same {mib} MiB as 4 files, {sessions} sessions"),
        split_atoms as f64 / split_took.as_secs_f64(),
        "atoms/s",
    )
    .vs("raw binary COPY of the one file's rows", Some(rows as f64 / raw.as_secs_f64()))
    .target(Target::AtLeast(50_000.0));
    r.note(format!("4 files: {split_atoms} atoms in {:.1} s", split_took.as_secs_f64()));
    Ok(r)
}

/// Find `prog` on PATH or among the PostgreSQL installations Debian lays out.
fn pg_tool(prog: &str) -> Option<PathBuf> {
    if let Some(p) = super::which(prog) {
        return Some(p);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin").join(prog))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop()
}

/// Run pgbench with the connection of `settings`; its stdout.
fn pgbench(settings: &ConnectionSettings, args: &[&str]) -> Result<String> {
    let bin = pg_tool("pgbench").context("pgbench is not installed (Debian: postgresql-client or postgresql)")?;
    let out = Command::new(&bin)
        .args(args)
        .envs(pgb::libpq_env(settings))
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    if !out.status.success() {
        bail!("pgbench {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `tps = N (without initial connection time)` figure of pgbench's report.
fn pgbench_tps(report: &str) -> Option<f64> {
    report
        .lines()
        .find(|l| l.trim_start().starts_with("tps =") && l.contains("without"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
}

/// Point lookups by key: latency on one connection, throughput on two, beside pgbench -S.
pub(super) fn lookup(ctx: &mut Ctx) -> Result<Report> {
    let mut r = Report::new(Section::PgLookup);
    ensure_loaded(ctx)?;
    let secs = if ctx.set.quick { 3 } else { 10 };
    let settings = loaded(ctx).db.settings.clone();
    ctx.say("sampling keys");
    let keys = pgb::sample_keys(&settings, 100_000)?;
    ctx.say(format!("point lookups by key, {secs} s on 1 connection, then {secs} s on 2"));
    let one = pgb::point_lookups(&settings, &keys, 1, Duration::from_secs(secs))?;
    let two = pgb::point_lookups(&settings, &keys, 2, Duration::from_secs(secs))?;

    let scale = if ctx.set.quick { "2" } else { "10" };
    ctx.say(format!("pgbench -i -s {scale}, then pgbench -S (prepared) with 1 and 2 clients, {secs} s each"));
    pgbench(&settings, &["-i", "-q", "-n", "-s", scale])?;
    let t = secs.to_string();
    let base1 = pgbench_tps(&pgbench(&settings, &["-S", "-n", "-M", "prepared", "-c", "1", "-j", "1", "-T", &t])?);
    let base2 = pgbench_tps(&pgbench(&settings, &["-S", "-n", "-M", "prepared", "-c", "2", "-j", "2", "-T", &t])?);

    let atoms = loaded(ctx).bin.atoms_created;
    r.row(format!("lookup by key, 1 connection, p99 ({atoms} atoms)"), one.p99_us, "µs")
        .vs("pgbench -S mean latency, 1 client", base1.map(|tps| 1e6 / tps))
        .target(Target::AtMost(1000.0));
    r.row("lookup by key, 1 connection, p50", one.p50_us, "µs");
    r.row("lookups by key, 1 connection", one.per_s, "lookups/s").vs("pgbench -S, 1 client", base1);
    let ratio = base2.map(|b| two.per_s / b);
    r.row("lookups by key, 2 connections", two.per_s, "lookups/s").vs("pgbench -S, 2 clients", base2);
    if let Some(x) = ratio {
        r.row("lookups by key ÷ pgbench -S, 2 connections", x, "×").target(Target::AtLeast(0.5));
    } else {
        r.note("pgbench's report had no tps line: no ratio");
    }
    r.note(format!(
        "{} lookups on 1 connection, {} on 2; each a prepared SELECT of value, geometry, hash, modality, ref_count by primary key",
        one.ops, two.ops
    ));
    Ok(r)
}

/// Bytes of `root` through `store.cat`, hashed (not kept): (bytes, BLAKE3, time).
fn cat_once(store: &PgStore, root: &Hash) -> Result<(u64, blake3::Hash, Duration)> {
    struct HashSink(blake3::Hasher);
    impl Write for HashSink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.update(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut sink = HashSink(blake3::Hasher::new());
    let start = Instant::now();
    let n = store.cat(root, &mut sink)?;
    Ok((n, sink.0.finalize(), start.elapsed()))
}

fn check(info: &ObjectInfo, n: u64, h: blake3::Hash) -> Result<()> {
    if n != info.size || Some(Hash(*h.as_bytes())) != info.source_hash {
        bail!("cat of object #{} returned other bytes than were ingested", info.id);
    }
    Ok(())
}

/// Reconstruction: a 1 MiB object (ms) and the large object (MB/s), beside hart_reconstruct.
pub(super) fn cat(ctx: &mut Ctx) -> Result<Report> {
    let mut r = Report::new(Section::PgCat);
    ensure_loaded(ctx)?;
    let one_path = ctx.dir.join("one-mib.dat");
    write_random(&one_path, 1 << 20, 0x4f4e45)?;
    let (mut infos, _) = ingest_paths(&loaded(ctx).store, &[one_path])?;
    let one = infos.pop().context("the ingest produced no object")?;
    let one_root = one.root.context("no root")?;
    let (store_settings, big) = {
        let l = loaded(ctx);
        (l.db.settings.clone(), l.bin.clone())
    };

    ctx.say("cat of the 1 MiB object (best of 5), then hart_reconstruct of it (best of 3)");
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let (n, h, d) = cat_once(&loaded(ctx).store, &one_root)?;
        check(&one, n, h)?;
        best = best.min(d);
    }
    let mut sql = Duration::MAX;
    for _ in 0..3 {
        let (n, d) = pgb::sql_reconstruct(&store_settings, &one_root)?;
        if n != one.size {
            bail!("hart_reconstruct returned {n} bytes for a {} byte object", one.size);
        }
        sql = sql.min(d);
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    r.row("cat 1 MiB object", ms(best), "ms").vs("SQL hart_reconstruct", Some(ms(sql))).target(Target::AtMost(50.0));

    let mib = big.size >> 20;
    ctx.say(format!("cat of the {mib} MiB object"));
    let (n, h, d) = cat_once(&loaded(ctx).store, &big.root.context("no root")?)?;
    check(&big, n, h)?;
    r.row(format!("cat {mib} MiB object"), n as f64 / MB / d.as_secs_f64(), "MB/s")
        .vs("SQL hart_reconstruct (1 MiB object)", Some(one.size as f64 / MB / sql.as_secs_f64()))
        .target(Target::AtLeast(50.0));
    r.note(format!(
        "{} atoms; read by key, level by level, {} keys at a time (one prepared query per partition, over two connections sharing a snapshot), a composite over leaves as one row with its pack, checked against its hash (decision 0013)",
        big.atoms_created, 32_768
    ));
    Ok(r)
}

/// How a mixed corpus spreads over the partitions.
pub(super) fn spread(ctx: &mut Ctx) -> Result<Report> {
    let mut r = Report::new(Section::PgSpread);
    ensure_loaded(ctx)?;
    if !loaded(ctx).mixed {
        // A quarter of the text data set (timed, beside a raw COPY of the rows it wrote),
        // then the licence texts when the machine has them.
        let text = ctx.file(Data::Text)?;
        let part = ctx.dir.join("text-part.txt");
        copy_prefix(&text, &part, (ctx.set.data_bytes / 4).max(1 << 20))?;
        ctx.say("adding text for a mixed corpus");
        let (infos, took) = ingest_paths(&loaded(ctx).store, &[part])?;
        let atoms: u64 = infos.iter().map(|i| i.atoms_created).sum();
        let bytes: u64 = infos.iter().map(|i| i.size).sum();
        ctx.say("raw binary COPY of the text rows into another fresh database");
        let (admin, settings) = (pg(ctx).admin.clone(), loaded(ctx).db.settings.clone());
        let raw_db = BenchDb::create(&admin, "rawtext")?;
        let scratch = ctx.dir.join("text.copy");
        let (rows, raw) = pgb::raw_copy_atoms(&settings, &raw_db.settings, Some(hart_core::Modality::Text), &scratch)?;
        drop(raw_db);
        if rows != atoms {
            bail!("the text ingest wrote {atoms} atoms but the database holds {rows} text atoms");
        }
        r.row(
            format!("bulk load, ingest {:.1} MiB of text", bytes as f64 / (1u64 << 20) as f64),
            atoms as f64 / took.as_secs_f64(),
            "atoms/s",
        )
        .vs("raw binary COPY of the same rows", Some(rows as f64 / raw.as_secs_f64()))
        .target(Target::AtLeast(50_000.0));
        r.note(format!(
            "text: {atoms} new atoms, {} references to atoms already stored, in {:.1} s; raw COPY {:.1} s",
            infos.iter().map(|i| i.atoms_referenced).sum::<u64>(),
            took.as_secs_f64(),
            raw.as_secs_f64()
        ));
        let licences = Path::new("/usr/share/common-licenses");
        if licences.is_dir() {
            ctx.say("adding the licence texts");
            ingest_paths(&loaded(ctx).store, &[licences.to_path_buf()])?;
        }
        pg(ctx).loaded.as_mut().expect("loaded").mixed = true;
    }
    let settings = loaded(ctx).db.settings.clone();
    for s in pgb::partition_spread(&settings)? {
        let even = 1.0 / s.partitions.max(1) as f64;
        r.row(format!("{}: largest partition's share of {} atoms", s.modality, s.atoms), 100.0 * s.largest_share, "%")
            .vs("even spread", Some(100.0 * even));
        r.note(format!("{}: {} of {} partitions hold atoms", s.modality, s.partitions_used, s.partitions));
    }
    r.note("partition plan: docs/decisions/0010-pg-partition-plan.md (quantiles of a measured corpus per modality)");
    Ok(r)
}

fn copy_prefix(src: &Path, dst: &Path, n: u64) -> Result<()> {
    use std::io::Read;
    let mut f = std::fs::File::open(src)?.take(n);
    let mut out = std::fs::File::create(dst)?;
    std::io::copy(&mut f, &mut out)?;
    Ok(())
}
