//! Reading trees back: atoms resolved many keys at a time, one prepared query per partition,
//! and the level-by-level walk of `cat` and `fsck`.

use std::io::Write;

use deadpool_postgres::Object;
use hart_core::atom::node_hash;
use hart_core::many::Messages;
use hart_core::{Hash, HilbertKey, Modality, LEAF_MAX, MAX_FANOUT, TAG_LEAF, TAG_NODE};
use hart_store::StoreError;
use tokio_postgres::Row;

use super::{geom_of, hash_of, modality_of, DbResult, Partitions, CAT_BATCH};

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
    /// A composite's pack (migration 0012) and stored content hash.
    Packed(Vec<u8>, Hash),
    /// A composite's EWKB (its children are read next) and stored content hash.
    Node(Vec<u8>, Hash),
}

impl Fetched {
    /// The hash this atom stands for in its parent's check: a leaf's computed elsewhere (from
    /// its value), a composite's as stored (trusted once the parent verified).
    fn stored_hash(&self) -> Option<Hash> {
        match self {
            Fetched::Leaf(_) => None,
            Fetched::Packed(_, h) | Fetched::Node(_, h) => Some(*h),
        }
    }
}

/// What a walk needs of the atoms at `keys`: a leaf's value; a composite's content hash, and
/// its pack when it has one, else its EWKB.
async fn walk_fetch(conns: &[&Object], parts: &Partitions, keys: &[HilbertKey]) -> DbResult<Vec<Option<Fetched>>> {
    let found = rows_at(
        conns,
        parts,
        keys,
        "a.value, CASE WHEN a.value IS NULL AND a.leaves IS NULL THEN ST_AsEWKB(a.geom) END, a.leaves,
         CASE WHEN a.value IS NULL THEN a.content_hash END",
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
        } else {
            let hash = hash_of(r.get(FOUND_COLS + 3))?;
            match r.get::<_, Option<Vec<u8>>>(FOUND_COLS + 2) {
                Some(pack) => Fetched::Packed(pack, hash),
                None => Fetched::Node(r.get::<_, Option<Vec<u8>>>(FOUND_COLS + 1).unwrap_or_default(), hash),
            }
        };
        out.push(Some(f));
    }
    Ok(out)
}

/// The EWKB of the composite at `key`, for a pack that did not check out.
async fn node_geometry(conns: &[&Object], parts: &Partitions, key: HilbertKey) -> DbResult<Option<Vec<u8>>> {
    let found = rows_at(conns, parts, &[key], "ST_AsEWKB(a.geom)").await?;
    Ok(found.row(0).map(|r| r.get(FOUND_COLS)))
}

/// One entry of a tree walk.
enum Item {
    /// Verified bytes, ready to write.
    Bytes(Vec<u8>),
    /// The children of one composite (or the root asked for), which follow as `Pending`
    /// entries: always fetched, and checked, in the same round.
    Group(Box<Group>),
    /// An atom to fetch, a member of the group before it.
    Pending(HilbertKey),
    /// Damage found: the walk writes what comes before it, then stops with this error.
    Damaged(Box<Damage>),
}

/// Atoms whose hashes must hash to a trusted hash: a composite's children, or the root alone.
struct Group {
    /// The composite whose children these are (None: the group is the root asked for).
    parent: Option<HilbertKey>,
    /// The hash they must hash to: the parent's, trusted (its own parent verified it), or the
    /// root asked for.
    trusted: Hash,
    /// How many `Pending` entries follow.
    members: u32,
}

/// Damage a walk found, before it knows where in the output it starts.
#[derive(Debug)]
struct Damage {
    location: String,
    expected: String,
    found: String,
    what: String,
}

impl Damage {
    fn into_error(self, byte: u64) -> StoreError {
        StoreError::Damaged {
            expected: self.expected,
            found: self.found,
            location: self.location,
            what: self.what,
            byte: Some(byte),
        }
    }
}

/// Where an atom is, for a person to look at it: its row (the key as SQL sees it) and partition.
fn row_name(parts: &Partitions, key: HilbertKey) -> String {
    let part = parts.of(key.h_xy).map(|p| p.trim_matches('"').replace("\"\"", "\"")).unwrap_or_else(|| "none".into());
    format!("atoms row {} (partition {part})", key_sql(key))
}

