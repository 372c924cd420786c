//! Mutable state derived from the log: reference counts, the ingestion log, counters; and
//! its checkpoint file.
//!
//! Reference counts are stored sparsely: an atom absent from the map has exactly one
//! reference, which is what almost every atom of unique content has. The map holds only
//! shared atoms, atoms at zero (garbage until `gc`) and removed atoms ([`DEAD`]).

use hart_store::{ModalityStats, ObjectInfo, StoreError};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// Reference count of an atom that `gc` removed.
pub const DEAD: u32 = u32::MAX;
const STATE_MAGIC: &[u8; 8] = b"HARTSTA1";

/// An object: its ingestion-log row and its root's log offset.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjEntry {
    pub info: ObjectInfo,
    pub root_off: Option<u64>,
}

/// Live atoms per modality (index = modality byte), and bytes of removed records.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counters {
    pub per_modality: Vec<ModalityStats>,
    pub dead_atoms: u64,
    pub dead_bytes: u64,
}

/// No count can pass this: a log holds at most 2^62 bytes (2^32 segments of at most 2^30),
/// and every atom, and every byte of a value, takes at least one of them.
pub const COUNTER_MAX: u64 = 1 << 62;

impl Counters {
    /// Counters read from a checkpoint are within what a log can hold (so that the
    /// arithmetic done on them, and on sums of them, cannot overflow).
    pub fn check(&self) -> Result<(), String> {
        if self.per_modality.len() > 256 {
            return Err(format!("counters for {} modalities", self.per_modality.len()));
        }
        let sum = |f: fn(&ModalityStats) -> u64| {
            self.per_modality.iter().try_fold(0u64, |a, m| a.checked_add(f(m)).filter(|&s| s <= COUNTER_MAX))
        };
        let atoms = sum(|m| m.leaves).zip(sum(|m| m.composites)).and_then(|(l, c)| l.checked_add(c));
        let within = |v: Option<u64>| v.is_some_and(|v| v <= COUNTER_MAX);
        if !within(atoms)
            || !within(sum(|m| m.leaf_bytes))
            || !within(Some(self.dead_atoms))
            || !within(Some(self.dead_bytes))
        {
            return Err("counters larger than any log".into());
        }
        Ok(())
    }

    pub fn at(&mut self, modality: u8) -> &mut ModalityStats {
        let i = modality as usize;
        if self.per_modality.len() <= i {
            self.per_modality.resize(i + 1, ModalityStats::default());
        }
        &mut self.per_modality[i]
    }
}

#[derive(Debug, Default)]
pub struct State {
    pub refs: FxHashMap<u64, u32>,
    pub objects: BTreeMap<u64, ObjEntry>,
    pub next_object: u64,
    pub counters: Counters,
    /// Atoms a repair could not read (their records sit in damaged frames) but good records
    /// reference: their counts are exact, their own references were never counted. Healed
    /// when a good copy is ingested (then redirected), or dropped when nothing needs them.
    pub ghosts: rustc_hash::FxHashSet<u64>,
    /// Healed atoms: ghost offset → the good copy's offset. Children are read through it.
    pub redirects: FxHashMap<u64, u64>,
    /// Damaged stretches of the log (global start, end) a repair has set aside.
    pub quarantined: Vec<(u64, u64)>,
    /// Ghosts whose records still decode, by the hash they claim: a new atom with that hash
    /// heals its ghost. Derived from the log on load, never saved.
    pub ghost_hashes: FxHashMap<hart_core::Hash, u64>,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    objects: Vec<ObjEntry>,
    next_object: u64,
    counters: Counters,
    #[serde(default)]
    ghosts: Vec<u64>,
    #[serde(default)]
    redirects: Vec<(u64, u64)>,
    #[serde(default)]
    quarantined: Vec<(u64, u64)>,
}

impl State {
    /// Reference count of the atom at `off` (DEAD if removed).
    #[inline]
    pub fn refcount(&self, off: u64) -> u32 {
        self.refs.get(&off).copied().unwrap_or(1)
    }

    #[inline]
    pub fn is_dead(&self, off: u64) -> bool {
        self.refs.get(&off) == Some(&DEAD)
    }

    /// A new atom starts with no references.
    #[inline]
    pub fn created(&mut self, off: u64) {
        self.refs.insert(off, 0);
    }

    /// Add a reference; false if the atom was removed (a broken invariant).
    #[inline]
    pub fn incref(&mut self, off: u64) -> bool {
        match self.refs.get_mut(&off) {
            None => {
                self.refs.insert(off, 2);
            }
            Some(&mut DEAD) => return false,
            Some(n) if *n == 0 => {
                self.refs.remove(&off);
            }
            Some(n) => *n += 1,
        }
        true
    }

    /// Add `n` references at once (what `n` calls of [`State::incref`] do); false if the atom
    /// was removed.
    #[inline]
    pub fn add_refs(&mut self, off: u64, n: u32) -> bool {
        if n == 0 {
            return !self.is_dead(off);
        }
        match self.refs.get_mut(&off) {
            None => {
                self.refs.insert(off, n + 1);
            }
            Some(&mut DEAD) => return false,
            Some(c) if *c + n == 1 => {
                self.refs.remove(&off);
            }
            Some(c) => *c += n,
        }
        true
    }

