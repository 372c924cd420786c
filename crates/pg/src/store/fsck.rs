//! `fsck` on PostgreSQL: reference counts recounted, packs compared with their children,
//! leaves re-hashed, every completed object rebuilt and compared with its source hash.

use std::io::Write;

use deadpool_postgres::Object;
use hart_core::atom::leaf_hash;
use hart_core::{Hash, LEAF_MAX};
use hart_store::{DamagedObject, FsckReport, StoreError};

use super::read::{key_of_hash, root_not_stored, walk};
use super::{hash_of, modality_of, object_info, DbError, DbResult, Partitions, OBJECTS};

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

pub(super) async fn fsck(c: &Object, parts: &Partitions, progress: &dyn Fn(u64, u64)) -> DbResult<FsckReport> {
    let mut report = FsckReport::default();
    // A whole-store check runs as long as the store is big: no statement timeout inside it.
    c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL statement_timeout = 0").await?;
    let r = async {
        // References recounted from scratch: one per distinct child of each composite, one per
        // live object on its root. Every mismatch is listed (no cap), as every pack below.
        let rows = c.query("SELECT content_hash, stored, recount FROM hart_refcount_mismatches(NULL)", &[]).await?;
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
        for r in c.query("SELECT content_hash FROM hart_pack_mismatches(NULL)", &[]).await? {
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
            let mut w = HashingWriter(blake3::Hasher::new(), 0);
            let walked = match key_of_hash(c, &root).await? {
                Some(key) => walk(&[c], parts, key, &root, &mut w).await,
                None => Err(root_not_stored(c, parts, &root).await?.into()),
            };
            let damage = match walked {
                Ok(_) => {
                    let got = Hash(*w.0.finalize().as_bytes());
                    (Some(got) != info.source_hash || w.1 != info.size).then(|| {
                        format!(
                            "rebuilt {} bytes hashing to {got}, expected {} bytes hashing to {}",
                            w.1,
                            info.size,
                            info.source_hash.map_or_else(|| "(no source hash recorded)".into(), |h| h.to_hex())
                        )
                    })
                }
                // The walk verifies the tree (read.rs): damage names the atom and where it is.
                Err(DbError::Store(StoreError::Damaged { expected, found, location, what, byte })) => Some(format!(
                    "damaged at {location}: {what} (expected hash {expected}, found {found}); \
                     its bytes from byte {} on cannot be read",
                    byte.unwrap_or(0)
                )),
                Err(e) => {
                    report.problems.push(format!("object {} ({}): {e}", info.id, info.uri));
                    None
                }
            };
            if let Some(damage) = damage {
                report.problems.push(format!("object {} ({}): {damage}", info.id, info.uri));
                report.damaged_objects.push(DamagedObject { id: info.id, uri: info.uri.clone(), damage });
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
