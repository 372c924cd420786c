//! The candidates behind one small interface: a writer that takes batches and durable
//! commits, and a reader that answers point lookups by content hash.
//!
//! Every candidate does what the ingest needs per atom: a dedup check by hash, a collision
//! check by Hilbert key, and a write into both indexes (hash → record, key → hash). Our engine
//! also keeps exact reference counts; the key-value candidates do not (they would need a
//! read-modify-write per child on top), so their figures are an upper bound for them.

use crate::workload::{kv_value, Step};
use anyhow::{bail, Context, Result};
use hart_core::{Hash, HilbertKey};
use hart_embedded::{EmbeddedStore, OpenOptions};
use hart_store::{Session, SourceInfo, Store};
use std::collections::HashMap;
use std::path::Path;

/// Which engine a child process measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// No engine: the workload alone (generation cost and harness memory).
    None,
    /// std HashMap in memory, no durability: the upper bound.
    Hashmap,
    /// hart-embedded: append-only log + derived LSM indexes, through the public Store API.
    Ours,
    /// redb 2.x: copy-on-write B-tree, one write transaction per batch (`Durability::None`,
    /// `Immediate` when an object ends).
    Redb,
    /// redb 2.x: one write transaction per object (~64 MiB), `Immediate`: how redb's own
    /// benchmark bulk-loads.
    RedbObject,
    /// fjall 2.x: LSM tree, write batches, manual journal persist.
    Fjall,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::None => "none (harness)",
            Kind::Hashmap => "std HashMap (memory)",
            Kind::Ours => "hart-embedded",
            Kind::Redb => "redb 2.6 (tx/batch)",
            Kind::RedbObject => "redb 2.6 (tx/object)",
            Kind::Fjall => "fjall 2.11",
        }
    }
}

/// The write side of a candidate.
pub trait Writer {
    /// Put one step's batch; if it ends an object, commit that object durably.
    fn step(&mut self, step: &Step) -> Result<()>;
    /// Flush and close (part of the insert time: what a process does before it exits).
    fn close(self: Box<Self>) -> Result<()>;
}

/// The read side: `Some(len)` of the stored record, or None when absent.
pub trait Reader {
    fn get(&self, hash: &[u8; 32]) -> Result<Option<usize>>;
}

// --- none / in-memory ------------------------------------------------------------------------

pub struct Nothing;

impl Writer for Nothing {
    fn step(&mut self, _: &Step) -> Result<()> {
        Ok(())
    }
    fn close(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

/// The in-memory upper bound: both indexes as std HashMaps.
#[derive(Default)]
pub struct Memory {
    atoms: HashMap<[u8; 32], Box<[u8]>>,
    keys: HashMap<HilbertKey, [u8; 32]>,
    buf: Vec<u8>,
}

impl Memory {
    pub fn step(&mut self, step: &Step) -> Result<()> {
        let b = &step.batch;
        for op in &b.ops {
            if self.atoms.contains_key(&op.hash.0) {
                continue;
            }
            let key = HilbertKey::new(op.modality, &op.pos);
            if let Some(old) = self.keys.insert(key, op.hash.0) {
                if old != op.hash.0 {
                    bail!("key collision at {key}");
                }
            }
            kv_value(b, op, &mut self.buf);
            self.atoms.insert(op.hash.0, self.buf.as_slice().into());
        }
        Ok(())
    }
}

impl Reader for Memory {
    fn get(&self, hash: &[u8; 32]) -> Result<Option<usize>> {
        Ok(self.atoms.get(hash).map(|v| v.len()))
    }
}

// --- ours ------------------------------------------------------------------------------------

/// hart-embedded through `Store::begin` / `Session::put` / `Session::commit`, fsync at every
/// commit (each object is ~64 MiB).
pub struct Ours<'a> {
    store: &'a EmbeddedStore,
    session: Option<Box<dyn Session + 'a>>,
    objects: u64,
}

impl<'a> Ours<'a> {
    pub fn open(dir: &Path) -> Result<EmbeddedStore> {
        Ok(EmbeddedStore::open_with(dir, OpenOptions { sync_every_commit: true, ..OpenOptions::default() })?)
    }

