//! Values that cross the storage interface: batches of atoms, atom records, objects, reports.

use hart_core::{AtomKind, Hash, HilbertKey, Modality, Position};
use serde::{Deserialize, Serialize};

/// A run of atoms to put, children before parents, in flat buffers (one allocation per
/// buffer, not per atom).
#[derive(Debug, Default, Clone)]
pub struct Batch {
    pub ops: Vec<Op>,
    /// Leaf values, concatenated.
    pub bytes: Vec<u8>,
    /// Composite children's hashes, concatenated.
    pub kids: Vec<Hash>,
}

/// One atom in a [`Batch`]: a leaf's value is `bytes[start..start+len]`, a composite's
/// children are `kids[start..start+len]`.
#[derive(Debug, Clone, Copy)]
pub struct Op {
    pub kind: AtomKind,
    pub modality: Modality,
    pub hash: Hash,
    pub pos: Position,
    pub start: u32,
    pub len: u32,
}

impl Batch {
    pub fn clear(&mut self) {
        self.ops.clear();
        self.bytes.clear();
        self.kids.clear();
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn push_leaf(&mut self, modality: Modality, hash: Hash, pos: Position, value: &[u8]) {
        let start = self.bytes.len() as u32;
        self.bytes.extend_from_slice(value);
        self.ops.push(Op { kind: AtomKind::Leaf, modality, hash, pos, start, len: value.len() as u32 });
    }

    pub fn push_node(
        &mut self,
        modality: Modality,
        hash: Hash,
        pos: Position,
        children: impl IntoIterator<Item = Hash>,
    ) {
        let start = self.kids.len() as u32;
        self.kids.extend(children);
        let len = self.kids.len() as u32 - start;
        self.ops.push(Op { kind: AtomKind::Node, modality, hash, pos, start, len });
    }

    /// Append `other`'s atoms after this batch's.
    pub fn append(&mut self, other: &Batch) {
        let (bytes, kids) = (self.bytes.len() as u32, self.kids.len() as u32);
        self.ops.extend(other.ops.iter().map(|op| {
            let base = if op.kind == AtomKind::Leaf { bytes } else { kids };
            Op { start: op.start + base, ..*op }
        }));
        self.bytes.extend_from_slice(&other.bytes);
        self.kids.extend_from_slice(&other.kids);
    }

    pub fn value(&self, op: &Op) -> &[u8] {
        &self.bytes[op.start as usize..(op.start + op.len) as usize]
    }

    pub fn children(&self, op: &Op) -> &[Hash] {
        &self.kids[op.start as usize..(op.start + op.len) as usize]
    }
}

/// An atom as a query returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AtomRecord {
    pub hash: Hash,
    pub modality: Modality,
    pub kind: AtomKind,
    /// Leaf value (None for composites).
    #[serde(with = "opt_hex", skip_serializing_if = "Option::is_none", default)]
    pub value: Option<Vec<u8>>,
    /// Children in order (empty for leaves).
    pub children: Vec<Hash>,
    pub position: Position,
    pub key: HilbertKey,
    pub ref_count: u64,
}

mod opt_hex {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_str(&hex::encode(b)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| hex::decode(s).map_err(serde::de::Error::custom)).transpose()
    }
    mod hex {
        pub fn encode(b: &[u8]) -> String {
            b.iter().map(|x| format!("{x:02x}")).collect()
        }
        pub fn decode(s: String) -> Result<Vec<u8>, String> {
            if !s.len().is_multiple_of(2) {
                return Err("odd hex length".into());
            }
            (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| e.to_string())).collect()
        }
    }
}

/// Where an object comes from, given when its ingestion starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// Source URI (for files, the canonical path as `file://…`).
    pub uri: String,
    pub modality: Modality,
    /// Size of the source in bytes, if known up front.
    pub size: Option<u64>,
}

/// What the pipeline knows once an object's atoms are all put.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectSummary {
    /// BLAKE3 of the object's bytes.
    pub source_hash: Hash,
    pub size: u64,
    /// Atom occurrences in the object, counted with repeats.
    pub occurrences: u64,
}

/// Lifecycle of an ingestion (the seed's `ingestion_log.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Running,
    Completed,
    Failed,
    /// Ingested again, identical to a live object with the same URI: no new object.
    Unchanged,
    /// Removed with `rm`; its root was released.
    Deleted,
}

/// One row of the ingestion log: an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    pub id: u64,
    pub uri: String,
    pub modality: Modality,
    pub status: Status,
    pub root: Option<Hash>,
    pub source_hash: Option<Hash>,
    pub size: u64,
    /// Atoms this ingestion wrote.
    pub atoms_created: u64,
    /// References it added to atoms that existed before it.
    pub atoms_referenced: u64,
    /// Atom occurrences that needed no write (already stored, or repeated).
    pub atoms_skipped: u64,
    /// Unix milliseconds.
    pub started_at: u64,
    pub completed_at: Option<u64>,
    pub error: Option<String>,
}

/// Counts for one modality.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModalityStats {
    pub leaves: u64,
    pub composites: u64,
    /// Sum of leaf value lengths.
    pub leaf_bytes: u64,
}

