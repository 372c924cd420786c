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
            done: false,
        }
    }
}

impl EmbeddedSession<'_> {
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
            match inner.probe(&op.hash, &key)? {
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
        let mut guard = self.store.inner.write().expect("lock");
        let inner = &mut *guard;
        inner.check()?;
        let r = self.put_ops(inner, batch);
        // References gathered in the cache reach the state whatever happened, so that it
        // matches the log (everything appended stays appended).
        let f = inner.hot.flush(&mut inner.d.state);
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
