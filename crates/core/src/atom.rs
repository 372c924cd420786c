//! Canonical encoding of atoms and their content hash (format version 1, docs/FORMAT.md).
//!
//! A leaf hashes `TAG_LEAF ‖ modality ‖ value`; a composite hashes
//! `TAG_NODE ‖ modality ‖ child hash ‖ child hash ‖ …` in order. The tags separate the two
//! domains, so no leaf can ever hash like a composite.

use crate::{Hash, Modality};

/// Largest value a leaf may hold, in bytes.
pub const LEAF_MAX: usize = 64;
/// Domain tag of a leaf's canonical encoding.
pub const TAG_LEAF: u8 = 0x00;
/// Domain tag of a composite's canonical encoding.
pub const TAG_NODE: u8 = 0x01;

/// Leaf (a value of at most [`LEAF_MAX`] bytes) or composite (an ordered list of children).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AtomKind {
    Leaf,
    Node,
}

/// Content hash of a leaf. Panics in debug builds if `value` is longer than [`LEAF_MAX`];
/// callers validate lengths at the boundary.
#[inline]
pub fn leaf_hash(modality: Modality, value: &[u8]) -> Hash {
    debug_assert!(value.len() <= LEAF_MAX, "leaf of {} bytes", value.len());
    let mut buf = [0u8; 2 + LEAF_MAX];
    buf[0] = TAG_LEAF;
    buf[1] = modality.as_u8();
    buf[2..2 + value.len()].copy_from_slice(value);
    Hash(*blake3::hash(&buf[..2 + value.len()]).as_bytes())
}

/// Content hash of a composite from its children's hashes, in order.
pub fn node_hash<'a>(modality: Modality, children: impl IntoIterator<Item = &'a Hash>) -> Hash {
    // One contiguous buffer hashed in one call: cheaper than an update per child, and
    // encodings over 1 KiB (more than 31 children) hash several BLAKE3 chunks in parallel.
    let mut buf = [0u8; 2 + 32 * crate::tree::MAX_FANOUT];
    buf[0] = TAG_NODE;
    buf[1] = modality.as_u8();
    let mut n = 2;
    let mut it = children.into_iter();
    for c in it.by_ref() {
        buf[n..n + 32].copy_from_slice(&c.0);
        n += 32;
        if n == buf.len() {
            break;
        }
    }
    let mut h = blake3::Hasher::new();
    h.update(&buf[..n]);
    for c in it {
        h.update(&c.0);
    }
    Hash(*h.finalize().as_bytes())
}

/// Append a composite's canonical encoding to `msgs` as one message, to hash it together with
/// others ([`crate::many::Messages::hash_all`] gives the same hash as [`node_hash`]).
#[inline]
pub fn push_node_encoding<'a>(
    msgs: &mut crate::many::Messages,
    modality: Modality,
    children: impl IntoIterator<Item = &'a Hash>,
) -> usize {
    msgs.extend(&[TAG_NODE, modality.as_u8()]);
    for c in children {
        msgs.extend(&c.0);
    }
    msgs.end()
}

/// The canonical encoding itself (the exact bytes that are hashed), for tests and docs.
pub fn leaf_encoding(modality: Modality, value: &[u8]) -> Vec<u8> {
    let mut v = vec![TAG_LEAF, modality.as_u8()];
    v.extend_from_slice(value);
    v
}

/// The canonical encoding of a composite.
pub fn node_encoding(modality: Modality, children: &[Hash]) -> Vec<u8> {
    let mut v = vec![TAG_NODE, modality.as_u8()];
    for c in children {
        v.extend_from_slice(&c.0);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_and_node_domains_are_separate() {
        let a = leaf_hash(Modality::Binary, b"x");
        // A node whose encoding bytes start like a leaf's must not collide.
        assert_ne!(a, node_hash(Modality::Binary, []));
        assert_eq!(
            leaf_hash(Modality::Binary, b"x"),
            Hash(*blake3::hash(&leaf_encoding(Modality::Binary, b"x")).as_bytes())
        );
        assert_ne!(leaf_hash(Modality::Binary, b"x"), leaf_hash(Modality::Text, b"x"));
        let kids = [a, a];
        assert_eq!(
            node_hash(Modality::Text, &kids),
            Hash(*blake3::hash(&node_encoding(Modality::Text, &kids)).as_bytes())
        );
    }
}
