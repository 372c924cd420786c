//! An ingestion session: atoms staged by binary COPY and merged by `hart_merge_stage`, two
//! merges at once on two connections of the session.

use deadpool_postgres::Object;
use hart_core::geom::ewkb;
use hart_core::{AtomKind, Hash, HilbertKey, Position, LEAF_MAX};
use hart_store::{Batch, BoundedMap, ObjectInfo, ObjectSummary, Session, StoreError};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

use super::read::{rows_at, FOUND_COLS};
use super::{hash_of, load_object, DbError, DbResult, Partitions, PgStore, GC_LOCK, MERGE_ROWS};
use crate::retry::RetryPolicy;

/// One ingestion: a connection held from `begin` to `commit`/`abort` (with the shared gc lock).
pub(super) struct PgSession<'a> {
    store: &'a PgStore,
    conn: Option<Object>,
    id: i64,
    /// When the ingestion began: atoms created earlier existed before it.
    start: std::time::SystemTime,
    uri: String,
    /// Positions of atoms this session has put or looked up, and whether they existed before it.
    positions: BoundedMap<Hash, Position>,
    /// Recent leaf values, for packs.
    leaves: BoundedMap<Hash, LeafValue>,
    /// Rows put but not merged yet (at most [`MERGE_ROWS`] and a batch, plus rows held back
    /// until the merge in flight commits).
    pending: Vec<StageRow>,
    /// A second connection, so that one batch merges while the next is sent (None until
    /// needed, or when the pool had none to spare).
    extra: Option<Object>,
    /// Whether a second connection was asked for already.
    asked_extra: bool,
    /// Merges running on the server while the session goes on, oldest first (at most two:
    /// each holds one of the session's connections).
    inflight: std::collections::VecDeque<InFlight>,
    created: u64,
    referenced: u64,
}

impl<'a> PgSession<'a> {
    /// A session on `conn` (holding the shared gc lock) for ingestion `id`.
    pub(super) fn new(store: &'a PgStore, conn: Object, id: i64, start: std::time::SystemTime, uri: String) -> Self {
        PgSession {
            store,
            conn: Some(conn),
            id,
            start,
            uri,
            positions: BoundedMap::new(1 << 20),
            leaves: BoundedMap::new(PACK_CACHE),
            pending: Vec::new(),
            extra: None,
            asked_extra: false,
            inflight: Default::default(),
            created: 0,
            referenced: 0,
        }
    }
}

/// What a merge gives back: its connection, and the atoms it created and referenced.
type Merged = (Object, Result<(u64, u64), DbError>);

/// A merge in flight on one of the session's connections.
struct InFlight {
    task: tokio::task::JoinHandle<Merged>,
    /// Whether it runs on the session's first connection (which holds the gc lock).
    primary: bool,
    /// `h_xy` of every row it stores: a composite naming one of them as a child waits for
    /// the next merge (its child is not visible before this one commits).
    keys: rustc_hash::FxHashSet<i64>,
}

/// One row of `hart_stage`, ready for binary COPY.
struct StageRow {
    key: HilbertKey,
    geom: Vec<u8>,
    value: Option<Vec<u8>>,
    modality: i16,
    hash: Hash,
    /// h_xy of each child, in the order of the composite's vertices; None for a leaf.
    kids: Option<Vec<i64>>,
    /// A composite's pack (migration 0012): each child leaf's value after its length.
    leaves: Option<Vec<u8>>,
}

/// A leaf's value, kept by a session to build the packs of the composites above it.
#[derive(Clone, Copy)]
struct LeafValue {
    len: u8,
    bytes: [u8; LEAF_MAX],
}

impl LeafValue {
    fn new(v: &[u8]) -> Option<LeafValue> {
        let mut bytes = [0; LEAF_MAX];
        bytes.get_mut(..v.len())?.copy_from_slice(v);
        Some(LeafValue { len: v.len() as u8, bytes })
    }
}

/// Leaf values a session keeps for packs: two generations of this many (~13 MB each). A
/// composite with a child no longer here (or that is not a leaf) is staged without a pack.
const PACK_CACHE: usize = 1 << 17;

/// The pack of a composite whose children are all in `leaves` (migration 0012), else None.
fn pack_of<'a>(
    children: impl ExactSizeIterator<Item = &'a Hash>,
    leaves: &mut BoundedMap<Hash, LeafValue>,
) -> Option<Vec<u8>> {
    let mut pack = Vec::with_capacity(children.len() * 33);
    for h in children {
        let v = leaves.get_promote(h)?;
        pack.push(v.len);
        pack.extend_from_slice(&v.bytes[..v.len as usize]);
    }
    Some(pack)
}

