//! Hartonomous embedded engine: the zero-setup default store, a directory on disk.
//!
//! **Architecture invariant:** the append-only log (`log/*.seg`) is the only source of truth.
//! Everything else — the hash index, the Hilbert-key index, reference counts, the ingestion
//! log — is derived from it, checkpointed, and rebuilt on open by replaying the log from the
//! last checkpoint. A crash at any moment loses at most the frames after the last one fully
//! written; the next writer cuts the torn tail off.
//!
//! **Architecture invariant:** an atom's identity inside the engine is its log offset, and a
//! composite's children always sit at lower offsets (they are written first), so composites
//! store children as small deltas and every walk of the DAG is a walk backwards in the log.
//!
//! What is deliberately absent: positions, keys and geometry of leaves are not stored (they
//! follow from the value); segments are not rewritten (removed atoms stay as dead bytes until
//! a compaction, counted in `stats`).

mod fsck;
#[doc(hidden)]
pub mod fuzzing;
mod hot;
mod index;
mod log;
mod memtable;
mod read;
mod record;
mod session;
mod state;
mod varint;

use hart_core::features::leaf_identity;
use hart_core::{atom::leaf_hash, AtomKind, Hash, HilbertKey, Modality, Position};
use hart_store::{
    AtomRecord, Batch, FsckReport, GcReport, ObjectInfo, ObjectSummary, Op, Session, SourceInfo, Stats, Status, Store,
    StoreError,
};
use hot::HotCache;
use index::Runs;
use log::{Log, LogPos};
use record::Rec;
use serde::{Deserialize, Serialize};
use session::EmbeddedSession;
use state::{ObjEntry, State, DEAD};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard};

/// On-disk format version of the embedded store (docs/FORMAT.md).
pub const STORE_FORMAT: u32 = 1;
/// Entries in a memtable before they are spilled into runs.
const MEM_LIMIT: usize = 400 * 1024;
/// Capacity reserved for each memtable: 7/8 of 2^19 buckets, with room for a whole batch past
/// the limit (the limit is checked between batches), so the tables never grow.
const MEM_RESERVE: usize = 448 * 1024;
/// Log bytes after which a checkpoint is taken, bounding replay on open.
const CHECKPOINT_BYTES: u64 = 512 << 20;
/// Entries per generation of the writer's cache of recently used atoms.
const HOT_CACHE: usize = 1 << 17;
/// Log bytes after which the log is fsynced during long ingests.
const SYNC_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    generation: u64,
    log: LogPos,
    state: Option<u64>,
    hash_runs: Vec<u64>,
    key_runs: Vec<u64>,
    next_run: u64,
    /// Each segment's length at the checkpoint (a segment found shorter was cut).
    #[serde(default)]
    segments: Vec<u64>,
}

/// How to open a store.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    /// Open without the writer lock: a consistent snapshot for queries.
    pub read_only: bool,
    /// fsync at every commit (default: at checkpoints, every 64 MiB, and on flush/close).
    pub sync_every_commit: bool,
    /// Rebuild every derived file (indexes, reference counts, the ingestion log's state, the
    /// manifest) from the log, reading past damaged frames: `hart fsck --repair`. (A writer
    /// also rebuilds by itself when a derived file is missing or unreadable.)
    pub rebuild: bool,
}

/// When [`EmbeddedStore::load`] rebuilds the derived files from the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rebuild {
    Never,
    IfNeeded,
    Always,
}

/// What a rebuild found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rebuilt {
    /// Damaged stretches of the log it read past.
    pub damaged: u64,
    /// Records it skipped because they needed what a damaged stretch held.
    pub skipped: u64,
}

/// The embedded store.
pub struct EmbeddedStore {
    dir: PathBuf,
    inner: RwLock<Inner>,
    /// Sessions hold it shared; `gc` takes it exclusively so it never races an ingest.
    gate: RwLock<()>,
    opts: OpenOptions,
    _lock: Option<std::fs::File>,
}

#[inline]
fn prefix_hashes(hash: &Hash) -> (u64, u64) {
    index::slice_hashes(&hash.0[..8])
}

/// Everything derived from the log.
#[derive(Default)]
struct Derived {
    /// Atoms indexed since the last spill, by hash and by key.
    mem: memtable::MemTable,
    state: State,
    /// Reused buffer for a composite's distinct children.
    kids: Vec<u64>,
    /// During a rebuild: the damaged stretches of the log (global start, end), sorted. An atom
    /// in one that a good record references becomes a ghost ([`State::ghosts`]).
    bad: Vec<(u64, u64)>,
}

pub(crate) struct Inner {
    dir: PathBuf,
    log: Log,
    hruns: Runs<16>,
    kruns: Runs<8>,
    d: Derived,
    manifest: Manifest,
    poisoned: Option<String>,
    checkpointed_at: u64,
    /// Runs merged away since the last checkpoint: the durable manifest may still name them.
    pending_delete: Vec<PathBuf>,
    /// Set when this open rebuilt every derived file from the log.
    rebuilt: Option<Rebuilt>,
    /// Damage this open found in the log (a reader opens anyway; its reads verify).
    damage: Option<String>,
    /// Objects a rebuild found damaged and marked failed.
    damaged_objects: u64,
    /// Recently put or found atoms, across sessions: a file's vocabulary is mostly the
    /// previous file's, and this spares a trip to the index runs for each of its atoms.
    hot: HotCache,
}

/// An atom found by its Hilbert key: its offset, and its hash and position when the lookup
/// derived them (to verify the key).
type KeyHit = (u64, Option<(Hash, Position)>);

