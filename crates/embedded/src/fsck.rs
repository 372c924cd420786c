//! `fsck`: read the whole log (past damage), recount every reference, re-hash composites,
//! check the indexes, and rebuild every object with its Merkle tree verified; name every
//! damaged stretch of the log and the objects that need it.

use crate::log::{split, BadStretch, LogPos};
use crate::read::{cat_checked, Failure, HashWriter};
use crate::record::{self, Rec};
use crate::Inner;
use hart_core::{AtomKind, Hash, HilbertKey};
use hart_store::{DamagedObject, DamagedRegion, FsckReport, Status, StoreError};
use std::collections::BTreeSet;

/// The damaged stretches found, by global offset, for attributing offsets to them.
struct Regions {
    /// (global start, global end, index into the report's regions), sorted.
    spans: Vec<(u64, u64, usize)>,
}

impl Regions {
    fn find(&self, off: u64) -> Option<usize> {
        let i = self.spans.partition_point(|s| s.0 <= off);
        let s = self.spans.get(i.checked_sub(1)?)?;
        (off < s.1).then_some(s.2)
    }
}

/// Where a global offset is, for people.
fn place(inner: &Inner, off: u64) -> String {
    let (seg, pos) = split(off);
    format!("{} offset {pos}", inner.log.segment_path(seg).display())
}