/// The staging rows of `ops`: each composite's geometry runs through its children's
/// positions, known from this session (`positions`) or looked up by content hash.
async fn stage_rows(
    conn: &Object,
    batch: &Batch,
    ops: &[&hart_store::Op],
    positions: &mut BoundedMap<Hash, Position>,
    leaves: &mut BoundedMap<Hash, LeafValue>,
) -> DbResult<Vec<StageRow>> {
    let mut rows = Vec::with_capacity(ops.len());
    let mut kid_pos = Vec::new();
    for op in ops {
        let key = HilbertKey::new(op.modality, &op.pos);
        kid_pos.clear();
        let (value, kids, pack) = match op.kind {
            AtomKind::Leaf => (Some(batch.value(op).to_vec()), None, None),
            AtomKind::Node => {
                for h in batch.children(op) {
                    let p = match positions.get_promote(h) {
                        Some(p) => p,
                        None => {
                            let stmt = conn
                                .prepare_cached(
                                    "SELECT ST_X(a.pt)::bigint, ST_Y(a.pt)::bigint, ST_Z(a.pt)::bigint, ST_M(a.pt)::bigint
                                     FROM atoms a WHERE a.content_hash = $1 LIMIT 1",
                                )
                                .await?;
                            let row = conn.query_opt(&stmt, &[&h.0.as_slice()]).await?;
                            let Some(r) = row else {
                                return Err(StoreError::Invalid(format!(
                                    "composite {} names child {h} that was never stored",
                                    op.hash
                                ))
                                .into());
                            };
                            let c = |j: usize| r.get::<_, i64>(j) as u32;
                            let p = Position::new(c(0), c(1), c(2), c(3));
                            positions.insert(*h, p);
                            p
                        }
                    };
                    kid_pos.push(p);
                }
                let kids = kid_pos.iter().map(|p| HilbertKey::new(op.modality, p).h_xy as i64).collect();
                (None, Some(kids), pack_of(batch.children(op).iter(), leaves))
            }
        };
        rows.push(StageRow {
            key,
            geom: ewkb(&op.pos, &kid_pos),
            value,
            modality: i16::from(op.modality.as_u8()),
            hash: op.hash,
            kids,
            leaves: pack,
        });
    }
    Ok(rows)
}

/// A geometry value already in EWKB, PostGIS' binary input format.
#[derive(Debug)]
struct Ewkb<'a>(&'a [u8]);

impl ToSql for Ewkb<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(self.0);
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        ty.name() == "geometry"
    }

    tokio_postgres::types::to_sql_checked!();
}

/// Fill `hart_stage` with `rows` by binary COPY.
async fn copy_stage(conn: &Object, geometry: &Type, rows: &[StageRow]) -> DbResult<()> {
    let sink = conn
        .copy_in(
            "COPY hart_stage (h_xy, h_yz, h_zm, geom, value, modality, content_hash, kids, leaves) FROM STDIN (FORMAT binary)",
        )
        .await?;
    let types = [
        Type::INT8,
        Type::INT8,
        Type::INT8,
        geometry.clone(),
        Type::BYTEA,
        Type::INT2,
        Type::BYTEA,
        Type::INT8_ARRAY,
        Type::BYTEA,
    ];
    let writer = BinaryCopyInWriter::new(sink, &types);
    let mut writer = std::pin::pin!(writer);
    for r in rows {
        let (x, y, z) = (r.key.h_xy as i64, r.key.h_yz as i64, r.key.h_zm as i64);
        let hash: &[u8] = &r.hash.0;
        writer.as_mut().write(&[&x, &y, &z, &Ewkb(&r.geom), &r.value, &r.modality, &hash, &r.kids, &r.leaves]).await?;
    }
    writer.finish().await?;
    Ok(())
}

/// The error for a batch the merge refused as a collision (HT001): names the stored atom and
/// the newcomer when the caller can read the stored one.
async fn collision(conn: &Object, parts: &Partitions, rows: &[StageRow], cause: &str) -> StoreError {
    let keys: Vec<HilbertKey> = rows.iter().map(|r| r.key).collect();
    if let Ok(found) = rows_at(&[conn], parts, &keys, "a.content_hash").await {
        for i in 0..keys.len() {
            let Some(r) = found.row(i) else { continue };
            if let Ok(h) = hash_of(r.get(FOUND_COLS)) {
                if h != rows[i].hash {
                    return StoreError::Collision {
                        key: keys[i].to_string(),
                        existing: h.to_hex(),
                        new: rows[i].hash.to_hex(),
                    };
                }
            }
        }
    }
    StoreError::Collision { key: "(in this batch)".into(), existing: "(a stored atom)".into(), new: cause.to_string() }
}