/// A key as SQL sees it (the columns are signed).
fn key_sql(key: HilbertKey) -> String {
    format!("h_xy={}, h_yz={}, h_zm={}", key.h_xy as i64, key.h_yz as i64, key.h_zm as i64)
}

/// The modality of the atom at `key` (the high byte of h_xy; a child has its parent's).
fn modality_at(key: HilbertKey) -> DbResult<Modality> {
    Ok(modality_of((key.h_xy >> 56) as i16)?)
}

/// Reused buffers of the checks of one round.
#[derive(Default)]
struct Checker {
    leaves: Messages,
    nodes: Messages,
    leaf_hashes: Vec<Hash>,
    node_hashes: Vec<Hash>,
}

/// Packs checked per batch of leaf messages: bounds the message arena (a pack holds up to
/// [`MAX_FANOUT`] leaves) while keeping the lanes full.
const PACKS_PER_CHECK: usize = 1024;

/// A pack being checked: where its leaves' messages start, how many, and its bytes.
struct PackCheck {
    slot: usize,
    first: usize,
    count: usize,
    bytes: Vec<u8>,
}

/// Parse a pack (each leaf's length, then its value) into leaf messages; None if malformed.
fn parse_pack(leaves: &mut Messages, slot: usize, modality: Modality, pack: &[u8]) -> Option<PackCheck> {
    let first = leaves.len();
    let mut bytes = Vec::with_capacity(pack.len());
    let mut count = 0;
    let mut rest = pack;
    while let Some((&n, tail)) = rest.split_first() {
        let (v, tail) = tail.split_at_checked(n as usize)?;
        if v.len() > LEAF_MAX || count == MAX_FANOUT {
            return None;
        }
        leaves.extend(&[TAG_LEAF, modality.as_u8()]);
        leaves.extend(v);
        leaves.end();
        bytes.extend_from_slice(v);
        count += 1;
        rest = tail;
    }
    (count >= 2).then_some(PackCheck { slot, first, count, bytes })
}

impl Checker {
    /// The bytes of each fetched pack whose leaves hash to its composite's stored hash (None
    /// for the others, and for atoms without a pack): leaves hashed in lanes, then the packs'
    /// node encodings, [`PACKS_PER_CHECK`] packs at a time. A pack that checks out is emptied
    /// in `got` (its bytes are in the answer), so a round holds its packs' bytes once.
    fn check_packs(&mut self, keys: &[HilbertKey], got: &mut [Option<Fetched>]) -> DbResult<Vec<Option<Vec<u8>>>> {
        let mut out: Vec<Option<Vec<u8>>> = Vec::new();
        out.resize_with(keys.len(), || None);
        let mut slots = got.iter_mut().enumerate().filter_map(|(s, f)| match f {
            Some(Fetched::Packed(pack, hash)) => Some((s, pack, *hash)),
            _ => None,
        });
        let mut chunk = Vec::with_capacity(PACKS_PER_CHECK);
        loop {
            self.leaves.clear();
            chunk.clear();
            for (s, pack, hash) in slots.by_ref().take(PACKS_PER_CHECK) {
                let m = modality_at(keys[s])?;
                // A malformed pack is not used (its messages so far stay in the arena, unused).
                if let Some(p) = parse_pack(&mut self.leaves, s, m, pack) {
                    chunk.push((p, m, hash, pack));
                }
            }
            if chunk.is_empty() && self.leaves.is_empty() {
                return Ok(out);
            }
            self.leaf_hashes.clear();
            self.leaves.hash_all(&mut self.leaf_hashes);
            self.nodes.clear();
            for (p, m, _, _) in &chunk {
                self.nodes.extend(&[TAG_NODE, m.as_u8()]);
                for h in &self.leaf_hashes[p.first..p.first + p.count] {
                    self.nodes.extend(&h.0);
                }
                self.nodes.end();
            }
            self.node_hashes.clear();
            self.nodes.hash_all(&mut self.node_hashes);
            for (i, (p, _, hash, pack)) in chunk.drain(..).enumerate() {
                if self.node_hashes[i] == hash {
                    out[p.slot] = Some(p.bytes);
                    *pack = Vec::new();
                }
            }
        }
    }
}