/// What a caller already knows of the atom at an offset, so that [`Inner::record`] does not
/// derive it again: its hash, or its hash, position and key.
#[derive(Clone, Copy)]
enum Known<'a> {
    Nothing,
    Hash(&'a Hash),
    Identity(&'a Hash, &'a Position, &'a HilbertKey),
}

enum Probe {
    Found(u64),
    /// Found through the index runs: an atom this process has not written or checked yet.
    FoundInRuns(u64),
    Collision(u64),
    New,
}

#[derive(Serialize, Deserialize)]
struct BeginInfo {
    uri: String,
    modality: Modality,
    size: Option<u64>,
    started_at: u64,
}

#[derive(Serialize, Deserialize)]
struct FailInfo {
    error: String,
    completed_at: u64,
}

#[derive(Serialize, Deserialize)]
struct CommitInfo {
    status: Status,
    root: Hash,
    source_hash: Hash,
    size: u64,
    created: u64,
    referenced: u64,
    skipped: u64,
    completed_at: u64,
}

pub(crate) fn corrupt(path: &Path, offset: u64, what: impl Into<String>) -> StoreError {
    StoreError::Corrupt { path: path.to_path_buf(), offset, what: what.into() }
}

impl Derived {
    /// Index a new atom by hash and by key.
    #[inline]
    fn index(&mut self, off: u64, hash: Hash, key: &HilbertKey) {
        self.mem.insert(hash, *key, off);
    }

    fn leaf(&mut self, off: u64, modality: Modality, value: &[u8], hash: Hash, pos: &Position) {
        self.mem.insert(hash, HilbertKey::new(modality, pos), off);
        self.state.created(off);
        let c = self.state.counters.at(modality.as_u8());
        c.leaves += 1;
        c.leaf_bytes += value.len() as u64;
    }

    /// A new composite: one reference to each distinct child. Returns how many of those
    /// children sit below `before` (existed before the current session).
    fn node(
        &mut self,
        off: u64,
        modality: Modality,
        hash: Hash,
        pos: &Position,
        children: &mut dyn Iterator<Item = u64>,
        before: u64,
    ) -> Result<u64, String> {
        self.mem.insert(hash, HilbertKey::new(modality, pos), off);
        self.state.created(off);
        self.state.counters.at(modality.as_u8()).composites += 1;
        let mut kids = std::mem::take(&mut self.kids);
        kids.clear();
        kids.extend(children);
        kids.sort_unstable();
        kids.dedup();
        let mut old = 0;
        let mut result = Ok(());
        for &k in &kids {
            self.touch(k);
            if !self.state.incref(k) {
                result = Err(format!("composite at {off} references removed atom at {k}"));
                break;
            }
            if k < before {
                old += 1;
            }
        }
        self.kids = kids;
        result.map(|()| old)
    }

    /// Remove an atom at zero references: mark it dead and release its children. Children
    /// that reach zero are pushed to `zeros`.
    fn kill(&mut self, log: &Log, off: u64, zeros: &mut Vec<u64>) -> Result<u64, StoreError> {
        if self.state.refcount(off) != 0 {
            return Err(corrupt(log.dir(), off, "gc of an atom that is still referenced"));
        }
        // A ghost's record cannot be read, and its own references were never counted.
        if self.state.ghosts.remove(&off) {
            self.state.refs.insert(off, DEAD);
            return Ok(0);
        }
        let bytes = log.at(off).ok_or_else(|| corrupt(log.dir(), off, "gc of an atom outside the log"))?;
        let (rec, len) = record::decode(bytes, off).ok_or_else(|| corrupt(log.dir(), off, "undecodable record"))?;
        // The memtable keeps its entry: lookups skip dead atoms, spills drop them, and storing
        // the atom again replaces it.
        match rec {
            Rec::Leaf { modality, value } => {
                Modality::from_u8(modality).map_err(|e| corrupt(log.dir(), off, e.to_string()))?;
                let c = self.state.counters.at(modality);
                let under = || corrupt(log.dir(), off, "gc of an atom the counters do not hold");
                c.leaves = c.leaves.checked_sub(1).ok_or_else(under)?;
                c.leaf_bytes = c.leaf_bytes.checked_sub(value.len() as u64).ok_or_else(under)?;
            }
            Rec::Node { modality, children, .. } => {
                Modality::from_u8(modality).map_err(|e| corrupt(log.dir(), off, e.to_string()))?;
                let c = self.state.counters.at(modality);
                c.composites = c
                    .composites
                    .checked_sub(1)
                    .ok_or_else(|| corrupt(log.dir(), off, "gc of an atom the counters do not hold"))?;
                let redirects = &self.state.redirects;
                let mut kids: Vec<u64> = children.map(|c| redirects.get(&c).copied().unwrap_or(c)).collect();
                kids.sort_unstable();
                kids.dedup();
                for k in kids {
                    match self.state.decref(k) {
                        Some(0) => zeros.push(k),
                        Some(_) => {}
                        None => return Err(corrupt(log.dir(), k, "reference count would go below zero")),
                    }
                }
            }
            _ => return Err(corrupt(log.dir(), off, "gc of a record that is not an atom")),
        }
        self.state.refs.insert(off, DEAD);
        self.state.counters.dead_atoms = self.state.counters.dead_atoms.saturating_add(1);
        self.state.counters.dead_bytes = self.state.counters.dead_bytes.saturating_add(len as u64);
        Ok(len as u64)
    }

    fn obj_begin(&mut self, id: u64, json: &[u8]) -> Result<(), String> {
        let b: BeginInfo = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        let info = ObjectInfo {
            id,
            uri: b.uri,
            modality: b.modality,
            status: Status::Running,
            root: None,
            source_hash: None,
            size: b.size.unwrap_or(0),
            atoms_created: 0,
            atoms_referenced: 0,
            atoms_skipped: 0,
            started_at: b.started_at,
            completed_at: None,
            error: None,
        };
        self.state.objects.insert(id, ObjEntry { info, root_off: None });
        self.state.next_object = self.state.next_object.max(id.saturating_add(1));
        Ok(())
    }

    fn obj_commit(&mut self, id: u64, root: u64, json: &[u8]) -> Result<(), String> {
        let c: CommitInfo = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        let e = self.state.objects.get_mut(&id).ok_or_else(|| format!("commit of unknown object {id}"))?;
        e.info.status = c.status;
        e.info.root = Some(c.root);
        e.info.source_hash = Some(c.source_hash);
        e.info.size = c.size;
        e.info.atoms_created = c.created;
        e.info.atoms_referenced = c.referenced;
        e.info.atoms_skipped = c.skipped;
        e.info.completed_at = Some(c.completed_at);
        e.root_off = Some(root);
        if c.status == Status::Completed {
            self.touch(root);
        }
        if c.status == Status::Completed && !self.state.incref(root) {
            return Err(format!("object {id} commits removed root at {root}"));
        }
        Ok(())
    }

    fn obj_fail(&mut self, id: u64, json: &[u8]) -> Result<(), String> {
        let f: FailInfo = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        let e = self.state.objects.get_mut(&id).ok_or_else(|| format!("failure of unknown object {id}"))?;
        // A completed object found damaged by a repair: it no longer holds its root.
        let release = if e.info.status == Status::Completed { e.root_off } else { None };
        e.info.status = Status::Failed;
        e.info.error = Some(f.error);
        e.info.completed_at = Some(f.completed_at);
        if let Some(root) = release {
            self.state.decref(root).ok_or_else(|| format!("object {id}'s root has no reference to release"))?;
        }
        Ok(())
    }

    /// During a rebuild, an offset in a damaged stretch that a good record references becomes
    /// a ghost, created with no references, so that its count is exact.
    #[inline]
    fn touch(&mut self, off: u64) {
        if self.bad.is_empty() || self.state.ghosts.contains(&off) {
            return;
        }
        let i = self.bad.partition_point(|b| b.0 <= off);
        if i > 0 && off < self.bad[i - 1].1 {
            self.state.created(off);
            self.state.ghosts.insert(off);
        }
    }

    /// A good copy at `good` replaces the ghost at `ghost`: the ghost's references move to it.
    fn heal(&mut self, ghost: u64, good: u64) -> Result<(), String> {
        if !self.state.ghosts.remove(&ghost) {
            return Err(format!("heal of {ghost}, which is not a ghost"));
        }
        let n = self.state.refcount(ghost);
        if !self.state.add_refs(good, n) {
            return Err(format!("heal of {ghost} by a removed atom at {good}"));
        }
        self.state.refs.insert(ghost, DEAD);
        self.state.redirects.insert(ghost, good);
        self.state.ghost_hashes.retain(|_, &mut g| g != ghost);
        Ok(())
    }

    fn obj_delete(&mut self, id: u64) -> Result<(), String> {
        let e = self.state.objects.get_mut(&id).ok_or_else(|| format!("delete of unknown object {id}"))?;
        let was = e.info.status;
        e.info.status = Status::Deleted;
        if was == Status::Completed {
            let root = e.root_off.ok_or("completed object without root")?;
            self.state.decref(root).ok_or_else(|| format!("object {id}'s root has no reference to release"))?;
        }
        Ok(())
    }

    /// Apply one record read from the log (replay).
    fn apply(&mut self, log: &Log, off: u64, rec: Rec<'_>) -> Result<(), StoreError> {
        let bad = |e: String| corrupt(log.dir(), off, e);
        match rec {
            Rec::Leaf { modality, value } => {
                let m = Modality::from_u8(modality).map_err(|e| bad(e.to_string()))?;
                let (h, p) = leaf_identity(m, value);
                self.leaf(off, m, value, h, &p);
            }
            Rec::Node { modality, hash, pos, mut children } => {
                let m = Modality::from_u8(modality).map_err(|e| bad(e.to_string()))?;
                self.node(off, m, hash, &pos, &mut children, 0).map_err(bad)?;
            }
            Rec::ObjBegin { id, json } => self.obj_begin(id, json).map_err(bad)?,
            Rec::ObjCommit { id, root, json } => self.obj_commit(id, root, json).map_err(bad)?,
            Rec::ObjFail { id, json } => self.obj_fail(id, json).map_err(bad)?,
            Rec::ObjDelete { id } => self.obj_delete(id).map_err(bad)?,
            Rec::Gc { offsets } => {
                let mut zeros = Vec::new();
                for o in offsets {
                    self.kill(log, o, &mut zeros)?;
                }
            }
            Rec::Heal { ghost, good } => self.heal(ghost, good).map_err(bad)?,
        }
        Ok(())
    }
}

impl Inner {
    fn check(&self) -> Result<(), StoreError> {
        match &self.poisoned {
            Some(p) => Err(StoreError::Poisoned(p.clone())),
            None => Ok(()),
        }
    }

    fn poison<T>(&mut self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e) = &r {
            self.poisoned = Some(e.to_string());
        }
        r
    }

    /// Where the atom at `off` is read from: itself, or the good copy that healed it.
    #[inline]
    fn redirect(&self, off: u64) -> u64 {
        if self.d.state.redirects.is_empty() {
            off
        } else {
            self.d.state.redirects.get(&off).copied().unwrap_or(off)
        }
    }

    /// The composite at `off` (modality, hash, children), its child list not checked delta by
    /// delta (see [`record::node_unchecked`]).
    #[inline]
    fn node_unchecked(&self, off: u64) -> Option<(u8, Hash, record::Children<'_>)> {
        record::node_unchecked(self.log.at(off)?, off)
    }

    /// The atom record at `off`, without decoding a composite's children.
    #[inline]
    fn peek(&self, off: u64) -> record::Peek<'_> {
        match self.log.at(off) {
            Some(b) => record::peek(b),
            None => record::Peek::Other,
        }
    }

    #[inline]
    fn rec(&self, off: u64) -> Result<(Rec<'_>, usize), StoreError> {
        let bytes = self.log.at(off).ok_or_else(|| corrupt(&self.dir, off, "atom offset outside the log"))?;
        record::decode(bytes, off).ok_or_else(|| corrupt(&self.dir, off, "undecodable record"))
    }

    /// Modality, hash, position and kind of the atom at `off`.
    fn identity(&self, off: u64) -> Result<(Modality, Hash, Position, AtomKind), StoreError> {
        match self.rec(off)?.0 {
            Rec::Leaf { modality, value } => {
                let m = Modality::from_u8(modality).map_err(|e| corrupt(&self.dir, off, e.to_string()))?;
                let (h, p) = leaf_identity(m, value);
                Ok((m, h, p, AtomKind::Leaf))
            }
            Rec::Node { modality, hash, pos, .. } => Ok((
                Modality::from_u8(modality).map_err(|e| corrupt(&self.dir, off, e.to_string()))?,
                hash,
                pos,
                AtomKind::Node,
            )),
            _ => Err(corrupt(&self.dir, off, "offset does not hold an atom")),
        }
    }

    /// Hash of the atom at `off` (cheap for composites, one BLAKE3 block for leaves).
    #[inline]
    fn hash_at(&self, off: u64) -> Result<Hash, StoreError> {
        match self.rec(off)?.0 {
            Rec::Leaf { modality, value } => {
                Ok(leaf_hash(Modality::from_u8(modality).map_err(|e| corrupt(&self.dir, off, e.to_string()))?, value))
            }
            Rec::Node { hash, .. } => Ok(hash),
            _ => Err(corrupt(&self.dir, off, "offset does not hold an atom")),
        }
    }

    /// Hashes of the atoms at `offs`, in order: composites' from their records, leaves' derived
    /// from their values sixteen at a time ([`hart_core::many`]), not one after another.
    fn hashes_of(&self, offs: impl Iterator<Item = u64>) -> Result<Vec<Hash>, StoreError> {
        let mut out = Vec::new();
        let mut leaves = hart_core::many::Messages::new();
        let mut leaf_slots = Vec::new();
        for o in offs {
            match self.rec(o)?.0 {
                Rec::Leaf { modality, value } => {
                    let m = Modality::from_u8(modality).map_err(|e| corrupt(&self.dir, o, e.to_string()))?;
                    leaves.extend(&[hart_core::TAG_LEAF, m.as_u8()]);
                    leaves.extend(value);
                    leaves.end();
                    leaf_slots.push(out.len());
                    out.push(Hash::default());
                }
                Rec::Node { hash, .. } => out.push(hash),
                _ => return Err(corrupt(&self.dir, o, "offset does not hold an atom")),
            }
        }
        let mut hashes = Vec::with_capacity(leaf_slots.len());
        leaves.hash_all(&mut hashes);
        for (i, h) in leaf_slots.into_iter().zip(hashes) {
            out[i] = h;
        }
        Ok(out)
    }

    /// Log offset of the live atom with this hash. The writer's ingest path reads runs with
    /// positioned reads behind its global bloom, which keeps its memory flat; queries read
    /// them through the mapping with each run's own bloom, which is faster.
    fn find_hash(&self, hash: &Hash) -> Result<Option<u64>, StoreError> {
        self.find_hash_via(hash, self.hruns.has_global())
    }

    /// Like [`Inner::find_hash`], for queries: always through the mapping.
    fn find_hash_mapped(&self, hash: &Hash) -> Result<Option<u64>, StoreError> {
        self.find_hash_via(hash, false)
    }

    fn find_hash_via(&self, hash: &Hash, positioned: bool) -> Result<Option<u64>, StoreError> {
        if let Some(o) = self.d.mem.get(hash) {
            if !self.d.state.is_dead(o) {
                return Ok(Some(o));
            }
        }
        let mut cand = Vec::new();
        if positioned {
            self.hruns.candidates(hash.0[..8].try_into().expect("8"), &mut cand)?;
            for o in cand {
                if !self.d.state.is_dead(o) && self.hash_at(o)? == *hash {
                    return Ok(Some(o));
                }
            }
            return Ok(None);
        }
        // Largest run first, stopping at the first match: the other runs' blooms (a cache miss
        // each) are not asked. (One live atom per hash: the order cannot change the answer.)
        let prefix = hash.0[..16].try_into().expect("16");
        for r in self.hruns.largest_first() {
            cand.clear();
            r.find(prefix, &mut cand);
            for &o in &cand {
                if !self.d.state.is_dead(o) && self.hash_at(o)? == *hash {
                    return Ok(Some(o));
                }
            }
        }
        Ok(None)
    }

    /// The writer's question for an atom about to be put: is it stored already, does another
    /// atom hold its key, or is it new? A key collision implies equal position hash bits,
    /// that is equal first eight hash bytes, so the hash index answers both at once.
    fn probe(&self, hash: &Hash, key: &HilbertKey) -> Result<Probe, StoreError> {
        let live = |o: &u64| !self.d.state.is_dead(*o);
        // Both the atom itself and any atom on its key share its hash's first eight bytes.
        for e in self.d.mem.with_prefix(hash.prefix_u64()) {
            if e.hash == *hash && live(&e.off) {
                return Ok(Probe::Found(e.off));
            }
            if e.key == *key && live(&e.off) {
                return Ok(Probe::Collision(e.off));
            }
        }
        let h = prefix_hashes(hash);
        let prefix = hash.0[..8].try_into().expect("8");
        if !self.hruns.may_contain_hashed(h) {
            return Ok(Probe::New);
        }
        // Atoms recently found in the runs (a file much like the one before).
        if let Some(o) = self.hot.map.get(hash) {
            return Ok(Probe::Found(o));
        }
        let mut cand = Vec::new();
        self.hruns.candidates(prefix, &mut cand)?;
        for o in cand.into_iter().filter(live) {
            let (m, h, p, _) = self.identity(o)?;
            if h == *hash {
                return Ok(Probe::FoundInRuns(o));
            }
            if HilbertKey::new(m, &p) == *key {
                return Ok(Probe::Collision(o));
            }
        }
        Ok(Probe::New)
    }

    /// Log offset of the live atom with this Hilbert key, with its hash and position when the
    /// lookup derived them to verify the key (atoms found in the memtable are not verified).
    fn find_key(&self, key: &HilbertKey) -> Result<Option<KeyHit>, StoreError> {
        if let Some(o) = self.d.mem.get_key(key, |o| !self.d.state.is_dead(o)) {
            return Ok(Some((o, None)));
        }
        // Largest run first, stopping at the first match (see `find_hash_via`; one live atom
        // per key).
        let mut cand = Vec::new();
        let prefix = key.h_xy.to_be_bytes();
        for r in self.kruns.largest_first() {
            cand.clear();
            r.find(&prefix, &mut cand);
            for &o in &cand {
                if self.d.state.is_dead(o) {
                    continue;
                }
                let (m, h, p, _) = self.identity(o)?;
                if HilbertKey::new(m, &p) == *key {
                    return Ok(Some((o, Some((h, p)))));
                }
            }
        }
        Ok(None)
    }

    /// Start loading the memory [`EmbeddedSession::put_ops`] will touch for `op`: its cache
    /// slots, both blooms' blocks and its children's cache slots. The tables are far larger
    /// than the caches, and each lookup is otherwise a miss paid in sequence.
    #[inline]
    fn prefetch(&self, batch: &Batch, op: &Op) {
        self.hot.prefetch(&op.hash, false);
        self.d.mem.prefetch(&op.hash);
        self.hruns.prefetch_hashed(prefix_hashes(&op.hash));
        if op.kind == AtomKind::Node {
            for c in batch.children(op) {
                self.hot.prefetch(c, true);
            }
        }
    }

    /// Offset of a live atom by hash, through the writer's cache.
    fn resolve(&mut self, hash: &Hash) -> Result<Option<u64>, StoreError> {
        if let Some(o) = self.hot.direct(hash).or_else(|| self.hot.map.get_promote(hash)) {
            return Ok(Some(o));
        }
        let found = self.find_hash(hash)?;
        if let Some(o) = found {
            self.hot.map.insert(*hash, o);
        }
        Ok(found)
    }

    /// The record of the atom at `off`; `known` is what the caller derived of it already (a
    /// leaf's hash and position are then not derived again).
    fn record(&self, off: u64, known: Known<'_>) -> Result<AtomRecord, StoreError> {
        let bad = |e: hart_core::UnknownModality| corrupt(&self.dir, off, e.to_string());
        let (modality, hash, position, kind, value, children) = match self.rec(off)?.0 {
            Rec::Leaf { modality, value } => {
                let m = Modality::from_u8(modality).map_err(bad)?;
                let (h, p) = match known {
                    Known::Identity(h, p, _) => (*h, *p),
                    Known::Hash(h) => (*h, hart_core::features::leaf_position(m, value, h)),
                    Known::Nothing => leaf_identity(m, value),
                };
                (m, h, p, AtomKind::Leaf, Some(value.to_vec()), Vec::new())
            }
            Rec::Node { modality, hash, pos, children } => {
                let m = Modality::from_u8(modality).map_err(bad)?;
                let kids = self.hashes_of(children.map(|c| self.redirect(c)))?;
                // Verify on read: the children listed must hash to the composite.
                let again = hart_core::atom::node_hash(m, &kids);
                if again != hash {
                    return Err(read::Damage {
                        off,
                        expected: hash,
                        found: again,
                        what: "the composite's children do not hash to it".into(),
                        byte: 0,
                    }
                    .into_error_at(self, None));
                }
                (m, hash, pos, AtomKind::Node, None, kids)
            }
            _ => return Err(corrupt(&self.dir, off, "offset does not hold an atom")),
        };
        let key = match known {
            Known::Identity(_, _, k) => *k,
            _ => HilbertKey::new(modality, &position),
        };
        Ok(AtomRecord {
            hash,
            modality,
            kind,
            value,
            children,
            position,
            key,
            ref_count: u64::from(self.d.state.refcount(off)),
        })
    }

    /// Append a record built by `encode` (which receives the record's offset) and return the
    /// offset. Poisons the store if the write fails.
    fn append(&mut self, encode: impl FnOnce(&mut Vec<u8>, u64)) -> Result<u64, StoreError> {
        let r = self.log.begin_record();
        let off = self.poison(r)?;
        encode(self.log.buf(), off);
        let r = self.log.maybe_write();
        self.poison(r)?;
        Ok(off)
    }

    /// Write the pending frame (visible to readers, safe from a process crash) and sync when
    /// enough has accumulated or `sync` asks.
    fn write_frame(&mut self, sync: bool) -> Result<(), StoreError> {
        let r = if sync || self.log.unsynced() >= SYNC_BYTES { self.log.sync() } else { self.log.write_frame() };
        self.poison(r)
    }

    fn maybe_checkpoint(&mut self) -> Result<(), StoreError> {
        let r = if self.log.end().global().saturating_sub(self.checkpointed_at) >= CHECKPOINT_BYTES {
            self.checkpoint()
        } else if self.d.mem.len() >= MEM_LIMIT {
            self.spill(false)
        } else {
            Ok(())
        };
        self.poison(r)
    }

    /// Move the memtables into runs. Nothing is fsynced and no manifest changes: the runs are
    /// derived from the log and become part of the durable state at the next checkpoint.
    /// `lazy`: leave merging to a later spill (see [`Runs::add`]).
    fn spill(&mut self, lazy: bool) -> Result<(), StoreError> {
        self.check()?;
        self.log.write_frame()?;
        let index_dir = self.dir.join("index");
        let Inner { d, hruns, kruns, manifest, pending_delete, .. } = self;
        let state = &d.state;
        // No atom was ever removed: nothing to filter out (one map lookup less per entry).
        let any_dead = state.counters.dead_atoms > 0;
        let keep = |o: u64| !any_dead || !state.is_dead(o);
        // One index after the other: at once (on two threads) they would hold both sorted
        // entry lists and both merges' buffers together, which a 2 GiB ingest cannot afford
        // under its 256 MiB.
        let mut next = manifest.next_run;
        let live = || d.mem.entries().iter().filter(|e| keep(e.off));
        if !d.mem.is_empty() {
            let mut e: Vec<([u8; 16], u64)> = live().map(|e| (e.hash.0[..16].try_into().expect("16"), e.off)).collect();
            e.sort_unstable();
            pending_delete.extend(hruns.add(&index_dir, &mut next, e, &keep, lazy)?);
        }
        if !d.mem.is_empty() {
            let mut e: Vec<([u8; 8], u64)> = live().map(|e| (e.key.h_xy.to_be_bytes(), e.off)).collect();
            e.sort_unstable();
            pending_delete.extend(kruns.add(&index_dir, &mut next, e, &keep, lazy)?);
        }
        self.manifest.next_run = next;
        self.d.mem.clear();
        self.log.release_pages();
        self.hruns.release_pages();
        self.kruns.release_pages();
        Ok(())
    }

    /// Make the log durable, spill the memtables, sync the runs, save the state, switch the
    /// manifest; then delete what the old manifest alone named.
    fn checkpoint(&mut self) -> Result<(), StoreError> {
        self.check()?;
        // The log's fdatasync runs while the memtables are spilled: runs may be written before
        // the log is durable (spills do that anyway); only the manifest, below, must wait.
        let pending = self.log.start_sync()?;
        let (synced, spilled) = std::thread::scope(|s| {
            let sync = pending.as_ref().map(|p| s.spawn(move || p.wait()));
            let spilled = self.spill(true);
            (sync.map_or(Ok(()), |t| t.join().expect("the log sync panicked")), spilled)
        });
        synced?;
        if let Some(p) = &pending {
            self.log.synced(p);
        }
        spilled?;
        self.hruns.sync()?;
        self.kruns.sync()?;
        let index_dir = self.dir.join("index");
        let generation = self.manifest.generation + 1;
        let state_dir = self.dir.join("state");
        self.d.state.save(&state_dir.join(format!("state-{generation:08}.bin")))?;
        // The manifest must never name a file whose directory entry could be lost.
        log::sync_dir(&index_dir)?;
        log::sync_dir(&state_dir)?;
        let old_state = self.manifest.state;
        let m = Manifest {
            format: STORE_FORMAT,
            generation,
            log: self.log.end(),
            state: Some(generation),
            hash_runs: self.hruns.ids(),
            key_runs: self.kruns.ids(),
            next_run: self.manifest.next_run,
            segments: self.log.segment_lengths(),
        };
        write_manifest(&self.dir, &m)?;
        self.manifest = m;
        self.checkpointed_at = self.log.end().global();
        for p in self.pending_delete.drain(..) {
            let _ = std::fs::remove_file(p);
        }
        if let Some(g) = old_state {
            let _ = std::fs::remove_file(state_dir.join(format!("state-{g:08}.bin")));
        }
        self.log.release_pages();
        self.hruns.release_pages();
        self.kruns.release_pages();
        Ok(())
    }
}