impl PgSession<'_> {
    async fn finish(conn: &Object, id: i64, error: &str) -> DbResult<()> {
        conn.execute(
            "UPDATE ingestion_log SET status = 'failed', error = $2, completed_at = greatest(now(), started_at)
             WHERE id = $1 AND status IN ('pending', 'running')",
            &[&id, &error],
        )
        .await?;
        conn.execute("SELECT pg_advisory_unlock_shared($1)", &[&GC_LOCK]).await?;
        Ok(())
    }
}

/// Merge `rows` on `conn`: one transaction of binary COPY into the staging table and
/// `hart_merge_stage`, retried on transient errors. Gives the connection back with the result
/// (created and referenced atoms), so that it can run on its own task.
async fn merge_rows(
    conn: Object,
    geometry: Type,
    retry: RetryPolicy,
    parts: std::sync::Arc<Partitions>,
    start: std::time::SystemTime,
    rows: Vec<StageRow>,
) -> Merged {
    let r = retry
        .run("put", |_| async {
            conn.batch_execute("BEGIN").await?;
            let r = async {
                conn.execute("SELECT hart_stage()", &[]).await?;
                copy_stage(&conn, &geometry, &rows).await?;
                let row = conn.query_one("SELECT created, referenced FROM hart_merge_stage($1)", &[&start]).await?;
                conn.batch_execute("COMMIT").await?;
                Ok::<(i64, i64), DbError>((row.get(0), row.get(1)))
            }
            .await;
            if r.is_err() {
                let _ = conn.batch_execute("ROLLBACK").await;
            }
            r
        })
        .await;
    let r = match r {
        Err(DbError::Pg(ref pg)) if pg.code().map(|c| c.code()) == Some("HT001") => {
            Err(collision(&conn, &parts, &rows, &pg.to_string()).await.into())
        }
        Err(e) => Err(e),
        Ok((c, r)) => Ok((c as u64, r as u64)),
    };
    (conn, r)
}

