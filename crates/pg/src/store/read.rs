//! Reading trees back: atoms resolved many keys at a time, one prepared query per partition,
//! and the level-by-level walk of `cat` and `fsck`.

use std::io::Write;

use deadpool_postgres::Object;
use hart_core::atom::{leaf_hash, node_hash};
use hart_core::{Hash, HilbertKey, Modality, LEAF_MAX, MAX_FANOUT};
use hart_store::StoreError;
use tokio_postgres::Row;

use super::{geom_of, hash_of, modality_of, DbError, DbResult, Partitions, CAT_BATCH};

/// One entry of a tree walk: bytes ready to write, or an atom still to fetch.
enum Item {
    Bytes(Vec<u8>),
    Pending(HilbertKey),
}

/// Rows found by [`rows_at`], each once, and which of them holds each key asked for.
pub(super) struct Found {
    rows: Vec<Row>,
    at: Vec<Option<u32>>,
}

impl Found {
    /// The row of the atom at `keys[i]`; the caller's columns start at [`FOUND_COLS`].
    pub(super) fn row(&self, i: usize) -> Option<&Row> {
        self.at[i].map(|j| &self.rows[j as usize])
    }
}

/// Index of the first of the caller's columns in a [`Found`] row (after the three key parts).
pub(super) const FOUND_COLS: usize = 3;

/// The rows of the atoms at `keys` (columns `cols` of partition alias `a`); None where no atom
/// the caller can see is. One query per partition, all in flight at once on the connection,
/// each prepared once per connection and run on the partition itself (decision 0011): the read
/// policy of `atoms` holds there too.
///
/// Each query asks for the partition's keys by `h_xy = ANY($1)`: one index scan walking the
/// sorted values, half the server time of joining an `unnest` of the three key parts to the
/// primary key (1.0–1.1 against 2.2–2.5 µs per key, `EXPLAIN ANALYZE` of 20 K keys). Atoms
/// sharing an `h_xy` with a key but not its other parts come back too and are ignored here.
///
/// With several connections (sharing one snapshot), the partitions' queries are spread over
/// them, largest first, so that the server works on both cores.
pub(super) async fn rows_at(conns: &[&Object], parts: &Partitions, keys: &[HilbertKey], cols: &str) -> DbResult<Found> {
    // Where each key is asked for: its first index in `keys`, then a chain through the
    // repeats (a composite may name one child several times).
    let mut first: rustc_hash::FxHashMap<HilbertKey, u32> = Default::default();
    first.reserve(keys.len());
    let mut next = vec![u32::MAX; keys.len()];
    let mut groups: rustc_hash::FxHashMap<usize, Vec<i64>> = Default::default();
    for (i, k) in keys.iter().enumerate() {
        match first.entry(*k) {
            std::collections::hash_map::Entry::Occupied(e) => {
                // Link the repeat in after the first occurrence.
                let f = *e.get() as usize;
                next[i] = next[f];
                next[f] = i as u32;
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(i as u32);
                let Some(part) = parts.index_of(k.h_xy) else { continue };
                groups.entry(part).or_default().push(k.h_xy as i64);
            }
        }
    }
    // Largest groups first, each to the connection with the fewest keys so far.
    let mut order: Vec<_> = groups.into_iter().collect();
    order.sort_by_key(|(part, g)| (std::cmp::Reverse(g.len()), *part));
    let mut load = vec![0usize; conns.len().max(1)];
    let mut assigned = Vec::with_capacity(order.len());
    for (part, mut xs) in order {
        let j = (0..load.len()).min_by_key(|&j| load[j]).unwrap_or(0);
        load[j] += xs.len();
        xs.sort_unstable();
        xs.dedup();
        assigned.push((conns[j], parts.name(part), xs));
    }
    let queries = assigned.into_iter().map(|(c, part, xs)| async move {
        let stmt = c
            .prepare_cached(&format!(
                "SELECT a.h_xy, a.h_yz, a.h_zm, {cols} FROM {part} a WHERE a.h_xy = ANY($1::bigint[])"
            ))
            .await?;
        c.query(&stmt, &[&xs]).await
    });
    let mut found = Found { rows: Vec::new(), at: vec![None; keys.len()] };
    for rows in futures_util::future::try_join_all(queries).await? {
        for r in rows {
            let k = HilbertKey {
                h_xy: r.get::<_, i64>(0) as u64,
                h_yz: r.get::<_, i64>(1) as u64,
                h_zm: r.get::<_, i64>(2) as u64,
            };
            let Some(&f) = first.get(&k) else { continue };
            let j = found.rows.len() as u32;
            let mut i = f;
            while i != u32::MAX {
                found.at[i as usize] = Some(j);
                i = next[i as usize];
            }
            found.rows.push(r);
        }
    }
    Ok(found)
}