    pub fn new(store: &'a EmbeddedStore) -> Ours<'a> {
        Ours { store, session: None, objects: 0 }
    }
}

impl Writer for Ours<'_> {
    fn step(&mut self, step: &Step) -> Result<()> {
        if self.session.is_none() {
            self.objects += 1;
            let source = SourceInfo {
                uri: format!("bench://object/{}", self.objects),
                modality: hart_core::Modality::Binary,
                size: None,
            };
            self.session = Some(self.store.begin(source)?);
        }
        let s = self.session.as_mut().expect("just opened");
        s.put(&step.batch)?;
        if let Some((root, summary)) = &step.commit {
            self.session.take().expect("open").commit(root, summary)?;
        }
        Ok(())
    }

    fn close(self: Box<Self>) -> Result<()> {
        if self.session.is_some() {
            bail!("the workload ended inside an object");
        }
        self.store.flush()?;
        Ok(())
    }
}

pub struct OursReader(pub EmbeddedStore);

impl Reader for OursReader {
    fn get(&self, hash: &[u8; 32]) -> Result<Option<usize>> {
        Ok(self.0.get(&Hash(*hash))?.map(|r| r.value.map_or(r.children.len() * 32, |v| v.len())))
    }
}

// --- redb ------------------------------------------------------------------------------------

const ATOMS: redb::TableDefinition<'_, [u8; 32], &[u8]> = redb::TableDefinition::new("atoms");
const KEYS: redb::TableDefinition<'_, [u8; 24], [u8; 32]> = redb::TableDefinition::new("keys");

/// redb with one write transaction per batch: `Durability::None` for the batches inside an
/// object and `Durability::Immediate` for the one that ends it (redb frees pages only at
/// durable commits, so the file grows in between).
pub struct Redb {
    db: redb::Database,
    buf: Vec<u8>,
}

impl Redb {
    /// Create (or open) the database in `dir`; `cache` overrides redb's default cache (1 GiB).
    pub fn create(dir: &Path, cache: Option<usize>) -> Result<redb::Database> {
        std::fs::create_dir_all(dir)?;
        let mut b = redb::Database::builder();
        if let Some(c) = cache {
            b.set_cache_size(c);
        }
        b.create(dir.join("atoms.redb")).context("redb create")
    }

    /// Compact the file (redb never shrinks it otherwise); returns when nothing is left to do.
    pub fn compact(dir: &Path) -> Result<()> {
        let mut db = redb::Database::open(dir.join("atoms.redb")).context("redb open")?;
        for _ in 0..16 {
            if !db.compact()? {
                break;
            }
        }
        Ok(())
    }

    pub fn new(db: redb::Database) -> Redb {
        Redb { db, buf: Vec::new() }
    }
}

/// Put a batch inside a redb write transaction.
fn redb_put(tx: &redb::WriteTransaction, b: &hart_store::Batch, buf: &mut Vec<u8>) -> Result<()> {
    let mut atoms = tx.open_table(ATOMS)?;
    let mut keys = tx.open_table(KEYS)?;
    for op in &b.ops {
        // The insert reports an existing atom (the dedup check) in the same descent.
        kv_value(b, op, buf);
        if atoms.insert(op.hash.0, buf.as_slice())?.is_some() {
            continue;
        }
        let key = HilbertKey::new(op.modality, &op.pos);
        if let Some(old) = keys.insert(key.to_bytes(), op.hash.0)? {
            if old.value() != op.hash.0 {
                bail!("key collision at {key}");
            }
        }
    }
    Ok(())
}

impl Writer for Redb {
    fn step(&mut self, step: &Step) -> Result<()> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(if step.commit.is_some() { redb::Durability::Immediate } else { redb::Durability::None });
        redb_put(&tx, &step.batch, &mut self.buf)?;
        tx.commit()?;
        Ok(())
    }

    fn close(self: Box<Self>) -> Result<()> {
        drop(self.db);
        Ok(())
    }
}

