//! An ingest session of the embedded engine: `put` (dedup, append, count references), `commit`, `abort`.

use crate::*;

/// How many atoms ahead of the one being put [`Inner::prefetch`] works: far enough for the
/// loads to arrive, near enough that they are still in cache when used.
pub(crate) const PREFETCH_AHEAD: usize = 4;

/// An ingest in progress.
pub(crate) struct EmbeddedSession<'a> {
    store: &'a EmbeddedStore,
    _gate: RwLockReadGuard<'a, ()>,
    id: u64,
    uri: String,
    /// Atoms below this offset existed before the session.
    start: u64,
    created: u64,
    referenced: u64,
    kids: Vec<u64>,
    /// Children of the current composite that missed the cache's direct table.
    missed: Vec<(Hash, u64)>,
    /// Ghosts found in this `put` and the good copies that heal them.
    heals: Vec<(u64, u64)>,
    /// Calls of `put` so far.
    puts: u64,
    done: bool,
}

impl<'a> EmbeddedSession<'a> {
    pub(crate) fn new(
        store: &'a EmbeddedStore,
        gate: RwLockReadGuard<'a, ()>,
        id: u64,
        uri: String,
        start: u64,
    ) -> Self {
        EmbeddedSession {
            store,
            _gate: gate,
            id,
            uri,
            start,
            created: 0,
            referenced: 0,
            kids: Vec::with_capacity(hart_core::MAX_FANOUT),
            missed: Vec::new(),
            heals: Vec::new(),
            puts: 0,
            done: false,
        }
    }
}