/// Write the leaves under the atom at `root`, which must hash to `want`, in order, verifying
/// the Merkle tree on the way down; up to [`CAT_BATCH`] atoms are resolved per query from the
/// front of the walk, so memory stays bounded by depth × fan-out × batch.
///
/// Trust flows from `want` down, as in the embedded engine: no stored hash is trusted on its
/// own. Each round fetches whole groups: the children of a composite whose hash is trusted (or
/// the root alone). A group verifies when its members' hashes (a leaf's computed from its
/// value, a composite's as stored) hash to the trusted hash; the stored hashes of its
/// composites are then trusted in turn, and a pack is used only when its leaves hash to its
/// composite's trusted hash (else the children are read). Hashing is in lanes
/// ([`Messages::hash_all`]): a round's leaves together, packs' leaves [`PACKS_PER_CHECK`] packs
/// at a time, then the node encodings. A round's bytes are written only after its checks, in
/// order; damage stops the walk with [`StoreError::Damaged`] where the damaged part starts in
/// the output, after every verified byte before it.
pub(super) async fn walk(
    conns: &[&Object],
    parts: &Partitions,
    root: HilbertKey,
    want: &Hash,
    out: &mut dyn Write,
) -> DbResult<u64> {
    let mut queue: std::collections::VecDeque<Item> = std::collections::VecDeque::new();
    queue.push_back(Item::Group(Box::new(Group { parent: None, trusted: *want, members: 1 })));
    queue.push_back(Item::Pending(root));
    let mut written = 0u64;
    let mut rounds = 0u64;
    let mut ck = Checker::default();
    loop {
        loop {
            match queue.front() {
                Some(Item::Bytes(_)) => {
                    if let Some(Item::Bytes(b)) = queue.pop_front() {
                        out.write_all(&b).map_err(|e| StoreError::io("write", "output", e))?;
                        written += b.len() as u64;
                    }
                }
                Some(Item::Damaged(_)) => {
                    let Some(Item::Damaged(d)) = queue.pop_front() else { unreachable!() };
                    return Err(d.into_error(written).into());
                }
                _ => break,
            }
        }
        if queue.is_empty() {
            return Ok(written);
        }
        rounds += 1;
        if rounds > 1 << 40 {
            return Err(StoreError::Backend("tree walk does not terminate (a cycle?)".into()).into());
        }
        // The round: whole groups from the front, up to CAT_BATCH pending atoms (more only to
        // finish a group). Each distinct key once (leaves repeat a lot): the slot of each
        // pending entry in `keys`.
        let mut slot_of: rustc_hash::FxHashMap<HilbertKey, usize> = Default::default();
        let mut slots = Vec::new();
        let mut keys = Vec::new();
        let mut n = 0;
        let mut open = 0u32;
        for it in queue.iter() {
            if open == 0 && slots.len() >= CAT_BATCH {
                break;
            }
            n += 1;
            match it {
                Item::Group(g) => open = g.members,
                Item::Pending(k) => {
                    open = open.saturating_sub(1);
                    let next = keys.len();
                    let s = *slot_of.entry(*k).or_insert(next);
                    if s == next {
                        keys.push(*k);
                    }
                    slots.push(s);
                }
                Item::Bytes(_) => {}
                // Nothing follows damage.
                Item::Damaged(_) => break,
            }
        }
        let mut got = walk_fetch(conns, parts, &keys).await?;

        // Packs, each checked against its composite's stored hash (trusted, and the pack
        // used, only once the composite's group verifies below).
        let mut packed = ck.check_packs(&keys, &mut got)?;
        // Each fetched atom's hash: a leaf's from its value (hashed in lanes), a composite's
        // as stored.
        ck.leaves.clear();
        let mut leaf_msg = vec![usize::MAX; keys.len()];
        for (s, f) in got.iter().enumerate() {
            if let Some(Fetched::Leaf(v)) = f {
                ck.leaves.extend(&[TAG_LEAF, modality_at(keys[s])?.as_u8()]);
                ck.leaves.extend(v);
                leaf_msg[s] = ck.leaves.end();
            }
        }
        ck.leaf_hashes.clear();
        ck.leaves.hash_all(&mut ck.leaf_hashes);
        let slot_hash: Vec<Option<Hash>> = got
            .iter()
            .enumerate()
            .map(|(s, f)| match f {
                Some(Fetched::Leaf(_)) => Some(ck.leaf_hashes[leaf_msg[s]]),
                Some(f) => f.stored_hash(),
                None => None,
            })
            .collect();
        // The node encoding of each group of a composite's children in the round, in order.
        ck.nodes.clear();
        let mut j = 0;
        let mut groups = Vec::new();
        for it in queue.iter().take(n) {
            let Item::Group(g) = it else { continue };
            let members = &slots[j..j + g.members as usize];
            j += g.members as usize;
            let hashes: Option<Vec<Hash>> = members.iter().map(|&s| slot_hash[s]).collect();
            let msg = match (&hashes, g.parent) {
                (Some(hashes), Some(parent)) => {
                    ck.nodes.extend(&[TAG_NODE, modality_at(parent)?.as_u8()]);
                    for h in hashes {
                        ck.nodes.extend(&h.0);
                    }
                    Some(ck.nodes.end())
                }
                _ => None,
            };
            groups.push((hashes, msg));
        }
        ck.node_hashes.clear();
        ck.nodes.hash_all(&mut ck.node_hashes);

        // How many pending entries each fetched atom fills: the last one takes it, the others
        // (an atom repeated within the round) copy it.
        let mut uses = vec![0u32; keys.len()];
        for &s in &slots {
            uses[s] += 1;
        }
        // Rebuild the front of the queue: verified leaves and packs as bytes, composites
        // expanded into groups of their children; at the first damage, the rest is dropped.
        let rest = queue.split_off(n);
        let front = std::mem::take(&mut queue);
        let (mut j, mut gi) = (0, 0);
        let mut damaged = false;
        for it in front {
            match it {
                Item::Bytes(b) => queue.push_back(Item::Bytes(b)),
                Item::Damaged(d) => {
                    queue.push_back(Item::Damaged(d));
                    damaged = true;
                    break;
                }
                Item::Group(g) => {
                    let (hashes, msg) = &groups[gi];
                    gi += 1;
                    let members = &slots[j..j + g.members as usize];
                    let ok = match (hashes, msg) {
                        (Some(_), Some(m)) => ck.node_hashes[*m] == g.trusted,
                        (Some(h), None) => h.len() == 1 && h[0] == g.trusted,
                        (None, _) => false,
                    };
                    if !ok {
                        let member_keys: Vec<HilbertKey> = members.iter().map(|&s| keys[s]).collect();
                        let computed = msg.map(|m| ck.node_hashes[m]);
                        let d = diagnose(conns, parts, &g, &member_keys, hashes.as_deref(), computed).await;
                        queue.push_back(Item::Damaged(Box::new(d)));
                        damaged = true;
                        break;
                    }
                }
                Item::Pending(k) => {
                    let s = slots[j];
                    j += 1;
                    uses[s] -= 1;
                    // A pack whose leaves hash to the composite's hash, trusted now that the
                    // composite's group verified.
                    if let Some(p) = &mut packed[s] {
                        let bytes = if uses[s] == 0 { std::mem::take(p) } else { p.clone() };
                        queue.push_back(Item::Bytes(bytes));
                        continue;
                    }
                    let fetched = if uses[s] == 0 { got[s].take() } else { got[s].clone() };
                    let (g, trusted) = match fetched.expect("a verified group's members were all found") {
                        Fetched::Leaf(v) => {
                            queue.push_back(Item::Bytes(v));
                            continue;
                        }
                        Fetched::Packed(_, hash) => {
                            tracing::warn!(key = %k, "a composite's pack does not match its hash (run `hart fsck`); reading its children instead");
                            match node_geometry(conns, parts, k).await? {
                                Some(g) => (g, hash),
                                None => {
                                    // Gone since the round's query: not possible in one
                                    // snapshot, but never a reason to write wrong bytes.
                                    let d = Damage {
                                        location: row_name(parts, k),
                                        expected: hash.to_hex(),
                                        found: "nothing (the row is gone)".into(),
                                        what: "a composite whose pack does not check out has no row to read its children from".into(),
                                    };
                                    queue.push_back(Item::Damaged(Box::new(d)));
                                    damaged = true;
                                    break;
                                }
                            }
                        }
                        Fetched::Node(g, hash) => (g, hash),
                    };
                    match geom_of(&g) {
                        Ok((_, kids)) => {
                            let modality = modality_at(k)?;
                            let members = kids.len() as u32;
                            queue.push_back(Item::Group(Box::new(Group { parent: Some(k), trusted, members })));
                            for p in kids {
                                queue.push_back(Item::Pending(HilbertKey::new(modality, &p)));
                            }
                        }
                        Err(e) => {
                            let d = Damage {
                                location: row_name(parts, k),
                                expected: trusted.to_hex(),
                                found: "nothing (no children)".into(),
                                what: format!("the composite's geometry does not decode ({e})"),
                            };
                            queue.push_back(Item::Damaged(Box::new(d)));
                            damaged = true;
                            break;
                        }
                    }
                }
            }
        }
        if !damaged {
            queue.extend(rest);
        }
    }
}