/// Recount every reference from the log, re-hash composites, check both indexes, and rebuild
/// every completed object (verifying its tree and its source hash). Reads past damaged frames
/// and reports each, with the objects that need it; every problem is listed.
pub(crate) fn fsck(inner: &Inner, progress: &dyn Fn(u64, u64)) -> Result<FsckReport, StoreError> {
    let mut r = FsckReport::default();
    let total = inner.log.bytes();
    let mut offsets: Vec<u64> = Vec::new();
    let mut counts: Vec<u32> = Vec::new();
    let mut nodes: Vec<(u64, Vec<u64>)> = Vec::new();
    let mut stretches: Vec<BadStretch> = Vec::new();
    // References into damaged stretches, counted per composite (reported once each).
    let mut into_damage: Vec<(u64, u64)> = Vec::new();

    // The log must be as long as the last checkpoint says.
    let files = inner.log.file_lengths();
    let cp = inner.manifest.log;
    match files.get(cp.seg as usize) {
        Some(&len) if len < cp.off => stretches.push(BadStretch {
            seg: cp.seg,
            off: len,
            len: cp.off - len,
            cause: format!(
                "missing: the segment ends at {len} but the checkpoint says {}: its end was cut off",
                cp.off
            ),
        }),
        None if cp.off > 0 => stretches.push(BadStretch {
            seg: cp.seg,
            off: 0,
            len: cp.off,
            cause: "missing: the segment file is gone".into(),
        }),
        _ => {}
    }
    for (i, &want) in inner.manifest.segments.iter().enumerate() {
        if let Some(&len) = files.get(i) {
            if len < want && i != cp.seg as usize {
                stretches.push(BadStretch {
                    seg: i as u32,
                    off: len,
                    len: want - len,
                    cause: format!("missing: the segment ends at {len} but was {want} bytes long"),
                });
            }
        }
    }

    // Pass 1: every live atom in log order, and references from live composites.
    let mut visit = |base: u64, payload: &[u8]| -> Result<(), StoreError> {
        let mut p = 0;
        while p < payload.len() {
            let off = base + p as u64;
            let Some((rec, len)) = record::decode(&payload[p..], off) else {
                // A checksummed frame whose records do not decode: a writer's bug, not a flip.
                stretches.push(BadStretch {
                    seg: split(off).0 as u32,
                    off: split(off).1 as u64,
                    len: (payload.len() - p) as u64,
                    cause: "a record in a frame with a good checksum does not decode".into(),
                });
                break;
            };
            p += len;
            match rec {
                Rec::Leaf { .. } | Rec::Node { .. } if inner.d.state.is_dead(off) => {}
                Rec::Leaf { .. } => {
                    offsets.push(off);
                    counts.push(0);
                }
                Rec::Node { children, .. } => {
                    offsets.push(off);
                    counts.push(0);
                    let mut kids: Vec<u64> = children.map(|c| inner.redirect(c)).collect();
                    kids.sort_unstable();
                    kids.dedup();
                    nodes.push((off, kids));
                }
                _ => {}
            }
        }
        progress((base >> 32) << 30 | (base & 0xffff_ffff), total);
        Ok(())
    };
    let mut unreadable = Vec::new();
    inner.log.scan_all(LogPos::default(), &mut visit, &mut |b| unreadable.push(b))?;
    stretches.extend(unreadable);
    stretches.sort_by_key(|b| (b.seg, b.off));
    for b in &stretches {
        r.damaged_regions.push(DamagedRegion {
            file: inner.log.segment_path(b.seg as usize).display().to_string(),
            offset: b.off,
            length: b.len,
            cause: b.cause.clone(),
            objects: Vec::new(),
            repaired: false,
        });
    }
    let regions = Regions {
        spans: stretches
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let g = (u64::from(b.seg) << 32) | b.off;
                (g, g + b.len, i)
            })
            .collect(),
    };
    let ghosts = &inner.d.state.ghosts;
    let mut needed = vec![false; stretches.len()];
    let mut reference =
        |r: &mut FsckReport, from: String, k: u64, counts: &mut Vec<u32>| match offsets.binary_search(&k) {
            Ok(i) => counts[i] += 1,
            Err(_) => match regions.find(k) {
                Some(g) => {
                    into_damage.push((0, k));
                    // A ghost (set aside by a repair) is known; anything else is needed and lost.
                    if !ghosts.contains(&k) {
                        needed[g] = true;
                    }
                }
                None if ghosts.contains(&k) => {}
                None => r.problems.push(format!("{from} references a missing or removed atom at {}", place(inner, k))),
            },
        };
    for (n, kids) in std::mem::take(&mut nodes) {
        for k in kids {
            reference(&mut r, format!("the composite at {}", place(inner, n)), k, &mut counts);
        }
    }
    for o in inner.d.state.objects.values() {
        if o.info.status == Status::Completed {
            match o.root_off {
                Some(ro) => reference(&mut r, format!("object {} ({})", o.info.id, o.info.uri), ro, &mut counts),
                None => r.problems.push(format!("object {} ({}) is completed but has no root", o.info.id, o.info.uri)),
            }
        }
    }

    // A repaired store's ghosts keep exact counts: compare them all unless something live
    // still needs a damaged stretch. A stretch nothing live needs is set aside (repaired).
    let damaged = needed.iter().any(|&n| n);
    // (Past the checkpoint, a writer's open refuses the store until a repair: a problem.)
    let checkpoint = inner.manifest.log.global();
    for (i, reg) in r.damaged_regions.iter_mut().enumerate() {
        reg.repaired = !needed[i]
            && regions.spans.iter().any(|s| {
                s.2 == i && s.1 <= checkpoint && inner.d.state.quarantined.iter().any(|q| q.0 <= s.0 && s.1 <= q.1)
            });
    }

    // Pass 2: compare counts, re-hash composites, check indexes.
    for (i, &off) in offsets.iter().enumerate() {
        r.atoms_checked += 1;
        r.references_counted += u64::from(counts[i]);
        let stored = inner.d.state.refcount(off);
        if stored != counts[i] && !damaged {
            r.problems.push(format!(
                "atom at {}: stored reference count {stored}, recount {}",
                place(inner, off),
                counts[i]
            ));
        }
        if let Err(p) = check_atom(inner, off) {
            r.problems.push(p);
        }
    }
    if damaged {
        let off_by: usize =
            offsets.iter().enumerate().filter(|&(i, &o)| inner.d.state.refcount(o) != counts[i]).count();
        if off_by > 0 {
            r.problems.push(format!(
                "{off_by} atoms' stored reference counts differ from a recount of the readable log; references \
                 held by records in the damaged stretches cannot be recounted (`hart fsck --repair` rebuilds them)"
            ));
        }
    }
    for p in inner.hruns.verify().into_iter().chain(inner.kruns.verify()) {
        r.problems.push(format!("index run {p}"));
    }

    // Pass 3: every completed object rebuilds, verified, to its source hash.
    for o in inner.d.state.objects.values() {
        if o.info.status != Status::Completed {
            continue;
        }
        let (Some(root_off), Some(root)) = (o.root_off, o.info.root) else { continue };
        let root_off = inner.redirect(root_off);
        let mut hw = HashWriter(blake3::Hasher::new());
        let damage = match cat_checked(inner, root_off, &root, &mut hw) {
            Ok(n) => {
                r.objects_checked += 1;
                r.bytes_reconstructed += n;
                let h = Hash(*hw.0.finalize().as_bytes());
                let want = o.info.source_hash.unwrap_or_default();
                if h != want || n != o.info.size {
                    Some(format!("rebuilds to {n} bytes hashing {h}, expected {} bytes hashing {want}", o.info.size))
                } else {
                    None
                }
            }
            Err(Failure::Damage(d)) => {
                // Every damaged stretch the object's tree passes through, not only the first.
                let mut hit: BTreeSet<usize> = touched(inner, root_off, &regions);
                hit.extend(regions.find(d.off));
                for i in &hit {
                    r.damaged_regions[*i].objects.push(o.info.id);
                }
                let found = if d.found == Hash::default() { "nothing readable".into() } else { d.found.to_hex() };
                Some(format!(
                    "the atom at {} is damaged: {} (expected hash {}, found {}); good bytes end at byte {}",
                    place(inner, d.off),
                    d.what,
                    d.expected,
                    found,
                    d.byte
                ))
            }
            Err(Failure::Error(e)) => Some(format!("does not rebuild: {e}")),
        };
        if let Some(damage) = damage {
            r.problems.push(format!("object {} ({}) {damage}", o.info.id, o.info.uri));
            r.damaged_objects.push(DamagedObject { id: o.info.id, uri: o.info.uri.clone(), damage });
        }
    }
    let ghosts_left = inner.d.state.ghosts.len();
    if ghosts_left > 0 {
        r.notes.push(format!(
            "{ghosts_left} atom(s) set aside by a repair wait for a good copy: ingest the files of the objects \
             `hart ls --all` shows as failed (damaged) to heal them"
        ));
    }
    if !inner.d.state.redirects.is_empty() {
        r.notes.push(format!("{} damaged atom(s) were healed by good copies", inner.d.state.redirects.len()));
    }
    for reg in r.damaged_regions.iter().rev() {
        if reg.repaired && reg.objects.is_empty() {
            r.notes.push(format!(
                "repaired: {} damaged bytes at {} offset {} ({}) are set aside; nothing live reads them",
                reg.length, reg.file, reg.offset, reg.cause
            ));
            continue;
        }
        let objects = if reg.objects.is_empty() {
            "no object needs it".to_string()
        } else {
            format!(
                "needed by object{} {}",
                if reg.objects.len() == 1 { "" } else { "s" },
                reg.objects.iter().map(|i| format!("#{i}")).collect::<Vec<_>>().join(", ")
            )
        };
        r.problems.insert(
            0,
            format!(
                "damaged log: {} bytes at {} offset {}: {}; {objects}",
                reg.length, reg.file, reg.offset, reg.cause
            ),
        );
    }
    let lost = into_damage.iter().filter(|&&(_, k)| !inner.d.state.ghosts.contains(&k)).count();
    if lost > 0 {
        r.problems.push(format!(
            "{lost} references point into damaged stretches of the log (`hart fsck --repair` sets them aside)"
        ));
    }
    progress(total, total);
    Ok(r)
}

