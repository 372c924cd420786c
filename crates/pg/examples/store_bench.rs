//! Throughput of `PgStore` through the storage interface: ingest one file (put + commit:
//! atoms written per second) and `cat` it back (MB/s), with the in-database
//! `hart_reconstruct` of the same root as the baseline measured in the same run.
//!
//! `HART_TEST_DATABASE_URL=… cargo run --release -p hart-pg --example store_bench -- FILE [MODALITY]`
//! (creates and drops a database `hart_bench_<pid>`).

use std::time::Instant;

use hart_core::Modality;
use hart_pg::{ConnectionSettings, PgStore};
use hart_store::Store;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args.first().ok_or("usage: store_bench FILE [MODALITY]")?;
    let modality: Modality = args.get(1).map_or(Ok(Modality::Binary), |m| m.parse())?;
    let data = std::fs::read(path)?;
    let admin: ConnectionSettings = std::env::var("HART_TEST_DATABASE_URL")?.parse()?;
    let name = format!("hart_bench_{}", std::process::id());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let sql = |s: String| {
        rt.block_on(async {
            let (c, conn) = admin.to_pg_config().connect(tokio_postgres::NoTls).await?;
            let t = tokio::spawn(conn);
            c.batch_execute(&s).await?;
            drop(c);
            let _ = t.await;
            Ok::<_, tokio_postgres::Error>(())
        })
    };
    sql(format!("CREATE DATABASE \"{name}\""))?;
    let settings = admin.with_database(&name);
    let result = (|| -> Result<(), Box<dyn std::error::Error>> {
        let store = PgStore::migrate_and_connect(&settings)?;
        let t = Instant::now();
        let info = hart_store::ingest::ingest_bytes(&store, "bench://file", modality, &data)?;
        let put = t.elapsed().as_secs_f64();
        let root = info.root.ok_or("no root")?;
        let t = Instant::now();
        let mut out = Vec::with_capacity(data.len());
        store.cat(&root, &mut out)?;
        let cat = t.elapsed().as_secs_f64();
        assert_eq!(out, data, "cat returned other bytes");
        let mb = data.len() as f64 / 1e6;
        println!("file: {path}, {:.2} MB, {modality:?}", mb);
        println!(
            "ingest: {} atoms written, {} occurrences in {put:.2} s: {:.0} atoms/s, {:.2} MB/s",
            info.atoms_created,
            info.atoms_created + info.atoms_skipped,
            info.atoms_created as f64 / put,
            mb / put
        );
        let base = rt.block_on(async {
            let (c, conn) = settings.to_pg_config().connect(tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            let t = Instant::now();
            let r = c.query_one("SELECT octet_length(hart_reconstruct($1::bytea))", &[&root.0.as_slice()]).await?;
            let n: i32 = r.get(0);
            Ok::<_, tokio_postgres::Error>((t.elapsed().as_secs_f64(), n))
        })?;
        println!(
            "cat: {cat:.2} s, {:.2} MB/s; baseline SQL hart_reconstruct: {:.2} s, {:.2} MB/s; ratio {:.2}",
            mb / cat,
            base.0,
            mb / base.0,
            base.0 / cat
        );
        Ok(())
    })();
    sql(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))?;
    result
}