    /// An atom created with `n` references already (what [`State::created`] and `n` calls of
    /// [`State::incref`] do).
    #[inline]
    pub fn created_with(&mut self, off: u64, n: u32) {
        if n != 1 {
            self.refs.insert(off, n);
        }
    }

    /// Drop a reference; the new count, or None if it was already zero or removed.
    #[inline]
    pub fn decref(&mut self, off: u64) -> Option<u32> {
        match self.refs.get_mut(&off) {
            None => {
                self.refs.insert(off, 0);
                Some(0)
            }
            Some(&mut DEAD) | Some(&mut 0) => None,
            Some(n) if *n == 2 => {
                self.refs.remove(&off);
                Some(1)
            }
            Some(n) => {
                *n -= 1;
                Some(*n)
            }
        }
    }

    /// Atoms at zero references, in log order.
    pub fn garbage(&self) -> Vec<u64> {
        let mut g: Vec<u64> = self.refs.iter().filter(|(_, &n)| n == 0).map(|(&o, _)| o).collect();
        g.sort_unstable();
        g
    }

    /// Write a checkpoint: magic, JSON length u64, JSON (objects, counters), entry count u64,
    /// entries (offset u64 LE, count u32 LE) sorted by offset, CRC-32 of all before it.
    pub fn save(&self, path: &Path) -> Result<(), StoreError> {
        let tmp = path.with_extension("tmp");
        let meta = Meta {
            objects: self.objects.values().cloned().collect(),
            next_object: self.next_object,
            counters: self.counters.clone(),
            ghosts: {
                let mut g: Vec<u64> = self.ghosts.iter().copied().collect();
                g.sort_unstable();
                g
            },
            redirects: {
                let mut r: Vec<(u64, u64)> = self.redirects.iter().map(|(&a, &b)| (a, b)).collect();
                r.sort_unstable();
                r
            },
            quarantined: self.quarantined.clone(),
        };
        let json = serde_json::to_vec(&meta).map_err(|e| StoreError::Backend(e.to_string()))?;
        let mut refs: Vec<(u64, u32)> = self.refs.iter().map(|(&o, &n)| (o, n)).collect();
        refs.sort_unstable();
        let mut buf = Vec::with_capacity(32 + json.len() + refs.len() * 12);
        buf.extend_from_slice(STATE_MAGIC);
        buf.extend_from_slice(&(json.len() as u64).to_le_bytes());
        buf.extend_from_slice(&json);
        buf.extend_from_slice(&(refs.len() as u64).to_le_bytes());
        for (o, n) in refs {
            buf.extend_from_slice(&o.to_le_bytes());
            buf.extend_from_slice(&n.to_le_bytes());
        }
        let crc = crc32fast::hash(&buf);
        buf.extend_from_slice(&crc.to_le_bytes());
        let mut f = std::fs::File::create(&tmp).map_err(|e| StoreError::io("create", &tmp, e))?;
        f.write_all(&buf).map_err(|e| StoreError::io("write", &tmp, e))?;
        f.sync_all().map_err(|e| StoreError::io("sync", &tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| StoreError::io("rename", &tmp, e))?;
        Ok(())
    }

    pub fn load(path: &Path) -> Result<State, StoreError> {
        let buf = std::fs::read(path).map_err(|e| StoreError::io("read", path, e))?;
        let corrupt = |what: &str| StoreError::Corrupt { path: path.to_path_buf(), offset: 0, what: what.to_string() };
        if buf.len() < 28 || &buf[..8] != STATE_MAGIC {
            return Err(corrupt("not a state checkpoint"));
        }
        let (body, crc) = buf.split_at(buf.len() - 4);
        if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4")) {
            return Err(corrupt("state checkpoint checksum mismatch"));
        }
        // Lengths read from the file are checked against its size before any use.
        let jl = u64::from_le_bytes(body[8..16].try_into().expect("8"));
        let p = usize::try_from(jl).ok().and_then(|jl| jl.checked_add(16)).filter(|&p| p <= body.len());
        let p = p.ok_or_else(|| corrupt("truncated"))?;
        let meta: Meta = serde_json::from_slice(&body[16..p]).map_err(|e| corrupt(&e.to_string()))?;
        meta.counters.check().map_err(|e| corrupt(&e))?;
        let n = u64::from_le_bytes(body.get(p..p + 8).ok_or_else(|| corrupt("truncated"))?.try_into().expect("8"));
        let entries = &body[p + 8..];
        if entries.len() % 12 != 0 || (entries.len() / 12) as u64 != n {
            return Err(corrupt("reference table has the wrong size"));
        }
        let n = entries.len() / 12;
        let mut refs = FxHashMap::default();
        refs.reserve(n);
        for e in entries.chunks_exact(12) {
            refs.insert(
                u64::from_le_bytes(e[..8].try_into().expect("8")),
                u32::from_le_bytes(e[8..].try_into().expect("4")),
            );
        }
        Ok(State {
            refs,
            objects: meta.objects.into_iter().map(|o| (o.info.id, o)).collect(),
            next_object: meta.next_object,
            counters: meta.counters,
            ghosts: meta.ghosts.into_iter().collect(),
            redirects: meta.redirects.into_iter().collect(),
            ghost_hashes: FxHashMap::default(),
            quarantined: meta.quarantined,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint file: magic, the JSON length as given, the JSON, the entry count as
    /// given, `entries` bytes, and a correct CRC.
    fn checkpoint(json_len: u64, json: &[u8], count: u64, entries: &[u8]) -> Vec<u8> {
        let mut b = STATE_MAGIC.to_vec();
        b.extend_from_slice(&json_len.to_le_bytes());
        b.extend_from_slice(json);
        b.extend_from_slice(&count.to_le_bytes());
        b.extend_from_slice(entries);
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    const META: &[u8] =
        br#"{"objects":[],"next_object":1,"counters":{"per_modality":[],"dead_atoms":0,"dead_bytes":0}}"#;

    fn load(bytes: &[u8]) -> Result<State, StoreError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.bin");
        std::fs::write(&path, bytes).unwrap();
        State::load(&path)
    }

    /// Fuzzing regression: a JSON length near 2^64 overflowed `16 + length`.
    #[test]
    fn load_rejects_json_length_past_the_file() {
        for jl in [u64::MAX, u64::MAX - 15, 1 << 40, META.len() as u64 + 1] {
            let b = checkpoint(jl, META, 0, &[]);
            assert!(matches!(load(&b), Err(StoreError::Corrupt { .. })), "json length {jl}");
        }
        assert!(load(&checkpoint(META.len() as u64, META, 0, &[])).is_ok());
    }

    /// Fuzzing regression: an entry count whose `× 12` wraps around to the table's real size
    /// (2^62 × 12 ≡ 0) passed the size check and then reserved 2^62 entries.
    #[test]
    fn load_rejects_entry_counts_that_wrap_around() {
        let jl = META.len() as u64;
        for (n, entries) in [(1u64 << 62, &[][..]), ((1 << 62) + 1, &[7u8; 12][..]), (u64::MAX, &[][..])] {
            let b = checkpoint(jl, META, n, entries);
            assert!(matches!(load(&b), Err(StoreError::Corrupt { .. })), "count {n}");
        }
        let mut one = 5u64.to_le_bytes().to_vec();
        one.extend_from_slice(&3u32.to_le_bytes());
        assert_eq!(load(&checkpoint(jl, META, 1, &one)).unwrap().refs.get(&5), Some(&3));
    }

    /// Fuzzing regression: counters near 2^64 overflowed when replay or `stats` added to
    /// them; a checkpoint's counters cannot pass what a log holds.
    #[test]
    fn load_rejects_counters_no_log_can_hold() {
        let big = |c: &str| {
            format!(
                r#"{{"objects":[],"next_object":1,"counters":{{"per_modality":{c},"dead_atoms":0,"dead_bytes":0}}}}"#
            )
        };
        for c in [
            format!(r#"[{{"leaves":{},"composites":0,"leaf_bytes":0}}]"#, u64::MAX),
            format!(r#"[{{"leaves":{m},"composites":{m},"leaf_bytes":0}}]"#, m = 1u64 << 61 | 1),
            format!(
                r#"[{{"leaves":0,"composites":0,"leaf_bytes":{m}}},{{"leaves":0,"composites":0,"leaf_bytes":{m}}}]"#,
                m = 1u64 << 61 | 1
            ),
        ] {
            let json = big(&c);
            let b = checkpoint(json.len() as u64, json.as_bytes(), 0, &[]);
            assert!(matches!(load(&b), Err(StoreError::Corrupt { .. })), "{c}");
        }
        let json = big(r#"[{"leaves":3,"composites":2,"leaf_bytes":9}]"#);
        assert!(load(&checkpoint(json.len() as u64, json.as_bytes(), 0, &[])).is_ok());
    }

    /// `add_refs(n)` and `created_with(n)` leave the map as `n` calls of `incref` would.
    #[test]
    fn batched_references_equal_single_ones() {
        for start in [None, Some(0), Some(2), Some(7)] {
            for n in 0..5 {
                let (mut one, mut many) = (State::default(), State::default());
                if let Some(c) = start {
                    one.refs.insert(9, c);
                    many.refs.insert(9, c);
                }
                for _ in 0..n {
                    assert!(one.incref(9));
                }
                assert!(many.add_refs(9, n));
                assert_eq!(one.refs, many.refs, "start {start:?}, n {n}");
            }
            let (mut one, mut many) = (State::default(), State::default());
            one.created(5);
            for _ in 0..start.unwrap_or(1) {
                one.incref(5);
            }
            many.created_with(5, start.unwrap_or(1));
            assert_eq!(one.refs, many.refs);
        }
        let mut s = State::default();
        s.refs.insert(3, DEAD);
        assert!(!s.add_refs(3, 1));
        assert!(!s.add_refs(3, 0));
    }
}