/// What is damaged in a group that does not verify: the member whose own stored data
/// disagrees with itself, when putting right its hash makes the group verify (a leaf whose
/// value no longer hashes to its recorded hash; a composite whose recorded hash is not its
/// children's); else the parent, whose geometry leads to children that do not hash to it.
/// `hashes` are the members' hashes as the walk used them (None: a member is missing),
/// `computed` what they hash to.
async fn diagnose(
    conns: &[&Object],
    parts: &Partitions,
    g: &Group,
    members: &[HilbertKey],
    hashes: Option<&[Hash]>,
    computed: Option<Hash>,
) -> Damage {
    let trusted = g.trusted.to_hex();
    let Some(parent) = g.parent else {
        // The root alone: found by its hash, so only a leaf's value can disagree with it.
        let found = hashes.and_then(|h| h.first()).map_or_else(|| "nothing (no row)".into(), |h| h.to_hex());
        return Damage {
            location: members.first().map_or_else(|| "the root".into(), |&k| row_name(parts, k)),
            expected: trusted,
            found,
            what: "the leaf that is the root asked for: its value does not hash to it".into(),
        };
    };
    let parent_at = row_name(parts, parent);
    let Some(hashes) = hashes else {
        let found = rows_at(conns, parts, members, "1").await.ok();
        let missing = (0..members.len()).find(|&i| found.as_ref().is_some_and(|f| f.row(i).is_none())).unwrap_or(0);
        return Damage {
            location: parent_at,
            expected: trusted,
            found: format!(
                "nothing (no atom at the key of vertex {missing} of its line, {})",
                key_sql(members[missing])
            ),
            what: format!(
                "child {missing} of composite {} is not stored (or not readable): its geometry or the child is damaged",
                g.trusted
            ),
        };
    };
    if members.is_empty() {
        return Damage {
            location: parent_at,
            expected: trusted,
            found: computed.map_or_else(String::new, |h| h.to_hex()),
            what: "the composite's geometry leads to no children".into(),
        };
    }
    if let Ok(Some((i, alt))) = suspect(conns, parts, parent, g, members, hashes).await {
        let leaf = alt.1;
        return Damage {
            location: row_name(parts, members[i]),
            expected: alt.0.to_hex(),
            found: hashes[i].to_hex(),
            what: if leaf {
                format!(
                    "a leaf's value does not hash to the hash its row records (child {i} of composite {} at {parent_at}, which names that hash)",
                    g.trusted
                )
            } else {
                format!(
                    "a composite's recorded hash is not its children's (child {i} of composite {} at {parent_at}, which names the hash of its children)",
                    g.trusted
                )
            },
        };
    }
    Damage {
        location: parent_at,
        expected: trusted,
        found: computed.map_or_else(String::new, |h| h.to_hex()),
        what: "the composite's children (as its geometry leads to them) do not hash to it: its geometry, or more than one child, is damaged".into(),
    }
}