fn write_manifest(dir: &Path, m: &Manifest) -> Result<(), StoreError> {
    let path = dir.join("MANIFEST");
    let tmp = dir.join("MANIFEST.tmp");
    let json = serde_json::to_vec_pretty(m).map_err(|e| StoreError::Backend(e.to_string()))?;
    let mut f = std::fs::File::create(&tmp).map_err(|e| StoreError::io("create", &tmp, e))?;
    f.write_all(&json).map_err(|e| StoreError::io("write", &tmp, e))?;
    f.sync_all().map_err(|e| StoreError::io("sync", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| StoreError::io("rename", &tmp, e))?;
    log::sync_dir(dir)
}

fn read_manifest(dir: &Path) -> Result<Option<Manifest>, StoreError> {
    let path = dir.join("MANIFEST");
    match std::fs::read(&path) {
        Ok(b) => {
            let m: Manifest = serde_json::from_slice(&b).map_err(|e| StoreError::NotAStore {
                path: path.clone(),
                reason: format!("unreadable MANIFEST: {e}"),
            })?;
            if m.format != STORE_FORMAT {
                return Err(StoreError::Version { path, found: m.format, expected: STORE_FORMAT });
            }
            Ok(Some(m))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io("read", &path, e)),
    }
}

impl EmbeddedStore {
    /// Open (creating if needed) the store in `dir` for reading and writing. Only one writer
    /// may have a store open at a time; readers need no lock.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, OpenOptions::default())
    }

    pub fn open_with(dir: &Path, opts: OpenOptions) -> Result<Self, StoreError> {
        let writable = !opts.read_only;
        if !dir.exists() {
            if !writable {
                return Err(StoreError::NoStore { path: dir.to_path_buf() });
            }
            std::fs::create_dir_all(dir).map_err(|e| StoreError::io("create", dir, e))?;
        }
        // Refuse a directory of something else before leaving a lock file in it.
        if !dir.join("MANIFEST").exists() && !log::has_segments(&dir.join("log")) {
            check_not_foreign(dir)?;
        }
        let lock = if writable { Some(take_lock(dir)?) } else { None };
        // A reader may race a writer's checkpoint (files renamed away under it): retry, and
        // only then rebuild what is missing from the log.
        let mut attempt = 0;
        let inner = loop {
            let rebuild = match (opts.rebuild, writable || attempt >= 5) {
                (true, _) => Rebuild::Always,
                (false, true) => Rebuild::IfNeeded,
                (false, false) => Rebuild::Never,
            };
            match Self::load(dir, writable, rebuild) {
                Err(StoreError::Io { source, .. })
                    if !writable && source.kind() == std::io::ErrorKind::NotFound && attempt < 5 =>
                {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(StoreError::Corrupt { .. } | StoreError::NotAStore { .. }) if !writable && attempt < 5 => {
                    attempt = 5;
                }
                r => break r?,
            }
        };
        Ok(EmbeddedStore {
            dir: dir.to_path_buf(),
            inner: RwLock::new(inner),
            gate: RwLock::new(()),
            opts,
            _lock: lock,
        })
    }

    /// Load the store: manifest, derived files, then a replay of the log after the checkpoint.
    /// When a derived file (manifest, state, index run) is missing or unreadable and `rebuild`
    /// allows it, everything derived is rebuilt by replaying the whole log instead. Damage in
    /// the log before its end, or a log shorter than the checkpoint, makes a writer's open fail
    /// ([`StoreError::StoreDamaged`]) unless this is a rebuild, which reads past it.
    fn load(dir: &Path, writable: bool, rebuild: Rebuild) -> Result<Inner, StoreError> {
        let has_log = log::has_segments(&dir.join("log"));
        let manifest = match read_manifest(dir) {
            Ok(Some(m)) => Some(m),
            Ok(None) => None,
            // An unreadable manifest is derived data too, when there is a log to rebuild from.
            Err(StoreError::NotAStore { .. }) if has_log && rebuild != Rebuild::Never => None,
            Err(e) => return Err(e),
        };
        let mut rebuilding = rebuild == Rebuild::Always;
        let manifest = match manifest {
            Some(m) => m,
            None if has_log => {
                if rebuild == Rebuild::Never {
                    return Err(StoreError::io(
                        "read",
                        dir.join("MANIFEST"),
                        std::io::Error::from(std::io::ErrorKind::NotFound),
                    ));
                }
                rebuilding = true;
                Manifest { format: STORE_FORMAT, next_run: 1, ..Manifest::default() }
            }
            None => Self::create(dir, writable)?,
        };
        let index_dir = dir.join("index");
        let derived = || -> Result<(State, Runs<16>, Runs<8>), StoreError> {
            let state = match manifest.state {
                Some(g) => State::load(&dir.join("state").join(format!("state-{g:08}.bin")))?,
                None => State { next_object: 1, ..State::default() },
            };
            let hruns = Runs::open(&index_dir, "hash", &manifest.hash_runs)?;
            // The key index serves queries only (collisions are found through the hash index),
            // so it merges less eagerly.
            let kruns = Runs::open(&index_dir, "key", &manifest.key_runs)?.with_fanout(8);
            Ok((state, hruns, kruns))
        };
        let fresh = || -> Result<(State, Runs<16>, Runs<8>), StoreError> {
            Ok((
                State { next_object: 1, ..State::default() },
                Runs::open(&index_dir, "hash", &[])?,
                Runs::open(&index_dir, "key", &[])?.with_fanout(8),
            ))
        };
        let (state, hruns, kruns) = if rebuilding {
            fresh()?
        } else {
            match derived() {
                Ok(d) => d,
                Err(e) if rebuild == Rebuild::Never => return Err(e),
                Err(_) => {
                    rebuilding = true;
                    fresh()?
                }
            }
        };
        let manifest = if rebuilding {
            // Start from the log alone; new runs are numbered past every file left in index/.
            let next_run = max_run_number(&index_dir) + 1;
            Manifest { format: STORE_FORMAT, next_run: next_run.max(manifest.next_run).max(1), ..Manifest::default() }
        } else {
            manifest
        };
        if writable && rebuilding {
            for sub in ["index", "state"] {
                std::fs::create_dir_all(dir.join(sub)).map_err(|e| StoreError::io("create", dir.join(sub), e))?;
            }
        }
        let log = Log::open(&dir.join("log"), writable)?;
        // A log shorter than the checkpoint says lost its end (a cut file): not a torn tail.
        let short = if rebuilding { None } else { short_log(&log, &manifest) };
        let mut inner = Inner {
            dir: dir.to_path_buf(),
            log,
            hruns,
            kruns,
            d: Derived { state, ..Derived::default() },
            checkpointed_at: manifest.log.global(),
            manifest,
            poisoned: None,
            hot: HotCache::new(),
            pending_delete: Vec::new(),
            rebuilt: None,
            damage: None,
            damaged_objects: 0,
        };
        // Replay everything after the checkpoint (everything, for a rebuild), reading past
        // damage: what follows a damaged frame is still the store's.
        let from = inner.manifest.log;
        if rebuilding {
            // Where the damage is, first: an atom there that a good record names is a ghost.
            let mut stretches = Vec::new();
            inner.log.scan_all(from, &mut |_, _| Ok(()), &mut |b| stretches.push(b))?;
            inner.d.bad = stretches
                .iter()
                .map(|b| {
                    let g = (u64::from(b.seg) << 32) | b.off;
                    (g, g + b.len)
                })
                .collect();
            inner.d.bad.sort_unstable();
        }
        let mut bad = Vec::new();
        let mut skipped = 0u64;
        let Inner { log, d, .. } = &mut inner;
        let end = log.scan_all(
            from,
            &mut |base, payload| {
                let mut p = 0;
                while p < payload.len() {
                    let off = base + p as u64;
                    let (rec, len) = record::decode(&payload[p..], off)
                        .ok_or_else(|| corrupt(log.dir(), off, "undecodable record in a checksummed frame"))?;
                    match d.apply(log, off, rec) {
                        Ok(()) => {}
                        // A record that needs what a damaged frame held: skipped in a rebuild.
                        Err(_) if rebuilding => skipped += 1,
                        Err(e) => return Err(e),
                    }
                    p += len;
                }
                Ok(())
            },
            &mut |b| bad.push(b),
        )?;
        // Damage followed by good frames is not a torn tail.
        let inside: Vec<&log::BadStretch> = bad.iter().filter(|b| LogPos { seg: b.seg, off: b.off } < end).collect();
        let damage = short.or_else(|| {
            inside.first().map(|b| {
                format!(
                    "{} bytes at {} offset {} ({}), with good records after them{}",
                    b.len,
                    inner.log.segment_path(b.seg as usize).display(),
                    b.off,
                    b.cause,
                    if inside.len() > 1 {
                        format!(", and {} more damaged stretches", inside.len() - 1)
                    } else {
                        String::new()
                    }
                )
            })
        });
        if writable {
            if let (Some(detail), false) = (&damage, rebuilding) {
                return Err(StoreError::StoreDamaged { path: dir.to_path_buf(), detail: detail.clone() });
            }
            inner.hruns.build_global()?;
            inner.d.mem.reserve(MEM_RESERVE);
            inner.log.truncate_and_open_for_append(end)?;
            inner.recover_interrupted()?;
            if rebuilding && !inner.d.state.ghosts.is_empty() {
                inner.fail_damaged_objects()?;
            }
            if rebuilding {
                inner.d.state.quarantined = std::mem::take(&mut inner.d.bad);
            }
            inner.remove_orphans();
            inner.index_ghosts();
            if end != inner.manifest.log || rebuilding {
                // Recovered a tail (the last writer stopped without its final checkpoint), or
                // rebuilt: checkpoint now so that readers need not replay it every time.
                inner.checkpoint()?;
            }
        } else {
            inner.log.set_end(end);
        }
        inner.rebuilt = rebuilding.then_some(Rebuilt { damaged: inside.len() as u64, skipped });
        inner.damage = damage;
        Ok(inner)
    }

    /// A new store's directories and manifest (or an error if `dir` holds something else).
    fn create(dir: &Path, writable: bool) -> Result<Manifest, StoreError> {
        check_not_foreign(dir)?;
        if !writable {
            return Err(StoreError::NoStore { path: dir.to_path_buf() });
        }
        for sub in ["log", "index", "state"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| StoreError::io("create", dir.join(sub), e))?;
        }
        let m = Manifest { format: STORE_FORMAT, next_run: 1, ..Manifest::default() };
        write_manifest(dir, &m)?;
        Ok(m)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Checkpoint and release the store (also done on drop, ignoring errors).
    pub fn close(self) -> Result<(), StoreError> {
        if self.opts.read_only {
            return Ok(());
        }
        let mut inner = self.inner.write().expect("lock");
        if inner.poisoned.is_none() {
            inner.checkpoint()?;
        }
        Ok(())
    }

    /// `cat` without verifying the tree: for `hart bench` only, which prints verified `cat`
    /// beside it (what verification costs, measured in the same run). Never hand its bytes to
    /// a user.
    #[doc(hidden)]
    pub fn cat_unverified(&self, root: &Hash, out: &mut dyn Write) -> Result<u64, StoreError> {
        let inner = self.inner.read().expect("lock");
        let off = inner.find_hash(root)?.ok_or_else(|| StoreError::NotFound { what: "atom", id: root.to_hex() })?;
        let mut w = BufWriter::with_capacity(1 << 20, out);
        let n = read::cat_at(&inner, off, &mut w)?;
        w.flush().map_err(|e| StoreError::io("write", "output", e))?;
        Ok(n)
    }

    /// What opening the store found worth telling: damage in the log (a reader opens a damaged
    /// store; every read verifies), or a rebuild of the derived files.
    pub fn open_notes(&self) -> Vec<String> {
        let i = self.inner.read().expect("lock");
        let mut notes = Vec::new();
        if let Some(d) = &i.damage {
            notes.push(format!(
                "the store is damaged: {d}; reads verify every byte, writes are refused until `hart fsck --repair`"
            ));
        }
        if i.damaged_objects > 0 {
            notes.push(format!(
                "{} object(s) do not verify and are now marked failed (`hart ls --all` names them): \
                 ingest their files again to heal the store",
                i.damaged_objects
            ));
        }
        if let Some(r) = i.rebuilt {
            notes.push(format!(
                "rebuilt every derived file from the log{}",
                if r.damaged > 0 {
                    format!(
                        ", reading past {} damaged stretch(es) and skipping {} record(s) that needed them",
                        r.damaged, r.skipped
                    )
                } else {
                    String::new()
                }
            ));
        }
        notes
    }

    /// Memory the engine's in-memory structures take (approximate, bytes).
    pub fn memory(&self) -> usize {
        let i = self.inner.read().expect("lock");
        i.hruns.memory() + i.kruns.memory() + i.d.mem.memory() + i.d.state.refs.capacity() * 13
    }
}

impl Inner {
    /// Objects left `running` by a crash become `failed`.
    fn recover_interrupted(&mut self) -> Result<(), StoreError> {
        let running: Vec<u64> =
            self.d.state.objects.values().filter(|o| o.info.status == Status::Running).map(|o| o.info.id).collect();
        for id in running {
            self.fail_object(id, "interrupted: the process stopped before the object was committed")?;
        }
        self.write_frame(true)
    }

    /// After a rebuild that left ghosts: every completed object whose tree does not verify is
    /// marked failed (it releases its root), naming the damage, so that ingesting its file
    /// again decodes it in full (and heals the ghosts) instead of reusing the damaged root.
    fn fail_damaged_objects(&mut self) -> Result<(), StoreError> {
        let mut damaged = Vec::new();
        for o in self.d.state.objects.values() {
            // Unchanged objects share a completed one's root: the shortcut of a later ingest
            // must not find them either.
            let (Status::Completed | Status::Unchanged, Some(root_off), Some(root)) =
                (o.info.status, o.root_off, o.info.root)
            else {
                continue;
            };
            if let Err(read::Failure::Damage(d)) =
                read::cat_checked(self, self.redirect(root_off), &root, &mut std::io::sink())
            {
                damaged.push((o.info.id, d.into_error(self).to_string()));
            }
        }
        for (id, why) in &damaged {
            self.fail_object(*id, &format!("damaged, found by a repair: {why}; ingest the file again to heal it"))?;
        }
        self.damaged_objects = damaged.len() as u64;
        self.write_frame(true)
    }

    /// Whether the atom at `off` verifies one level deep: a leaf always does (its hash is its
    /// value's); a composite when its children hash to the hash it stores.
    fn verifies(&self, off: u64) -> bool {
        match self.rec(off) {
            Ok((Rec::Leaf { .. }, _)) => true,
            Ok((Rec::Node { modality, hash, children, .. }, _)) => {
                let Ok(m) = Modality::from_u8(modality) else { return false };
                match self.hashes_of(children.map(|c| self.redirect(c))) {
                    Ok(kids) => hart_core::atom::node_hash(m, &kids) == hash,
                    Err(_) => false,
                }
            }
            _ => false,
        }
    }

    /// Find each ghost whose record still decodes by the hash it claims, so that writing an
    /// atom with that hash heals it (a damaged record claims a hash nothing will write).
    fn index_ghosts(&mut self) {
        let mut by_hash = rustc_hash::FxHashMap::default();
        for &g in &self.d.state.ghosts {
            if let Ok(h) = self.hash_at(g) {
                by_hash.insert(h, g);
            }
        }
        self.d.state.ghost_hashes = by_hash;
    }

    /// Log and apply an object's failure (the time is in the record, so replay keeps it).
    fn fail_object(&mut self, id: u64, error: &str) -> Result<(), StoreError> {
        let info = FailInfo { error: error.to_string(), completed_at: hart_store::now_ms() };
        let json = serde_json::to_vec(&info).map_err(|e| StoreError::Backend(e.to_string()))?;
        self.append(|buf, _| record::encode_obj(buf, record::OBJ_FAIL, id, None, &json))?;
        self.d.obj_fail(id, &json).map_err(|e| corrupt(&self.dir, 0, e))
    }

    /// Files a crash left behind: runs and states the manifest does not list, temporaries.
    fn remove_orphans(&self) {
        let listed: Vec<String> = self
            .manifest
            .hash_runs
            .iter()
            .map(|i| format!("hash-{i:08}.run"))
            .chain(self.manifest.key_runs.iter().map(|i| format!("key-{i:08}.run")))
            .chain(self.manifest.state.map(|g| format!("state-{g:08}.bin")))
            .collect();
        for sub in ["index", "state"] {
            if let Ok(rd) = std::fs::read_dir(self.dir.join(sub)) {
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if !listed.contains(&name) {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
        }
    }
}

/// Refuse a directory holding anything but what an interrupted store creation leaves (the
/// lock, a temporary manifest, empty subdirectories).
fn check_not_foreign(dir: &Path) -> Result<(), StoreError> {
    let leftover = |e: &std::fs::DirEntry| {
        let name = e.file_name();
        let path = e.path();
        name == "LOCK"
            || name == "MANIFEST.tmp"
            || (["log", "index", "state"].iter().any(|d| name == *d)
                && path.is_dir()
                && std::fs::read_dir(&path).map(|mut r| r.next().is_none()).unwrap_or(false))
    };
    let foreign = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(Result::ok).any(|e| !leftover(&e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(StoreError::io("read", dir, e)),
    };
    if foreign {
        return Err(StoreError::NotAStore {
            path: dir.to_path_buf(),
            reason: "it has files but no MANIFEST and no log; pass an empty or new directory as --store".into(),
        });
    }
    Ok(())
}

/// Why the log is shorter than the checkpoint says, if it is.
fn short_log(log: &Log, m: &Manifest) -> Option<String> {
    let files = log.file_lengths();
    let cp = m.log;
    if cp.global() > 0 {
        match files.get(cp.seg as usize) {
            None => return Some(format!("log segment {} is missing (the checkpoint is in it)", cp.seg)),
            Some(&len) if len < cp.off => {
                return Some(format!(
                    "{} is {} bytes shorter than the checkpoint says ({len} bytes, expected at least {}): its end was cut off",
                    log.segment_path(cp.seg as usize).display(),
                    cp.off - len,
                    cp.off
                ))
            }
            _ => {}
        }
    }
    for (i, &want) in m.segments.iter().enumerate().take(cp.seg as usize) {
        match files.get(i) {
            Some(&len) if len >= want => {}
            Some(&len) => {
                return Some(format!(
                    "{} is {} bytes shorter than it was ({len} bytes, expected {want})",
                    log.segment_path(i).display(),
                    want - len
                ))
            }
            None => return Some(format!("log segment {i} is missing")),
        }
    }
    None
}

/// The highest run number among the files in `index_dir` (0 if none).
fn max_run_number(index_dir: &Path) -> u64 {
    std::fs::read_dir(index_dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let stem = name.strip_suffix(".run")?;
                    stem.rsplit('-').next()?.parse::<u64>().ok()
                })
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

fn take_lock(dir: &Path) -> Result<std::fs::File, StoreError> {
    let path = dir.join("LOCK");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| StoreError::io("create", dir, e))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let pid = std::fs::read_to_string(&path).unwrap_or_default().trim().to_string();
            return Err(StoreError::Locked {
                path: dir.to_path_buf(),
                pid: if pid.is_empty() { "unknown".into() } else { pid },
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(StoreError::io("lock", &path, e)),
    }
    let _ = f.set_len(0);
    let _ = (&f).write_all(std::process::id().to_string().as_bytes());
    Ok(f)
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        if self.opts.read_only {
            return;
        }
        if let Ok(mut inner) = self.inner.write() {
            if inner.poisoned.is_none() {
                let _ = inner.checkpoint();
            }
        }
    }
}

fn read_only(dir: &Path) -> StoreError {
    StoreError::ReadOnly { path: dir.to_path_buf(), reason: "opened for reading only".into() }
}

impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    fn begin(&self, source: SourceInfo) -> Result<Box<dyn Session + '_>, StoreError> {
        if self.opts.read_only {
            return Err(read_only(&self.dir));
        }
        let gate = self.gate.read().expect("gate");
        let mut inner = self.inner.write().expect("lock");
        inner.check()?;
        let id = inner.d.state.next_object;
        let info = BeginInfo {
            uri: source.uri.clone(),
            modality: source.modality,
            size: source.size,
            started_at: hart_store::now_ms(),
        };
        let json = serde_json::to_vec(&info).map_err(|e| StoreError::Backend(e.to_string()))?;
        inner.append(|buf, _| record::encode_obj(buf, record::OBJ_BEGIN, id, None, &json))?;
        inner.d.obj_begin(id, &json).map_err(|e| corrupt(&self.dir, 0, e))?;
        // Written now, so that an interrupted ingestion is on record as one.
        inner.write_frame(false)?;
        let start = inner.log.next_offset();
        drop(inner);
        Ok(Box::new(EmbeddedSession::new(self, gate, id, source.uri, start)))
    }

    fn get(&self, hash: &Hash) -> Result<Option<AtomRecord>, StoreError> {
        let inner = self.inner.read().expect("lock");
        match inner.find_hash_mapped(hash)? {
            Some(o) => Ok(Some(inner.record(o, Known::Hash(hash))?)),
            None => Ok(None),
        }
    }

    fn get_by_key(&self, key: &HilbertKey) -> Result<Option<AtomRecord>, StoreError> {
        let inner = self.inner.read().expect("lock");
        match inner.find_key(key)? {
            Some((o, Some((h, p)))) => Ok(Some(inner.record(o, Known::Identity(&h, &p, key))?)),
            Some((o, None)) => Ok(Some(inner.record(o, Known::Nothing)?)),
            None => Ok(None),
        }
    }

    fn find_prefix(&self, prefix: &str, limit: usize) -> Result<Vec<Hash>, StoreError> {
        let prefix = prefix.to_ascii_lowercase();
        if prefix.is_empty() || prefix.len() > 64 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::Invalid(format!("{prefix:?} is not a hexadecimal hash prefix")));
        }
        let inner = self.inner.read().expect("lock");
        let mut out: Vec<Hash> = Vec::new();
        let push = |h: Hash, out: &mut Vec<Hash>| {
            if h.to_hex().starts_with(&prefix) && !out.contains(&h) {
                out.push(h);
            }
        };
        for e in inner.d.mem.entries() {
            if !inner.d.state.is_dead(e.off) {
                push(e.hash, &mut out);
            }
        }
        let nib = |fill: u8| -> [u8; 16] {
            let mut b = [fill; 16];
            for (i, c) in prefix.bytes().take(32).enumerate() {
                let v = (c as char).to_digit(16).expect("hex") as u8;
                if i % 2 == 0 {
                    b[i / 2] = (v << 4) | (fill & 0x0f);
                } else {
                    b[i / 2] = (b[i / 2] & 0xf0) | v;
                }
            }
            b
        };
        let (lo, hi) = (nib(0x00), nib(0xff));
        for r in &inner.hruns.runs {
            let mut found = Vec::new();
            r.range(&lo, &hi, limit.saturating_mul(4).max(16), &mut found);
            for (_, o) in found {
                if !inner.d.state.is_dead(o) {
                    push(inner.hash_at(o)?, &mut out);
                }
            }
        }
        out.sort();
        out.truncate(limit);
        Ok(out)
    }

    fn cat(&self, root: &Hash, out: &mut dyn Write) -> Result<u64, StoreError> {
        let inner = self.inner.read().expect("lock");
        let off = inner.find_hash(root)?.ok_or_else(|| StoreError::NotFound { what: "atom", id: root.to_hex() })?;
        let mut w = BufWriter::with_capacity(1 << 20, out);
        let n = read::cat_verified(&inner, off, root, &mut w)?;
        w.flush().map_err(|e| StoreError::io("write", "output", e))?;
        Ok(n)
    }

    fn objects(&self) -> Result<Vec<ObjectInfo>, StoreError> {
        let inner = self.inner.read().expect("lock");
        Ok(inner.d.state.objects.values().map(|o| o.info.clone()).collect())
    }

    fn delete_object(&self, id: u64) -> Result<ObjectInfo, StoreError> {
        if self.opts.read_only {
            return Err(read_only(&self.dir));
        }
        let mut inner = self.inner.write().expect("lock");
        inner.check()?;
        let e = inner
            .d
            .state
            .objects
            .get(&id)
            .ok_or_else(|| StoreError::NotFound { what: "object", id: id.to_string() })?;
        if e.info.status == Status::Deleted {
            return Err(StoreError::NotFound { what: "live object", id: format!("#{id} (it was already removed)") });
        }
        if !matches!(e.info.status, Status::Completed | Status::Unchanged | Status::Failed) {
            return Err(StoreError::Invalid(format!(
                "object {id} is {:?}; only completed, unchanged or failed objects can be removed",
                e.info.status
            )));
        }
        inner.append(|buf, _| record::encode_obj(buf, record::OBJ_DELETE, id, None, &[]))?;
        inner.d.obj_delete(id).map_err(|e| corrupt(&self.dir, 0, e))?;
        inner.write_frame(true)?;
        Ok(inner.d.state.objects[&id].info.clone())
    }

    fn gc(&self) -> Result<GcReport, StoreError> {
        if self.opts.read_only {
            return Err(read_only(&self.dir));
        }
        let _gate = self.gate.write().expect("gate");
        let mut guard = self.inner.write().expect("lock");
        let inner = &mut *guard;
        inner.check()?;
        // Cached offsets are trusted to be live; some are about to die.
        inner.hot.clear();
        let mut queue = inner.d.state.garbage();
        let mut removed = Vec::new();
        let mut report = GcReport::default();
        let mut i = 0;
        while i < queue.len() {
            let o = queue[i];
            i += 1;
            if inner.d.state.refcount(o) != 0 {
                continue;
            }
            let Inner { d, log, .. } = &mut *inner;
            let r = d.kill(log, o, &mut queue);
            report.bytes_removed += inner.poison(r)?;
            removed.push(o);
        }
        report.atoms_removed = removed.len() as u64;
        for chunk in removed.chunks(65_536) {
            inner.append(|buf, _| record::encode_gc(buf, chunk))?;
        }
        // Durable now; the checkpoint that folds it into the state is the caller's flush.
        let r = inner.log.sync();
        inner.poison(r)?;
        Ok(report)
    }

    fn fsck(&self, progress: &dyn Fn(u64, u64)) -> Result<FsckReport, StoreError> {
        let inner = self.inner.read().expect("lock");
        fsck::fsck(&inner, progress)
    }

    fn stats(&self) -> Result<Stats, StoreError> {
        let inner = self.inner.read().expect("lock");
        let c = &inner.d.state.counters;
        let mut s = Stats { backend: "embedded".into(), ..Stats::default() };
        for (i, m) in c.per_modality.iter().enumerate() {
            if m.leaves + m.composites == 0 {
                continue;
            }
            let name =
                Modality::from_u8(i as u8).map(|m| m.name().to_string()).unwrap_or_else(|_| format!("modality-{i}"));
            s.atoms += m.leaves + m.composites;
            s.unique_bytes += m.leaf_bytes;
            s.per_modality.insert(name, m.clone());
        }
        for o in inner.d.state.objects.values() {
            if o.info.status == Status::Completed {
                s.objects += 1;
                s.logical_bytes = s.logical_bytes.saturating_add(o.info.size);
            }
        }
        s.dedup_ratio = if s.unique_bytes == 0 { 1.0 } else { s.logical_bytes as f64 / s.unique_bytes as f64 };
        s.stored_bytes = dir_size(&self.dir);
        s.garbage_atoms = inner.d.state.refs.values().filter(|&&n| n == 0).count() as u64;
        Ok(s)
    }

    fn flush(&self) -> Result<(), StoreError> {
        if self.opts.read_only {
            return Ok(());
        }
        let mut inner = self.inner.write().expect("lock");
        if inner.poisoned.is_some() {
            // Make what was fully written durable; the torn frame was already cut off.
            let _ = inner.log.sync_written();
            inner.check()?;
        }
        let r = inner.log.sync();
        inner.poison(r)?;
        // Everything is durable now; a failing checkpoint only defers index maintenance
        // (the next writer replays the log and checkpoints again).
        inner.checkpoint().map_err(|e| StoreError::CheckpointDeferred(e.to_string()))
    }
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_size(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}