/// redb with one write transaction per object, committed `Immediate`.
pub struct RedbObject {
    db: redb::Database,
    tx: Option<redb::WriteTransaction>,
    buf: Vec<u8>,
}

impl RedbObject {
    pub fn new(db: redb::Database) -> RedbObject {
        RedbObject { db, tx: None, buf: Vec::new() }
    }
}

impl Writer for RedbObject {
    fn step(&mut self, step: &Step) -> Result<()> {
        if self.tx.is_none() {
            let mut tx = self.db.begin_write()?;
            tx.set_durability(redb::Durability::Immediate);
            self.tx = Some(tx);
        }
        redb_put(self.tx.as_ref().expect("just opened"), &step.batch, &mut self.buf)?;
        if step.commit.is_some() {
            self.tx.take().expect("open").commit()?;
        }
        Ok(())
    }

    fn close(self: Box<Self>) -> Result<()> {
        if self.tx.is_some() {
            bail!("the workload ended inside an object");
        }
        drop(self.db);
        Ok(())
    }
}

pub struct RedbReader {
    _db: redb::Database,
    atoms: redb::ReadOnlyTable<[u8; 32], &'static [u8]>,
}

impl RedbReader {
    pub fn open(dir: &Path, cache: Option<usize>) -> Result<RedbReader> {
        let db = Redb::create(dir, cache)?;
        let tx = db.begin_read()?;
        let atoms = tx.open_table(ATOMS)?;
        Ok(RedbReader { _db: db, atoms })
    }
}

impl Reader for RedbReader {
    fn get(&self, hash: &[u8; 32]) -> Result<Option<usize>> {
        Ok(self.atoms.get(hash)?.map(|v| v.value().len()))
    }
}

// --- fjall -----------------------------------------------------------------------------------

/// fjall as its documentation suggests: one keyspace, a partition per index, an atomic write
/// batch per batch, `manual_journal_persist` with `persist(SyncAll)` when an object ends.
pub struct Fjall {
    ks: fjall::Keyspace,
    atoms: fjall::PartitionHandle,
    keys: fjall::PartitionHandle,
    buf: Vec<u8>,
}

impl Fjall {
    /// Open the keyspace in `dir`; `cache` overrides fjall's default block cache (32 MiB).
    pub fn open(dir: &Path, cache: Option<usize>) -> Result<Fjall> {
        let mut config = fjall::Config::new(dir).manual_journal_persist(true);
        if let Some(c) = cache {
            config = config.cache_size(c as u64);
        }
        let ks = config.open().context("fjall open")?;
        let atoms = ks.open_partition("atoms", fjall::PartitionCreateOptions::default())?;
        let keys = ks.open_partition("keys", fjall::PartitionCreateOptions::default())?;
        Ok(Fjall { ks, atoms, keys, buf: Vec::new() })
    }
}

impl Writer for Fjall {
    fn step(&mut self, step: &Step) -> Result<()> {
        let mut batch = self.ks.batch();
        let b = &step.batch;
        for op in &b.ops {
            if self.atoms.contains_key(op.hash.0)? {
                continue;
            }
            let key = HilbertKey::new(op.modality, &op.pos).to_bytes();
            if let Some(old) = self.keys.get(key)? {
                if *old != op.hash.0 {
                    bail!("key collision");
                }
            }
            kv_value(b, op, &mut self.buf);
            batch.insert(&self.atoms, op.hash.0, self.buf.as_slice());
            batch.insert(&self.keys, key, op.hash.0);
        }
        batch.commit()?;
        if step.commit.is_some() {
            self.ks.persist(fjall::PersistMode::SyncAll)?;
        }
        Ok(())
    }

    fn close(self: Box<Self>) -> Result<()> {
        self.ks.persist(fjall::PersistMode::SyncAll)?;
        Ok(())
    }
}

impl Reader for Fjall {
    fn get(&self, hash: &[u8; 32]) -> Result<Option<usize>> {
        Ok(self.atoms.get(hash)?.map(|v| v.len()))
    }
}