/// What `stats` reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub backend: String,
    pub atoms: u64,
    pub per_modality: std::collections::BTreeMap<String, ModalityStats>,
    pub objects: u64,
    /// Sum of completed objects' sizes.
    pub logical_bytes: u64,
    /// Sum of unique leaf values: what the objects need after deduplication.
    pub unique_bytes: u64,
    /// logical_bytes / unique_bytes.
    pub dedup_ratio: f64,
    /// Bytes the backend occupies on disk.
    pub stored_bytes: u64,
    /// Atoms at reference count zero, waiting for `gc`.
    pub garbage_atoms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    pub atoms_removed: u64,
    pub bytes_removed: u64,
}

/// What `fsck` found. `problems` is empty for a healthy store; it lists every problem (never
/// capped), and the damage among them is also described by `damaged_regions` and
/// `damaged_objects`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsckReport {
    pub atoms_checked: u64,
    pub references_counted: u64,
    pub objects_checked: u64,
    pub bytes_reconstructed: u64,
    pub problems: Vec<String>,
    /// Stretches of stored bytes that fail their checksum (or are missing), with the objects
    /// that need them.
    #[serde(default)]
    pub damaged_regions: Vec<DamagedRegion>,
    /// Objects that do not rebuild to their bytes, each with the first damage found in it.
    #[serde(default)]
    pub damaged_objects: Vec<DamagedObject>,
    /// What is worth knowing but not a problem (repaired stretches, atoms awaiting healing).
    #[serde(default)]
    pub notes: Vec<String>,
}

/// A damaged stretch of a backend's stored bytes (embedded: of a log segment).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DamagedRegion {
    /// The file (or table) holding it.
    pub file: String,
    /// Where it starts in the file, and how many bytes it spans.
    pub offset: u64,
    pub length: u64,
    /// Why it cannot be trusted (e.g. "checksum mismatch: stored 1a2b3c4d, computed 5e6f7a8b").
    pub cause: String,
    /// Ids of the objects whose bytes pass through it.
    pub objects: Vec<u64>,
    /// A repair has set it aside: nothing live reads it (what good records name in it is a
    /// ghost, healed or waiting for a good copy). Not a problem any more, still reported.
    #[serde(default)]
    pub repaired: bool,
}

/// An object that does not rebuild, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DamagedObject {
    pub id: u64,
    pub uri: String,
    /// What is wrong (names the atom, its location, expected and found hashes).
    pub damage: String,
}

impl FsckReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A map that forgets: two generations of at most `cap` entries each; when the young one is
/// full it becomes the old one and the previous old one is dropped. Lookups see both. Memory
/// stays bounded while recently used entries stay cheap to find.
#[derive(Debug)]
pub struct BoundedMap<K, V> {
    young: rustc_hash::FxHashMap<K, V>,
    old: rustc_hash::FxHashMap<K, V>,
    cap: usize,
}

impl<K: std::hash::Hash + Eq + Copy, V: Copy> BoundedMap<K, V> {
    pub fn new(cap: usize) -> Self {
        BoundedMap { young: rustc_hash::FxHashMap::default(), old: rustc_hash::FxHashMap::default(), cap }
    }

    #[inline]
    pub fn get(&self, k: &K) -> Option<V> {
        self.young.get(k).or_else(|| self.old.get(k)).copied()
    }

    /// Look up, moving an entry found in the old generation into the young one so that
    /// entries in steady use are never forgotten.
    #[inline]
    pub fn get_promote(&mut self, k: &K) -> Option<V> {
        if let Some(v) = self.young.get(k) {
            return Some(*v);
        }
        let v = *self.old.get(k)?;
        self.insert(*k, v);
        Some(v)
    }

    /// Insert; returns true if the key was not present in either generation.
    #[inline]
    pub fn insert(&mut self, k: K, v: V) -> bool {
        if let Some(slot) = self.young.get_mut(&k) {
            *slot = v;
            return false;
        }
        if self.young.len() >= self.cap {
            self.old = std::mem::take(&mut self.young);
            self.young.reserve(self.cap);
        }
        let fresh = !self.old.contains_key(&k);
        self.young.insert(k, v).is_none() && fresh
    }

    pub fn clear(&mut self) {
        self.young.clear();
        self.old.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_batches_keep_their_values_and_children() {
        let pos = Position { x: 1, y: 2, z: 3, m: 4 };
        let h = |b: u8| Hash([b; 32]);
        let mut a = Batch::default();
        a.push_leaf(Modality::Text, h(1), pos, b"one");
        a.push_node(Modality::Text, h(2), pos, [h(1), h(1)]);
        let mut b = Batch::default();
        b.push_leaf(Modality::Text, h(3), pos, b"three");
        b.push_node(Modality::Text, h(4), pos, [h(3), h(2), h(1)]);
        b.push_leaf(Modality::Text, h(5), pos, b"5");
        a.append(&b);
        assert_eq!(a.len(), 5);
        let values: Vec<&[u8]> = a.ops.iter().filter(|o| o.kind == AtomKind::Leaf).map(|o| a.value(o)).collect();
        assert_eq!(values, [&b"one"[..], b"three", b"5"]);
        let kids: Vec<Vec<Hash>> =
            a.ops.iter().filter(|o| o.kind == AtomKind::Node).map(|o| a.children(o).to_vec()).collect();
        assert_eq!(kids, [vec![h(1), h(1)], vec![h(3), h(2), h(1)]]);
        assert_eq!(a.ops.iter().map(|o| o.hash).collect::<Vec<_>>(), [h(1), h(2), h(3), h(4), h(5)]);
    }
}