/// What a walk needs of one atom.
#[derive(Clone)]
enum Fetched {
    /// A leaf's value.
    Leaf(Vec<u8>),
    /// A composite's pack (migration 0012) and content hash, to check it by.
    Packed(Vec<u8>, Hash),
    /// A composite's EWKB: its children are read next.
    Node(Vec<u8>),
}

/// What a walk needs of the atoms at `keys`: a leaf's value, a composite's pack when it has
/// one, else its EWKB.
async fn walk_fetch(conns: &[&Object], parts: &Partitions, keys: &[HilbertKey]) -> DbResult<Vec<Option<Fetched>>> {
    let found = rows_at(
        conns,
        parts,
        keys,
        "a.value, CASE WHEN a.value IS NULL AND a.leaves IS NULL THEN ST_AsEWKB(a.geom) END, a.leaves,
         CASE WHEN a.leaves IS NOT NULL THEN a.content_hash END",
    )
    .await?;
    let mut out = Vec::with_capacity(keys.len());
    for i in 0..keys.len() {
        let Some(r) = found.row(i) else {
            out.push(None);
            continue;
        };
        let f = if let Some(v) = r.get::<_, Option<Vec<u8>>>(FOUND_COLS) {
            Fetched::Leaf(v)
        } else if let Some(pack) = r.get::<_, Option<Vec<u8>>>(FOUND_COLS + 2) {
            Fetched::Packed(pack, hash_of(r.get(FOUND_COLS + 3))?)
        } else {
            Fetched::Node(r.get::<_, Option<Vec<u8>>>(FOUND_COLS + 1).unwrap_or_default())
        };
        out.push(Some(f));
    }
    Ok(out)
}

/// The EWKB of the composite at `key`, for a pack that did not check out.
async fn node_geometry(conns: &[&Object], parts: &Partitions, key: HilbertKey) -> DbResult<Vec<u8>> {
    let found = rows_at(conns, parts, &[key], "ST_AsEWKB(a.geom)").await?;
    found.row(0).map(|r| r.get(FOUND_COLS)).ok_or_else(|| missing_atom(key))
}

/// A walk reached a key no atom is stored at.
fn missing_atom(key: HilbertKey) -> DbError {
    StoreError::Backend(format!("atom at key {key} is missing from the database; run `hart fsck`")).into()
}