impl PgSession<'_> {
    /// Send the buffered rows to be merged, on a connection of their own while the session
    /// goes on: the server merges one batch while the client prepares the next, and two
    /// batches merge at once on two server backends (decision 0011, follow-up 2).
    ///
    /// A batch must not name a child that only the merge in flight stores (the child is not
    /// visible before that merge commits): such composites, and composites above them, wait in
    /// `pending` for the next batch. Children are recognised by `h_xy`; a false match only
    /// delays a row.
    fn flush(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.any_idle()?;
        let rows = std::mem::take(&mut self.pending);
        let (now, later) = match self.inflight.back() {
            None => (rows, Vec::new()),
            Some(f) => {
                let mut held: rustc_hash::FxHashSet<i64> = Default::default();
                let (mut now, mut later) = (Vec::with_capacity(rows.len()), Vec::new());
                for r in rows {
                    let waits =
                        r.kids.as_ref().is_some_and(|k| k.iter().any(|x| f.keys.contains(x) || held.contains(x)));
                    if waits {
                        held.insert(r.key.h_xy as i64);
                        later.push(r);
                    } else {
                        now.push(r);
                    }
                }
                (now, later)
            }
        };
        self.pending = later;
        if now.is_empty() {
            return Ok(());
        }
        self.launch(now)
    }

    /// Whether the session has an idle connection: the first, or a second one from the pool
    /// when the first is busy and the pool has one to spare.
    fn idle(&mut self) -> bool {
        if self.conn.is_some() || self.extra.is_some() {
            return true;
        }
        if !self.asked_extra {
            self.asked_extra = true;
            let mut t = deadpool_postgres::Timeouts::new();
            t.wait = Some(std::time::Duration::ZERO);
            t.create = Some(self.store.settings.connect_timeout);
            t.recycle = Some(self.store.settings.connect_timeout);
            if let Ok(c) = self.store.rt.block_on(self.store.pool.timeout_get(&t)) {
                self.extra = Some(c);
                return true;
            }
        }
        false
    }

    /// Put a connection back among the idle ones, in the slot it came from.
    fn give_back(&mut self, conn: Object, primary: bool) {
        if primary {
            self.conn = Some(conn);
        } else {
            self.extra = Some(conn);
        }
    }

    /// Start merging `rows` on an idle connection.
    fn launch(&mut self, rows: Vec<StageRow>) -> Result<(), StoreError> {
        let store = self.store;
        let (conn, primary) = match self.conn.take() {
            Some(c) => (c, true),
            None => (self.extra.take().expect("an idle connection"), false),
        };
        let geometry = match store.rt.block_on(store.geometry_type(&conn)) {
            Ok(g) => g,
            Err(e) => {
                self.give_back(conn, primary);
                return Err(e.into());
            }
        };
        let keys = rows.iter().map(|r| r.key.h_xy as i64).collect();
        let task =
            store.rt.spawn(merge_rows(conn, geometry, store.retry.clone(), store.partitions.clone(), self.start, rows));
        self.inflight.push_back(InFlight { task, primary, keys });
        Ok(())
    }

    /// Wait for the oldest merge in flight and take back its connection.
    fn join(&mut self) -> Result<(), StoreError> {
        let Some(f) = self.inflight.pop_front() else { return Ok(()) };
        let (conn, r) = match self.store.rt.block_on(f.task) {
            Ok(x) => x,
            Err(e) => {
                self.positions.clear();
                self.pending.clear();
                return Err(StoreError::Backend(format!("a merge task failed: {e}")));
            }
        };
        self.give_back(conn, f.primary);
        match r {
            Ok((created, referenced)) => {
                self.created += created;
                self.referenced += referenced;
                Ok(())
            }
            Err(e) => {
                // The rows of that merge were not stored: forget the positions the session
                // learnt (atoms of earlier merges are looked up again when needed), and drop
                // what depended on them.
                self.positions.clear();
                self.pending.clear();
                Err(e.into())
            }
        }
    }

    /// Merge everything buffered and wait for it. After an error, the other merge in flight
    /// is still waited for, so that both connections come back.
    fn drain(&mut self) -> Result<(), StoreError> {
        loop {
            while !self.inflight.is_empty() {
                if let Err(e) = self.join() {
                    self.settle();
                    return Err(e);
                }
            }
            if self.pending.is_empty() {
                return Ok(());
            }
            self.flush()?;
        }
    }

    /// Make sure a connection is idle (waiting for the oldest merge if both are busy).
    fn any_idle(&mut self) -> Result<(), StoreError> {
        if !self.idle() {
            self.join()?;
        }
        Ok(())
    }

    /// Wait for every merge in flight, ignoring their results (the session is being given up).
    fn settle(&mut self) {
        while !self.inflight.is_empty() {
            let _ = self.join();
        }
    }
}

