//! `fsck`: recount every reference from the log, re-hash, check the indexes, rebuild objects.

use crate::log::LogPos;
use crate::read::{cat_at, HashWriter};
use crate::record::{self, Rec};
use crate::{corrupt, Inner};
use hart_core::{AtomKind, Hash, HilbertKey};
use hart_store::{FsckReport, Status, StoreError};

/// Recount every reference from the log, re-hash composites, check both indexes, and rebuild
/// every completed object.
pub(crate) fn fsck(inner: &Inner, progress: &dyn Fn(u64, u64)) -> Result<FsckReport, StoreError> {
    let mut r = FsckReport::default();
    let problem = |r: &mut FsckReport, p: String| {
        if r.problems.len() < 100 {
            r.problems.push(p);
        }
    };
    let total = inner.log.bytes();
    let mut offsets: Vec<u64> = Vec::new();
    let mut counts: Vec<u32> = Vec::new();
    let mut dead: Vec<u64> = Vec::new();
    let mut nodes: Vec<(u64, Vec<u64>)> = Vec::new();
    // Pass 1: every live atom in log order, and references from live composites.
    inner.log.scan(LogPos::default(), &mut |base, payload| {
        let mut p = 0;
        while p < payload.len() {
            let off = base + p as u64;
            let (rec, len) =
                record::decode(&payload[p..], off).ok_or_else(|| corrupt(&inner.dir, off, "undecodable record"))?;
            p += len;
            match rec {
                Rec::Leaf { .. } | Rec::Node { .. } if inner.d.state.is_dead(off) => dead.push(off),
                Rec::Leaf { .. } => {
                    offsets.push(off);
                    counts.push(0);
                }
                Rec::Node { children, .. } => {
                    offsets.push(off);
                    counts.push(0);
                    let mut kids: Vec<u64> = children.collect();
                    kids.sort_unstable();
                    kids.dedup();
                    nodes.push((off, kids));
                    if nodes.len() >= 4096 {
                        for (n, kids) in nodes.drain(..) {
                            for k in kids {
                                match offsets.binary_search(&k) {
                                    Ok(i) => counts[i] += 1,
                                    Err(_) => problem(
                                        &mut r,
                                        format!("composite at {n} references missing or removed atom at {k}"),
                                    ),
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        progress(base >> 32 << 30 | (base & 0xffff_ffff), total);
        Ok(())
    })?;
    for (n, kids) in nodes.drain(..) {
        for k in kids {
            match offsets.binary_search(&k) {
                Ok(i) => counts[i] += 1,
                Err(_) => problem(&mut r, format!("composite at {n} references missing or removed atom at {k}")),
            }
        }
    }
    for o in inner.d.state.objects.values() {
        if o.info.status == Status::Completed {
            match o.root_off.map(|ro| offsets.binary_search(&ro)) {
                Some(Ok(i)) => counts[i] += 1,
                _ => problem(&mut r, format!("object {} has no live root", o.info.id)),
            }
        }
    }
    // Pass 2: compare counts, re-hash, check indexes.
    for (i, &off) in offsets.iter().enumerate() {
        r.atoms_checked += 1;
        r.references_counted += u64::from(counts[i]);
        let stored = inner.d.state.refcount(off);
        if stored != counts[i] {
            problem(&mut r, format!("atom at {off}: stored reference count {stored}, recount {}", counts[i]));
        }
        let (m, hash, pos, kind) = inner.identity(off)?;
        if kind == AtomKind::Node {
            if let Rec::Node { children, .. } = inner.rec(off)?.0 {
                let kids = inner.hashes_of(children)?;
                let again = hart_core::atom::node_hash(m, &kids);
                if again != hash {
                    problem(&mut r, format!("composite at {off}: stored hash {hash} but children hash to {again}"));
                }
            }
        }
        if inner.find_hash(&hash)? != Some(off) {
            problem(&mut r, format!("atom at {off} ({hash}) is not found by its hash"));
        }
        if inner.find_key(&HilbertKey::new(m, &pos))?.map(|(o, _)| o) != Some(off) {
            problem(&mut r, format!("atom at {off} ({hash}) is not found by its Hilbert key"));
        }
    }
    for p in inner.hruns.verify().into_iter().chain(inner.kruns.verify()) {
        problem(&mut r, format!("index run {p}"));
    }
    // Pass 3: every completed object rebuilds to its source hash.
    for o in inner.d.state.objects.values() {
        if o.info.status != Status::Completed {
            continue;
        }
        let Some(root) = o.root_off else { continue };
        let mut hw = HashWriter(blake3::Hasher::new());
        match cat_at(inner, root, &mut hw) {
            Ok(n) => {
                r.objects_checked += 1;
                r.bytes_reconstructed += n;
                let h = Hash(*hw.0.finalize().as_bytes());
                if Some(h) != o.info.source_hash || n != o.info.size {
                    problem(
                        &mut r,
                        format!(
                            "object {} ({}) rebuilds to {n} bytes hashing {h}, expected {} bytes",
                            o.info.id, o.info.uri, o.info.size
                        ),
                    );
                }
            }
            Err(e) => problem(&mut r, format!("object {} ({}) does not rebuild: {e}", o.info.id, o.info.uri)),
        }
    }
    progress(total, total);
    Ok(r)
}