/// A leaf's hash from its value, whatever its length (a damaged row may hold any).
fn hash_leaf(modality: Modality, value: &[u8]) -> Hash {
    Hash(*blake3::hash(&hart_core::atom::leaf_encoding(modality, value)).as_bytes())
}

/// The member of a failed group whose hash, put right from its own row, makes the group
/// verify: its index, the hash it should have, and whether it is a leaf.
async fn suspect(
    conns: &[&Object],
    parts: &Partitions,
    parent: HilbertKey,
    g: &Group,
    members: &[HilbertKey],
    hashes: &[Hash],
) -> DbResult<Option<(usize, (Hash, bool))>> {
    let modality = modality_at(parent)?;
    let found = rows_at(conns, parts, members, "a.value, a.content_hash, ST_AsEWKB(a.geom)").await?;
    for i in 0..members.len() {
        let Some(r) = found.row(i) else { continue };
        let value: Option<Vec<u8>> = r.get(FOUND_COLS);
        let alt = match value {
            // A leaf: the hash recorded beside its value.
            Some(_) => (hash_of(r.get(FOUND_COLS + 1))?, true),
            // A composite: its children's hash.
            None => {
                let (_, kids) = geom_of(r.get(FOUND_COLS + 2))?;
                let kid_keys: Vec<HilbertKey> = kids.iter().map(|p| HilbertKey::new(modality, p)).collect();
                let kf = rows_at(conns, parts, &kid_keys, "a.value, a.content_hash").await?;
                let mut kid_hashes = Vec::with_capacity(kid_keys.len());
                for j in 0..kid_keys.len() {
                    let Some(kr) = kf.row(j) else { break };
                    kid_hashes.push(match kr.get::<_, Option<&[u8]>>(FOUND_COLS) {
                        Some(v) => hash_leaf(modality, v),
                        None => hash_of(kr.get(FOUND_COLS + 1))?,
                    });
                }
                if kid_hashes.len() != kid_keys.len() {
                    continue;
                }
                (node_hash(modality, &kid_hashes), false)
            }
        };
        if alt.0 == hashes[i] {
            continue;
        }
        let mut put_right = hashes.to_vec();
        put_right[i] = alt.0;
        if node_hash(modality, &put_right) == g.trusted {
            return Ok(Some((i, alt)));
        }
    }
    Ok(None)
}