/// Write the leaves under the atom at `root` in order, resolving up to [`CAT_BATCH`] atoms
/// per query from the front of the walk: memory stays bounded by depth × fan-out × batch.
pub(super) async fn walk(
    conns: &[&Object],
    parts: &Partitions,
    root: HilbertKey,
    out: &mut dyn Write,
) -> DbResult<u64> {
    let mut queue: std::collections::VecDeque<Item> = std::collections::VecDeque::new();
    queue.push_back(Item::Pending(root));
    let mut written = 0u64;
    let mut depth_guard = 0u64;
    loop {
        while let Some(Item::Bytes(_)) = queue.front() {
            if let Some(Item::Bytes(b)) = queue.pop_front() {
                out.write_all(&b).map_err(|e| StoreError::io("write", "output", e))?;
                written += b.len() as u64;
            }
        }
        if queue.is_empty() {
            return Ok(written);
        }
        depth_guard += 1;
        if depth_guard > 1 << 40 {
            return Err(StoreError::Backend("tree walk does not terminate (a cycle?)".into()).into());
        }
        // Resolve the pending atoms among the first CAT_BATCH entries.
        let n = queue.len().min(CAT_BATCH);
        // Each distinct key once (leaves repeat a lot): slot of each pending entry in `keys`.
        let mut slot_of: rustc_hash::FxHashMap<HilbertKey, usize> = Default::default();
        let mut slots = Vec::new();
        let mut keys = Vec::new();
        for it in queue.iter().take(n) {
            if let Item::Pending(k) = it {
                let next = keys.len();
                let s = *slot_of.entry(*k).or_insert(next);
                if s == next {
                    keys.push(*k);
                }
                slots.push(s);
            }
        }
        let mut got = walk_fetch(conns, parts, &keys).await?;
        // How many pending entries each fetched atom fills: the last one takes it, the others
        // (an atom repeated within the batch) copy it.
        let mut uses = vec![0u32; keys.len()];
        for &s in &slots {
            uses[s] += 1;
        }
        // Rebuild the front of the queue with leaves as bytes and composites expanded.
        let rest = queue.split_off(n);
        let front = std::mem::take(&mut queue);
        let mut j = 0;
        for it in front {
            match it {
                Item::Bytes(b) => queue.push_back(Item::Bytes(b)),
                Item::Pending(k) => {
                    let s = slots[j];
                    uses[s] -= 1;
                    let fetched = if uses[s] == 0 { got[s].take() } else { got[s].clone() };
                    let Some(fetched) = fetched else { return Err(missing_atom(k)) };
                    j += 1;
                    // A child has its parent's modality (the high byte of h_xy).
                    let modality = modality_of((k.h_xy >> 56) as i16)?;
                    let g = match fetched {
                        Fetched::Leaf(v) => {
                            queue.push_back(Item::Bytes(v));
                            continue;
                        }
                        Fetched::Packed(pack, hash) => match unpack(modality, &hash, &pack) {
                            Some(bytes) => {
                                queue.push_back(Item::Bytes(bytes));
                                continue;
                            }
                            None => {
                                tracing::warn!(key = %k, "a composite's pack does not match its hash (run `hart fsck`); reading its children instead");
                                node_geometry(conns, parts, k).await?
                            }
                        },
                        Fetched::Node(g) => g,
                    };
                    let (_, kids) = geom_of(&g)?;
                    for p in kids {
                        queue.push_back(Item::Pending(HilbertKey::new(modality, &p)));
                    }
                }
            }
        }
        queue.extend(rest);
    }
}

pub(super) async fn key_of_hash(c: &Object, hash: &Hash) -> DbResult<Option<HilbertKey>> {
    let stmt = c.prepare_cached("SELECT a.h_xy, a.h_yz, a.h_zm FROM atoms a WHERE a.content_hash = $1 LIMIT 1").await?;
    let row = c.query_opt(&stmt, &[&hash.0.as_slice()]).await?;
    Ok(row.map(|r| HilbertKey {
        h_xy: r.get::<_, i64>(0) as u64,
        h_yz: r.get::<_, i64>(1) as u64,
        h_zm: r.get::<_, i64>(2) as u64,
    }))
}

/// The leaf values of a composite's pack, checked against its content hash: None if the pack
/// is malformed or its leaves do not hash to `hash` (then the children are read instead).
fn unpack(modality: Modality, hash: &Hash, pack: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(pack.len());
    let mut kids = Vec::with_capacity(MAX_FANOUT);
    let mut rest = pack;
    while let Some((&n, tail)) = rest.split_first() {
        let (v, tail) = tail.split_at_checked(n as usize)?;
        if v.len() > LEAF_MAX || kids.len() == MAX_FANOUT {
            return None;
        }
        kids.push(leaf_hash(modality, v));
        out.extend_from_slice(v);
        rest = tail;
    }
    (kids.len() >= 2 && node_hash(modality, &kids) == *hash).then_some(out)
}