impl Session for PgSession<'_> {
    fn put(&mut self, batch: &Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        // Check what can be checked without the database.
        for op in &batch.ops {
            if Position::from_features(op.pos.features(), &op.hash) != op.pos || !op.pos.is_valid() {
                return Err(StoreError::Invalid(format!(
                    "atom {} has position {:?}, which does not carry its hash bits",
                    op.hash, op.pos
                )));
            }
            if op.kind == AtomKind::Leaf && batch.value(op).len() > LEAF_MAX {
                return Err(StoreError::Invalid(format!(
                    "leaf {} has {} bytes (at most {})",
                    op.hash,
                    batch.value(op).len(),
                    LEAF_MAX
                )));
            }
        }
        // Every leaf's value, for the packs of composites in this batch and later ones.
        for op in batch.ops.iter().filter(|op| op.kind == AtomKind::Leaf) {
            if let Some(v) = LeafValue::new(batch.value(op)) {
                self.leaves.insert(op.hash, v);
            }
        }
        // Atoms this session already put are not staged again.
        let ops: Vec<_> = batch.ops.iter().filter(|op| self.positions.get(&op.hash).is_none()).collect();
        if ops.is_empty() {
            return Ok(());
        }
        // Positions first: children put in this batch are found there.
        for op in &ops {
            self.positions.insert(op.hash, op.pos);
        }
        let store = self.store;
        if let Err(e) = self.any_idle() {
            self.settle();
            return Err(e);
        }
        let conn = self.conn.as_ref().or(self.extra.as_ref()).expect("a connection is idle");
        let rows = match store.rt.block_on(stage_rows(conn, batch, &ops, &mut self.positions, &mut self.leaves)) {
            Ok(rows) => rows,
            Err(e) => {
                self.positions.clear();
                self.pending.clear();
                return Err(e.into());
            }
        };
        self.pending.extend(rows);
        if self.pending.len() >= MERGE_ROWS {
            if let Err(e) = self.flush() {
                self.settle();
                return Err(e);
            }
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.drain()
    }

    fn commit(mut self: Box<Self>, root: &Hash, summary: &ObjectSummary) -> Result<ObjectInfo, StoreError> {
        self.drain()?;
        let conn = self.conn.take().expect("connection held");
        let (id, start, uri) = (self.id, self.start, self.uri.clone());
        let (created, referenced) = (self.created, self.referenced);
        let store = self.store;
        let r = store.rt.block_on(async {
            let r = async {
                let Some(row) = conn
                    .query_opt(
                        "SELECT a.h_xy, a.h_yz, a.h_zm, a.created_at < $2 FROM atoms a WHERE a.content_hash = $1 LIMIT 1",
                        &[&root.0.as_slice(), &start],
                    )
                    .await?
                else {
                    return Err(StoreError::Invalid(format!("root {root} was never stored")).into());
                };
                let (x, y, z): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
                let root_before: bool = row.get(3);
                conn.batch_execute("BEGIN").await?;
                let r = async {
                    let unchanged: bool = conn
                        .query_one(
                            "SELECT EXISTS (SELECT FROM objects o JOIN ingestion_log l ON l.id = o.ingestion_id
                                            WHERE l.source_uri = $1 AND o.root_hash = $2 AND o.deleted_at IS NULL
                                              AND NOT EXISTS (SELECT FROM ingestion_removed r WHERE r.ingestion_id = l.id))",
                            &[&uri, &root.0.as_slice()],
                        )
                        .await?
                        .get(0);
                    let referenced = referenced + u64::from(!unchanged && root_before);
                    let skipped = summary.occurrences.saturating_sub(created);
                    conn.execute(
                        "UPDATE ingestion_log SET status = 'completed', root_h_xy = $2, root_h_yz = $3, root_h_zm = $4,
                             root_hash = $5, source_hash = $6, bytes = $7, atoms_created = $8,
                             atoms_referenced = $9, atoms_skipped = $10, completed_at = greatest(clock_timestamp(), started_at)
                         WHERE id = $1",
                        &[
                            &id,
                            &x,
                            &y,
                            &z,
                            &root.0.as_slice(),
                            &summary.source_hash.0.as_slice(),
                            &(summary.size as i64),
                            &(created as i64),
                            &(referenced as i64),
                            &(skipped as i64),
                        ],
                    )
                    .await?;
                    if !unchanged {
                        conn.execute(
                            "SELECT hart_register_object($1, $2, $3, $4, $5, $6)",
                            &[&id, &uri, &x, &y, &z, &(summary.size as i64)],
                        )
                        .await?;
                    }
                    conn.batch_execute("COMMIT").await?;
                    Ok::<_, DbError>(())
                }
                .await;
                if r.is_err() {
                    let _ = conn.batch_execute("ROLLBACK").await;
                }
                r
            }
            .await;
            match &r {
                Ok(()) => {
                    conn.execute("SELECT pg_advisory_unlock_shared($1)", &[&GC_LOCK]).await?;
                }
                Err(e) => {
                    let _ = PgSession::finish(&conn, id, &e.to_string()).await;
                }
            }
            r?;
            Ok::<_, DbError>(load_object(&conn, id).await?.expect("just committed").0)
        });
        r.map_err(StoreError::from)
    }

    fn abort(mut self: Box<Self>, error: &str) -> Result<(), StoreError> {
        self.settle();
        let Some(conn) = self.conn.take() else {
            // Only a merge task that panicked keeps it.
            return Err(StoreError::Backend(format!("ingestion {}: its connection was lost", self.id)));
        };
        self.store.rt.block_on(PgSession::finish(&conn, self.id, error)).map_err(StoreError::from)
    }
}

impl Drop for PgSession<'_> {
    fn drop(&mut self) {
        self.settle();
        if let Some(conn) = self.conn.take() {
            let id = self.id;
            let r = self.store.rt.block_on(PgSession::finish(&conn, id, "abandoned before commit"));
            if let Err(e) = r {
                tracing::warn!(ingestion = id, error = %e, "could not mark an abandoned ingestion failed");
                // The connection may still hold the shared gc lock: do not return it to the pool.
                let _ = Object::take(conn);
            }
        }
    }
}