/// The error for a root that no atom row has by its hash: damage when a live object names it
/// (naming the row at the object's root key, whose content_hash was changed, or saying it is
/// gone), else "not found".
pub(super) async fn root_not_stored(c: &Object, parts: &Partitions, root: &Hash) -> DbResult<StoreError> {
    let row = c
        .query_opt(
            "SELECT l.id, o.root_h_xy, o.root_h_yz, o.root_h_zm FROM ingestion_log l
             JOIN objects o ON o.ingestion_id = l.id
             WHERE l.root_hash = $1 AND l.status = 'completed' AND o.deleted_at IS NULL
               AND NOT EXISTS (SELECT FROM ingestion_removed r WHERE r.ingestion_id = l.id)
             ORDER BY l.id LIMIT 1",
            &[&root.0.as_slice()],
        )
        .await?;
    let Some(r) = row else { return Ok(StoreError::NotFound { what: "atom", id: root.to_hex() }) };
    let id: i64 = r.get(0);
    let key = HilbertKey {
        h_xy: r.get::<_, i64>(1) as u64,
        h_yz: r.get::<_, i64>(2) as u64,
        h_zm: r.get::<_, i64>(3) as u64,
    };
    let found = rows_at(&[c], parts, &[key], "a.content_hash").await?;
    Ok(StoreError::Damaged {
        expected: root.to_hex(),
        found: match found.row(0) {
            Some(r) => hash_of(r.get(FOUND_COLS))?.to_hex(),
            None => "nothing (no row at the object's root key)".into(),
        },
        location: format!("{}, the root of object {id}", row_name(parts, key)),
        what: "the object's root row does not record the object's root hash (its content_hash is damaged, or the row is gone)".into(),
        byte: Some(0),
    })
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