impl EmbeddedSession<'_> {
    /// A composite found in the index, about to be shared: its record's children (read
    /// through earlier heals) must be the atoms the batch names, which this session put or
    /// found already. A child that is a ghost (an atom a repair could not read) is healed by
    /// the good copy just put; any other difference is damage this ingest must not build on.
    fn check_found(&mut self, inner: &mut Inner, batch: &Batch, op: &Op, o: u64) -> Result<(), StoreError> {
        let damaged = |inner: &Inner, what: String| StoreError::StoreDamaged {
            path: inner.dir.clone(),
            detail: format!(
                "the stored composite {} (log offset {o}) {what}, so this ingest would build on damaged data",
                op.hash
            ),
        };
        let Some((_, _, children)) = inner.node_unchecked(o) else {
            return Err(damaged(inner, "does not decode".into()));
        };
        let stored: Vec<u64> = children.map(|c| inner.redirect(c)).collect();
        let want: Vec<Hash> = batch.children(op).to_vec();
        if stored.len() != want.len() {
            return Err(damaged(inner, format!("lists {} children, not {}", stored.len(), want.len())));
        }
        for (&s, h) in stored.iter().zip(&want) {
            let good = match inner.hot.direct(h) {
                Some(g) => Some(g),
                None => inner.resolve(h)?,
            };
            if good == Some(s) {
                continue;
            }
            match good {
                Some(g) if inner.d.state.ghosts.contains(&s) => {
                    if !self.heals.iter().any(|&(gh, _)| gh == s) {
                        self.heals.push((s, g));
                    }
                }
                _ => return Err(damaged(inner, format!("lists a child at log offset {s} that is not the atom {h}"))),
            }
        }
        Ok(())
    }

    fn put_ops(&mut self, inner: &mut Inner, batch: &Batch) -> Result<(), StoreError> {
        for op in batch.ops.iter().take(PREFETCH_AHEAD) {
            inner.prefetch(batch, op);
        }
        for (i, op) in batch.ops.iter().enumerate() {
            if let Some(next) = batch.ops.get(i + PREFETCH_AHEAD) {
                inner.prefetch(batch, next);
            }
            if inner.hot.direct(&op.hash).is_some() {
                continue;
            }
            // Positions carry their hash's first eight bytes in their low bits; that is what
            // lets the hash index detect key collisions (decision 0003), so check it.
            if Position::from_features(op.pos.features(), &op.hash) != op.pos || !op.pos.is_valid() {
                return Err(StoreError::Invalid(format!(
                    "atom {} has position {:?}, which does not carry its hash bits",
                    op.hash, op.pos
                )));
            }
            let key = HilbertKey::new(op.modality, &op.pos);
            let found = match inner.probe(&op.hash, &key)? {
                Probe::FoundInRuns(o) if op.kind == AtomKind::Node => {
                    // Never build on a damaged composite: its children must be the atoms the
                    // batch names (a leaf found by hash was checked by its hash already).
                    self.check_found(inner, batch, op, o)?;
                    Probe::Found(o)
                }
                Probe::FoundInRuns(o) => Probe::Found(o),
                p => p,
            };
            match found {
                Probe::FoundInRuns(_) => unreachable!("mapped to Found above"),
                Probe::Found(o) => {
                    inner.hot.map.insert(op.hash, o);
                    let leaf = op.kind == AtomKind::Leaf;
                    inner
                        .hot
                        .place(&mut inner.d.state, op.hash, o, leaf, false)
                        .map_err(|o| removed_child(&inner.dir, o))?;
                    continue;
                }
                Probe::Collision(o) => {
                    // A damaged record can claim a position it does not own: say damage, not
                    // collision, when the atom holding the key does not verify.
                    if !inner.verifies(o) {
                        return Err(StoreError::StoreDamaged {
                            path: inner.dir.clone(),
                            detail: format!(
                                "the atom at log offset {o}, which holds the position of {}, does not verify \
                                 (its children do not hash to it)",
                                op.hash
                            ),
                        });
                    }
                    let existing = inner.hash_at(o)?;
                    return Err(StoreError::Collision {
                        key: key.to_string(),
                        existing: existing.to_hex(),
                        new: op.hash.to_hex(),
                    });
                }
                Probe::New => {}
            }
            let m = op.modality;
            let off = match op.kind {
                AtomKind::Leaf => {
                    let value = batch.value(op);
                    if value.len() > hart_core::LEAF_MAX {
                        return Err(StoreError::Invalid(format!(
                            "leaf {} has {} bytes (at most {})",
                            op.hash,
                            value.len(),
                            hart_core::LEAF_MAX
                        )));
                    }
                    let off = inner.append(|buf, _| record::encode_leaf(buf, m.as_u8(), value))?;
                    inner.d.index(off, op.hash, &key);
                    let c = inner.d.state.counters.at(m.as_u8());
                    c.leaves += 1;
                    c.leaf_bytes += value.len() as u64;
                    off
                }
                AtomKind::Node => self.put_node(inner, batch, op, &key)?,
            };
            self.created += 1;
            // A good copy of an atom a repair set aside: it heals the ghost.
            if !inner.d.state.ghost_hashes.is_empty() {
                if let Some(&g) = inner.d.state.ghost_hashes.get(&op.hash) {
                    if !self.heals.iter().any(|&(gh, _)| gh == g) {
                        self.heals.push((g, off));
                    }
                }
            }
            let leaf = op.kind == AtomKind::Leaf;
            inner.hot.place(&mut inner.d.state, op.hash, off, leaf, true).map_err(|o| removed_child(&inner.dir, o))?;
        }
        Ok(())
    }

    /// Append a new composite: resolve its children (almost always direct-cache hits, where
    /// their new references are gathered), and count one reference per distinct child.
    fn put_node(&mut self, inner: &mut Inner, batch: &Batch, op: &Op, key: &HilbertKey) -> Result<u64, StoreError> {
        let stamp = inner.hot.next_stamp();
        self.kids.clear();
        // Children that missed the direct table, counted here: the table does not change while
        // one composite's children are counted, so a child is always a hit or always a miss.
        self.missed.clear();
        for c in batch.children(op) {
            if let Some((o, first)) = inner.hot.count(c, stamp) {
                self.kids.push(o);
                self.referenced += u64::from(first && o < self.start);
                continue;
            }
            let o = inner.resolve(c)?.ok_or_else(|| {
                StoreError::Invalid(format!("composite {} names child {} that was never stored", op.hash, c))
            })?;
            self.kids.push(o);
            if !self.missed.iter().any(|&(_, m)| m == o) {
                self.missed.push((*c, o));
                if !inner.d.state.incref(o) {
                    return Err(removed_child(&inner.dir, o));
                }
                self.referenced += u64::from(o < self.start);
            }
        }
        let m = op.modality;
        let kids = &self.kids;
        let off = inner.append(|buf, own| record::encode_node(buf, own, m.as_u8(), &op.hash, &op.pos, kids))?;
        inner.d.index(off, op.hash, key);
        inner.d.state.counters.at(m.as_u8()).composites += 1;
        for &(h, o) in &self.missed {
            // Most children are leaves (tokens): a composite found here goes among them too.
            inner.hot.place(&mut inner.d.state, h, o, true, false).map_err(|o| removed_child(&inner.dir, o))?;
        }
        Ok(off)
    }
}

