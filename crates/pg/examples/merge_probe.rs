//! Where the time of a merge goes: stages a file's atoms in batches (multi-row INSERT from
//! arrays, not yet binary COPY) and times staging and `hart_merge_stage()` separately, then
//! times `hart_reconstruct`. A probe for the backend's design, not the benchmark command.
//!
//! `HART_TEST_DATABASE_URL=… cargo run --release -p hart-pg --example merge_probe -- FILE [BATCH [MODALITY]]`
//! (creates and drops a database `hart_probe_<pid>`).

use std::time::Instant;

use hart_core::features::leaf_identity;
use hart_core::tree::{Child, NodeOut, TreeBuilder};
use hart_core::{HilbertKey, Modality};
use hart_pg::ConnectionSettings;

struct Row {
    key: HilbertKey,
    geom: Vec<u8>,
    value: Option<Vec<u8>>,
    hash: [u8; 32],
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args.first().ok_or("usage: merge_probe FILE [BATCH]")?;
    let batch: usize = args.get(1).map_or(Ok(5000), |b| b.parse())?;
    let data = std::fs::read(path)?;
    let modality: Modality = args.get(2).map_or(Ok(Modality::Text), |m| m.parse())?;

    let t = Instant::now();
    let decoded = hart_decode::decode_all(modality, &data);
    let mut seen = std::collections::HashSet::new();
    let mut rows = Vec::new();
    let mut tree = TreeBuilder::new(modality);
    // Rows in the order ingest produces them: each composite right after its last child.
    let mut made: Vec<(hart_core::Hash, hart_core::Position, Vec<hart_core::Position>)> = Vec::new();
    let take_nodes = |rows: &mut Vec<Row>,
                      made: &mut Vec<(hart_core::Hash, hart_core::Position, Vec<hart_core::Position>)>,
                      seen: &mut std::collections::HashSet<hart_core::Hash>| {
        for (hash, pos, kids) in made.drain(..) {
            let kids: Vec<hart_core::Position> = kids;
            if seen.insert(hash) {
                rows.push(Row {
                    key: HilbertKey::new(modality, &pos),
                    geom: hart_core::geom::ewkb(&pos, &kids),
                    value: None,
                    hash: hash.0,
                });
            }
        }
    };
    for v in &decoded.leaves {
        let (hash, pos) = leaf_identity(modality, v);
        if seen.insert(hash) {
            rows.push(Row {
                key: HilbertKey::new(modality, &pos),
                geom: hart_core::geom::ewkb(&pos, &[]),
                value: Some(v.clone()),
                hash: hash.0,
            });
        }
        tree.push(Child { hash, pos }, &mut |n: &NodeOut<'_>| {
            made.push((n.hash, n.pos, n.children.iter().map(|c| c.pos).collect()));
        });
        take_nodes(&mut rows, &mut made, &mut seen);
    }
    let root = tree
        .finish(&mut |n: &NodeOut<'_>| {
            made.push((n.hash, n.pos, n.children.iter().map(|c| c.pos).collect()));
        })
        .ok_or("empty file")?;
    take_nodes(&mut rows, &mut made, &mut seen);
    println!("{}: {} bytes, {} distinct atoms, built in {:?}", path, data.len(), rows.len(), t.elapsed());

    let admin: ConnectionSettings = std::env::var("HART_TEST_DATABASE_URL")?.parse()?;
    let name = format!("hart_probe_{}", std::process::id());
    let (a, conn) = admin.to_pg_config().connect(tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    a.batch_execute(&format!("CREATE DATABASE {name}")).await?;
    let settings = admin.with_database(&name);
    let (mut c, conn) = settings.to_pg_config().connect(tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    hart_pg::migrate(&mut c).await?;
    if std::env::var("PROBE_EXPLAIN").is_ok() {
        // Plans of the statements inside hart_merge_stage, in the server log.
        c.batch_execute(
            "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 20;
             SET auto_explain.log_nested_statements = on; SET auto_explain.log_analyze = on;
             SET auto_explain.log_level = warning",
        )
        .await?;
    }

    let (mut stage_t, mut merge_t) = (0f64, 0f64);
    for chunk in rows.chunks(batch) {
        let xy: Vec<i64> = chunk.iter().map(|r| r.key.h_xy as i64).collect();
        let yz: Vec<i64> = chunk.iter().map(|r| r.key.h_yz as i64).collect();
        let zm: Vec<i64> = chunk.iter().map(|r| r.key.h_zm as i64).collect();
        let geom: Vec<&[u8]> = chunk.iter().map(|r| r.geom.as_slice()).collect();
        let value: Vec<Option<&[u8]>> = chunk.iter().map(|r| r.value.as_deref()).collect();
        let modality: Vec<i16> = vec![i16::from(modality.as_u8()); chunk.len()];
        let hash: Vec<&[u8]> = chunk.iter().map(|r| &r.hash[..]).collect();
        let tx = c.transaction().await?;
        let t = Instant::now();
        tx.execute("SELECT hart_stage()", &[]).await?;
        tx.execute(
            "INSERT INTO hart_stage (h_xy, h_yz, h_zm, geom, value, modality, content_hash)
             SELECT x, y, z, ST_GeomFromEWKB(g), v, m, h
             FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bytea[], $5::bytea[],
                         $6::smallint[], $7::bytea[]) AS u(x, y, z, g, v, m, h)",
            &[&xy, &yz, &zm, &geom, &value, &modality, &hash],
        )
        .await?;
        stage_t += t.elapsed().as_secs_f64();
        let t = Instant::now();
        tx.query_one("SELECT * FROM hart_merge_stage()", &[]).await?;
        tx.commit().await?;
        merge_t += t.elapsed().as_secs_f64();
    }
    let n = rows.len() as f64;
    println!("stage: {:.2} s ({:.0} atoms/s)", stage_t, n / stage_t);
    println!("merge: {:.2} s ({:.0} atoms/s)", merge_t, n / merge_t);

    let key = HilbertKey::new(modality, &root.pos);
    for run in 0..2 {
        let t = Instant::now();
        let bytes: Vec<u8> = c
            .query_one(
                "SELECT hart_reconstruct($1, $2, $3)",
                &[&(key.h_xy as i64), &(key.h_yz as i64), &(key.h_zm as i64)],
            )
            .await?
            .get(0);
        let s = t.elapsed().as_secs_f64();
        assert!(bytes == data, "hart_reconstruct differs from the file");
        println!("hart_reconstruct run {run}: {:.2} s ({:.2} MB/s)", s, data.len() as f64 / s / 1e6);
    }
    drop(c);
    a.batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)")).await?;
    Ok(())
}