/// One atom's own checks: a composite's children hash to it; both indexes find it.
fn check_atom(inner: &Inner, off: u64) -> Result<(), String> {
    let at = || place(inner, off);
    let (m, hash, pos, kind) = inner.identity(off).map_err(|e| format!("atom at {}: {e}", at()))?;
    if kind == AtomKind::Node {
        if let Ok((Rec::Node { children, .. }, _)) = inner.rec(off) {
            let kids = inner
                .hashes_of(children.map(|c| inner.redirect(c)))
                .map_err(|e| format!("composite at {}: a child cannot be read: {e}", at()))?;
            let again = hart_core::atom::node_hash(m, &kids);
            if again != hash {
                return Err(format!("composite at {}: stored hash {hash} but its children hash to {again}", at()));
            }
        }
    }
    if inner.find_hash(&hash).ok().flatten() != Some(off) {
        return Err(format!("atom at {} ({hash}) is not found by its hash", at()));
    }
    if inner.find_key(&HilbertKey::new(m, &pos)).ok().flatten().map(|(o, _)| o) != Some(off) {
        return Err(format!("atom at {} ({hash}) is not found by its Hilbert key", at()));
    }
    Ok(())
}

/// The damaged stretches the tree under `root` passes through (its structure read as far as
/// it decodes; nothing is hashed).
fn touched(inner: &Inner, root: u64, regions: &Regions) -> BTreeSet<usize> {
    let mut hit = BTreeSet::new();
    if regions.spans.is_empty() {
        return hit;
    }
    let mut seen = rustc_hash::FxHashSet::default();
    let mut stack = vec![root];
    while let Some(o) = stack.pop() {
        if !seen.insert(o) {
            continue;
        }
        if let Some(i) = regions.find(o) {
            hit.insert(i);
            continue;
        }
        if let Ok((Rec::Node { children, .. }, _)) = inner.rec(o) {
            stack.extend(children.map(|c| inner.redirect(c)));
        }
    }
    hit
}
