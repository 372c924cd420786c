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

impl Counters {
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
}

#[derive(Serialize, Deserialize)]
struct Meta {
    objects: Vec<ObjEntry>,
    next_object: u64,
    counters: Counters,
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
        let jl = u64::from_le_bytes(body[8..16].try_into().expect("8")) as usize;
        let json = body.get(16..16 + jl).ok_or_else(|| corrupt("truncated"))?;
        let meta: Meta = serde_json::from_slice(json).map_err(|e| corrupt(&e.to_string()))?;
        let p = 16 + jl;
        let n =
            u64::from_le_bytes(body.get(p..p + 8).ok_or_else(|| corrupt("truncated"))?.try_into().expect("8")) as usize;
        let entries = body.get(p + 8..).ok_or_else(|| corrupt("truncated"))?;
        if entries.len() != n * 12 {
            return Err(corrupt("reference table has the wrong size"));
        }
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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
