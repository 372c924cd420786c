//! The atom workload every candidate engine is fed: a deterministic stream of batches of
//! leaves (48-byte values, real BLAKE3 leaf hashes) and the content-defined composites over
//! them (about 16 children each), cut into objects of ~64 MiB, as `hart ingest` produces for
//! unique binary data.

use hart_core::features::leaf_identity;
use hart_core::tree::{NodeOut, TreeBuilder};
use hart_core::{Child, Hash, Modality};
use hart_store::{Batch, ObjectSummary};

/// Atoms per batch handed to an engine (the ingest pipeline's batch size).
pub const BATCH_OPS: usize = 8192;
/// Logical bytes after which an object ends and the engine makes everything durable.
pub const COMMIT_BYTES: u64 = 64 << 20;
/// Size of a leaf's value.
pub const LEAF_BYTES: usize = 48;

/// splitmix64: fast and deterministic (test data only).
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn bytes32(&mut self) -> [u8; 32] {
        let mut b = [0u8; 32];
        for w in b.chunks_exact_mut(8) {
            w.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        b
    }
}

/// One step of the workload: a batch to put, and, when an object ends with it, the root and
/// summary to commit durably.
pub struct Step {
    pub batch: Batch,
    pub commit: Option<(Hash, ObjectSummary)>,
}

/// The stream of steps.
pub struct Workload {
    rng: SplitMix,
    target_atoms: u64,
    tree: TreeBuilder,
    object_logical: u64,
    object_leaves: u64,
    object_atoms: u64,
    done: bool,
    pub leaves: u64,
    pub composites: u64,
    /// Σ over atoms of 32 (hash) + payload (leaf value, or 16-byte position + 32 per child).
    pub logical_bytes: u64,
    pub objects: u64,
}

impl Workload {
    pub fn new(seed: u64, target_atoms: u64) -> Workload {
        Workload {
            rng: SplitMix(seed),
            target_atoms,
            tree: TreeBuilder::new(Modality::Binary),
            object_logical: 0,
            object_leaves: 0,
            object_atoms: 0,
            done: false,
            leaves: 0,
            composites: 0,
            logical_bytes: 0,
            objects: 0,
        }
    }

    pub fn atoms(&self) -> u64 {
        self.leaves + self.composites
    }

    /// The next batch, or None when `target_atoms` have been produced (and committed).
    pub fn next_step(&mut self) -> Option<Step> {
        if self.done {
            return None;
        }
        let mut batch = Batch::default();
        let mut counts = Counts::default();
        while batch.len() < BATCH_OPS {
            if self.atoms() + counts.atoms() >= self.target_atoms
                || self.object_logical + counts.logical >= COMMIT_BYTES
            {
                self.absorb(&counts);
                counts = Counts::default();
                let tree = std::mem::replace(&mut self.tree, TreeBuilder::new(Modality::Binary));
                let root = tree.finish(&mut node_sink(&mut batch, &mut counts)).expect("objects are never empty");
                self.absorb(&counts);
                let summary = ObjectSummary {
                    source_hash: root.hash,
                    size: self.object_leaves * LEAF_BYTES as u64,
                    occurrences: self.object_atoms,
                };
                self.objects += 1;
                self.object_logical = 0;
                self.object_leaves = 0;
                self.object_atoms = 0;
                self.done = self.atoms() >= self.target_atoms;
                return Some(Step { batch, commit: Some((root.hash, summary)) });
            }
            let mut value = [0u8; LEAF_BYTES];
            for w in value.chunks_exact_mut(8) {
                w.copy_from_slice(&self.rng.next_u64().to_le_bytes());
            }
            let (hash, pos) = leaf_identity(Modality::Binary, &value);
            batch.push_leaf(Modality::Binary, hash, pos, &value);
            counts.leaves += 1;
            counts.logical += 32 + LEAF_BYTES as u64;
            self.tree.push(Child { hash, pos }, &mut node_sink(&mut batch, &mut counts));
        }
        self.absorb(&counts);
        Some(Step { batch, commit: None })
    }

    fn absorb(&mut self, c: &Counts) {
        self.leaves += c.leaves;
        self.composites += c.composites;
        self.logical_bytes += c.logical;
        self.object_logical += c.logical;
        self.object_leaves += c.leaves;
        self.object_atoms += c.leaves + c.composites;
    }
}

#[derive(Default)]
struct Counts {
    leaves: u64,
    composites: u64,
    logical: u64,
}

impl Counts {
    fn atoms(&self) -> u64 {
        self.leaves + self.composites
    }
}

fn node_sink<'a>(batch: &'a mut Batch, counts: &'a mut Counts) -> impl FnMut(&NodeOut<'_>) + 'a {
    move |n: &NodeOut<'_>| {
        batch.push_node(n.modality, n.hash, n.pos, n.children.iter().map(|c| c.hash));
        counts.composites += 1;
        counts.logical += 32 + 16 + 32 * n.children.len() as u64;
    }
}

/// A candidate engine's value for an atom: kind, modality, then the leaf value, or the
/// position and the children's hashes (what a key-value store must keep, having no log
/// offsets to point at).
pub fn kv_value(batch: &Batch, op: &hart_store::Op, out: &mut Vec<u8>) {
    out.clear();
    out.push(op.kind as u8);
    out.push(op.modality.as_u8());
    match op.kind {
        hart_core::AtomKind::Leaf => out.extend_from_slice(batch.value(op)),
        hart_core::AtomKind::Node => {
            for c in op.pos.coords() {
                out.extend_from_slice(&c.to_be_bytes());
            }
            for h in batch.children(op) {
                out.extend_from_slice(&h.0);
            }
        }
    }
}