fn removed_child(dir: &Path, off: u64) -> StoreError {
    corrupt(dir, off, "a composite references a removed atom")
}

impl Session for EmbeddedSession<'_> {
    fn put(&mut self, batch: &Batch) -> Result<(), StoreError> {
        self.puts += 1;
        let mut guard = self.store.inner.write().expect("lock");
        let inner = &mut *guard;
        inner.check()?;
        let r = self.put_ops(inner, batch);
        // References gathered in the cache reach the state whatever happened, so that it
        // matches the log (everything appended stays appended).
        let f = inner.hot.flush(&mut inner.d.state);
        // Heals found by this put, now that the good copies' counts are in the state: logged,
        // then applied (replay applies the same records the same way).
        for (ghost, good) in std::mem::take(&mut self.heals) {
            inner.append(|buf, _| record::encode_heal(buf, ghost, good))?;
            inner.d.heal(ghost, good).map_err(|e| corrupt(&inner.dir, ghost, e))?;
        }
        r?;
        f.map_err(|o| corrupt(&inner.dir, o, "a composite references a removed atom"))?;
        inner.maybe_checkpoint()
    }

    fn commit(mut self: Box<Self>, root: &Hash, summary: &ObjectSummary) -> Result<ObjectInfo, StoreError> {
        let mut guard = self.store.inner.write().expect("lock");
        let inner = &mut *guard;
        inner.check()?;
        let root_off =
            inner.resolve(root)?.ok_or_else(|| StoreError::Invalid(format!("root {root} was never stored")))?;
        if self.puts == 0 {
            // Nothing was put: the pipeline recognised a stored object's bytes and commits its
            // root as it is. Never build on a damaged tree: verify it first.
            if let Err(crate::read::Failure::Damage(d)) =
                crate::read::cat_checked(inner, root_off, root, &mut std::io::sink())
            {
                let why = d.into_error(inner).to_string();
                return Err(StoreError::StoreDamaged {
                    path: inner.dir.clone(),
                    detail: format!("the stored copy of this file is damaged ({why})"),
                });
            }
        }
        let unchanged = inner
            .d
            .state
            .objects
            .values()
            .any(|o| o.info.uri == self.uri && o.info.status == Status::Completed && o.info.root == Some(*root));
        let status = if unchanged { Status::Unchanged } else { Status::Completed };
        let referenced = self.referenced + u64::from(status == Status::Completed && root_off < self.start);
        let info = CommitInfo {
            status,
            root: *root,
            source_hash: summary.source_hash,
            size: summary.size,
            created: self.created,
            referenced,
            skipped: summary.occurrences.saturating_sub(self.created),
            completed_at: hart_store::now_ms(),
        };
        let json = serde_json::to_vec(&info).map_err(|e| StoreError::Backend(e.to_string()))?;
        let id = self.id;
        inner.append(|buf, _| record::encode_obj(buf, record::OBJ_COMMIT, id, Some(root_off), &json))?;
        inner.d.obj_commit(id, root_off, &json).map_err(|e| corrupt(&inner.dir, root_off, e))?;
        inner.write_frame(self.store.opts.sync_every_commit)?;
        self.done = true;
        Ok(inner.d.state.objects[&id].info.clone())
    }

    fn abort(mut self: Box<Self>, error: &str) -> Result<(), StoreError> {
        self.done = true;
        let mut inner = self.store.inner.write().expect("lock");
        inner.check()?;
        inner.fail_object(self.id, error)?;
        inner.write_frame(false)
    }
}

impl Drop for EmbeddedSession<'_> {
    fn drop(&mut self) {
        if !self.done {
            if let Ok(mut inner) = self.store.inner.write() {
                if inner.check().is_ok() && inner.fail_object(self.id, "abandoned before commit").is_ok() {
                    let _ = inner.write_frame(false);
                }
            }
        }
    }
}
